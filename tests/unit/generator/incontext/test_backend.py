"""The in-context generator with a tiny Llama built from a config (no downloads)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from safesynth.errors import SpecError
from safesynth.generator import get_backend
from safesynth.generator.incontext.backend import FittedInContext, InContextBackend
from safesynth.generator.incontext.decoder import TextDecoder
from safesynth.generator.incontext.mechanism import SENSITIVITY, aggregate, generation_event, restrict
from safesynth.generator.incontext.prompt import example_line, prompt_ids, resolve_columns
from safesynth.generator.llm.pretrained import load_pretrained, resolve_model
from safesynth.preflight import check_incontext
from safesynth.privacy.accountant import ReleaseAccount, compose_epsilon
from safesynth.privacy.noise import SeededNoise
from safesynth.privacy.planner import plan_budget
from safesynth.stages import _within_rows
from tests.helpers import rows_valid
from tests.unit.generator.incontext.conftest import REVIEWS, incontext_spec, review_frame


def fit(spec, frame, tmp_path, seed=0):
    plan = plan_budget(spec)
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    model = get_backend("incontext").fit(frame, spec=spec, plan=plan, account=account, noise=SeededNoise(seed),
                                         workdir=tmp_path / "fit")
    return model, account, plan


def test_fit_generates_the_rows_bought_valid_for_the_spec_and_records_every_spend(tmp_path, tiny_model):
    spec = incontext_spec(tmp_path, tiny_model, rows=5, condition_on="sentiment")
    model, account, plan = fit(spec, review_frame(80), tmp_path)
    stages = {s.stage: s for s in account.spends}
    assert set(stages) == {"condition", "generator.others", "generator.count", "generator.incontext"}
    gen = stages["generator.incontext"]
    assert gen.detail["rows_bought"] == model.rows_available == 5  # default noise buys every row asked for
    assert {"sample_rate", "noise_multiplier", "tokens_per_row", "top_k", "prompts", "shots"} <= set(gen.detail)
    assert gen.secure_noise is False and gen.detail["subsample_rng"].startswith("spec-seed")
    stage = plan.stage("generator")
    own = [stages[s] for s in ("generator.others", "generator.count", "generator.incontext")]
    assert sum(s.epsilon for s in own) <= stage.epsilon * (1 + 1e-9)
    assert sum(s.delta for s in own) <= stage.delta * (1 + 1e-12)
    assert account.epsilon <= spec.privacy.epsilon
    rows = model.sample(5, seed=1)
    assert len(rows) == 5 and rows_valid(rows, spec)
    assert rows.equals(model.sample(5, seed=1))  # deterministic for (rows, seed)


def test_save_and_load_round_trip(tmp_path, tiny_model):
    spec = incontext_spec(tmp_path, tiny_model, rows=3)
    model, _, _ = fit(spec, review_frame(40), tmp_path)
    model.save(tmp_path / "saved")
    loaded = InContextBackend().load(tmp_path / "saved", spec=spec)
    assert isinstance(loaded, FittedInContext) and loaded.rows_available == 3
    pd.testing.assert_frame_equal(loaded.sample(3, seed=4), model.sample(3, seed=4))
    meta = json.loads((tmp_path / "saved" / "safesynth_incontext.json").read_text())
    assert meta["privacy"]["stages"][-1]["detail"]["rows_bought"] == 3


def test_generation_stops_at_the_rows_the_budget_buys(tmp_path, tiny_model):
    spec = incontext_spec(tmp_path, tiny_model, rows=40, epsilon=1.0, noise_multiplier=6.0, max_new_tokens=4)
    model, account, plan = fit(spec, review_frame(60), tmp_path)
    gen = next(s for s in account.spends if s.stage == "generator.incontext")
    bought = gen.detail["rows_bought"]
    assert 0 < bought < 40 and model.rows_available == bought
    rate, sigma = gen.detail["sample_rate"], gen.detail["noise_multiplier"]

    def eps(rows):
        return compose_epsilon([generation_event(sample_rate=rate, noise_multiplier=sigma, tokens=4, rows=rows)],
                               delta=gen.delta, accountant="rdp")

    assert gen.epsilon == eps(bought) and gen.delta == plan.stage("generator").delta
    budget = plan.stage("generator").epsilon - sum(s.epsilon for s in account.spends
                                                   if s.stage in ("generator.count", "generator.others"))
    assert eps(bought) <= budget * (1 + 1e-9) < eps(bought + 1)
    published = _within_rows(spec, model.rows_available)
    assert published.sampling.rows == bought and published.sampling.shard_rows >= bought
    from safesynth.sampling import shard_plan

    assert [s.rows for s in shard_plan(published)] == [bought]  # one shard: each bought row published once
    rows = model.sample(bought, seed=0)
    assert rows_valid(rows, spec)


def test_one_record_moves_one_prompt_and_the_summed_distribution_by_at_most_sqrt2(tmp_path, tiny_model):
    model, tokenizer = load_pretrained(resolve_model(str(tiny_model), base_dir=tmp_path))
    decoder = TextDecoder(model, tokenizer, top_k=8, temperature=1.0, max_new_tokens=1)

    def ids(examples):
        lines = [example_line(t, column="review", max_length=24) for t in examples]
        return prompt_ids(lines, column="review", label=None, max_tokens=512, encode=decoder.encode)

    public = ids([])
    before = [ids(["soft"]), ids([]), ids(["torn", "meh"])]
    after = [before[0], ids(["great"]), before[2]]  # one added record went to prompt 1 (empty before)

    def distributions(private):
        import torch

        seqs = [public, *private]
        width = max(map(len, seqs))
        tokens = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        with torch.inference_mode():
            logits, _ = decoder._forward(tokens, mask, (mask.cumsum(-1) - 1).clamp(min=0), None)
        candidates = torch.topk(logits[0], 8).indices
        return restrict(logits[1:, candidates].double().numpy())

    p, p_after = distributions(before), distributions(after)
    assert np.allclose(p[1], distributions([public])[0])  # an empty prompt is the public prompt
    assert [i for i in range(3) if not np.allclose(p[i], p_after[i])] == [1]
    assert np.linalg.norm(aggregate(p_after) - aggregate(p)) <= SENSITIVITY


def test_batched_kv_cached_decoding_matches_a_fresh_forward_per_token(tmp_path, tiny_model):
    """Left padding, masks, positions and the cache give each sequence the logits it has alone."""
    import torch

    model, tokenizer = load_pretrained(resolve_model(str(tiny_model), base_dir=tmp_path))
    decoder = TextDecoder(model, tokenizer, top_k=8, temperature=1.0, max_new_tokens=1)
    seqs = [decoder.encode("review: a"), decoder.encode("Examples, one per line.\nreview: b\nreview:")]
    width = max(map(len, seqs))
    tokens = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        _, past = decoder._forward(tokens, mask, positions, None)
        step = torch.full((2, 1), 60)
        logits, _ = decoder._forward(step, torch.cat([mask, torch.ones_like(step)], 1), positions[:, -1:] + 1, past)
        for i, s in enumerate(seqs):
            alone = model(input_ids=torch.tensor([[*s, 60]])).logits[0, -1]
            assert torch.allclose(logits[i], alone, atol=1e-4)


def test_prompts_drop_whole_examples_from_the_end_to_fit_the_token_cap(tmp_path, tiny_model):
    _, tokenizer = load_pretrained(resolve_model(str(tiny_model), base_dir=tmp_path))
    encode = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    lines = [example_line(t, column="review", max_length=24) for t in ("aaaa", "bbbb", "cccc")]
    full = prompt_ids(lines, column="review", label=None, max_tokens=10_000, encode=encode)
    capped = prompt_ids(lines, column="review", label=None, max_tokens=len(full) - 1, encode=encode)
    assert tokenizer.decode(capped).endswith("review: bbbb\nreview:")
    assert example_line("a\nb  c" * 10, column="r", max_length=8) == "r: a b ca b\n"


def test_columns_are_checked_before_any_budget(tmp_path, tiny_model):
    two_texts = {**REVIEWS, "title": {"type": "text", "max_length": 10}}
    with pytest.raises(SpecError, match=r"`generator.text_column` must be set: the spec has 2 text columns"):
        check_incontext(incontext_spec(tmp_path, tiny_model, two_texts))
    assert resolve_columns(incontext_spec(tmp_path, tiny_model, two_texts, text_column="title")).text == "title"
    with pytest.raises(SpecError, match=r"`generator.text_column` \('stars'\) must name a text column"):
        check_incontext(incontext_spec(tmp_path, tiny_model, text_column="stars"))
    with pytest.raises(SpecError, match=r"`generator.condition_on` \('stars'\) must name a categorical or boolean"):
        check_incontext(incontext_spec(tmp_path, tiny_model, condition_on="stars"))
    with pytest.raises(SpecError, match="0 text columns"):
        check_incontext(incontext_spec(tmp_path, tiny_model, {"stars": REVIEWS["stars"]}))


def test_the_condition_stage_is_planned_for_incontext(tmp_path, tiny_model):
    plan = plan_budget(incontext_spec(tmp_path, tiny_model, condition_on="sentiment"))
    assert plan.has("condition") and math.isclose(plan.stage("condition").fraction, 0.1)
    assert not plan_budget(incontext_spec(tmp_path, tiny_model)).has("condition")


def test_text_only_spec_has_no_other_columns_stage(tmp_path, tiny_model):
    spec = incontext_spec(tmp_path, tiny_model, {"review": REVIEWS["review"]}, rows=2)
    model, account, _ = fit(spec, review_frame(30)[["review"]], tmp_path)
    assert [s.stage for s in account.spends] == ["generator.count", "generator.incontext"]
    assert rows_valid(model.sample(2, seed=0), spec)


def test_logs_and_the_spend_hold_no_private_text(tmp_path, tiny_model, caplog):
    spec = incontext_spec(tmp_path, tiny_model, rows=2, condition_on="sentiment")
    frame = review_frame(40)
    frame.loc[0, "review"] = "zqxj secret"
    with caplog.at_level("DEBUG", logger="safesynth"):
        _, account, _ = fit(spec, frame, tmp_path)
    shown = caplog.text + json.dumps([s.to_dict() for s in account.spends])
    assert "in-context DP generation: 2 texts" in caplog.text
    assert not any(word in shown for word in ("zqxj", "secret", "great", "soft", "torn", "meh"))


def test_a_release_noise_source_draws_the_subsample_from_os_entropy(tmp_path, tiny_model):
    from safesynth.privacy.noise import OpenDPNoise

    spec = incontext_spec(tmp_path, tiny_model, {"review": REVIEWS["review"]}, rows=1, max_new_tokens=2)
    account = ReleaseAccount(delta=spec.privacy.delta)
    model = InContextBackend().fit(review_frame(20)[["review"]], spec=spec, plan=plan_budget(spec), account=account,
                                   noise=OpenDPNoise(), workdir=tmp_path)
    spend = account.spends[-1]
    assert spend.secure_noise is True and spend.detail["subsample_rng"] == "os-entropy"
    assert model.rows_available == 1 and account.secure_noise


def test_spec_defaults_and_unknown_keys(tmp_path):
    from safesynth.spec import InContextGeneratorSpec

    gen = incontext_spec(tmp_path, "smollm2-135m").generator.model_copy()
    assert isinstance(gen, InContextGeneratorSpec)
    default = InContextGeneratorSpec(kind="incontext")
    assert (default.model, default.prompts, default.shots, default.max_new_tokens, default.top_k) == (
        "smollm2-135m", 32, 2, 24, 32)
    assert default.noise_multiplier is None and default.text_column is None and default.condition_on is None
    with pytest.raises(SpecError, match=r"`generator.batch_size`: unknown key"):
        incontext_spec(tmp_path, "smollm2-135m", batch_size=3)


def test_preflight_refuses_a_bad_text_column_before_touching_the_source_or_ledger(tmp_path, tiny_model, monkeypatch):
    import safesynth.io
    import safesynth.privacy.ledger
    from safesynth.preflight import preflight

    touched = []
    monkeypatch.setattr(safesynth.io, "check_source", lambda spec: touched.append("source"))
    monkeypatch.setattr(safesynth.privacy.ledger, "preflight_ledger", lambda spec: touched.append("ledger"))
    with pytest.raises(SpecError, match=r"`generator.text_column` \('sentiment'\) must name a text column"):
        preflight(incontext_spec(tmp_path, tiny_model, text_column="sentiment"))
    with pytest.raises(SpecError, match=r"`generator.model` \(missing.gguf\): no such file"):
        preflight(incontext_spec(tmp_path, "missing.gguf"))
    assert touched == []


def test_an_explicit_noise_multiplier_that_buys_no_text_is_refused_before_any_budget(tmp_path, tiny_model):
    """Preflight passes exactly when one text fits at the highest sample rate, so a passing spec buys >= 1."""
    def spec(sigma):
        return incontext_spec(tmp_path, tiny_model, rows=3, epsilon=1.0, noise_multiplier=sigma, max_new_tokens=4)

    with pytest.raises(SpecError, match=r"`generator.noise_multiplier` \(0.05\) is too small for the budget"):
        check_incontext(spec(0.05))
    lo, hi = 0.05, 50.0  # refused at lo, accepted at hi: bisect to the edge
    check_incontext(spec(hi))
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            check_incontext(spec(mid))
            hi = mid
        except SpecError:
            lo = mid
    model, account, _ = fit(spec(hi), review_frame(30), tmp_path)
    assert model.rows_available >= 1  # at whatever rate the noisy count gave (<= 0.5)
    assert {s.stage: s for s in account.spends}["generator.incontext"].detail["sample_rate"] <= 0.5
