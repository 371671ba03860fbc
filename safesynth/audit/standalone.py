"""Audit any synthetic table (ours or another tool's) against its training and holdout tables.

``safesynth audit SPEC --train T --holdout H --synthetic S`` runs what a release runs after sampling: the
DP audit and the spec's gates (:mod:`safesynth.audit.membership`, :mod:`safesynth.audit.gates`) and the
data owner's full suite (:mod:`safesynth.audit.suite`). Each table is read and validated like a release's
source (declared columns only; records that break a rule are repaired or dropped per the spec).

The caller is the data owner: the exact figures are printed and written to the report directory. The gate
decision comes from the same noisy figures a release would publish (noise from OpenDP), but nothing is
charged to a ledger: this audit publishes nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from safesynth.audit.gates import GateDecision, evaluate_gates
from safesynth.audit.membership import AuditDiagnostics, NoisyAudit, audit_membership
from safesynth.audit.suite import SuiteResult, run_suite
from safesynth.errors import SpecError
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import NoiseSource, default_noise
from safesynth.privacy.planner import plan_budget
from safesynth.spec import ReleaseSpec

__all__ = ["StandaloneAudit", "audit_tables", "read_table"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StandaloneAudit:
    """The DP figures and decision a release would publish, and the owner's exact suite."""

    published: NoisyAudit
    diagnostics: AuditDiagnostics
    decision: GateDecision
    suite: SuiteResult
    claimed_epsilon: float


def read_table(spec: ReleaseSpec, location: str) -> pd.DataFrame:
    """Read and validate ``location`` (a path or fsspec URL; CSV, Parquet or JSON Lines) as the spec's source.

    Raises:
        SpecError, DataError: as a release's ingest and validation would.
    """
    from safesynth.io import read_source, source_display
    from safesynth.validation import validate_frame

    as_source = spec.model_copy(update={"source": location, "format": None})
    return validate_frame(read_source(as_source), as_source, source_name=source_display(as_source)).frame


def audit_tables(
    spec: ReleaseSpec,
    *,
    train: str | Path,
    holdout: str | Path,
    synthetic: str | Path,
    claimed_epsilon: float | None = None,
    noise: NoiseSource | None = None,
) -> StandaloneAudit:
    """Audit ``synthetic`` against ``train`` (members) and ``holdout`` (non-members).

    Args:
        spec: the release spec whose columns, audit settings and budget plan apply (every domain declared).
        train: the rows the generator was fitted on.
        holdout: rows it never saw (same population).
        synthetic: the table to audit.
        claimed_epsilon: the epsilon the synthetic table claims (the AUC bound); default ``privacy.epsilon``.
        noise: the DP audit's noise (default OpenDP's).

    Raises:
        SpecError: a column has no declared domain (discovery needs a release).
    """
    unbounded = [name for name, col in spec.columns.items() if not col.bounded]
    if unbounded:
        raise SpecError(f"columns {unbounded} need declared domains to be audited outside a release")
    frames = {name: read_table(spec, str(path))  # relative paths: against the spec's directory
              for name, path in (("train", train), ("holdout", holdout), ("synthetic", synthetic))}
    claimed = spec.privacy.epsilon if claimed_epsilon is None else claimed_epsilon
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    published, diagnostics = audit_membership(
        frames["synthetic"], frames["train"], frames["holdout"], spec=spec,
        epsilon=plan_budget(spec).stage("audit").epsilon, account=account, noise=noise or default_noise(),
        claimed_epsilon=claimed, claimed_delta=spec.privacy.delta)
    suite = run_suite(spec=spec, train=frames["train"], holdout=frames["holdout"], synthetic=frames["synthetic"],
                      epsilon=claimed, delta=spec.privacy.delta, rng=np.random.default_rng(secrets.randbits(128)))
    return StandaloneAudit(published=published, diagnostics=diagnostics,
                           decision=evaluate_gates(spec.audit, published), suite=suite, claimed_epsilon=claimed)
