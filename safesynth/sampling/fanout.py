"""Sampling fanned out on Dask: one task per shard, parts written by the workers, checked by the client.

Failure model:

* A worker that dies mid-shard (killed, out of memory) costs only that shard: the scheduler recomputes it
  on another worker. The recomputed shard is identical (:mod:`safesynth.sampling.shards`) and replaces
  its part under the same name, so the release has exactly ``sampling.rows`` rows, no gaps and no
  duplicates, and equals an undisturbed run.
* A shard that kills ``distributed.scheduler.allowed-failures`` workers (default 3) fails the stage with
  :class:`~safesynth.errors.SamplingError`; the parts written so far are removed.
* An exception inside a shard is retried twice (sampling is deterministic post-processing; no noise is
  drawn on workers), then fails the stage.
* No worker able to run a shard (none alive, or none with a GPU when ``sampling.gpu``) for
  ``sampling.worker_wait_s`` fails the stage with :class:`~safesynth.errors.ClusterError` instead of
  waiting forever.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safesynth.errors import ClusterError, SafeSynthError, SamplingError
from safesynth.sampling.cluster import ClusterPlan, check_workers, open_client, plan_cluster
from safesynth.sampling.parts import Part, SampledRows, is_remote, part_name, remove_tree, verify_parts
from safesynth.sampling.shards import ModelPlugin, ShardJob, run_shard, shard_plan
from safesynth.spec import ReleaseSpec

__all__ = ["Progress", "ProgressCallback", "Scratch", "sample_on_cluster", "scratch_for"]

log = logging.getLogger("safesynth")

#: How often the client wakes up to check that some worker can still run the pending shards.
_POLL_S = 2.0
#: Retries of a shard that raised (not of one whose worker died: that is Dask's allowed-failures).
SHARD_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Progress:
    """Finished shards and rows so far (public: the shard plan comes from the spec)."""

    shards_done: int
    shards: int
    rows_done: int
    rows: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scratch:
    """Where the model and the parts go for workers to read and write: local directories or a store prefix."""

    model_uri: str
    parts_uri: str
    remote_prefix: str | None  # set when the scratch lives in ``sampling.model_store`` (removed at cleanup)


def scratch_for(spec: ReleaseSpec, model_dir: Path, workdir: Path, *, dataset: str, release_id: str) -> Scratch:
    """The run's scratch: its private work directory, or a per-run prefix of ``sampling.model_store``."""
    store = spec.sampling.model_store
    if store is None:
        return Scratch(model_uri=str(model_dir), parts_uri=str(workdir / "parts"), remote_prefix=None)
    prefix = f"{store.rstrip('/')}/{dataset}/{release_id}/{secrets.token_hex(6)}"
    if not is_remote(prefix):
        prefix = str(Path(prefix.removeprefix("file://")).resolve())
    return Scratch(model_uri=f"{prefix}/model", parts_uri=f"{prefix}/parts", remote_prefix=prefix)


def _publish_model(model_dir: Path, scratch: Scratch) -> None:
    """Copy the fitted model to the scratch when the workers read it from a store."""
    if str(model_dir) == scratch.model_uri:
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(scratch.model_uri)
    fs.makedirs(root, exist_ok=True)
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root}/{path.relative_to(model_dir).as_posix()}")


