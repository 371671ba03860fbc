"""Exceptions raised by safesynth.

Every error a user can act on derives from :class:`SafeSynthError` and carries a one-line message in
the shape `` `name` (value) must be constraint `` or "what failed: why; what to do". Messages never
contain values of the private data: they name files, columns and rules. A :class:`DataError` raised
after the source was read carries no exact count or location of private rows in its message either;
those go in its ``restricted`` mapping, which the stage that catches it writes to the run's restricted
reports directory (owner only) and then clears.

Hierarchy::

    SafeSynthError                      exit code 1 unless stated
    +-- SpecError                       exit 2: the release spec is invalid (names file and key path)
    |   +-- LifetimeMismatchError       the spec's lifetime budget differs from the ledger's
    |   +-- ReleaseIdConflictError      the release id was already used for a different spec
    |   +-- SourceMismatchError         the source is budgeted under another dataset name, or vice versa
    +-- DataError                       exit 2: the source cannot be read or does not match the spec
    |   +-- SourceReadError             the file is missing, unreadable, empty, malformed or mis-encoded
    |   +-- SchemaValidationError       declared rules failed (names the rules; never values or counts)
    +-- PrivacyError                    exit 1: a privacy invariant would be violated
    |   +-- BudgetExceededError         exit 3: the planned spend does not fit the remaining budget
    |   +-- LedgerError                 the budget ledger cannot be read or written
    |       +-- ReleaseInProgressError  another attempt of the same release id holds its reservation
    |       +-- RefundRefusedError      exit 3: a reservation that read private data cannot be refunded
    +-- GeneratorError                  exit 1: fitting or sampling the generator failed
    +-- GateFailedError                 exit 3: an audit gate blocked the release (per-gate reasons)
    +-- PublishError                    exit 1: the release could not be published atomically
    +-- InternalError                   exit 1: an internal invariant was violated (a bug; never ``assert``)
    +-- AlreadyPublishedError           exit 0: the release is already published; nothing to do
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AlreadyPublishedError",
    "BudgetExceededError",
    "ClusterError",
    "DataError",
    "GateFailedError",
    "GeneratorError",
    "InternalError",
    "LedgerError",
    "LifetimeMismatchError",
    "PrivacyError",
    "PublishError",
    "ReleaseIdConflictError",
    "RefundRefusedError",
    "ReleaseInProgressError",
    "SafeSynthError",
    "SamplingError",
    "SchemaValidationError",
    "SourceMismatchError",
    "SourceReadError",
    "SpecError",
]


class SafeSynthError(Exception):
    """Base class of every error safesynth raises on purpose."""

    exit_code: int = 1


class SpecError(SafeSynthError):
    """The release spec is invalid."""

    exit_code = 2


class LifetimeMismatchError(SpecError):
    """The spec's lifetime budget differs from the one recorded for the dataset (change it explicitly)."""


class ReleaseIdConflictError(SpecError):
    """The release id was already used by the ledger for a release of a different spec."""


class SourceMismatchError(SpecError):
    """The spec's source is bound in the ledger to another dataset, or its dataset to another source.

    The lifetime budget belongs to the data, not to the name a spec gives it: renaming ``dataset`` must
    not reset it. An operator moves a binding with ``safesynth budget rebind``.
    """


class DataError(SafeSynthError):
    """The private source cannot be used as declared.

    Args:
        message: the one-line message (no values, counts or line numbers of private rows).
        restricted: exact diagnostics (counts, line numbers) for the data owner only; written to the
            restricted reports directory by the stage that catches the error, never shown.
    """

    exit_code = 2

    def __init__(self, message: str, *, restricted: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.restricted: dict[str, Any] | None = None if restricted is None else dict(restricted)


class SourceReadError(DataError):
    """The source is missing, unreadable, empty, malformed or wrongly encoded."""


class SchemaValidationError(DataError):
    """The source violates the declared schema.

    Args:
        failures: one entry per failing rule: ``(column, rule)``. How many rows fail is private: it
            goes in ``restricted`` only.
        source: a display name of the source (path or URL without credentials).
        restricted: exact diagnostics for the restricted reports directory (see :class:`DataError`).
    """

    def __init__(self, failures: Sequence[tuple[str, str]], source: str, *,
                 restricted: Mapping[str, Any] | None = None) -> None:
        self.failures = [(column, rule) for column, rule in failures]
        self.source = source
        parts = [f"column `{column}` {rule}" for column, rule in self.failures]
        super().__init__(f"{source} does not match the spec: " + "; ".join(parts), restricted=restricted)


class PrivacyError(SafeSynthError):
    """A privacy invariant would be violated."""


class BudgetExceededError(PrivacyError):
    """The release's planned privacy spend does not fit in the dataset's remaining budget."""

    exit_code = 3

    def __init__(self, dataset: str, requested: float, remaining: float, *, what: str = "epsilon") -> None:
        self.dataset = dataset
        self.requested = requested
        self.remaining = remaining
        super().__init__(
            f"privacy budget exhausted for dataset `{dataset}`: this release needs {what} {requested:.4g} "
            f"but only {remaining:.4g} remains of the lifetime budget"
        )


class LedgerError(PrivacyError):
    """The budget ledger cannot be read or written."""


class ReleaseInProgressError(LedgerError):
    """Another attempt of the same release id holds a reservation (running, or stale on another host)."""


class RefundRefusedError(LedgerError):
    """A refund was asked for a reservation that already read private data: its budget stays spent."""

    exit_code = 3


class GeneratorError(SafeSynthError):
    """Fitting or sampling a generator failed."""


class SamplingError(GeneratorError):
    """Distributed sampling failed: a shard kept killing workers, or a part is missing or altered.

    Nothing is published; the parts written so far are removed.
    """


class ClusterError(SpecError):
    """The Dask cluster cannot run the release as configured: unreachable, no workers, no GPU (exit code 2)."""


class GateFailedError(SafeSynthError):
    """An audit gate blocked the release."""

    exit_code = 3

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("release blocked: " + "; ".join(self.reasons))


class PublishError(SafeSynthError):
    """The release could not be published atomically."""


class InternalError(SafeSynthError):
    """An internal invariant does not hold: a bug in safesynth, not in the input.

    Raised instead of ``assert`` wherever a privacy or accounting invariant is checked, so the check
    survives ``python -O`` (Tumult Analytics' ``AnalyticsInternalError`` plays the same role).
    """


class AlreadyPublishedError(SafeSynthError):
    """The release id is already published with this spec: nothing to do (exit code 0).

    Raised by the ledger when a new attempt of a published release is reserved; callers normally ask
    first (``Ledger.already_published``) and report "already published" without an error.
    """

    exit_code = 0
