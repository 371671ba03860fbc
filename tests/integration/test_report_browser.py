"""The owner's audit report in a real browser: headless Chromium opens it, decodes every figure, screenshots it.

Chromium is found on PATH or, where missing, Debian's ``chromium`` package is installed (as root, with
``apt-get``; CI's machines run as root). Where it cannot be obtained the tests skip, naming why. Every
Chromium call runs in its own process group with a timeout, and the group is killed afterwards (the
wrapper script, zygote and crash handler outlive a timed-out browser otherwise); host names resolve to
nothing, so a report that reached for the network could not load it.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safesynth.audit.attacks.confidence import evaluation_result
from safesynth.audit.attacks.text_copy import text_copy
from safesynth.audit.report import AuditReport, build_report, write_report
from tests.helpers import MIXED_COLUMNS, make_spec, mixed_frame

pytestmark = [pytest.mark.slow]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT_S = 60
APT_TIMEOUT_S = {"update": 300, "install": 900}
WIDTH, MAX_HEIGHT = 1200, 16_384  # Chromium's largest screenshot side

# Injected into a copy of the report (the report itself has no script). On load it draws every image onto a
# canvas, so "decoded" means real pixels, not only a parsed header, and lists what could reach the network.
SUMMARY_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    let colours = 0;
    if (img.naturalWidth > 0 && img.naturalHeight > 0) {
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = new Uint32Array(ctx.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
      colours = new Set(px).size;
    }
    const box = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
            shown_width: box.width, shown_height: box.height, colours: colours,
            data_uri: img.currentSrc.startsWith("data:image/png;base64,")};
  });
  const urls = Array.from(document.querySelectorAll("[src],[href],[srcset],[poster],[action]"))
    .flatMap((el) => ["src", "href", "srcset", "poster", "action"].map((a) => el.getAttribute(a)))
    .filter((v) => v !== null && !v.startsWith("data:"));
  const resources = performance.getEntriesByType("resource").map((e) => e.name)
    .filter((n) => !n.startsWith("data:"));
  const out = document.createElement("pre");
  out.id = "browser-summary";
  out.textContent = JSON.stringify({images: images, urls: urls, resources: resources,
                                    scroll_height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group; kill the whole group afterwards and on timeout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def _find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name)) is not None), None)


def _install_chromium() -> str | None:
    """Install Debian's ``chromium``; None when installed, else why not."""
    if os.geteuid() != 0:
        return "Chromium not on PATH and not root: cannot `apt-get install chromium`"
    if shutil.which("apt-get") is None:
        return "Chromium not on PATH and no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step, cmd in (("update", ["apt-get", "update"]),
                      ("install", ["apt-get", "install", "-y", "--no-install-recommends", "chromium"])):
        try:
            code, _, err = _run(cmd, timeout=APT_TIMEOUT_S[step], env=env)
        except subprocess.TimeoutExpired:
            return f"`apt-get {step}` timed out after {APT_TIMEOUT_S[step]} s"
        except OSError as exc:
            return f"`apt-get {step}` could not start: {exc}"
        if code != 0:
            return f"`apt-get {step}` failed (exit {code}): {err.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium: on PATH, else Debian's package installed now (skips if neither)."""
    if (path := _find_browser()) is None:
        if (why := _install_chromium()) is not None:  # its time shows as this fixture's setup (--durations)
            pytest.skip(why)
        if (path := _find_browser()) is None:
            pytest.skip(f"`apt-get install chromium` succeeded but none of {', '.join(BROWSERS)} is on PATH")
    return path


