"""The release stages as plain functions: small typed inputs, paths or small results out.

:func:`safesynth.release.run_release` owns the order and calls each stage through a runner (directly, or
as a Prefect task in ``flows/``). The spec is loaded once, in :func:`prepare`, into the
:class:`RunContext` every stage receives; what DP discovery learns is carried by :class:`Fitted` (a
:class:`ResolvedSpec`), so no stage chooses between "the spec" and "the resolved spec".

Private rows only ever live in the attempt's private work directory (:mod:`safesynth.workspace`, mode
0700), which is removed on every exit path, or quarantined (still mode 0700, for a set retention) after a
blocked or failed release that read data; exact diagnostics go to the attempt's restricted reports
directory.

Privacy invariants enforced here, at the point of danger:
  * every check that needs no private data runs in :func:`prepare`, before the budget is reserved;
  * the budget is reserved in the ledger before the source is opened (:func:`reserve_budget`), and the
    reservation is marked "data read" *before* the first byte is read (:func:`ingest`);
  * the holdout is split off with secret coins before anything is fitted and is never passed to a
    generator;
  * the gate decides from the DP audit's noisy figures only, charged as the plan's ``audit`` stage
    (:func:`audit`); exact attack figures go to the restricted reports directory and nowhere else;
  * publishing requires a passing gate decision (:func:`publish`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import safesynth
from safesynth.audit import GateDecision, NoisyAudit, audit_membership, evaluate_gates
from safesynth.errors import DataError, GateFailedError, InternalError, LedgerError, PrivacyError, SpecError
from safesynth.generator import get_backend
from safesynth.output import write_parquet
from safesynth.preflight import check_release_id, preflight
from safesynth.privacy.accountant import ReleaseAccount, StageSpend
from safesynth.privacy.noise import NoiseSource, default_noise
from safesynth.privacy.planner import BudgetPlan, plan_budget
from safesynth.publish import build_manifest_files
from safesynth.publishers import PublishedRelease, publisher_for
from safesynth.schema import arrow_schema
from safesynth.spec import ReleaseSpec, load_spec
from safesynth.workspace import Workspace, safesynth_home

if TYPE_CHECKING:
    from safesynth.sampling import SampledRows
    from safesynth.sampling.fanout import ProgressCallback

log = logging.getLogger("safesynth")

#: Confidence of the canary audit's lower bound on epsilon: a correct release is blocked by the
#: canary-epsilon gate with probability at most this (canary mode only).
CANARY_BETA = 0.01
#: In the work directory: the ``sampling.model_store`` prefix of this run, removed at cleanup.
_REMOTE_SCRATCH = "remote_scratch.txt"

__all__ = [
    "Fitted",
    "ResolvedSpec",
    "RunContext",
    "audit",
    "cleanup",
    "fit",
    "gate",
    "ingest",
    "insert_canaries",
    "new_release_id",
    "prepare",
    "publish",
    "reserve_budget",
    "sample",
    "settle",
    "slot_release_id",
    "split",
    "validate",
    "write_output",
]


def new_release_id(dataset: str) -> str:
    """``<dataset>-<UTC time>-<random>``: unique, sortable, safe in paths and object keys."""
    return f"{dataset}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def slot_release_id(dataset: str, scheduled: dt.datetime) -> str:
    """``<dataset>-<UTC slot>``, e.g. ``demo-2026-12-07T02-00Z``: the release id of a scheduled slot.

    The same slot always gets the same id, so a re-run of it finds its release published (or its attempt
    in the ledger) and spends nothing again. Seconds are written only when the slot has them; fractions of
    a second are dropped. The id states the slot's time, a public value (the schedule), nothing else.

    Raises:
        SpecError: ``scheduled`` has no time zone, or the id is not a valid release id (a dataset name
            longer than 110 characters).
    """
    if scheduled.tzinfo is None or scheduled.utcoffset() is None:
        raise SpecError(f"`scheduled` ({scheduled.isoformat()}) must have a time zone")
    utc = scheduled.astimezone(dt.UTC)
    slot = f"{utc:%Y-%m-%dT%H-%M}" + (f"-{utc:%S}" if utc.second else "")
    return check_release_id(f"{dataset}-{slot}Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """One release attempt: the spec as loaded once, its id and its private directories. Picklable."""

    spec: ReleaseSpec
    spec_path: str
    release_id: str
    workspace: Workspace

    def path(self, name: str) -> Path:
        """A file in the private work directory (private rows, models)."""
        return self.workspace.path(name)

    def report(self, name: str) -> Path:
        """A file in the restricted reports directory (exact diagnostics for the data owner)."""
        return self.workspace.report(name)


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """The release spec with every column's domain known: declared, or discovered with DP."""

    spec: ReleaseSpec

    def __post_init__(self) -> None:
        unbounded = [name for name, col in self.spec.columns.items() if not col.bounded]
        if unbounded:
            raise InternalError(f"columns {unbounded} have no domain after discovery")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fitted:
    """What the fit stage hands on: the saved model and the domains it was fitted on."""

    model_dir: Path
    schema: ResolvedSpec


