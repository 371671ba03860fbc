"""The release stages as plain functions: small typed inputs, paths or small results out.

Prefect tasks wrap these one by one (``tasks/``); :func:`safesynth.release.run_release` calls them in
order without Prefect. Private rows only ever live in the run's private work directory
(``$SAFESYNTH_HOME/runs/<release_id>``, mode 0700), which is removed when the run ends.

Privacy invariants enforced here, at the point of danger:
  * the budget is reserved in the ledger before the source is opened (:func:`reserve_budget`), and the
    reservation is marked "data read" *before* the first byte is read (:func:`ingest`);
  * the holdout is split off before anything is fitted and is never passed to a generator;
  * publishing requires a passing gate decision (:func:`publish`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import safesynth
from safesynth.audit import AttackResult, GateDecision, dcr_attack, evaluate_gates
from safesynth.errors import GateFailedError, PrivacyError
from safesynth.generator import get_backend
from safesynth.output import write_parquet
from safesynth.privacy.accountant import ReleaseAccount, StageSpend
from safesynth.privacy.noise import NoiseSource, default_noise
from safesynth.privacy.planner import plan_budget
from safesynth.publish import PublishedRelease, build_manifest_files, find_published, publish_release
from safesynth.schema import arrow_schema
from safesynth.spec import ReleaseSpec, load_spec

log = logging.getLogger("safesynth")

__all__ = [
    "RunContext",
    "audit",
    "fit",
    "gate",
    "ingest",
    "new_release_id",
    "prepare",
    "publish",
    "reserve_budget",
    "sample",
    "settle",
    "split",
    "validate",
    "write_output",
]


def safesynth_home() -> Path:
    return Path(os.environ.get("SAFESYNTH_HOME", ".safesynth")).resolve()


def new_release_id(dataset: str) -> str:
    """``<dataset>-<UTC time>-<random>``: unique, sortable, safe in paths and object keys."""
    return f"{dataset}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Everything a stage needs to find its inputs; small and picklable (passed between tasks)."""

    spec_path: str
    release_id: str
    workdir: str

    @property
    def spec(self) -> ReleaseSpec:
        return load_spec(self.spec_path)

    def path(self, name: str) -> Path:
        return Path(self.workdir) / name


def prepare(spec_path: str | os.PathLike[str], release_id: str | None = None) -> RunContext:
    """Validate the spec (no data read) and create the private work directory."""
    spec = load_spec(spec_path)
    release_id = release_id or new_release_id(spec.dataset)
    if not release_id or "/" in release_id or release_id.startswith("."):
        from safesynth.errors import SpecError

        raise SpecError(f"`release_id` ({release_id!r}) must be a non-empty name without '/' or a leading '.'")
    workdir = safesynth_home() / "runs" / release_id
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(workdir, 0o700)
    return RunContext(spec_path=str(Path(spec_path).resolve()), release_id=release_id, workdir=str(workdir))


def already_published(ctx: RunContext) -> dict[str, Any] | None:
    spec = ctx.spec
    return find_published(spec.target_uri, spec.dataset, ctx.release_id, spec.publish.storage_options)


# ------------------------------------------------------------------------------------------- budget


def reserve_budget(ctx: RunContext) -> Any:
    """Plan the spend and reserve it in the ledger. Reads no data; raises BudgetExceededError."""
    from safesynth.privacy.ledger import Ledger

    spec = ctx.spec
    plan = plan_budget(spec)
    if plan.has("discovery"):
        from safesynth.privacy.discovery import check_discovery

        check_discovery(spec, plan.stage("discovery"))
    with Ledger.for_spec(spec) as ledger:
        reservation = ledger.reserve(
            dataset=spec.dataset, release_id=ctx.release_id, spec_digest=spec.digest(),
            epsilon=plan.epsilon, delta=plan.delta, lifetime_epsilon=spec.privacy.lifetime_epsilon,
            lifetime_delta=spec.privacy.effective_lifetime_delta, accountant=plan.accountant,
        )
    ctx.path("plan.json").write_text(json.dumps(plan.to_dict()))
    log.info("reserved epsilon %.4g, delta %.3g for dataset %s (stages: %s)", plan.epsilon, plan.delta,
             spec.dataset, ", ".join(s.name for s in plan.stages))
    return reservation


def settle(ctx: RunContext, reservation: Any, *, status: str) -> None:
    """Close the reservation: refund if no data was read, otherwise record the spend (no refunds)."""
    from safesynth.privacy.ledger import Ledger

    spends = load_account(ctx).spends if ctx.path("account.json").exists() else None
    with Ledger.for_spec(ctx.spec) as ledger:
        if not ctx.path("data_read").exists():
            ledger.cancel(reservation)
            log.info("no data was read: budget reservation released")
            return
        ledger.commit(reservation, status=status, spends=spends or None)
    log.info("ledger: release %s recorded as %s", ctx.release_id, status)


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
    raw = read_source(spec)
    out = ctx.path("raw.parquet")
    raw.to_parquet(out, index=False)
    return out


