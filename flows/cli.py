"""The `safesynth` command line (the shell around the flows and the core).

Commands: ``safesynth spec check``, ``safesynth release``, ``safesynth audit``, ``safesynth budget ...``
(``flows/cli_budget.py``), ``safesynth releases list|show`` (``flows/cli_releases.py``), ``safesynth deploy``
and ``safesynth serve`` (scheduled releases, :mod:`safesynth.flows.cli_deploy`).

Exit codes: 0 published (or already published), 2 bad spec or bad input, 3 blocked by a gate or by the
privacy budget, 1 anything else. Errors are one line on stderr; no tracebacks for errors a user can fix.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from safesynth import __version__
from safesynth.errors import InternalError, SafeSynthError, SpecError

app = typer.Typer(
    name="safesynth",
    help="Differentially private synthetic data releases, gated by a privacy audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
spec_app = typer.Typer(help="Work with release specs (no data is read).", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

if TYPE_CHECKING:
    from safesynth.audit.standalone import StandaloneAudit
    from safesynth.release import ReleaseOutcome

out = Console()
err = Console(stderr=True)


def _mount_budget() -> None:
    try:
        from safesynth.flows.cli_budget import budget_app
    except ImportError:  # pragma: no cover - only while the module is missing
        return
    app.add_typer(budget_app, name="budget", help="The privacy budget ledger: list, show, set-lifetime, abandon, cancel, rebind.")


_mount_budget()


def _mount_releases() -> None:
    from safesynth.flows.cli_releases import releases_app

    app.add_typer(releases_app, name="releases", help="Published releases: list, show (with their epsilon).")


_mount_releases()


def _mount_deploy() -> None:
    from safesynth.flows.cli_deploy import register

    register(app)


_mount_deploy()


def set_runtime_defaults() -> None:
    """Offline, quiet, self-contained defaults; an explicit environment variable always wins."""
    home = Path(os.environ.setdefault("SAFESYNTH_HOME", str(Path(".safesynth").resolve())))
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "safesynth",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # the local engine logs outside flow runs
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect's SQLite database cannot be created inside a missing directory.
    for key in ("SAFESYNTH_HOME", "PREFECT_HOME", "HF_HOME"):
        Path(os.environ[key]).expanduser().mkdir(parents=True, exist_ok=True)


def _fail(exc: SafeSynthError) -> None:
    if exc.exit_code == 0:  # e.g. already published: nothing to do, not an error
        out.print(escape(str(exc)), highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _version(value: bool) -> None:
    if value:
        out.print(f"safesynth {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    # Only our logger: Prefect configures its own handlers (task names, run ids) and must keep them.
    ours = logging.getLogger("safesynth")
    for old in [h for h in ours.handlers if getattr(h, "_safesynth_cli", False)]:
        ours.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr (tests swap it per invocation)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | safesynth - %(message)s", "%H:%M:%S"))
    handler._safesynth_cli = True  # type: ignore[attr-defined]
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("great_expectations", "httpx"):  # chatty at INFO; keep their warnings
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    set_runtime_defaults()


@spec_app.command("check")
def spec_check(spec: Annotated[Path, typer.Argument(help="Release spec YAML file.")]) -> None:
    """Validate a release spec and print its budget plan, without reading any data."""
    from safesynth.privacy.planner import plan_budget
    from safesynth.spec import LLMGeneratorSpec, load_spec

    try:
        loaded = load_spec(spec)
        plan = plan_budget(loaded)
        loaded.source_format  # noqa: B018 - raises SpecError for an unknown extension
    except SafeSynthError as exc:
        _fail(exc)
    gen = loaded.generator
    how = ""
    if isinstance(gen, LLMGeneratorSpec):  # what warm_start: auto decided (from the spec alone)
        label = loaded.audit.target_column
        anchor, share = gen.warm_anchor(label), gen.warm_share(label)
        how = (f" (warm start mst, share {share:g}{f', label pairs of `{anchor}`' if anchor else ''}"
               f"{', calibrated' if gen.calibrate else ''})" if gen.warm_start == "mst" else " (DP-SGD only)")
    out.print(f"[green]ok[/] {spec}: dataset `{loaded.dataset}`, {len(loaded.columns)} columns, "
              f"generator {gen.kind}{how}, {loaded.sampling.rows} rows")
    out.print(f"   source {loaded.source_uri} -> target {loaded.target_uri}")
    stages = ", ".join(f"{s.name} eps={s.epsilon:.4g} delta={s.delta:.2g}" for s in plan.stages)
    out.print(f"   budget epsilon={plan.epsilon} delta={plan.delta:g} ({plan.accountant}); stages: {stages}")
    out.print(f"   digest {loaded.digest()}")


@app.command("release")
def release_cmd(
    spec: Annotated[Path, typer.Argument(help="Release spec YAML file.")],
    release_id: Annotated[str | None, typer.Option("--release-id", help="Release id (default: dataset-time-random).")] = None,
    engine: Annotated[str, typer.Option(help="'prefect' (the flow, default) or 'local' (no orchestration).")] = "prefect",
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run a DP synthetic release: ingest, validate, fit with DP, sample, audit, gate and publish.

    Exit codes: 0 published, 2 bad spec or input, 3 blocked (audit gate or privacy budget), 1 other errors.
    """
    from safesynth.release import render_summary

    try:
        if engine not in ("prefect", "local"):
            raise SpecError(f"`--engine` ({engine!r}) must be 'prefect' or 'local'")
        _preflight(spec, release_id)  # fail fast, before Prefect starts and before any budget is reserved
        if engine == "local":
            from safesynth.release import run_release

            with err.status("running release (local engine)..."):
                outcome = run_release(spec, release_id=release_id)
        else:
            outcome = _run_flow(spec, release_id)
    except SafeSynthError as exc:
        _fail(exc)
    if json_out:
        out.print_json(json.dumps({"release_id": outcome.release_id, "status": outcome.status,
                                   "message": outcome.message, "location": outcome.location,
                                   "privacy": outcome.privacy, "audit": outcome.audit, "gate": outcome.gate}))
    elif outcome.status != "failed":
        from rich.markdown import Markdown

        out.print(Markdown(render_summary(outcome)))
    if outcome.status == "failed":
        err.print(f"[bold red]error:[/] {escape(outcome.message)}", highlight=False, soft_wrap=True)
    elif outcome.exit_code:
        err.print(f"[bold red]{escape(outcome.message)}[/]", highlight=False)
    else:
        out.print(f"[bold green]{escape(outcome.message)}[/]", highlight=False)
    raise typer.Exit(outcome.exit_code)