def prepare(spec_path: str | os.PathLike[str], release_id: str | None = None,
            spec: ReleaseSpec | None = None) -> RunContext:
    """Load the spec once, run every check that needs no private data, make the attempt's directories.

    ``spec``: the spec already loaded from ``spec_path`` by the caller (the flow, which needed its dataset
    first); the file is then not read again, so the run cannot use a different spec from the one it took
    the dataset's slot for.

    Raises:
        SpecError: a bad spec, release id, source location, publish target or ledger (exit code 2);
            nothing is reserved or charged.
    """
    spec = load_spec(spec_path) if spec is None else spec
    release_id = new_release_id(spec.dataset) if release_id is None else check_release_id(release_id)
    preflight(spec)
    workspace = Workspace.create(spec.dataset, release_id)
    return RunContext(spec=spec, spec_path=str(Path(spec_path).resolve()), release_id=release_id,
                      workspace=workspace)


def already_published(ctx: RunContext) -> str | None:
    """The location of this release id if it is already published with the same spec, else None.

    Raises:
        SpecError: the release id is already published from a different spec (digest differs).
    """
    spec = ctx.spec
    manifest = publisher_for(spec).find(spec.dataset, ctx.release_id)
    if manifest is None:
        return None
    if manifest.get("spec_digest") != spec.digest():
        raise SpecError(f"release id `{ctx.release_id}` is already published from a different spec "
                        f"(digest {str(manifest.get('spec_digest'))[:12]}, this spec {spec.digest()[:12]}); "
                        "choose a new --release-id")
    return release_location(ctx)


def release_location(ctx: RunContext) -> str:
    """Where this release is (or would be) visible: a directory, or a table."""
    return publisher_for(ctx.spec).location(ctx.spec.dataset, ctx.release_id)


def spent_attempt(ctx: RunContext) -> Any:
    """The last attempt of this release id that read data and ended blocked or failed, or None.

    A scheduled slot's release runs once (:func:`slot_release_id`): re-running such an attempt would spend
    the budget again on the same slot. Reads only the ledger (no data).
    """
    from safesynth.privacy.ledger import Ledger

    with Ledger.for_spec(ctx.spec) as ledger:
        spent = [r for r in ledger.find(ctx.spec.dataset, ctx.release_id)
                 if r.data_read and r.status in ("blocked", "failed")]
    return spent[-1] if spent else None


# ------------------------------------------------------------------------------------------- budget


def reserve_budget(ctx: RunContext) -> Any:
    """Plan the spend and reserve it in the ledger. Reads no data; raises BudgetExceededError."""
    from safesynth.privacy.ledger import Ledger

    spec = ctx.spec
    plan = plan_budget(spec)
    if plan.has("discovery"):
        from safesynth.privacy.discovery import check_discovery

        check_discovery(spec, plan.stage("discovery"))
    flush_pending()
    with Ledger.for_spec(spec) as ledger:
        reservation = ledger.reserve_for_spec(spec, release_id=ctx.release_id, plan=plan)
    ctx.report("plan.json").write_text(json.dumps(plan.to_dict()))
    log.info("reserved epsilon %.4g, delta %.3g for dataset %s (stages: %s)", plan.epsilon, plan.delta,
             spec.dataset, ", ".join(s.name for s in plan.stages))
    return reservation