def validate(ctx: RunContext, raw_path: Path) -> tuple[Path, dict[str, Any]]:
    """Great Expectations suite from the declared columns; raises SchemaValidationError."""
    from safesynth.io import source_display
    from safesynth.validation import validate_frame

    spec = ctx.spec
    typed, summary = validate_frame(pd.read_parquet(raw_path), spec, source_name=source_display(spec))
    out = ctx.path("clean.parquet")
    typed.to_parquet(out, index=False)
    raw_path.unlink(missing_ok=True)
    summary_dict = summary.to_dict()
    ctx.path("validation.json").write_text(json.dumps(summary_dict))
    log.info("validation passed: %s checks of suite %s", summary.evaluated, summary.suite)
    return out, summary_dict


def split(ctx: RunContext, clean_path: Path) -> tuple[Path, Path]:
    """Split off the audit holdout (seeded) before anything is fitted."""
    spec = ctx.spec
    frame = pd.read_parquet(clean_path)
    rng = np.random.default_rng([spec.sampling.seed, 1])
    is_holdout = rng.random(len(frame)) < spec.audit.holdout_fraction
    train, holdout = ctx.path("train.parquet"), ctx.path("holdout.parquet")
    frame[~is_holdout].to_parquet(train, index=False)
    frame[is_holdout].to_parquet(holdout, index=False)
    clean_path.unlink(missing_ok=True)
    log.info("split off a %.0f%% audit holdout (never used for fitting)", 100 * spec.audit.holdout_fraction)
    return train, holdout


# ---------------------------------------------------------------------------------------- generator


def fit(ctx: RunContext, train_path: Path, *, noise: NoiseSource | None = None) -> Path:
    """Fit the spec's generator with DP on the training rows; records the spend in ``account.json``."""
    spec = ctx.spec
    plan = plan_budget(spec)
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    noise = noise or default_noise()
    train = pd.read_parquet(train_path)
    if plan.has("discovery"):
        from safesynth.privacy.discovery import discover_domains

        spec = discover_domains(train, spec=spec, stage=plan.stage("discovery"), account=account, noise=noise)
        ctx.path("resolved_spec.json").write_text(spec.model_dump_json())
    backend = get_backend(spec.generator.kind)
    try:
        model = backend.fit(train, spec=spec, plan=plan, account=account, noise=noise, workdir=ctx.path("fit"))
    finally:
        save_account(ctx, account)  # whatever was spent before a failure stays recorded
    model_dir = ctx.path("model")
    model.save(model_dir)
    log.info("fitted %s generator with DP: epsilon %.4g (%s), delta %.3g", spec.generator.kind, account.epsilon,
             account.accountant, account.delta)
    if account.epsilon > spec.privacy.epsilon * (1 + 1e-9) or account.basic_delta > spec.privacy.delta * (1 + 1e-9):
        raise PrivacyError(
            f"the generator spent epsilon {account.epsilon:.6g}, delta {account.basic_delta:.3g}; "
            f"more than the spec's ({spec.privacy.epsilon}, {spec.privacy.delta}): refusing to continue"
        )
    return model_dir


def resolved_spec(ctx: RunContext) -> ReleaseSpec:
    """The spec with DP-discovered domains filled in (the spec itself when nothing was discovered)."""
    path = ctx.path("resolved_spec.json")
    return ReleaseSpec.model_validate_json(path.read_text()) if path.exists() else ctx.spec


def shard_plan(spec: ReleaseSpec) -> list[tuple[int, int, int]]:
    """``(shard, rows, seed)`` per shard: fixed by the spec, so a retried shard is identical."""
    rows, per = spec.sampling.rows, spec.sampling.shard_rows
    shards = []
    for i, start in enumerate(range(0, rows, per)):
        seed = int(np.random.SeedSequence([spec.sampling.seed, 2, i]).generate_state(1)[0])
        shards.append((i, min(per, rows - start), seed))
    return shards


def sample(ctx: RunContext, model_dir: Path) -> Path:
    """Sample the spec's number of rows, shard by shard (post-processing: reads no private data)."""
    spec = resolved_spec(ctx)
    model = get_backend(spec.generator.kind).load(model_dir, spec=spec)
    from tqdm.auto import tqdm

    shards = shard_plan(spec)
    frames = [model.sample(rows, seed=seed)
              for _, rows, seed in tqdm(shards, desc="sampling", unit="shard", disable=None)]
    out = ctx.path("synthetic.parquet")
    pd.concat(frames, ignore_index=True).to_parquet(out, index=False)
    log.info("sampled %d rows in %d shards", spec.sampling.rows, len(frames))
    return out