@app.command("audit")
def audit_cmd(
    spec: Annotated[Path, typer.Argument(help="Release spec YAML file (columns, audit settings, budget plan).")],
    train: Annotated[str, typer.Option("--train", help="Rows the generator was fitted on (path or URL).")],
    holdout: Annotated[str, typer.Option("--holdout", help="Rows it never saw, from the same population.")],
    synthetic: Annotated[str, typer.Option("--synthetic", help="The synthetic table to audit.")],
    report: Annotated[Path | None, typer.Option("--report", help="Write the HTML + JSON report to this "
                                                 "directory (created mode 0700).")] = None,
    epsilon: Annotated[float | None, typer.Option("--epsilon", help="The epsilon the synthetic table claims "
                                                  "(default: the spec's privacy.epsilon).")] = None,
) -> None:
    """Audit any synthetic table (ours or another tool's): attacks, risks, utility, and the spec's gates.

    Prints exact figures for the data owner (keep them private) and the gate decision a release would
    take from its DP figures. Exit codes: 0 the gates pass, 3 they would block, 2 bad spec or input.
    """
    from safesynth.audit.attacks import ATTACKS
    from safesynth.audit.standalone import audit_tables
    from safesynth.preflight import check_attacks
    from safesynth.spec import load_spec

    def absolute(location: str) -> str:
        return location if "://" in location else str(Path(location).resolve())

    try:
        loaded = load_spec(spec)
        check_attacks(loaded)
        with err.status(f"auditing with {len(loaded.audit.attacks)} attacks ({', '.join(sorted(ATTACKS))} "
                        "registered)..."):
            result = audit_tables(loaded, train=absolute(train), holdout=absolute(holdout),
                                  synthetic=absolute(synthetic), claimed_epsilon=epsilon)
    except SafeSynthError as exc:
        _fail(exc)
    _print_audit(result)
    if report is not None:
        from safesynth.audit.report import write_report

        html_path, _ = write_report(result.suite.report, report)
        out.print(f"report: {html_path}")
    raise typer.Exit(0 if result.decision.passed else 3)