def settle(ctx: RunContext, reservation: Any, *, status: str) -> None:
    """Close the reservation: refund if no data was read, otherwise record the spend (no refunds).

    Never raises for an unreachable ledger: the outcome is then written durably to
    ``$SAFESYNTH_HOME/pending/`` and committed by the next run (:func:`flush_pending`), so a release that
    is already visible is never reported as failed because the ledger was busy.
    """
    spends = load_account(ctx).spends if ctx.report("account.json").exists() else None
    record = {"reservation": _reservation_dict(reservation), "status": status,
              "data_read": ctx.path("data_read").exists(), "ledger": _ledger_url(ctx.spec),
              "spends": [s.to_dict() for s in spends] if spends else None}
    try:
        _apply_settlement(record)
    except LedgerError as exc:
        pending = safesynth_home() / "pending"
        pending.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = pending / f"{ctx.spec.dataset}--{ctx.release_id}--{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(record))
        log.error("ledger unavailable (%s): outcome %s kept in %s; the next run records it", exc, status, path)
        return
    log.info("ledger: release %s recorded as %s", ctx.release_id,
             status if record["data_read"] else "cancelled (no data was read)")


def _ledger_url(spec: ReleaseSpec) -> str:
    from safesynth.privacy.ledger_store import resolve_ledger_url

    return resolve_ledger_url(spec)  # may hold a password: the pending record is restricted (0700)


