"""DP-SGD: calibration to the stage budget, the noisy count, empty batches, ghost == hooks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from dp_accounting import dp_event

from safesynth.generator.llm import training
from safesynth.generator.llm.encoding import RowCodec
from safesynth.generator.llm.grammar import Grammar
from safesynth.generator.llm.model import build_language_model, norms_for_opacus
from safesynth.generator.llm.training import (
    DPSGDSchedule,
    TrainingRows,
    _make_private,
    dp_step,
    release_row_count,
    schedule_dp_sgd,
    training_rngs,
)
from safesynth.privacy.accountant import compose_epsilon
from safesynth.privacy.noise import OpenDPNoise, SeededNoise

from .conftest import TABULAR, llm_spec, tabular_frame


@pytest.mark.parametrize(("noisy_rows", "batch_size", "epochs", "epsilon", "delta", "accountant"), [
    (39_074.3, 1024, 2.0, 3.8, 1e-5, "rdp"),
    (1_000.0, 64, 3.0, 0.5, 1e-6, "rdp"),
    (50.0, 256, 5.0, 2.0, 1e-5, "rdp"),  # fewer rows than a batch: sample rate 1
    (500.0, 100, 2.0, 1.0, 1e-5, "pld"),
])
def test_schedule_spends_the_stage_budget_without_overshooting(noisy_rows, batch_size, epochs, epsilon, delta,
                                                               accountant):
    schedule = schedule_dp_sgd(noisy_rows=noisy_rows, batch_size=batch_size, epochs=epochs, max_grad_norm=1.0,
                               epsilon=epsilon, delta=delta, accountant=accountant)
    spent = compose_epsilon([schedule.event()], delta=delta, accountant=accountant)
    assert spent <= epsilon
    assert spent >= 0.99 * epsilon  # calibrated tightly, not wastefully
    assert schedule.sample_rate == min(1.0, batch_size / noisy_rows)
    assert schedule.steps == math.ceil(epochs / schedule.sample_rate)
    assert schedule.expected_batch_size == batch_size


def test_schedule_event_is_poisson_subsampled_gaussian_composed_over_steps():
    schedule = DPSGDSchedule(sample_rate=0.01, steps=300, noise_multiplier=1.1, max_grad_norm=1.0,
                             expected_batch_size=10, epochs=3.0)
    event = schedule.event()
    assert isinstance(event, dp_event.SelfComposedDpEvent) and event.count == 300
    assert event.event == dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.1))


@pytest.mark.parametrize("noise", [SeededNoise(3), OpenDPNoise()], ids=["seeded", "opendp"])
def test_row_count_is_a_laplace_release_charged_to_generator_count(noise):
    noisy, spend = release_row_count(1000, epsilon=0.2, noise=noise)
    assert spend.stage == "generator.count" and spend.mechanism == "laplace"
    assert spend.epsilon == pytest.approx(0.2) and spend.delta == 0.0
    assert spend.event == dp_event.LaplaceDpEvent(noise_multiplier=5.0)
    assert spend.secure_noise is noise.secure
    assert noisy != 1000.0 and abs(noisy - 1000) < 5.0 * 40  # scale 5; |noise| < 200 has prob 1 - e^-40


def _rows(tmp_path, n=64):
    spec = llm_spec(tmp_path, TABULAR)
    codec = RowCodec.from_spec(spec, context_length=128)
    lm = build_language_model(spec.generator, codec.symbols, seed=0)
    rows = TrainingRows(codec, Grammar(codec), codec.encode_cells(tabular_frame(n)), lm=lm, order=[0, 1, 2, 3])
    return lm, rows


def _one_step(lm, rows, index, *, mode, noise_multiplier, max_grad_norm=0.05, physical=16):
    schedule = DPSGDSchedule(sample_rate=0.5, steps=1, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                             expected_batch_size=32, epochs=1.0)
    model = lm.model
    model.train()
    with norms_for_opacus(model):
        base = torch.optim.SGD(model.parameters(), lr=1.0)
        gsm, optimizer = _make_private(model, base, schedule, mode=mode,
                                       noise_generator=torch.Generator().manual_seed(0))
        try:
            total = dp_step(gsm, optimizer, rows, index, mode=mode, physical_batch_size=physical)
        finally:
            gsm.cleanup()
    return total


def test_ghost_clipping_and_hooks_give_the_same_loss_and_clipped_update(tmp_path):
    lm, rows = _rows(tmp_path)
    twin = copy.deepcopy(lm)
    index = np.arange(0, 64, 2)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    loss_ghost = _one_step(lm, rows, index, mode="ghost", noise_multiplier=0.0)
    rows.lm = twin
    loss_hooks = _one_step(twin, rows, index, mode="hooks", noise_multiplier=0.0)
    assert loss_ghost == pytest.approx(loss_hooks, rel=1e-5)
    moved = 0.0
    for (name, ghost), hooks in zip(lm.model.state_dict().items(), twin.model.state_dict().values(), strict=True):
        torch.testing.assert_close(ghost, hooks, atol=2e-6, rtol=1e-4, msg=name)
        moved += float((ghost - before[name]).norm() ** 2)
    # Clipped to 0.05 per record, 32 records, divided by the public batch size 32: the update is <= 0.05.
    assert 0 < math.sqrt(moved) <= 0.05 + 1e-6


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_empty_poisson_batch_takes_a_noise_only_step(tmp_path, mode):
    lm, rows = _rows(tmp_path)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    assert _one_step(lm, rows, np.array([], dtype=int), mode=mode, noise_multiplier=1.0) == 0.0
    moved = {k: float((v - before[k]).norm()) for k, v in lm.model.state_dict().items()}
    assert all(m > 0 for k, m in moved.items() if "weight" in k)  # pure noise, std 0.05 / 32 per coordinate


def test_physical_chunks_do_not_change_the_update(tmp_path):
    lm, rows = _rows(tmp_path)
    twin = copy.deepcopy(lm)
    index = np.arange(40)
    _one_step(lm, rows, index, mode="ghost", noise_multiplier=0.0, physical=40)
    rows.lm = twin
    _one_step(twin, rows, index, mode="ghost", noise_multiplier=0.0, physical=7)
    for a, b in zip(lm.model.parameters(), twin.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def _random_order_rows(tmp_path, order_rng):
    spec = llm_spec(tmp_path, TABULAR, random_column_order=True)
    codec = RowCodec.from_spec(spec, context_length=128, names=True)
    lm = build_language_model(spec.generator, codec.symbols, seed=0)
    return TrainingRows(codec, Grammar(codec), codec.encode_cells(tabular_frame(16)), lm=lm, order=[0, 1, 2, 3],
                        order_rng=order_rng)


def test_training_column_orders_come_only_from_the_injected_rng(tmp_path):
    index = np.arange(16)
    first = _random_order_rows(tmp_path, np.random.default_rng(7)).batch(index).input_ids
    again = _random_order_rows(tmp_path, np.random.default_rng(7)).batch(index).input_ids
    other = _random_order_rows(tmp_path, np.random.default_rng(8)).batch(index).input_ids
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)  # 16 records x 4! orders: equal with probability 24^-16


def test_secure_training_rngs_are_secret_and_ignore_the_public_seed(monkeypatch):
    calls = []
    real = training.secrets.randbits
    monkeypatch.setattr(training.secrets, "randbits", lambda k: calls.append(k) or real(k))
    one, two = training_rngs(secure=True, seed=0), training_rngs(secure=True, seed=0)
    assert len(calls) == 6 and one.source == "os-entropy"
    # Same public seed, independent secret draws (equal with probability 2^-64 per generator).
    assert one.poisson.integers(2**63) != two.poisson.integers(2**63)
    assert one.column_order.integers(2**63) != two.column_order.integers(2**63)
    assert int(torch.randint(2**62, (1,), generator=one.noise)) != int(torch.randint(2**62, (1,), generator=two.noise))


def test_insecure_training_rngs_are_reproducible_for_tests():
    one, two = training_rngs(secure=False, seed=3), training_rngs(secure=False, seed=3)
    assert one.source.startswith("spec-seed")
    assert one.poisson.integers(2**63) == two.poisson.integers(2**63)
    assert one.column_order.integers(2**63) == two.column_order.integers(2**63)


def test_progress_bar_shows_no_loss_or_batch_size(tmp_path, capsys):
    lm, rows = _rows(tmp_path, n=32)
    schedule = DPSGDSchedule(sample_rate=0.5, steps=3, noise_multiplier=1.0, max_grad_norm=1.0,
                             expected_batch_size=16, epochs=1.5)
    training.train_dp_sgd(lm, rows, schedule, learning_rate=1e-2, mode="hooks", physical_batch_size=16,
                          poisson_rng=np.random.default_rng(0), noise_generator=torch.Generator().manual_seed(0),
                          delta=1e-5, progress=True)
    shown = capsys.readouterr().err
    assert "DP-SGD" in shown and "epoch=1.50" in shown and "eps=" in shown
    assert "loss" not in shown
    assert set(training._progress_fields(schedule, 1, 0.5)) == {"epoch", "eps"}
