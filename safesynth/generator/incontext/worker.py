"""Where the in-context texts are decoded: a :class:`TextWorker` per Dask worker (an actor), or one here.

A worker holds the public model and decodes whole texts, one at a time: :meth:`TextWorker.start` builds the
text's prompts from the private examples the driver chose for it and prefills them; each
:meth:`TextWorker.step` appends the token the driver chose and returns the next :class:`Step`: the public
candidates and the private prompts' *unnoised* summed distribution over them. The driver
(:func:`generate`) adds the Gaussian noise and picks the token, so the noise source (OpenDP in a release)
and its draws never leave the driver; several workers decode several texts at once.

Where the work runs (``generator.distributed``): on the sampling cluster (the default LocalCluster, the
scheduler at ``sampling.scheduler``, GPU workers), one actor per usable worker; or in the driver's own
process (one text at a time).

Privacy:
    Each text's private examples (its prompts' Poisson subsample) are sent to the worker that decodes it,
    and the unnoised sums come back to the driver in memory: the workers are part of the restricted zone
    (worker processes on this machine by default; an operator's cluster must be inside the data owner's
    trust boundary). Nothing here adds noise or decides the subsample; :func:`generate` does both on the
    driver, exactly as :mod:`.mechanism` states, whichever worker decodes a text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from safesynth.errors import ClusterError, GeneratorError
from safesynth.generator.incontext.mechanism import noisy_argmax, poisson_partition
from safesynth.generator.incontext.prompt import prompt_ids
from safesynth.privacy.noise import NoiseSource
from safesynth.spec import ReleaseSpec

__all__ = ["MAX_PROMPT_TOKENS", "Step", "TextJob", "TextWorker", "WorkerConfig", "generate", "open_workers",
           "partition_job"]

log = logging.getLogger("safesynth")

#: Longest prompt in tokens (examples past it are dropped, whole, from the end of their prompt).
MAX_PROMPT_TOKENS = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """Everything a worker needs to load the model and build prompts (public: spec constants only)."""

    model: str
    base_dir: str
    device: str
    top_k: int
    temperature: float
    max_new_tokens: int
    column: str
    max_chars: int
    labels: tuple[str | None, ...]  # every label a prompt can name (public: from the declared domain)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """A worker's answer: a complete text, or the next step's candidates and (unnoised) summed distribution."""

    done: bool
    text: str = ""
    candidates: np.ndarray | None = None
    summed: np.ndarray | None = None


class TextWorker:
    """The public model and the text being decoded on one worker (a Dask actor, or an object here).

    Loading the model and checking that every public prompt fits happen in the constructor, so a release
    creates its workers before it spends anything.
    """

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        from safesynth.generator.incontext.decoder import TextDecoder
        from safesynth.generator.llm.device import resolve_device
        from safesynth.generator.llm.pretrained import load_pretrained, resolve_model

        self.config = config
        model, tokenizer = load_pretrained(resolve_model(config.model, base_dir=Path(config.base_dir)))
        torch.nn.Module.to(model, resolve_device(config.device))
        self.decoder = TextDecoder(model, tokenizer, top_k=config.top_k, temperature=config.temperature,
                                   max_new_tokens=config.max_new_tokens)
        positions = int(getattr(model.config, "max_position_embeddings", 2048))
        self.max_prompt = min(MAX_PROMPT_TOKENS, positions - config.max_new_tokens)
        self.publics = {label: self._prompt([], label) for label in config.labels}
        if any(len(p) > self.max_prompt for p in self.publics.values()):
            raise GeneratorError(f"the public prompt is longer than {self.max_prompt} tokens")
        self.state: Any = None

    def _prompt(self, examples: Sequence[str], label: str | None) -> list[int]:
        return prompt_ids(examples, column=self.config.column, label=label, max_tokens=self.max_prompt,
                          encode=self.decoder.encode)

    def _answer(self) -> Step:
        if self.state.done:
            return Step(done=True, text=self.state.text(self.config.max_chars))
        candidates, summed = self.state.proposal()
        return Step(done=False, candidates=candidates, summed=summed)

    def start(self, label: str | None, examples: list[list[str]]) -> Step:
        """Begin a text whose prompts hold ``examples`` (one list of example lines per prompt)."""
        from safesynth.generator.llm.model import torch_threads

        public = self.publics[label] if label in self.publics else self._prompt([], label)
        with torch_threads():
            self.state = self.decoder.begin(public, [self._prompt(lines, label) for lines in examples])
            return self._answer()

    def step(self, token: int) -> Step:
        """Append the chosen ``token`` (released by the driver) and return the next step."""
        from safesynth.generator.llm.model import torch_threads

        with torch_threads():
            self.state.advance(int(token), max_chars=self.config.max_chars)
            return self._answer()


class _Pending(Protocol):
    def result(self) -> Step: ...


class _Handle(Protocol):
    def start(self, label: str | None, examples: list[list[str]]) -> _Pending: ...

    def step(self, token: int) -> _Pending: ...


@dataclass(frozen=True, slots=True)
class _Ready:
    value: Step

    def result(self) -> Step:
        return self.value


class _LocalHandle:
    """A :class:`TextWorker` in this process, answering like an actor (a result at once)."""

    def __init__(self, worker: TextWorker) -> None:
        self.worker = worker

    def start(self, label: str | None, examples: list[list[str]]) -> _Ready:
        return _Ready(self.worker.start(label, examples))

    def step(self, token: int) -> _Ready:
        return _Ready(self.worker.step(token))


@contextlib.contextmanager
def open_workers(spec: ReleaseSpec, config: WorkerConfig, *, distributed: bool,
                 texts: int) -> Iterator[list[Any]]:
    """The workers that decode the texts: one actor per usable cluster worker, or one :class:`TextWorker` here.

    The cluster is the sampling stage's (:func:`safesynth.sampling.cluster.plan_cluster`); a started one is
    closed on exit. Every worker has loaded the model when this yields. Reads no data.
    """
    if not distributed:
        yield [_LocalHandle(TextWorker(config))]
        return
    from safesynth.sampling.cluster import check_workers, open_client, plan_cluster

    plan = plan_cluster(spec, shards=max(1, texts))
    gpu = spec.sampling.gpu or plan.gpu_per_worker > 0
    with open_client(plan, announce=False) as client:
        check_workers(client, gpu=gpu)
        info = client.scheduler_info(n_workers=-1).get("workers", {})
        addresses = sorted(a for a, w in info.items()
                           if not gpu or float((w.get("resources") or {}).get("GPU", 0)) >= 1)
        futures = [client.submit(TextWorker, config, actor=True, workers=[a], allow_other_workers=False,
                                 resources={"GPU": 1} if gpu else None, key=f"safesynth-incontext-{i}")
                   for i, a in enumerate(addresses)]
        try:
            actors = [f.result() for f in futures]
        except GeneratorError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker could not load the model: say which kind of failure
            raise ClusterError(f"the Dask workers could not load the in-context model ({exc.__class__.__name__}: "
                               f"{exc})") from exc
        where = plan.address or "a LocalCluster started here"
        log.info("in-context DP generation on %s: %d worker%s, the noise added here", where, len(actors),
                 "" if len(actors) == 1 else "s")
        try:
            yield actors
        finally:
            for future in futures:
                future.release()


@dataclass(frozen=True, slots=True, kw_only=True)
class TextJob:
    """One text to decode: its prompts' example lines and the label its prompts name."""

    label: str | None
    examples: list[list[str]]