def _reservation_dict(reservation: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(reservation)


def _apply_settlement(record: dict[str, Any]) -> None:
    from safesynth.privacy.ledger import Ledger, Reservation

    reservation = Reservation(**record["reservation"])
    with Ledger.open(record["ledger"]) as ledger:
        if not record["data_read"]:
            ledger.cancel(reservation)
            return
        spends = [StageSpend.from_dict(s) for s in record["spends"]] if record["spends"] else None
        ledger.commit(reservation, status=record["status"], spends=spends)


def flush_pending() -> None:
    """Commit outcomes that an earlier run could not write to its ledger (see :func:`settle`)."""
    pending = safesynth_home() / "pending"
    for path in sorted(pending.glob("*.json")) if pending.is_dir() else ():
        try:
            _apply_settlement(json.loads(path.read_text()))
        except LedgerError as exc:
            if "already" not in str(exc):
                log.warning("ledger still unavailable for %s: %s", path.name, exc)
                continue
        path.unlink(missing_ok=True)
        log.info("ledger: recorded the pending outcome %s", path.name)


# --------------------------------------------------------------------------------------------- data


def ingest(ctx: RunContext, reservation: Any) -> Path:
    """Read the source into the private work directory (columns as read, not yet validated)."""
    from safesynth.io import read_source, source_display
    from safesynth.privacy.ledger import Ledger

    spec = ctx.spec
    # Mark before reading: from here on a crash counts as spent (no refund once data was touched).
    with Ledger.for_spec(spec) as ledger:
        ledger.mark_data_read(reservation)
    ctx.path("data_read").touch()
    log.info("reading %s source %s", spec.source_format, source_display(spec))
    try:
        raw = read_source(spec)
    except DataError as exc:
        _keep_restricted(ctx, "ingest.json", exc)
        raise
    # A pickle, not Parquet: JSON Lines columns may mix JSON types until validation has typed them (and
    # pyarrow's conversion errors quote cell values). It never leaves the private work directory.
    out = ctx.path("raw.pkl")
    raw.to_pickle(out)
    return out


def validate(ctx: RunContext, raw_path: Path) -> Path:
    """Check the rows against the declared columns (Great Expectations); repair or fail per the spec.

    With ``validation.on_invalid: repair`` (the default) each offending record is repaired or dropped on
    its own and the release goes on; which records were touched travels privately with the rows (for
    the DP count in :func:`fit`) and the exact figures go to the restricted ``validation.json``. Nothing
    logged or raised here holds a count of private rows.

    Raises:
        SchemaValidationError: a schema-level problem, or a failing rule with ``on_invalid: fail``
            (a failure that depends on single records: outside the DP guarantee).
    """
    from safesynth.io import source_display
    from safesynth.repair import REPAIRED_COLUMN
    from safesynth.validation import validate_frame

    spec = ctx.spec
    try:
        checked = validate_frame(pd.read_pickle(raw_path), spec,  # noqa: S301 - our own file
                                 source_name=source_display(spec))
    except DataError as exc:
        _keep_restricted(ctx, "validation.json", exc)
        raise
    out = ctx.path("clean.parquet")
    repair = checked.repair
    checked.frame.assign(**{REPAIRED_COLUMN: repair.touched[repair.kept]}).to_parquet(out, index=False)
    raw_path.unlink(missing_ok=True)
    ctx.report("validation.json").write_text(json.dumps(
        {"summary": checked.summary.to_dict(), **repair.restricted()}))
    log.info("validation done: %s checks of suite %s (on_invalid: %s)", checked.summary.evaluated,
             checked.summary.suite, spec.validation.on_invalid)
    return out


def _keep_restricted(ctx: RunContext, name: str, exc: DataError) -> None:
    """A data error's exact diagnostics (counts, lines) go to the restricted reports directory only."""
    if exc.restricted is not None:
        ctx.report(name).write_text(json.dumps({"error": str(exc), **exc.restricted}))
        exc.restricted = None  # the error travels on (CLI, Prefect state) without them


def split(ctx: RunContext, clean_path: Path) -> tuple[Path, Path]:
    """Split off the audit holdout before anything is fitted, one secret coin per record.

    The coins come from the operating system's CSPRNG, never from the spec's public seed, and each
    record's coin is independent of the others: removing or adding a record changes no other record's
    side (a seeded split indexed by row position would shift many rows between train and holdout).
    """
    spec = ctx.spec
    frame = pd.read_parquet(clean_path)
    rng = np.random.default_rng(secrets.randbits(128))
    is_holdout = rng.random(len(frame)) < spec.audit.holdout_fraction
    train, holdout = ctx.path("train.parquet"), ctx.path("holdout.parquet")
    frame[~is_holdout].to_parquet(train, index=False)
    frame[is_holdout].to_parquet(holdout, index=False)
    clean_path.unlink(missing_ok=True)
    log.info("split off a %.0f%% audit holdout with secret coins (never used for fitting)",
             100 * spec.audit.holdout_fraction)
    return train, holdout


def insert_canaries(ctx: RunContext, train_path: Path) -> Path:
    """Canary mode (``audit.canaries``): the rows the generator fits, with secret canaries among them.

    Each of the ``m`` canaries (drawn from the declared domains, :func:`safesynth.audit.canary.make_canaries`)
    joins the fitted rows by its own secret coin (probability 1/2, the OS CSPRNG); the canaries and their
    coins stay in the private work directory. Returns ``train_path`` itself when canary mode is off.
    The audit keeps using ``train_path`` (real members only).

    Privacy: canaries are made without the data, so every real record's guarantee is unchanged; they are
    extra records to the generator (its noisy counts include them).
    """
    m = ctx.spec.audit.canaries
    if m == 0:
        return train_path
    from safesynth.audit.canary import choose_inclusions, make_canaries
    from safesynth.repair import REPAIRED_COLUMN

    rng = np.random.default_rng(secrets.randbits(128))
    canaries = make_canaries(ctx.spec, m, rng)
    included = choose_inclusions(m, rng)
    canaries.assign(__included=included).to_parquet(ctx.path("canaries.parquet"), index=False)
    train = pd.read_parquet(train_path)
    extra = canaries[included]
    if REPAIRED_COLUMN in train:
        extra = extra.assign(**{REPAIRED_COLUMN: False})
    out = ctx.path("fit_rows.parquet")
    pd.concat([train, extra], ignore_index=True).to_parquet(out, index=False)
    log.info("canary mode: %d secret canaries drawn from the declared domains, each fitted with probability 1/2", m)
    return out


# ---------------------------------------------------------------------------------------- generator


def prewarm_sampling(ctx: RunContext) -> None:
    """Let a local cluster's workers import their modules while the data is read and the generator fits.

    Reads no data and never fails: an optimisation only (the sample stage starts workers anyway).
    """
    from safesynth.sampling.cluster import prewarm_workers

    try:
        if prewarm_workers(ctx.spec):
            log.info("sampling workers: importing their modules while the data is read and the generator fits")
    except Exception as exc:  # noqa: BLE001 - an optimisation only; the sample stage starts workers anyway
        log.debug("sampling workers not prewarmed (%s)", exc.__class__.__name__)


def fit(ctx: RunContext, train_path: Path, *, noise: NoiseSource | None = None) -> Fitted:
    """Fit the spec's generator with DP on the training rows; records the spend in ``account.json``.

    After DP discovery, records outside the resolved domains are repaired or dropped on their own
    (:mod:`safesynth.repair`), and the plan's ``repairs`` stage releases a noisy count of the records
    repaired or dropped here or in :func:`validate` (each record counted once).
    """
    from safesynth.repair import REPAIRED_COLUMN, repair_records

    spec = ctx.spec
    plan = plan_budget(spec)
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    noise = noise or default_noise()
    train = pd.read_parquet(train_path)
    validated = train.pop(REPAIRED_COLUMN).to_numpy(dtype=bool) if REPAIRED_COLUMN in train else None
    try:
        if plan.has("discovery"):
            from safesynth.privacy.discovery import discover_domains

            spec = discover_domains(train, spec=spec, stage=plan.stage("discovery"), account=account,
                                    noise=noise)
        schema = ResolvedSpec(spec)
        repair = repair_records(train, spec)
        train = repair.frame
        if plan.has("repairs"):
            _release_repairs(ctx, plan, repair.touched, validated, account=account, noise=noise)
        model = get_backend(spec.generator.kind).fit(train, spec=spec, plan=plan, account=account, noise=noise,
                                                     workdir=ctx.path("fit"))
    finally:
        save_account(ctx, account)  # whatever was spent before a failure stays recorded
    _check_within_plan(ctx.spec, account)
    model_dir = ctx.path("model")
    model.save(model_dir)
    log.info("fitted %s generator with DP: epsilon %.4g (%s), delta %.3g", spec.generator.kind, account.epsilon,
             account.accountant, account.delta)
    available = getattr(model, "rows_available", None)
    if available is not None:
        schema = ResolvedSpec(_within_rows(spec, int(available)))
    return Fitted(model_dir=model_dir, schema=schema)


def _within_rows(spec: ReleaseSpec, available: int) -> ReleaseSpec:
    """The spec sampling ``min(sampling.rows, available)`` rows in one shard (a generator with a fixed pool).

    A generator that makes its rows while fitting (``incontext``) bought ``available`` rows, a DP output;
    sampling more would repeat them. One shard publishes each pooled row once.
    """
    rows = min(spec.sampling.rows, available)
    if rows < 1:
        raise InternalError("a generator with a fixed pool returned no rows")
    if rows < spec.sampling.rows:
        log.info("the generator's budget bought %d of the %d rows asked for: publishing %d", available,
                 spec.sampling.rows, rows)
    sampling = spec.sampling.model_copy(update={"rows": rows, "shard_rows": max(rows, spec.sampling.shard_rows)})
    return spec.model_copy(update={"sampling": sampling})


def _release_repairs(ctx: RunContext, plan: BudgetPlan, touched: np.ndarray, validated: np.ndarray | None, *,
                     account: ReleaseAccount, noise: NoiseSource) -> None:
    """Release the DP count of records repaired or dropped (validation or domain repair, each once)."""
    from safesynth.repair import release_repair_count

    report = json.loads(ctx.report("validation.json").read_text()) if ctx.report("validation.json").exists() else {}
    by_validation = int(report.get("records_repaired", 0)) + int(report.get("records_dropped", 0))
    # A training record validation already touched is in ``by_validation``: count it once.
    by_domain = int((touched & ~validated).sum()) if validated is not None else int(touched.sum())
    noisy, spend = release_repair_count(by_validation + by_domain, stage=plan.stage("repairs"), noise=noise)
    account.add(spend)
    ctx.report("repairs.json").write_text(json.dumps(
        {"by_validation": by_validation, "by_domain_repair": by_domain, "noisy_count": noisy}))
    log.info("records repaired or dropped (DP count, epsilon %.3g): %d", spend.epsilon, noisy)


def _check_within_plan(spec: ReleaseSpec, account: ReleaseAccount) -> None:
    if account.epsilon > spec.privacy.epsilon * (1 + 1e-9) or account.basic_delta > spec.privacy.delta * (1 + 1e-9):
        raise PrivacyError(
            f"the generator spent epsilon {account.epsilon:.6g}, delta {account.basic_delta:.3g}; "
            f"more than the spec's ({spec.privacy.epsilon}, {spec.privacy.delta}): refusing to continue"
        )


def sample(ctx: RunContext, fitted: Fitted, *, progress: ProgressCallback | None = None) -> SampledRows:
    """Sample ``sampling.rows`` rows on Dask, one task per shard (post-processing: reads no private data).

    Workers write the parts straight into the run's scratch (its private work directory, or a per-run
    prefix of ``sampling.model_store``); the rows never pass through this process as one DataFrame. Every
    part is checked against the shard plan before the release goes on. See :mod:`safesynth.sampling`.
    """
    from tqdm.auto import tqdm

    from safesynth.sampling import Progress, sample_on_cluster, scratch_for

    spec = fitted.schema.spec
    scratch = scratch_for(spec, fitted.model_dir, Path(ctx.workspace.workdir), dataset=spec.dataset,
                          release_id=ctx.release_id)
    if scratch.remote_prefix is not None:  # removed by cleanup, whatever happens
        ctx.path(_REMOTE_SCRATCH).write_text(scratch.remote_prefix, encoding="utf-8")
    logged = [0]
    with tqdm(total=spec.sampling.rows, desc="sampling", unit="row", unit_scale=True, disable=None) as bar:

        def report(p: Progress) -> None:
            bar.update(p.rows_done - bar.n)
            bar.set_postfix_str(f"{p.shards_done}/{p.shards} shards", refresh=False)
            decile = 10 * p.shards_done // p.shards
            if decile > logged[0] or p.shards_done == p.shards:
                logged[0] = decile
                log.info("sampling: %d/%d shards, %d/%d rows", p.shards_done, p.shards, p.rows_done, p.rows)
            if progress is not None:
                progress(p)

        return sample_on_cluster(spec, fitted.model_dir, scratch, progress=report)


# ------------------------------------------------------------------------------------ output, audit


def save_account(ctx: RunContext, account: ReleaseAccount) -> None:
    ctx.report("account.json").write_text(json.dumps(
        {"delta": account.delta, "accountant": account.accountant, "spends": [s.to_dict() for s in account.spends]}))


def load_account(ctx: RunContext) -> ReleaseAccount:
    data = json.loads(ctx.report("account.json").read_text())
    account = ReleaseAccount(delta=data["delta"], accountant=data["accountant"])
    for s in data["spends"]:
        account.add(StageSpend.from_dict(s))
    return account


def write_output(ctx: RunContext, fitted: Fitted, synthetic: SampledRows) -> list[Path]:
    """Parquet files with the declared schema, the privacy parameters and the gate in the key-value metadata.

    Runs after the gate, so the release's epsilon includes the audit's spend; the audit figures written
    are the DP ones (``audit_dp.json``), never the restricted exact ones.
    """
    spec = fitted.schema.spec
    summary = load_account(ctx).summary()
    published = {name: json.loads(ctx.report(f"{name}.json").read_text())
                 for name in ("audit_dp", "gate") if ctx.report(f"{name}.json").exists()}
    metadata = {
        "dataset": spec.dataset, "release_id": ctx.release_id, "spec_digest": ctx.spec.digest(),
        "epsilon": repr(summary["epsilon"]), "delta": repr(summary["delta"]), "accountant": summary["accountant"],
        "generator": spec.generator.kind, "version": safesynth.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "secure_noise": str(summary["secure_noise"]).lower(),
        "privacy": {k: v for k, v in summary.items() if k != "stages"},
        "stages": [{k: s[k] for k in ("stage", "mechanism", "epsilon", "delta", "secure_noise")}
                   for s in summary["stages"]],
        **({"audit": published["audit_dp"]} if "audit_dp" in published else {}),
        **({"gate": published["gate"]} if "gate" in published else {}),
    }
    out_dir = ctx.path("output")
    shutil.rmtree(out_dir, ignore_errors=True)
    return write_parquet(synthetic.batches(), out_dir, spec=spec, metadata=metadata)


def audit(ctx: RunContext, fitted: Fitted, synthetic: SampledRows, train_path: Path, holdout_path: Path, *,
          noise: NoiseSource | None = None) -> NoisyAudit:
    """The DP audit (fitted rows vs holdout against the synthetic rows), charged to the plan.

    Returns only the published, noisy figures; the exact ones go to the restricted ``audit.json``, and the
    data owner's full report (every attack with a real reference, the risks, utility) to the restricted
    ``audit_report/`` (when ``audit.report``).

    Privacy:
        Spends the plan's ``audit`` stage (pure epsilon, add/remove one record; see
        :func:`safesynth.audit.membership.audit_membership`), recorded in ``account.json``. The owner's
        report is not DP and never leaves the restricted reports directory; it decides nothing.
    """
    spec = fitted.schema.spec
    stage = plan_budget(ctx.spec).stage("audit")  # the spec as written: the resolved one plans no discovery
    account = load_account(ctx)
    # What the synthetic rows were released under (an account without spends: the spec's claim).
    privacy = ctx.spec.privacy
    claimed = (account.epsilon, account.delta) if account.spends else (privacy.epsilon, privacy.delta)
    rows, train, holdout = synthetic.read(), pd.read_parquet(train_path), pd.read_parquet(holdout_path)
    try:
        published, diagnostics = audit_membership(
            rows, train, holdout, spec=spec, epsilon=stage.epsilon, account=account, noise=noise or default_noise(),
            claimed_epsilon=claimed[0], claimed_delta=claimed[1],
        )
    finally:
        save_account(ctx, account)  # whatever was spent before a failure stays recorded
    _check_within_plan(ctx.spec, account)
    empirical = _canary_audit(ctx, spec, rows, claimed)
    if empirical is not None:
        published = dataclasses.replace(published, empirical_epsilon=empirical)
    ctx.report("audit.json").write_text(json.dumps(diagnostics.to_dict()))  # restricted: exact figures
    ctx.report("audit_dp.json").write_text(json.dumps(published.to_dict()))
    if published.noisy_auc is None:
        log.warning("membership audit (DP, epsilon %.3g): the DP count leaves no rows per side; the AUC bound is "
                    "vacuous (1.0)", published.epsilon)
    else:
        log.info("membership audit (DP, epsilon %.3g): max over %d attacks, noisy AUC %.3f, 95%% upper bound %.3f, "
                 "%d rows per side (from a DP count); exact figures only in the restricted reports",
                 published.epsilon, len(published.attacks), published.noisy_auc, published.auc_upper,
                 published.rows_per_side)
    for figure in published.utility:
        log.info("utility (DP): %s %s (95%% bounds %.3f to %.3f)", figure.figure,
                 "-" if figure.value is None else f"{figure.value:.3f}", figure.lower, figure.upper)
    if spec.audit.report:
        _owner_report(ctx, spec, train, holdout, rows, claimed, empirical)
    return published


def _canary_audit(ctx: RunContext, spec: ReleaseSpec, synthetic: pd.DataFrame,
                  claimed: tuple[float, float]) -> float | None:
    """The canaries' empirical lower bound on epsilon (canary mode), or None.

    Privacy: a function of the synthetic rows (a DP output) and of the canaries and their coins, which are
    independent of the data: post-processing, so the bound may be published and gated on. The exact
    guesses go to the restricted ``canary.json``.
    """
    if not ctx.path("canaries.parquet").exists():
        return None
    from safesynth.audit.canary import audit_canaries

    frame = pd.read_parquet(ctx.path("canaries.parquet"))
    included = frame.pop("__included").to_numpy(dtype=bool)
    try:
        result = audit_canaries(synthetic, frame, included, spec=spec, delta=claimed[1], beta=CANARY_BETA)
    except Exception as exc:  # noqa: BLE001 - fail closed: the canary-epsilon gate blocks on NaN
        log.warning("canary audit failed (%s); the canary-epsilon gate fails closed", exc.__class__.__name__)
        return math.nan
    ctx.report("canary.json").write_text(json.dumps(result.to_dict()))
    log.info("canary audit: empirical lower bound on epsilon %.3f (claimed %.3f, %d canaries)",
             result.empirical_epsilon, claimed[0], result.canaries)
    return float(result.empirical_epsilon)


def _owner_report(ctx: RunContext, spec: ReleaseSpec, train: pd.DataFrame, holdout: pd.DataFrame,
                  synthetic: pd.DataFrame, claimed: tuple[float, float], empirical: float | None) -> None:
    """The data owner's HTML + JSON report, restricted.

    Whether it succeeds may depend on the data, so nothing about its outcome reaches the logs: what could
    not be measured, or why it failed, goes to the restricted ``audit_report_status.json``.
    """
    from safesynth.audit.report import write_report
    from safesynth.audit.suite import run_suite

    log.info("writing the data owner's audit report (exact figures) to the run's restricted reports")
    status: dict[str, Any] = {"zone": "restricted"}
    try:
        result = run_suite(spec=spec, train=train, holdout=holdout, synthetic=synthetic, epsilon=claimed[0],
                           delta=claimed[1], rng=np.random.default_rng(secrets.randbits(128)),
                           empirical_epsilon=empirical)
        write_report(result.report, ctx.report("audit_report"))
        status.update(written=True, not_measured=result.failed)
    except Exception as exc:  # noqa: BLE001 - the report is diagnostics: never fail a release after the spend
        status.update(written=False, error=exc.__class__.__name__)
    ctx.report("audit_report_status.json").write_text(json.dumps(status))


def gate(ctx: RunContext, audit: NoisyAudit | None) -> GateDecision:
    """Decide from the DP audit's figures only (post-processing)."""
    decision = evaluate_gates(ctx.spec.audit, audit)
    ctx.report("gate.json").write_text(json.dumps(decision.to_dict()))
    for g in decision.gates:
        (log.info if g.passed else log.warning)("gate %s", g.reason)
    return decision


# ------------------------------------------------------------------------------------------ publish


def build_manifest(ctx: RunContext, fitted: Fitted, files: list[Path], decision: GateDecision) -> dict[str, Any]:
    spec = fitted.schema.spec

    def read(name: str) -> Any:
        return json.loads(ctx.report(name).read_text())

    schema = arrow_schema(spec)
    return {
        "format": "safesynth.release/1",
        "dataset": spec.dataset,
        "release_id": ctx.release_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "safesynth_version": safesynth.__version__,
        "spec_digest": ctx.spec.digest(),  # the spec as written; discovered domains are in "schema"
        "generator": spec.generator.model_dump(mode="json"),
        "rows": spec.sampling.rows,
        "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "privacy": {**load_account(ctx).summary(), "plan": read("plan.json")},
        "validation": _validation_section(ctx),
        "audit": read("audit_dp.json"),  # noisy figures only; the exact ones stay restricted
        "gate": decision.to_dict(),
        "files": build_manifest_files(files),
    }


def _validation_section(ctx: RunContext) -> dict[str, Any]:
    """Spec constants (suite, rules, policy) and the DP count of repaired records; never exact figures."""
    summary = json.loads(ctx.report("validation.json").read_text())["summary"]
    count = next((s for s in load_account(ctx).spends if s.stage == "repairs"), None)
    return {**summary, "records_repaired_or_dropped": None if count is None else {
        "noisy_count": count.detail["noisy_count"], "mechanism": "discrete laplace", "epsilon": count.epsilon,
        "sensitivity": 1, "note": "differentially private count (stage `repairs`); exact figures are restricted"}}


def publish(ctx: RunContext, fitted: Fitted, files: list[Path], decision: GateDecision) -> PublishedRelease:
    """Publish atomically with the spec's ``publish.format``. Refuses without a passing gate decision."""
    if not decision.passed:
        raise GateFailedError(decision.reasons)
    spec = ctx.spec
    _warn_if_spec_changed(ctx)
    manifest = build_manifest(ctx, fitted, files, decision)
    return publisher_for(spec).publish(files, manifest, dataset=spec.dataset, release_id=ctx.release_id)


def _warn_if_spec_changed(ctx: RunContext) -> None:
    """The run uses the spec as loaded at start; say so if the file changed meanwhile."""
    try:
        current = load_spec(ctx.spec_path).digest()
    except SpecError:
        current = None
    if current != ctx.spec.digest():
        log.warning("spec file %s changed during the run; this release uses the spec as loaded at its start "
                    "(digest %s)", ctx.spec_path, ctx.spec.digest()[:12])


def is_published(ctx: RunContext) -> bool:
    """Whether this release id is visible at the target with this run's spec (after a publish error)."""
    try:
        return already_published(ctx) is not None
    except Exception:  # noqa: BLE001 - a target we cannot read shows nothing
        return False


def cleanup(ctx: RunContext, *, status: str) -> None:
    """End the attempt: remove its ``sampling.model_store`` scratch, and its work directory (private rows,
    models), which is quarantined instead after a blocked or failed release that read data (see
    :meth:`Workspace.finish <safesynth.workspace.Workspace.finish>`).

    Args:
        status: the release's outcome: published, already_published, blocked or failed.

    The restricted reports stay.
    """
    marker = ctx.path(_REMOTE_SCRATCH)
    try:
        if marker.exists():
            from safesynth.sampling.parts import remove_tree

            remove_tree(marker.read_text(encoding="utf-8").strip())
    except Exception as exc:  # noqa: BLE001 - cleanup must not mask the release's own outcome
        log.warning("could not remove the sampling scratch in sampling.model_store (%s)", exc.__class__.__name__)
    finally:
        ctx.workspace.finish(status, data_read=ctx.path("data_read").exists())