# ------------------------------------------------------------------------------------ output, audit


def save_account(ctx: RunContext, account: ReleaseAccount) -> None:
    ctx.path("account.json").write_text(json.dumps(
        {"delta": account.delta, "accountant": account.accountant, "spends": [s.to_dict() for s in account.spends]}))


def load_account(ctx: RunContext) -> ReleaseAccount:
    data = json.loads(ctx.path("account.json").read_text())
    account = ReleaseAccount(delta=data["delta"], accountant=data["accountant"])
    for s in data["spends"]:
        account.add(StageSpend.from_dict(s))
    return account


def write_output(ctx: RunContext, synthetic_path: Path) -> list[Path]:
    """Parquet files with the declared schema and the privacy parameters in the key-value metadata."""
    spec = resolved_spec(ctx)
    summary = load_account(ctx).summary()
    frame = pd.read_parquet(synthetic_path)
    per = spec.publish.rows_per_file
    chunks = [frame.iloc[i : i + per] for i in range(0, len(frame), per)] or [frame]
    metadata = {
        "dataset": spec.dataset, "release_id": ctx.release_id, "spec_digest": ctx.spec.digest(),
        "epsilon": repr(summary["epsilon"]), "delta": repr(summary["delta"]), "accountant": summary["accountant"],
        "generator": spec.generator.kind, "version": safesynth.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "secure_noise": str(summary["secure_noise"]).lower(),
        "privacy": {k: v for k, v in summary.items() if k != "stages"},
        "stages": [{k: s[k] for k in ("stage", "mechanism", "epsilon", "delta", "secure_noise")}
                   for s in summary["stages"]],
    }
    out_dir = ctx.path("output")
    shutil.rmtree(out_dir, ignore_errors=True)
    return write_parquet(chunks, out_dir, spec=spec, metadata=metadata)


def audit(ctx: RunContext, synthetic_path: Path, train_path: Path, holdout_path: Path) -> AttackResult:
    """Membership inference: fitted rows vs holdout rows against the synthetic rows."""
    spec = resolved_spec(ctx)
    result = dcr_attack(
        pd.read_parquet(synthetic_path), pd.read_parquet(train_path), pd.read_parquet(holdout_path),
        spec=spec, low_fpr=spec.audit.low_fpr, max_rows=spec.audit.max_audit_rows, seed=spec.sampling.seed,
    )
    ctx.path("audit.json").write_text(json.dumps(result.to_dict()))
    log.info("membership attack (%s): AUC %.3f, 95%% upper bound %.3f", result.attack, result.auc, result.auc_upper)
    return result


def gate(ctx: RunContext, attack: AttackResult | None) -> GateDecision:
    decision = evaluate_gates(ctx.spec.audit, attack)
    ctx.path("gate.json").write_text(json.dumps(decision.to_dict()))
    for g in decision.gates:
        (log.info if g.passed else log.warning)("gate %s", g.reason)
    return decision


# ------------------------------------------------------------------------------------------ publish


def build_manifest(ctx: RunContext, files: list[Path], decision: GateDecision) -> dict[str, Any]:
    spec = resolved_spec(ctx)
    read = lambda name: json.loads(ctx.path(name).read_text())  # noqa: E731
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
        "validation": read("validation.json"),
        "audit": {"attacks": [read("audit.json")], "differentially_private": False,
                  "note": "attack figures are computed on private rows and are not covered by the DP guarantee"},
        "gate": decision.to_dict(),
        "files": build_manifest_files(files),
    }


def publish(ctx: RunContext, files: list[Path], decision: GateDecision) -> PublishedRelease:
    """Publish atomically. Refuses without a passing gate decision."""
    if not decision.passed:
        raise GateFailedError(decision.reasons)
    spec = ctx.spec
    manifest = build_manifest(ctx, files, decision)
    return publish_release(files, manifest, target=spec.target_uri, dataset=spec.dataset,
                           release_id=ctx.release_id, storage_options=spec.publish.storage_options)


def cleanup(ctx: RunContext, *, keep: tuple[str, ...] = ("audit.json", "gate.json", "plan.json", "account.json",
                                                         "validation.json")) -> None:
    """Remove private rows and models from the work directory; keep small, non-row artifacts."""
    workdir = Path(ctx.workdir)
    if not workdir.exists():
        return
    for entry in workdir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
