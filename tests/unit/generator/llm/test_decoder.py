"""The fast Llama decoder: same logits as the HF forward, chosen only where exact, same rows as the HF path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from safesynth.generator.llm import decoder as decoder_module
from safesynth.generator.llm.decoder import LlamaDecoder
from safesynth.generator.llm.encoding import EOS, RowCodec
from safesynth.generator.llm.grammar import Grammar
from safesynth.generator.llm.model import LanguageModel, build_language_model
from safesynth.generator.llm.sampling import _draw, sample_tokens
from tests.helpers import rows_valid

from .conftest import ALL_TYPES, TABULAR, llm_spec

ALPHA = 1e-6  # false-alarm rate of the statistical tests below


def _llama(seed: int, **config) -> LlamaForCausalLM:
    base = {"vocab_size": 40, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128,
            "tie_word_embeddings": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**{**base, **config})).eval()
        for p in model.parameters():  # not the init's small values: exercise the norms and the softmax
            p.data.normal_(0.0, 0.2 if p.dim() > 1 else 1.0)
    return model


CONFIGS = [
    pytest.param({}, id="plain"),
    pytest.param({"num_key_value_heads": 2}, id="gqa"),
    pytest.param({"num_key_value_heads": 1, "tie_word_embeddings": True}, id="mqa-tied"),
    pytest.param({"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}, id="rope-linear"),
    pytest.param({"head_dim": 16, "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
                 id="rope-llama3-head-dim"),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("prompt", [1, 3])
def test_decoder_logits_equal_the_hf_forward_at_every_position(config, prompt):
    model = _llama(0, **config)
    tokens = torch.randint(0, 40, (5, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(input_ids=tokens).logits
        decoder = LlamaDecoder.for_model(model, model_ids=torch.arange(40), batch=5, max_length=12)
        assert decoder is not None
        logits = [decoder.forward(tokens[:, :prompt])]
        logits += [decoder.forward(tokens[:, t:t + 1]) for t in range(prompt, 12)]
    for t, got in enumerate(logits, start=prompt - 1):
        torch.testing.assert_close(got, reference[:, t], atol=1e-5, rtol=1e-5)


def test_prepared_weights_are_reused_per_model_and_refreshed_when_weights_change():
    model = _llama(3)
    tokens = torch.randint(0, 40, (4, 1), generator=torch.Generator().manual_seed(3))

    def decoded():
        with torch.inference_mode():
            decoder = LlamaDecoder.for_model(model, model_ids=torch.arange(40), batch=4, max_length=8)
            return decoder, decoder.forward(tokens)

    first, _ = decoded()
    second, _ = decoded()
    assert second.layers is first.layers  # one shard's batches share the rearranged weights
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # trained again, in place
    third, logits = decoded()
    assert third.layers is not first.layers
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(input_ids=tokens).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_decoder_past_the_short_prefix_uses_sdpa_with_the_same_logits(monkeypatch):
    monkeypatch.setattr(decoder_module, "_SHORT", 4)
    model = _llama(1, num_key_value_heads=2)
    tokens = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = model(input_ids=tokens).logits
        decoder = LlamaDecoder.for_model(model, model_ids=torch.arange(40), batch=3, max_length=10)
        logits = [decoder.forward(tokens[:, t:t + 1]) for t in range(10)]
    torch.testing.assert_close(torch.stack(logits, 1), reference, atol=1e-5, rtol=1e-5)


def test_decoder_maps_codec_ids_and_keeps_selected_rows():
    model = _llama(2, num_key_value_heads=2)
    model_ids = torch.tensor([7, 3, 39, 0, 12])  # codec symbol i is model token model_ids[i]
    codec_tokens = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = model(input_ids=model_ids[codec_tokens]).logits[..., model_ids]
        decoder = LlamaDecoder.for_model(model, model_ids=model_ids, batch=4, max_length=6)
        decoder.forward(codec_tokens[:, :3])
        keep = torch.tensor([0, 2, 3])
        decoder.select(keep)
        got = [decoder.forward(codec_tokens[keep, t:t + 1]) for t in range(3, 6)]
    torch.testing.assert_close(torch.stack(got, 1), reference[keep, 3:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2)).eval(), id="gpt2"),
    pytest.param(lambda: _llama(0, attention_bias=True), id="attention-bias"),
    pytest.param(lambda: _llama(0, mlp_bias=True), id="mlp-bias"),
    pytest.param(lambda: _llama(0, hidden_act="gelu"), id="gelu"),
    pytest.param(lambda: _llama(0, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
                 id="rope-dynamic"),
    pytest.param(lambda: _llama(0).train(), id="training-mode"),
])
def test_anything_it_does_not_reproduce_exactly_falls_back_to_hf(make):
    assert LlamaDecoder.for_model(make(), model_ids=torch.arange(40), batch=2, max_length=8) is None


def _setup(tmp_path, columns=TABULAR, **generator):
    spec = llm_spec(tmp_path, columns, **generator)
    codec = RowCodec.from_spec(spec, context_length=spec.generator.context_length)
    lm = build_language_model(spec.generator, codec.symbols, seed=0)
    with torch.no_grad():  # an untrained model samples near-uniformly: give it something to say
        for p in lm.model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0, generator=torch.Generator().manual_seed(p.numel()))
    return spec, codec, Grammar(codec), lm, torch.tensor([*codec.name_tokens, EOS])


def test_default_model_takes_the_fast_path(tmp_path, monkeypatch):
    spec, codec, grammar, lm, order = _setup(tmp_path)
    made = []
    original = LlamaDecoder.for_model.__func__

    def spy(cls, *args, **kwargs):
        made.append(original(cls, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(LlamaDecoder, "for_model", classmethod(spy))
    sample_tokens(lm, grammar, prompts=torch.ones((8, 1), dtype=torch.long), order=order, temperature=1.0,
                  generator=torch.Generator().manual_seed(0))
    assert len(made) == 1 and isinstance(made[0], LlamaDecoder)


def test_a_non_llama_model_samples_valid_rows_through_the_hf_fallback(tmp_path):
    spec, codec, grammar, lm, order = _setup(tmp_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=codec.vocab_size + 5, n_embd=32, n_layer=1, n_head=2)).eval()
    other = LanguageModel(model=gpt2, tokenizer=lm.tokenizer, model_ids=torch.arange(codec.vocab_size) + 5)
    tokens = sample_tokens(other, grammar, prompts=torch.ones((40, 1), dtype=torch.long), order=order,
                           temperature=1.0, generator=torch.Generator().manual_seed(0))
    frame = codec.decode(tokens.tolist(), spec)
    assert len(frame) == 40 and rows_valid(frame, spec)


@pytest.mark.parametrize("columns", [TABULAR, ALL_TYPES], ids=["tabular", "all-types"])
def test_sampling_is_deterministic_per_seed_and_valid(tmp_path, columns):
    spec, codec, grammar, lm, order = _setup(tmp_path, columns)

    def run(seed: int) -> torch.Tensor:
        return sample_tokens(lm, grammar, prompts=torch.ones((50, 1), dtype=torch.long), order=order,
                             temperature=0.9, generator=torch.Generator().manual_seed(seed))

    one, two, other = run(4), run(4), run(5)
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert one.device.type == "cpu"
    frame = codec.decode(one.tolist(), spec)
    assert len(frame) == 50 and rows_valid(frame, spec)


def test_fast_and_hf_paths_draw_the_same_rows_from_the_same_seed(tmp_path):
    """Same logits (to ~1e-6) and the same draws: the rows agree but for a rare tie at a CDF boundary."""
    spec, codec, grammar, lm, order = _setup(tmp_path, ALL_TYPES)
    prompts = torch.ones((200, 1), dtype=torch.long)
    fast, hf = (sample_tokens(lm, grammar, prompts=prompts, order=order, temperature=1.0, fast=f,
                              generator=torch.Generator().manual_seed(7)) for f in (True, False))
    assert (fast == hf).all(1).float().mean() >= 0.99


def test_fast_and_hf_paths_sample_the_same_token_frequencies(tmp_path):
    """Across seeds, per-position token counts of both paths pass a two-sample chi-square test at ALPHA."""
    spec, codec, grammar, lm, order = _setup(tmp_path)
    prompts = torch.ones((400, 1), dtype=torch.long)
    fast = torch.cat([sample_tokens(lm, grammar, prompts=prompts, order=order, temperature=1.0, fast=True,
                                    generator=torch.Generator().manual_seed(s)) for s in range(5)])
    hf = torch.cat([sample_tokens(lm, grammar, prompts=prompts, order=order, temperature=1.0, fast=False,
                                  generator=torch.Generator().manual_seed(100 + s)) for s in range(5)])
    for t in range(1, codec.max_length):
        a = np.bincount(fast[:, t].numpy(), minlength=codec.vocab_size)
        b = np.bincount(hf[:, t].numpy(), minlength=codec.vocab_size)
        seen = (a + b) > 0
        if seen.sum() > 1:
            assert stats.chi2_contingency(np.stack([a[seen], b[seen]])).pvalue > ALPHA, t


def _draws(logits: torch.Tensor, allowed: torch.Tensor, temperature: float, n: int, seed: int) -> np.ndarray:
    support = torch.nonzero(allowed).squeeze(1)  # the logits of the tokens some row may take
    tokens = _draw(logits[support].expand(n, -1), allowed.expand(n, -1), temperature,
                   torch.Generator().manual_seed(seed), support=support)
    return np.bincount(tokens.numpy(), minlength=len(logits))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_inverse_cdf_draws_follow_the_masked_softmax_and_have_power(temperature):
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0, 1.0, -2.0, 4.0])
    allowed = torch.tensor([True, True, True, False, True, True, True, False])
    counts = _draws(logits, allowed, temperature, 100_000, seed=0)
    assert counts[~allowed.numpy()].sum() == 0  # masked tokens are never drawn

    def expected(t: float) -> np.ndarray:
        p = torch.softmax((logits / t).masked_fill(~allowed, float("-inf")), 0).numpy().astype(np.float64)
        return p[allowed.numpy()] * counts.sum() / p[allowed.numpy()].sum()

    observed = counts[allowed.numpy()]
    assert stats.chisquare(observed, expected(temperature)).pvalue > ALPHA
    for wrong in (0.85 * temperature, 1.15 * temperature):  # power: a 15 % temperature error is rejected
        assert stats.chisquare(observed, expected(wrong)).pvalue < ALPHA


def test_a_row_with_one_allowed_token_always_gets_it():
    logits = torch.randn(1000, 6, generator=torch.Generator().manual_seed(0)) * 20
    allowed = torch.zeros(1000, 6, dtype=torch.bool)
    allowed[:, 2] = True
    allowed[:500, 4] = True  # half the rows have a real choice, so a uniform is drawn
    tokens = _draw(logits, allowed, 1.0, torch.Generator().manual_seed(1))
    assert bool((tokens[500:] == 2).all()) and set(tokens[:500].tolist()) <= {2, 4}