def sample_on_cluster(
    spec: ReleaseSpec,
    model_dir: Path,
    scratch: Scratch,
    *,
    progress: ProgressCallback | None = None,
    plan: ClusterPlan | None = None,
) -> SampledRows:
    """Sample ``sampling.rows`` rows on Dask, one task per shard; return the checked parts.

    Args:
        spec: the resolved spec (every domain known); sent to the workers.
        model_dir: the fitted generator saved by the fit stage.
        scratch: where workers read the model and write the parts (:func:`scratch_for`).
        progress: called after each finished shard.
        plan: the cluster to use; default :func:`~safesynth.sampling.cluster.plan_cluster`.

    Raises:
        ClusterError: the cluster cannot run the shards (exit code 2).
        SamplingError: a shard failed for good, or a part is missing or altered; parts are removed.
    """
    shards = shard_plan(spec)
    plan = plan or plan_cluster(spec, shards=len(shards))
    _publish_model(model_dir, scratch)
    if not is_remote(scratch.parts_uri):  # workers write into it but never create it (see write_bytes)
        Path(scratch.parts_uri).mkdir(parents=True, exist_ok=True, mode=0o700)
    run_token = secrets.token_hex(6)
    resources = {"GPU": 1} if spec.sampling.gpu else None
    try:
        with open_client(plan) as client:
            _wait_for_workers(client, spec)
            plugin = ModelPlugin(f"safesynth-model-{run_token}", scratch.model_uri, spec,
                                 torch_threads=plan.torch_threads)
            try:
                client.register_plugin(plugin)
            except SafeSynthError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a worker raised while loading
                raise SamplingError(f"the workers could not load the fitted model from {scratch.model_uri} "
                                    f"({exc.__class__.__name__}); do they all see it? (sampling.model_store)") from exc
            try:
                parts = _fan_out(client, spec, scratch, shards, run_token, resources, progress)
            finally:
                try:
                    client.unregister_worker_plugin(plugin.name)
                except Exception:  # noqa: BLE001 - a closing cluster may already have dropped it
                    log.debug("could not unregister worker plugin %s", plugin.name)
        verify_parts(parts, {s.index: s.rows for s in shards})
    except BaseException:
        remove_tree(scratch.parts_uri)
        raise
    ordered = tuple(sorted(parts, key=lambda p: p.shard))
    log.info("sampled %d rows in %d parts", sum(p.rows for p in ordered), len(ordered))
    return SampledRows(ordered)


def _wait_for_workers(client: Any, spec: ReleaseSpec) -> None:
    """Wait up to ``sampling.worker_wait_s`` for a first worker; then require a GPU worker when asked."""
    if not client.scheduler_info(n_workers=-1).get("workers"):
        log.info("waiting up to %.0f s for a Dask worker", spec.sampling.worker_wait_s)
        try:
            client.wait_for_workers(1, timeout=spec.sampling.worker_wait_s)
        except TimeoutError as exc:
            raise ClusterError(f"the Dask cluster had no worker for {spec.sampling.worker_wait_s:.0f} s "
                               "(sampling.worker_wait_s)") from exc
    check_workers(client, gpu=spec.sampling.gpu)


def _fan_out(client: Any, spec: ReleaseSpec, scratch: Scratch, shards: list[Any], run_token: str,
             resources: dict[str, int] | None, progress: ProgressCallback | None) -> list[Part]:
    from distributed import wait
    from distributed.scheduler import KilledWorker

    futures = {}
    for shard in shards:
        job = ShardJob(shard=shard, spec=spec, model_uri=scratch.model_uri,
                       part_uri=f"{scratch.parts_uri}/{part_name(shard.index)}")
        future = client.submit(run_shard, job, key=f"safesynth-shard-{run_token}-{shard.index:05d}", pure=False,
                               retries=SHARD_RETRIES, resources=resources)
        futures[future] = shard
    pending = set(futures)
    parts: list[Part] = []
    rows_done = 0
    stalled_since: float | None = None
    try:
        while pending:
            try:
                finished, not_done = wait(  # type: ignore[no-untyped-call]
                    list(pending), timeout=_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished, not_done = set(), pending
            pending = set(not_done)
            for future in finished:
                shard = futures[future]
                try:
                    part: Part = future.result()
                except KilledWorker as exc:
                    raise SamplingError(
                        f"shard {shard.index} was lost with every worker that ran it (it crashes its worker, "
                        "or shared one with a shard that does; distributed.scheduler.allowed-failures); "
                        "nothing was published") from exc
                except SafeSynthError:
                    raise
                except Exception as exc:  # noqa: BLE001 - raised inside the shard on a worker
                    raise SamplingError(f"shard {shard.index} failed on its worker ({exc.__class__.__name__}) "
                                        f"after {SHARD_RETRIES} retries; nothing was published") from exc
                parts.append(part)
                rows_done += part.rows
                if progress is not None:
                    progress(Progress(len(parts), len(shards), rows_done, spec.sampling.rows))
            if finished:
                stalled_since = None
            elif pending:
                stalled_since = _check_stall(client, spec, stalled_since)
    finally:
        if pending:
            client.cancel(list(pending), force=True)
    return parts


def _check_stall(client: Any, spec: ReleaseSpec, since: float | None) -> float | None:
    """Track how long no worker could run the pending shards; raise once that exceeds the wait."""
    try:
        check_workers(client, gpu=spec.sampling.gpu)
        return None
    except ClusterError:
        now = time.monotonic()
        if since is None:
            return now
        if now - since > spec.sampling.worker_wait_s:
            raise
        return since
