"""Checks that need no private data, run before the budget is reserved.

A configuration error found here costs nothing: no reservation was made and no byte of the source was
read. Everything a spec, a release id, a source location, a publish target or a ledger can get wrong
without looking inside the data is checked here, so that the failures left after the reservation are
failures of the data itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from safesynth.errors import SpecError
from safesynth.spec import ReleaseSpec

__all__ = ["check_attacks", "check_incontext", "check_model", "check_release_id", "check_target", "preflight"]

_RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_release_id(release_id: str) -> str:
    """A release id names a directory and an object key: letters, digits, '_', '.', '-', at most 128.

    Raises:
        SpecError: anything else (empty, a path separator, a leading '.', control characters, too long).
    """
    if not _RELEASE_ID.match(release_id) or ".." in release_id:
        shown = release_id if release_id.isprintable() and len(release_id) <= 40 else f"{len(release_id)} characters"
        raise SpecError(f"`release_id` ({shown!r}) must be 1 to 128 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit")
    return release_id


def check_target(spec: ReleaseSpec) -> None:
    """The publisher of ``publish.format`` loads and accepts its settings (its library imports, the catalog
    URL parses, an existing table has the declared column types); a local target (directory, Delta table or
    warehouse) is a directory that exists or can be created, and is writable.

    Object-store targets are checked when publishing (credentials and buckets are the store's business).
    """
    from safesynth.publishers import publisher_for
    from safesynth.schema import arrow_schema

    publisher = publisher_for(spec)
    publisher.check()  # SpecError: a missing optional library, a bad catalog URL, ...
    publisher.check_schema(arrow_schema(spec))  # an existing table takes the declared column types
    target = spec.target_uri
    if "://" in target and not target.startswith("file://"):
        return
    path = Path(target.removeprefix("file://"))
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise SpecError(f"`publish.target` ({target}) passes through a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == path else f"is inside {existing}, which is"
        raise SpecError(f"`publish.target` ({target}) {what} not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"`publish.target` ({target}): {existing} is not writable")


def check_attacks(spec: ReleaseSpec) -> None:
    """Every ``audit.attacks`` name is a registered membership attack. Raises SpecError."""
    from safesynth.audit.attacks import ATTACKS

    unknown = [name for name in spec.audit.attacks if name not in ATTACKS]
    if unknown:
        raise SpecError(f"`audit.attacks`: unknown attack(s) {unknown}; known: {sorted(ATTACKS)}")


def check_model(spec: ReleaseSpec) -> None:
    """A pretrained ``generator.model`` is on this machine with what it needs to load. Raises SpecError.

    The file or cached snapshot exists and the optional packages a GGUF file needs import; loading the weights
    (tens of seconds) is left to the generator, after the reservation.
    """
    model = getattr(spec.generator, "model", None)
    if model is not None:
        from safesynth.generator.llm.pretrained import resolve_model

        resolve_model(model, base_dir=spec.base_dir)
        if getattr(spec.generator, "lora", False) and importlib.util.find_spec("peft") is None:
            raise SpecError("`generator.lora` (true) needs the optional package `peft`: pip install peft==0.21.2 "
                            "(or set lora: false)")


def check_incontext(spec: ReleaseSpec) -> None:
    """The in-context generator's text and condition columns exist with the right types, delta > 0, and an
    explicit ``noise_multiplier`` buys at least one text.

    Raises:
        SpecError: see :func:`safesynth.generator.incontext.prompt.resolve_columns`; ``privacy.delta`` is 0;
            or see :func:`safesynth.generator.incontext.backend.check_buys_a_text`.
    """
    from safesynth.generator.incontext.backend import check_buys_a_text
    from safesynth.generator.incontext.prompt import resolve_columns

    resolve_columns(spec)
    if not spec.privacy.delta > 0:
        raise SpecError("`privacy.delta` (0) must be > 0 for the in-context generator (Gaussian noise)")
    check_buys_a_text(spec)


def preflight(spec: ReleaseSpec) -> None:
    """Every check that needs no private data. Raises SpecError or SourceReadError (exit code 2)."""
    from safesynth.io import check_source
    from safesynth.privacy.ledger import preflight_ledger

    spec.source_format  # noqa: B018 - raises SpecError for an unknown extension
    check_attacks(spec)
    if spec.generator.kind in ("llm", "incontext"):  # torch is imported only for these generators
        from safesynth.generator.llm.device import resolve_device

        resolve_device(spec.generator.device)
        check_model(spec)
    if spec.generator.kind == "incontext":
        check_incontext(spec)
    if spec.generator.kind == "llm":
        from safesynth.generator.llm.warm import check_warm_start

        check_warm_start(spec)
    check_source(spec)
    check_target(spec)
    preflight_ledger(spec)
    from safesynth.sampling.cluster import preflight_cluster

    preflight_cluster(spec)
