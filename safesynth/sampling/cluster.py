"""The Dask cluster a release samples on: an existing scheduler, or one started for the stage.

* ``sampling.scheduler`` (else ``$SAFESYNTH_DASK_SCHEDULER``): connect to that scheduler; its workers are
  the operator's (they must run the same safesynth, dask and distributed versions as the client).
* otherwise ``sampling.cluster: local`` starts a :class:`distributed.LocalCluster` of worker processes
  (``sampling.workers``, default one per core, at most one per shard; one thread each; torch threads split
  between them; memory split evenly; when the llm samples on this machine's GPU, one worker advertising
  ``resources={"GPU": 1}``, since every LocalCluster worker would share the same devices), and ``sampling.cluster: cuda`` starts
  ``dask_cuda.LocalCUDACluster`` (one worker per visible GPU, each advertising ``resources={"GPU": 1}``).
  A started cluster is closed when the stage ends, however it ends.

With ``sampling.gpu: true`` every shard task requests ``resources={"GPU": 1}``. Dask would leave such a
task pending forever when no worker has a GPU, so the cluster is checked first (:func:`check_workers`)
and the stage fails with :class:`~safesynth.errors.ClusterError` (exit code 2) instead.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from safesynth.errors import ClusterError, SpecError
from safesynth.spec import ReleaseSpec

__all__ = [
    "ClusterPlan", "check_workers", "open_client", "plan_cluster", "preflight_cluster", "prewarm_workers",
    "scheduler_address",
]

log = logging.getLogger("safesynth")

ENV_SCHEDULER = "SAFESYNTH_DASK_SCHEDULER"
CONNECT_TIMEOUT_S = 20
#: Pre-flight only asks whether the scheduler answers at all.
PREFLIGHT_TIMEOUT_S = 10


def scheduler_address(spec: ReleaseSpec) -> str | None:
    """``sampling.scheduler``, else ``$SAFESYNTH_DASK_SCHEDULER``, else None (start a cluster)."""
    address = spec.sampling.scheduler or os.environ.get(ENV_SCHEDULER) or None
    if address is not None and "://" not in address:
        raise SpecError(f"${ENV_SCHEDULER} ({address!r}) must be a Dask scheduler address such as tcp://host:8786")
    return address


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cuda_devices() -> int:
    """GPUs visible to this process (0 with the CPU build of torch)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPlan:
    """How the stage gets its workers (public: derived from the spec and this machine only)."""

    address: str | None  # an existing scheduler, or None to start a cluster
    kind: str  # "external", "local" or "cuda"
    workers: int | None  # started workers (None: the operator's, or one per GPU)
    torch_threads: int | None  # torch threads per started worker (None: the worker's own setting)
    gpu_per_worker: int  # GPU resource advertised by each started local worker
    preload: tuple[str, ...] = ()  # modules a started worker needs (imported once, see :func:`open_client`)


def worker_modules(spec: ReleaseSpec) -> tuple[str, ...]:
    """What a worker imports to sample this spec's generator (public: the generator kind only)."""
    backend = {"llm": "safesynth.generator.llm", "marginals": "safesynth.generator.marginals",
               "incontext": "safesynth.generator.incontext.decoder", "aim": "safesynth.generator.mbi",
               "mst": "safesynth.generator.mbi"}
    return ("safesynth.sampling.shards", backend.get(spec.generator.kind, "safesynth.generator"))