def generate(jobs: Callable[[int], TextJob], count: int, workers: Sequence[Any], *, noise_multiplier: float,
             noise: NoiseSource, on_text: Callable[[], None] = lambda: None) -> list[str]:
    """Decode ``count`` texts on ``workers``, adding the noise here: text ``i`` is ``jobs(i)``'s.

    ``jobs`` is called in order ``0, 1, ...`` (it draws each text's secret subsample, so the subsamples do
    not depend on which worker is free first). Each worker decodes one text at a time; the driver waits on
    them in turn, draws one Gaussian noise vector per step and sends back the chosen token.

    Privacy:
        Per token one :func:`~.mechanism.noisy_argmax` (std ``noise_multiplier * sqrt(2)``) on a worker's
        summed distribution; the caller accounts each text as :func:`~.mechanism.row_event`.
    """
    out: list[str] = [""] * count
    busy: dict[int, tuple[int, Any]] = {}
    following = iter(range(count))

    def assign(w: int) -> None:
        i = next(following, None)
        if i is not None:
            job = jobs(i)
            busy[w] = (i, workers[w].start(job.label, job.examples))

    for w in range(len(workers)):
        assign(w)
    while busy:
        for w in list(busy):
            i, pending = busy[w]
            try:
                answer: Step = pending.result()
            except GeneratorError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost worker or connection: fail the stage cleanly
                raise ClusterError(f"an in-context worker failed ({exc.__class__.__name__})") from exc
            if answer.done:
                out[i] = answer.text
                del busy[w]
                on_text()
                assign(w)
                continue
            if answer.candidates is None or answer.summed is None:
                raise GeneratorError("an in-context worker answered without candidates")
            choice = noisy_argmax(answer.summed, noise_multiplier=noise_multiplier, noise=noise)
            busy[w] = (i, workers[w].step(int(answer.candidates[choice])))
    return out


def partition_job(lines: Sequence[str | None], members: np.ndarray, *, sample_rate: float, prompts: int,
                  rng: np.random.Generator, label: str | None) -> TextJob:
    """One text's job: a fresh Poisson partition of ``members`` (:func:`~.mechanism.poisson_partition`)."""
    parts = poisson_partition(len(members), sample_rate=sample_rate, prompts=prompts, rng=rng)
    return TextJob(label=label, examples=[[line for j in part if (line := lines[int(members[j])]) is not None]
                                          for part in parts])
