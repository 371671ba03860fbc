"""The llm generator end to end: spends, validity, determinism, save/load, checkpoints, conditioning."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from safesynth.errors import GeneratorError, SpecError
from safesynth.generator import get_backend
from safesynth.generator.llm import FittedLLM, LLMBackend
from safesynth.generator.llm.model import _tokenizer
from safesynth.privacy.accountant import ReleaseAccount, compose_epsilon, pure_dp_event
from safesynth.privacy.mechanisms import LaplaceMechanism
from safesynth.privacy.noise import OpenDPNoise, SeededNoise
from safesynth.privacy.planner import plan_budget
from safesynth.schema import pandas_dtype
from tests.helpers import rows_valid

from .conftest import TABULAR, llm_spec, tabular_frame

ALPHA = 1e-6  # false-alarm rate of the statistical tests below


def _fit(spec, frame, tmp_path, seed=1):
    account = ReleaseAccount(delta=spec.privacy.delta)
    fitted = get_backend("llm").fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                    noise=SeededNoise(seed), workdir=tmp_path)
    return fitted, account


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm")
    spec = llm_spec(tmp, TABULAR, epsilon=2.0)
    model, account = _fit(spec, tabular_frame(300), tmp)
    return spec, model, account


def test_backend_is_registered_under_llm():
    assert isinstance(get_backend("llm"), LLMBackend) and LLMBackend.kind == "llm"


def test_generator_stage_is_spent_by_count_plus_dp_sgd_and_dp_sgd_takes_the_releases_headroom(fitted):
    """DP-SGD gets at least its share (the stage less the count), and its noise is the least that keeps the
    release within its epsilon under the accountant's composition, with the stages after the generator
    (repairs and audit here, as this fit is called alone) at their planned worst case."""
    spec, _, account = fitted
    plan = plan_budget(spec)
    stage = plan.stage("generator")
    by = {s.stage: s for s in account.spends}
    assert list(by) == ["generator.count", "generator.dp_sgd"]
    count, sgd = by["generator.count"], by["generator.dp_sgd"]
    assert count.epsilon == pytest.approx(0.05 * stage.epsilon) and count.delta == 0.0
    assert sgd.delta == stage.delta
    assert count.epsilon + sgd.epsilon >= 0.99 * stage.epsilon
    assert compose_epsilon([sgd.event], delta=sgd.delta) == pytest.approx(sgd.epsilon)
    later = [s for s in plan.stages if s.name in ("repairs", "audit")]
    composed = compose_epsilon([*account.events(), *(pure_dp_event(s.epsilon) for s in later)],
                               delta=spec.privacy.delta - sum(s.delta for s in later))
    assert 0.99 * spec.privacy.epsilon <= composed <= spec.privacy.epsilon
    assert account.epsilon <= spec.privacy.epsilon


def test_dp_sgd_is_recorded_as_insecure_noise_with_the_reason(fitted):
    _, _, account = fitted
    sgd = next(s for s in account.spends if s.stage == "generator.dp_sgd")
    assert sgd.secure_noise is False and account.secure_noise is False
    assert "torch" in sgd.detail["insecure_noise_reason"] and "torchcsprng" in sgd.detail["insecure_noise_reason"]
    assert sgd.detail["grad_sample_mode"] == "hooks"  # the default


def test_sample_rate_and_steps_come_from_the_noisy_count_not_the_true_one(fitted):
    spec, _, account = fitted
    eps_count = 0.05 * plan_budget(spec).stage("generator").epsilon
    replayed = LaplaceMechanism.calibrate(sensitivity=1.0, epsilon=eps_count).release(
        np.array([300.0]), noise=SeededNoise(1))[0]  # the same seeded draw the fit made
    detail = next(s for s in account.spends if s.stage == "generator.dp_sgd").detail
    assert replayed != 300.0
    assert detail["sample_rate"] == 32 / replayed
    assert detail["steps"] == int(np.ceil(1.0 / (32 / replayed)))
    assert detail["expected_batch_size"] == 32


def test_samples_are_valid_typed_and_in_declared_order(fitted):
    spec, model, _ = fitted
    frame = model.sample(150, seed=0)
    assert list(frame.columns) == list(spec.columns) and len(frame) == 150
    assert [str(t) for t in frame.dtypes] == [pandas_dtype(c) for c in spec.columns.values()]
    assert rows_valid(frame, spec)


def test_sampling_is_deterministic_per_seed_and_batch_layout(fitted):
    _, model, _ = fitted
    one, two, other = model.sample(100, seed=5), model.sample(100, seed=5), model.sample(100, seed=6)
    pd.testing.assert_frame_equal(one, two)
    assert not one.equals(other)
    assert model.batch_size == 64  # sampling.batch_size: part of what fixes the output
    assert model.sample(0, seed=5).shape == (0, 4)


def test_save_load_round_trip_samples_identically(fitted, tmp_path):
    spec, model, _ = fitted
    model.save(tmp_path / "gen")
    files = {p.name for p in (tmp_path / "gen").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "safesynth_llm.json"} <= files
    loaded = LLMBackend().load(tmp_path / "gen", spec=spec)
    assert isinstance(loaded, FittedLLM) and loaded.kind == "llm"
    pd.testing.assert_frame_equal(loaded.sample(80, seed=3), model.sample(80, seed=3))
    card = (tmp_path / "gen" / "README.md").read_text()
    for needle in ("generator.dp_sgd", "noise_multiplier", "sample_rate", "add/remove one record", "torchcsprng"):
        assert needle in card


def test_load_on_an_explicit_device_puts_the_model_there_and_samples_identically(fitted, tmp_path):
    spec, model, _ = fitted
    model.save(tmp_path / "gen")
    loaded = LLMBackend().load(tmp_path / "gen", spec=spec, device=torch.device("cpu"))
    assert next(loaded.lm.model.parameters()).device == torch.device("cpu")
    pd.testing.assert_frame_equal(loaded.sample(30, seed=2), model.sample(30, seed=2))


def test_load_refuses_a_generator_trained_for_other_columns(fitted, tmp_path):
    _, model, _ = fitted
    model.save(tmp_path / "gen")
    other = llm_spec(tmp_path, {**TABULAR, "a": {"type": "categorical", "categories": ["p", "q"]}})
    with pytest.raises(GeneratorError, match="different spec"):
        LLMBackend().load(tmp_path / "gen", spec=other)


def test_tiny_model_learns_a_deterministic_relation(tmp_path):
    spec = llm_spec(tmp_path, TABULAR, epsilon=100.0, epochs=40.0, batch_size=128, random_column_order=False,
                    learning_rate=2e-2, hidden_size=32, layers=1)
    frame = tabular_frame(128)
    model, _ = _fit(spec, frame, tmp_path)
    out = model.sample(200, seed=0)
    mapping = dict(zip("pqrs", "wxyz", strict=True))
    both = out.dropna(subset=["b"])
    assert (both["a"].map(mapping) == both["b"]).mean() > 0.9  # untrained: about 0.25


def test_local_checkpoint_is_loaded_offline_and_extended_with_the_codec_symbols(tmp_path):
    checkpoint = tmp_path / "ckpt"
    tok = _tokenizer(("<pad>", "<bos>", "<eos>", "<null>", "hello", "world"))
    config = LlamaConfig(vocab_size=6, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(checkpoint)
    tok.save_pretrained(checkpoint)
    spec = llm_spec(tmp_path, TABULAR, model="ckpt", context_length=64,  # relative to the spec's directory
                    random_column_order=True)
    model, _ = _fit(spec, tabular_frame(100), tmp_path)
    assert model.lm.model.config.hidden_size == 24  # the checkpoint's, not the spec's 32
    assert model.codec.names  # random column orders keep the column-name tokens
    assert model.lm.tokenizer.convert_tokens_to_ids("hello") == 4
    assert model.lm.model.get_input_embeddings().weight.shape[0] == len(model.lm.tokenizer)
    assert rows_valid(model.sample(40, seed=0), spec)
    model.save(tmp_path / "saved")
    pd.testing.assert_frame_equal(LLMBackend().load(tmp_path / "saved", spec=spec).sample(40, seed=1),
                                  model.sample(40, seed=1))


def test_tied_gpt2_checkpoint_is_untied_and_trained_with_ghost_clipping(tmp_path):
    checkpoint = tmp_path / "gpt2"
    config = GPT2Config(vocab_size=6, n_embd=16, n_layer=1, n_head=2, n_positions=64, tie_word_embeddings=True)
    GPT2LMHeadModel(config).save_pretrained(checkpoint)
    _tokenizer(("<pad>", "<bos>", "<eos>", "<null>", "hello", "world")).save_pretrained(checkpoint)
    spec = llm_spec(tmp_path, TABULAR, model=str(checkpoint), context_length=64, grad_sample_mode="ghost")
    model, account = _fit(spec, tabular_frame(100), tmp_path)
    assert account.spends[-1].detail["grad_sample_mode"] == "ghost"
    lm = model.lm.model
    assert lm.get_output_embeddings().weight is not lm.get_input_embeddings().weight
    assert rows_valid(model.sample(40, seed=0), spec)


def test_missing_checkpoint_fails_before_any_budget_is_spent(tmp_path):
    spec = llm_spec(tmp_path, TABULAR, model="no-such-org/no-such-model", condition_on="a")
    account = ReleaseAccount(delta=spec.privacy.delta)
    with pytest.raises(SpecError, match="not a hub id in the local cache; this machine is offline"):
        get_backend("llm").fit(tabular_frame(50), spec=spec, plan=plan_budget(spec), account=account,
                               noise=SeededNoise(0), workdir=tmp_path)
    assert account.spends == []


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")
def test_lora_fine_tuning_saves_a_merged_plain_model(tmp_path):
    checkpoint = tmp_path / "ckpt"
    config = LlamaConfig(vocab_size=6, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(checkpoint)
    _tokenizer(("<pad>", "<bos>", "<eos>", "<null>", "hello", "world")).save_pretrained(checkpoint)
    spec = llm_spec(tmp_path, TABULAR, model=str(checkpoint), lora=True, context_length=64)
    model, _ = _fit(spec, tabular_frame(100), tmp_path)
    model.save(tmp_path / "saved")
    assert not any("lora" in k for k in model.lm.model.state_dict())
    assert rows_valid(LLMBackend().load(tmp_path / "saved", spec=spec).sample(30, seed=0), spec)


def test_condition_on_releases_a_noisy_histogram_that_samples_follow(tmp_path):
    spec = llm_spec(tmp_path, TABULAR, condition_on="b", mechanism="gaussian")
    plan = plan_budget(spec)
    model, account = _fit(spec, tabular_frame(300), tmp_path)
    cond = next(s for s in account.spends if s.stage == "condition")
    assert cond.mechanism == "gaussian" and cond.secure_noise is False  # SeededNoise in this test
    assert cond.epsilon <= plan.stage("condition").epsilon and cond.delta == plan.stage("condition").delta
    assert account.epsilon <= spec.privacy.epsilon  # by RDP: DP-SGD took the composition's headroom
    assert model.order[0] == list(spec.columns).index("b")
    probabilities = np.asarray(model.condition.probabilities)
    assert probabilities.sum() == pytest.approx(1.0) and (probabilities >= 0).all()
    out = model.sample(3000, seed=0)
    labels = ["w", "x", "y", "z"]
    counts = np.array([*((out["b"] == v).sum() for v in labels), out["b"].isna().sum()])
    expected = probabilities * len(out)
    keep = expected > 0
    assert stats.chisquare(counts[keep], expected[keep]).pvalue > ALPHA
    # Power: the same counts reject a histogram with its largest cell scaled by 0.7 or 1.3.
    for factor in (0.7, 1.3):
        wrong = probabilities.copy()
        wrong[np.argmax(wrong)] *= factor
        wrong = wrong / wrong.sum() * len(out)
        assert stats.chisquare(counts[keep], wrong[keep]).pvalue < ALPHA
    assert rows_valid(out, spec)


def test_condition_on_a_numeric_column_is_refused_before_reading_data(tmp_path):
    spec = llm_spec(tmp_path, TABULAR, condition_on="n")
    account = ReleaseAccount(delta=spec.privacy.delta)
    with pytest.raises(SpecError, match="categorical or boolean"):
        get_backend("llm").fit(tabular_frame(10), spec=spec, plan=plan_budget(spec), account=account,
                               noise=SeededNoise(0), workdir=tmp_path)
    assert account.spends == []


def test_saved_metadata_holds_no_row_values(fitted, tmp_path):
    _, model, _ = fitted
    model.save(tmp_path / "gen")
    meta = json.loads((tmp_path / "gen" / "safesynth_llm.json").read_text())
    assert set(meta) == {"format", "kind", "symbols", "names", "text", "model_ids", "order", "privacy",
                         "condition"}
    assert "noisy_rows" not in json.dumps(meta)


def test_records_outside_the_domain_are_repaired_not_raised(tmp_path):
    """A category or number outside the (declared or discovered) domain never makes the fit fail."""
    spec = llm_spec(tmp_path, TABULAR, epochs=0.5)
    frame = tabular_frame(100)
    frame.loc[0, "a"] = "rare"  # not nullable: the record is dropped
    frame.loc[1, "b"] = "rare"  # nullable: set to null
    frame.loc[2, "n"] = 10**9  # clamped to 999
    model, account = _fit(spec, frame, tmp_path)
    assert [s.stage for s in account.spends] == ["generator.count", "generator.dp_sgd"]
    assert rows_valid(model.sample(20, seed=0), spec)


def test_release_trains_with_secret_poisson_mask_and_column_orders(tmp_path, monkeypatch):
    from safesynth.generator.llm import training

    seen = []
    real = training.TrainingRows.__init__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("order_rng"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(training.TrainingRows, "__init__", spy)
    spec = llm_spec(tmp_path, TABULAR, random_column_order=True, epsilon=1.0)
    account = ReleaseAccount(delta=spec.privacy.delta)
    get_backend("llm").fit(tabular_frame(60), spec=spec, plan=plan_budget(spec), account=account,
                           noise=OpenDPNoise(), workdir=tmp_path)
    assert account.spends[-1].detail["rng_seeding"] == "os-entropy"
    assert len(seen) == 1 and isinstance(seen[0], np.random.Generator)
    # Not derived from the public seed: a generator seeded as the old code did draws differently.
    public = np.random.default_rng([spec.sampling.seed, 0x0DE7])
    assert seen[0].bit_generator.state != public.bit_generator.state