def plan_cluster(spec: ReleaseSpec, *, shards: int) -> ClusterPlan:
    """Decide where sampling runs; nothing is started. Raises SpecError/ClusterError for impossible asks."""
    s = spec.sampling
    address = scheduler_address(spec)
    if address is not None:
        return ClusterPlan(address=address, kind="external", workers=None, torch_threads=None, gpu_per_worker=0)
    if s.cluster == "cuda":
        try:
            import dask_cuda  # noqa: F401
        except ImportError as exc:
            raise ClusterError("`sampling.cluster: cuda` needs dask-cuda: install safesynth[cuda] (and a CUDA "
                               "build of torch) on this machine") from exc
        if _cuda_devices() == 0:
            raise ClusterError("`sampling.cluster: cuda` but this machine has no CUDA device")
        return ClusterPlan(address=None, kind="cuda", workers=None, torch_threads=1, gpu_per_worker=1,
                           preload=worker_modules(spec))
    cores = _cores()
    needs_devices = s.gpu or getattr(spec.generator, "device", "cpu") != "cpu"
    devices = _cuda_devices() if needs_devices else 0
    wants_gpu = s.gpu or (needs_devices and devices > 0)
    if wants_gpu and devices == 0:
        raise ClusterError("`sampling.gpu: true` but this machine has no CUDA device for the local cluster's "
                           "workers (set sampling.gpu: false, or point sampling.scheduler at GPU workers)")
    if wants_gpu:  # every LocalCluster worker sees the same GPUs: one worker (sampling.cluster: cuda for more)
        workers = s.workers or 1
        return ClusterPlan(address=None, kind="local", workers=workers, torch_threads=max(1, cores // workers),
                           gpu_per_worker=1, preload=worker_modules(spec))
    workers = s.workers if s.workers is not None else max(1, min(cores, shards))
    return ClusterPlan(address=None, kind="local", workers=workers, torch_threads=max(1, cores // workers),
                       gpu_per_worker=0, preload=worker_modules(spec))


#: Imported by the fork server before it forks any worker (with the plan's own modules).
_BASE_PRELOAD = ("distributed", "distributed.nanny", "numpy", "pandas", "pyarrow", "pyarrow.parquet")


def _forkserver(preload: tuple[str, ...]) -> contextlib.AbstractContextManager[Any]:
    """Dask config that starts local workers from a fork server with the workers' imports preloaded.

    Spawning a worker process runs a fresh interpreter that imports distributed, then the plugin imports
    torch and transformers: ~4 s of CPU per worker on 2 cores (bench/README.md). A fork server (one per
    client process, started with the first worker) imports all that once; every worker, and every worker a
    nanny restarts, is then a fork of it. The first cluster's plan decides what the server preloads; a
    later plan's other modules are imported by its workers as before. The server inherits this process's
    environment at its start (with the nanny's pre-spawn variables, e.g. ``PYTHONHASHSEED``), so
    :func:`open_client` hands each worker the client's current environment as well.
    """
    import dask
    from distributed.utils import get_mp_context

    config = dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    context = get_mp_context()  # type: ignore[no-untyped-call]
    context.set_forkserver_preload([*_BASE_PRELOAD, *preload])  # after Dask has set its own list
    return config


#: Dask's nanny runs every worker with this hash seed (distributed.nanny); the fork server must match.
_DASK_HASH_SEED = "6640"


def prewarm_workers(spec: ReleaseSpec) -> bool:
    """Start the fork server of a local cluster now, so the workers' imports overlap reading and fitting.

    Returns at once: the server imports the plan's modules (torch and transformers for an llm: ~4 s on 2
    cores) in its own process while the caller goes on. The local cluster of the sample stage then forks
    its workers from it in ~0.1 s each. Returns False, starting nothing, when sampling will not start a
    local CPU cluster (an existing scheduler, ``sampling.cluster: cuda``, a plan that cannot run).
    Reads no data: the plan depends on the spec and this machine only.
    """
    from multiprocessing import forkserver

    try:
        plan = plan_cluster(spec, shards=_shard_count(spec))
    except (SpecError, ClusterError):
        return False  # the sample stage reports it
    if plan.kind != "local" or plan.address is not None:
        return False
    os.environ.setdefault("PYTHONHASHSEED", _DASK_HASH_SEED)  # what the nanny sets before its first spawn
    with _forkserver(plan.preload):
        forkserver.ensure_running()
    # The scheduler's dashboard (bokeh, ~0.4 s of imports) can load in this process meanwhile.
    threading.Thread(target=_import_quietly, args=("distributed.dashboard.scheduler",), daemon=True,
                     name="safesynth-prewarm").start()
    return True


def _import_quietly(module: str) -> None:
    with contextlib.suppress(Exception):
        importlib.import_module(module)


def _shard_count(spec: ReleaseSpec) -> int:
    from safesynth.sampling.shards import shard_plan

    return len(shard_plan(spec))


@contextlib.contextmanager
def open_client(plan: ClusterPlan, *, announce: bool = True, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A :class:`distributed.Client` on the planned cluster; a started cluster is closed on exit."""
    from distributed import Client, LocalCluster

    cluster: Any = None
    stack = contextlib.ExitStack()
    try:
        if plan.address is not None:
            try:
                client = Client(plan.address, timeout=timeout)  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {plan.address} "
                                   f"({exc.__class__.__name__})") from exc
        else:
            env = {"SAFESYNTH_TORCH_THREADS": str(plan.torch_threads or 1), "OMP_NUM_THREADS": "1"}
            if plan.kind == "cuda":  # spawned workers (each owns one GPU)
                from dask_cuda import LocalCUDACluster

                cluster = LocalCUDACluster(threads_per_worker=1, dashboard_address=":0", resources={"GPU": 1},
                                           env=env)
            else:
                resources = {"GPU": plan.gpu_per_worker} if plan.gpu_per_worker else None
                stack.enter_context(_forkserver(plan.preload))
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=plan.workers, threads_per_worker=1, processes=True, memory_limit="auto",
                    dashboard_address=":0", resources=resources, env={**os.environ, **env})
            client = Client(cluster)  # type: ignore[no-untyped-call]
        if announce:
            try:
                link = client.dashboard_link
            except Exception:  # noqa: BLE001 - no dashboard (bokeh missing on the scheduler)
                link = "none"
            workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            where = plan.address or f"a {'LocalCUDACluster' if plan.kind == 'cuda' else 'LocalCluster'} started here"
            log.info("sampling on %s: %d worker%s; dashboard %s", where, workers, "" if workers == 1 else "s", link)
        try:
            yield client
        finally:
            client.close()  # type: ignore[no-untyped-call]
    finally:
        if cluster is not None:
            cluster.close()
        stack.close()


def check_workers(client: Any, *, gpu: bool) -> int:
    """The number of workers that can run a shard; raises ClusterError when that number is zero.

    With ``gpu`` only workers advertising a ``GPU`` resource count: a GPU task on a cluster without one
    would otherwise wait forever.
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if gpu:
        able = [w for w in workers.values() if float((w.get("resources") or {}).get("GPU", 0)) >= 1]
        if not able:
            raise ClusterError(
                f"`sampling.gpu: true` but none of the cluster's {len(workers)} workers advertises a GPU "
                "(start them with `dask worker --resources GPU=1` or `dask cuda worker`)")
        return len(able)
    if not workers:
        raise ClusterError("the Dask cluster has no workers")
    return len(workers)


def preflight_cluster(spec: ReleaseSpec) -> None:
    """Before any budget is reserved: can the configured cluster run this release's shards at all?

    A local plan is checked without starting anything (dask-cuda installed, CUDA present when asked for).
    An existing scheduler is contacted: it must answer, and with ``sampling.gpu`` its workers (if any
    are connected yet) must include a GPU worker. ``sampling.model_store`` must be a usable fsspec URL.
    """
    store = spec.sampling.model_store
    if store is not None:
        import fsspec

        try:
            fsspec.core.url_to_fs(store)
        except (ImportError, ValueError) as exc:
            raise SpecError(f"`sampling.model_store` ({store}) is not a usable fsspec URL "
                            f"({exc.__class__.__name__})") from exc
    plan = plan_cluster(spec, shards=1)
    if plan.address is None:
        return
    with open_client(plan, announce=False, timeout=PREFLIGHT_TIMEOUT_S) as client:
        if client.scheduler_info(n_workers=-1).get("workers"):
            check_workers(client, gpu=spec.sampling.gpu)