def _print_audit(result: StandaloneAudit) -> None:
    from rich.table import Table

    suite = result.suite.report
    attacks = Table(title="Membership attacks (exact, restricted: real reference rows)")
    for name in ("attack", "AUC", "95% interval", "TPR at low FPR", "members / non-members"):
        attacks.add_column(name)
    for a in suite.attacks:
        s = a.summary
        attacks.add_row(s.attack, f"{s.auc:.3f}", f"{s.auc_interval[0]:.3f} to {s.auc_interval[1]:.3f}",
                        ", ".join(f"{r.value:.3f} at {fpr:g}" for fpr, r in s.tpr_at_fpr.items()),
                        f"{s.members} / {s.non_members}")
    out.print(attacks)
    out.print(f"AUC bound of the claimed epsilon {result.claimed_epsilon:g}: {suite.auc_bound:.3f}")
    if suite.risks:
        risks = Table(title="Risks (anonymeter-style, members vs holdout control)")
        for name in ("risk", "value", "95% interval"):
            risks.add_column(name)
        for r in suite.risks:
            risks.add_row(r.attack, f"{r.risk.value:.4f}", f"{r.risk.ci[0]:.4f} to {r.risk.ci[1]:.4f}")
        out.print(risks)
    if suite.tvd is not None:
        out.print(f"utility: 1-way TVD {suite.tvd['tvd_1way']:.4f}, 2-way TVD {suite.tvd['tvd_2way']:.4f}"
                  + ("" if suite.tstr is None else f", TSTR ROC AUC {suite.tstr.tstr_roc_auc:.3f} vs TRTR "
                     f"{suite.tstr.trtr_roc_auc:.3f}"))
    for name, error in result.suite.failed.items():
        err.print(f"[yellow]not measured:[/] {escape(name)} ({escape(error)})")
    gates = Table(title="Gates (from the DP figures a release would publish)")
    for name in ("gate", "passed", "detail"):
        gates.add_column(name)
    for g in result.decision.gates:
        gates.add_row(g.gate, "yes" if g.passed else "[bold red]no[/]", escape(g.reason))
    out.print(gates)


def _preflight(spec: Path, release_id: str | None) -> None:
    from safesynth.preflight import check_release_id, preflight
    from safesynth.spec import load_spec

    loaded = load_spec(spec)
    if release_id is not None:
        check_release_id(release_id)
    preflight(loaded)


def _run_flow(spec: Path, release_id: str | None) -> ReleaseOutcome:
    from safesynth.release import ReleaseOutcome

    err.print("starting Prefect (embedded local API)...", style="dim")
    # Prefect attaches its own console and API handlers to the `safesynth` logger (extra loggers).
    logging.getLogger("safesynth").handlers.clear()
    from safesynth.flows.release import release

    state = release(str(spec), release_id, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, ReleaseOutcome):
        return result
    if isinstance(result, BaseException):
        raise InternalError(f"release flow crashed: {result.__class__.__name__}") from result
    raise InternalError(f"release flow ended {state.name}: {state.message}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