def _browse(browser: str, profile: Path, page: Path, *args: str) -> str:
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
           *args, page.as_uri()]
    try:
        code, out, err = _run(cmd, timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{Path(browser).name} did not finish within {BROWSER_TIMEOUT_S} s: {' '.join(args)}")
    assert code == 0, f"{Path(browser).name} exited {code}: {err.strip()[-2000:]}"
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[AuditReport, Path]:
    """A small report with every section: two attacks, risks, text copies, all column kinds, TSTR, epsilon."""
    tmp_path = tmp_path_factory.mktemp("report")
    spec = make_spec(tmp_path)
    train, holdout, synthetic = (mixed_frame(200, seed=s) for s in (1, 2, 3))
    rng = np.random.default_rng(0)
    scores = {"domias": (rng.normal(0.2, 1, 200), rng.normal(0, 1, 200)),
              "distance": (rng.normal(0.1, 1, 200), rng.normal(0, 1, 200))}
    risks = [evaluation_result(attack="inference:plan", n_attacks=50, n_success=20, n_control=50,
                               n_control_success=15, n_baseline_success=10),
             evaluation_result(attack="singling-out", n_attacks=40, n_success=6, n_control=40,
                               n_control_success=5, n_baseline_success=1)]
    copies = [text_copy(synthetic=synthetic, members=train, non_members=holdout, column="note", spec=spec,
                        rng=np.random.default_rng(2))]
    report = build_report(spec=spec, train=train, holdout=holdout, synthetic=synthetic, epsilon=2.0, delta=1e-6,
                          rng=np.random.default_rng(1), attack_scores=scores, risks=risks, text_copies=copies,
                          target="active", positive="True", empirical_epsilon=0.4)
    html_path, _ = write_report(report, tmp_path / "reports")
    return report, html_path


def expected_figures(report: AuditReport) -> list[str]:
    """The alt text of every figure :func:`render_html` draws for ``report``, in page order."""
    return ["epsilon claimed vs measured", *(f"ROC {a.summary.attack}" for a in report.attacks),
            *(["risks"] if report.risks else []), *(["TSTR vs TRTR"] if report.tstr is not None else []),
            *(["2-way TVD heat map"] if report.pair_tvd else []), *(f"marginal {m.column}" for m in report.marginals)]


def test_the_report_fixture_has_every_section(written):
    report, _ = written
    assert len(report.attacks) == 2 and len(report.risks) == 2 and len(report.text_copies) == 1
    assert report.tstr is not None and report.pair_tvd and report.empirical_epsilon == 0.4
    assert [m.column for m in report.marginals] == list(MIXED_COLUMNS)  # every column kind


def test_report_is_self_contained(written):
    _, html_path = written
    page = html_path.read_text(encoding="utf-8")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<script|<link|<iframe|<object|<embed|@import|url\(",
                         page, flags=re.IGNORECASE)
    refs = re.findall(r'\b(?:src|href|srcset|poster|action)\s*=\s*"([^"]*)"', page, flags=re.IGNORECASE)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)


def test_browser_decodes_every_figure_and_screenshots_the_page(written, chromium, tmp_path):
    report, html_path = written
    probe = tmp_path / "probe.html"  # a copy with the summary script, next to nothing else
    page = html_path.read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", SUMMARY_SCRIPT + "</body>", 1), encoding="utf-8")

    dom = _browse(chromium, tmp_path / "profile", probe, f"--window-size={WIDTH},900",
                  "--virtual-time-budget=10000", "--dump-dom")
    found = re.search(r'<pre id="browser-summary">(.*?)</pre>', dom, flags=re.DOTALL)
    assert found, f"the injected script wrote no summary; DOM tail: {dom[-1000:]}"
    summary = json.loads(html.unescape(found.group(1)))

    images = summary["images"]
    assert [i["alt"] for i in images] == expected_figures(report)
    for image in images:
        assert image["complete"] and image["data_uri"], image["alt"]
        assert image["width"] > 0 and image["height"] > 0, f"{image['alt']}: not decoded"
        assert image["shown_width"] > 0 and image["shown_height"] > 0, f"{image['alt']}: not laid out"
        assert image["colours"] > 2, f"{image['alt']}: blank ({image['colours']} colours)"
    assert summary["urls"] == [] and summary["resources"] == []  # nothing but data: URIs

    height = min(MAX_HEIGHT, int(summary["scroll_height"]))
    shot = tmp_path / "report.png"
    _browse(chromium, tmp_path / "profile", html_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    assert shot.is_file(), "no screenshot written"
    with Image.open(shot) as img:
        img.verify()
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (WIDTH, height)
        rgb = np.asarray(img.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 2, "the screenshot is blank"
    # The figures' "real" bars (#4c72b0) are painted: the page is not text on white only.
    assert (np.abs(rgb.astype(int) - (0x4C, 0x72, 0xB0)).sum(axis=2) < 12).sum() > 1_000
