"""Where the texts are decoded: the driver's loop over workers, and a real LocalCluster against the driver."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safesynth.errors import ClusterError
from safesynth.generator import get_backend
from safesynth.generator.incontext.worker import Step, TextJob, generate
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.planner import plan_budget
from tests.unit.generator.incontext.conftest import incontext_spec, review_frame


class ZeroNoise:
    """No noise at all (tests only): every decision is the model's, so two runs can be compared exactly."""

    secure = False

    def laplace(self, values, *, scale, discrete=False):
        return np.asarray(values, dtype=np.int64 if discrete else np.float64)

    def gaussian(self, values, *, scale, discrete=False):
        return np.asarray(values, dtype=np.int64 if discrete else np.float64)


class RecordingNoise(ZeroNoise):
    def __init__(self):
        self.scales = []

    def gaussian(self, values, *, scale, discrete=False):
        self.scales.append(scale)
        return super().gaussian(values, scale=scale, discrete=discrete)


class _Now:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class FakeWorker:
    """Decodes 'text <i>' in ``steps[i]`` steps; the private sums always prefer candidate 7."""

    def __init__(self, steps, log):
        self.steps, self.log = steps, log

    def start(self, label, examples):
        self.i, self.done = int(label), 0
        return _Now(self._answer())

    def step(self, token):
        self.log.append((self.i, token))
        self.done += 1
        return _Now(self._answer())

    def _answer(self):
        if self.done >= self.steps[self.i]:
            return Step(done=True, text=f"text {self.i}")
        return Step(done=False, candidates=np.array([5, 7, 9]), summed=np.array([0.1, 3.0, 0.2]))


def test_the_driver_draws_jobs_in_order_and_one_noise_per_token_whichever_worker_is_free():
    steps = [3, 1, 4, 0, 2, 5, 1]
    log, called = [], []
    workers = [FakeWorker(steps, log) for _ in range(3)]
    noise = RecordingNoise()

    def jobs(i):
        called.append(i)
        return TextJob(label=str(i), examples=[])

    texts = generate(jobs, len(steps), workers, noise_multiplier=0.5, noise=noise)
    assert texts == [f"text {i}" for i in range(len(steps))]
    assert called == list(range(len(steps)))
    assert len(noise.scales) == sum(steps) and noise.scales == pytest.approx([0.5 * math.sqrt(2)] * sum(steps))
    assert {token for _, token in log} == {7}  # the noisy argmax's candidate, sent back to the worker
    for i, n in enumerate(steps):
        assert sum(1 for j, _ in log if j == i) == n


def test_a_lost_worker_fails_the_stage_as_a_cluster_error():
    class Broken:
        def start(self, label, examples):
            class Lost:
                def result(self):
                    raise OSError("connection closed")

            return Lost()

    with pytest.raises(ClusterError, match="an in-context worker failed"):
        generate(lambda i: TextJob(label=None, examples=[]), 2, [Broken()], noise_multiplier=1.0, noise=ZeroNoise())


def _fit(spec, frame, tmp_path):
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    return get_backend("incontext").fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                        noise=ZeroNoise(), workdir=tmp_path / "fit")


@pytest.mark.slow
def test_a_local_cluster_decodes_the_same_texts_as_the_driver(tmp_path, tiny_model):
    """Same secret subsamples (drawn on the driver, in order) and no noise: the same texts, on 2 workers."""
    frame = review_frame(80)
    here = incontext_spec(tmp_path, tiny_model, rows=6, condition_on="sentiment", max_new_tokens=4)
    there = incontext_spec(tmp_path, tiny_model, rows=6, condition_on="sentiment", max_new_tokens=4,
                           distributed=True)
    there = there.model_copy(update={"sampling": there.sampling.model_copy(update={"workers": 2})})
    local, remote = _fit(here, frame, tmp_path / "here"), _fit(there, frame, tmp_path / "there")
    assert remote.rows_available == local.rows_available == 6
    assert remote.pool == local.pool
