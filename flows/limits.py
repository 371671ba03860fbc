"""One release at a time per dataset: a Prefect global concurrency limit named after the dataset.

The limit ``safesynth-<dataset>`` has one slot. The release flow holds it for the whole release, so two
runs of one dataset (two schedules, a schedule and a manual run, two workers) never overlap; the second
waits. The ledger already refuses a second *attempt of the same release id* while one is in flight; the
limit also serialises different ids of one dataset, so runs queue instead of racing for the budget.

Prefect 3.8.8 does not enforce a limit that does not exist (``concurrency()`` logs a warning and runs
unlimited, and the server no longer creates missing limits), so :func:`ensure_limit` creates it, or puts
it back to one active slot, before every run and at deploy time; the flow then acquires it with
``strict=True``.

A run waits for the slot at most ``$SAFESYNTH_SLOT_WAIT_SECONDS`` (default 6 hours), then fails with one
line, having read and spent nothing. A run that dies while holding the slot gives it back when its lease
expires (it is renewed while the release runs) on a server; Prefect's embedded API does not expire leases,
and a restarted server may forget them, so after a ``kill -9`` the next run says that it is waiting and how
to free the slot: ``prefect global-concurrency-limit update safesynth-<dataset> --active-slots 0``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from safesynth.errors import SafeSynthError, SpecError

log = logging.getLogger("safesynth")

__all__ = ["ensure_limit", "limit_name", "one_release_at_a_time"]

#: Seconds a run's hold on its dataset's slot lasts without renewal (renewed at 75% while it runs).
LEASE_SECONDS = 300.0
#: Seconds a run waits for its dataset's slot, unless ``$SAFESYNTH_SLOT_WAIT_SECONDS`` says otherwise.
SLOT_WAIT_SECONDS = 6 * 3600.0


def slot_wait_seconds() -> float:
    """``$SAFESYNTH_SLOT_WAIT_SECONDS`` (positive), else :data:`SLOT_WAIT_SECONDS`. Raises SpecError."""
    raw = os.environ.get("SAFESYNTH_SLOT_WAIT_SECONDS")
    if raw is None:
        return SLOT_WAIT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SpecError(f"`SAFESYNTH_SLOT_WAIT_SECONDS` ({raw!r}) must be a positive number of seconds")
    return value


def limit_name(dataset: str) -> str:
    """The global concurrency limit of ``dataset``: ``safesynth-<dataset>``."""
    return f"safesynth-{dataset}"


def ensure_limit(dataset: str) -> str:
    """Create the dataset's limit with one slot, or set an existing one back to one active slot.

    Returns the limit's name. Logs what it created or changed; an unchanged limit is silent.
    """
    name = limit_name(dataset)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                log.info("created global concurrency limit %s (1 slot: one release of %s at a time)", name,
                         dataset)
            except ObjectAlreadyExists:  # another run created it first
                pass
            return name
        if existing.limit != 1 or not existing.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
            log.warning("global concurrency limit %s had limit %s (active: %s); set back to 1 active slot",
                        name, existing.limit, existing.active)
    return name


@contextmanager
def one_release_at_a_time(dataset: str) -> Iterator[None]:
    """Hold the dataset's one slot for the body; waits while another release of it holds the slot.

    Raises:
        SafeSynthError: the slot stayed taken for :func:`slot_wait_seconds` (exit 1; nothing was read or spent).
    """
    name, wait = ensure_limit(dataset), slot_wait_seconds()
    with get_client(sync_client=True) as client:
        busy = client.read_global_concurrency_limit_by_name(name).active_slots >= 1
    if busy:
        log.warning("waiting up to %.0f s for another release of %s to finish (global concurrency limit %s); if "
                    "none is running, free the slot: prefect global-concurrency-limit update %s --active-slots 0",
                    wait, dataset, name, name)
    held = ExitStack()
    try:  # only the wait is a timeout of ours; a TimeoutError inside the release is the release's
        held.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS,
                                       timeout_seconds=wait))
    except TimeoutError as exc:
        raise SafeSynthError(f"another release of dataset `{dataset}` held its slot for {wait:.0f} s (global "
                             f"concurrency limit {name}); nothing was read or spent. If none is running, free it: "
                             f"prefect global-concurrency-limit update {name} --active-slots 0") from exc
    with held:
        yield
