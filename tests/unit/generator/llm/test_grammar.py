"""The grammar mask: every path it allows is a valid row, and every valid row is allowed."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch

from safesynth.generator.llm.encoding import BYTE0, EOS, EOT, PAD, RowCodec, TextCodec
from safesynth.generator.llm.grammar import END, SEP, Grammar, GrammarLogitsProcessor
from safesynth.generator.llm.model import build_language_model
from safesynth.generator.llm.sampling import sample_tokens, sample_tokens_generate
from tests.helpers import mixed_frame, rows_valid

from .conftest import ALL_TYPES, TABULAR, llm_spec, tabular_frame


def _setup(tmp_path, columns, context_length=128):
    spec = llm_spec(tmp_path, columns, context_length=context_length)
    codec = RowCodec.from_spec(spec, context_length=context_length)
    order = torch.tensor([*codec.name_tokens, EOS])
    return spec, codec, Grammar(codec), order


def _walk(grammar: Grammar, order: torch.Tensor, rows: int, pick) -> list[list[int]]:
    """Follow the mask from <bos> choosing with ``pick(allowed [B, V]) -> tokens``."""
    st = grammar.start(rows)
    out = torch.full((rows, grammar.max_length), PAD, dtype=torch.long)
    out[:, 0] = 1
    for t in range(1, grammar.max_length):
        allowed = grammar.mask(st, order)
        assert bool(allowed.any(1).all()), "the mask must never be empty"
        tokens = pick(allowed)
        out[:, t] = tokens
        grammar.advance(st, tokens)
    assert bool((st.state == END).all()), "every row must end within max_length tokens"
    return out.tolist()


def _uniform(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda allowed: torch.multinomial(allowed.float(), 1, generator=gen).squeeze(1)


def test_random_walks_under_the_mask_decode_to_valid_rows(tmp_path):
    spec, codec, grammar, order = _setup(tmp_path, ALL_TYPES)
    rows = codec.decode(_walk(grammar, order, 400, _uniform(0)), spec)
    assert len(rows) == 400 and rows_valid(rows, spec)
    assert rows["t"].dropna().str.len().max() <= 6


def test_always_taking_the_largest_or_smallest_token_reaches_the_declared_bounds(tmp_path):
    spec, codec, grammar, order = _setup(tmp_path, ALL_TYPES)
    no_null = lambda allowed: allowed.clone().index_fill_(1, torch.tensor([3]), False)  # noqa: E731

    def highest(allowed):
        a = no_null(allowed)
        a = a if bool(a.any(1).all()) else allowed
        return (a.long() * torch.arange(a.shape[1])).argmax(1)

    def lowest(allowed):
        a = no_null(allowed)
        a = a if bool(a.any(1).all()) else allowed
        return torch.where(a, -torch.arange(a.shape[1]), -(10**9)).argmax(1)

    high = codec.decode(_walk(grammar, order, 1, highest), spec).iloc[0]
    low = codec.decode(_walk(grammar, order, 1, lowest), spec).iloc[0]
    assert (high["n"], high["x"], str(high["d"]), str(high["s"])) == (12_345, 2.55, "2021-03-01 00:00:00",
                                                                      "2020-01-02 00:00:10")
    assert (low["n"], low["x"], str(low["d"]), str(low["s"])) == (-5, 0.1, "2020-01-02 00:00:00",
                                                                  "2020-01-01 00:00:00")


def test_every_encoded_training_row_is_accepted_at_every_position(tmp_path):
    columns = {**TABULAR, "note": {"type": "text", "max_length": 40}}
    spec, codec, grammar, _ = _setup(tmp_path, columns)
    frame = tabular_frame(200).assign(note=mixed_frame(200)["note"].str.replace("o", "ö"))
    orders = np.stack([np.random.default_rng(i).permutation(5) for i in range(200)])
    seqs = codec.encode(frame, orders)
    length = max(map(len, seqs))
    tokens = torch.tensor([s + [PAD] * (length - len(s)) for s in seqs])
    allowed, scored = grammar.trace(tokens)
    assert bool(allowed.gather(2, tokens[:, 1:, None]).all())
    names = torch.isin(tokens[:, 1:], torch.tensor(codec.name_tokens))
    assert not bool((scored & names).any()), "column names are forced, never scored"
    assert not bool((scored & (tokens[:, 1:] == PAD)).any())


def _text_grammar(tmp_path):
    spec, codec, grammar, _ = _setup(tmp_path, {"t": {"type": "text", "max_length": 4}})
    return grammar, codec.name_tokens[0]


def _accepts_bytes(grammar: Grammar, name: int, sequences: np.ndarray) -> np.ndarray:
    """Whether the text DFA takes each byte sequence and then allows <eot> (a complete, valid string)."""
    st = grammar.start(len(sequences))
    grammar.advance(st, torch.full((len(sequences),), name))
    ok = torch.ones(len(sequences), dtype=torch.bool)
    for col in range(sequences.shape[1]):
        tokens = torch.from_numpy(BYTE0 + sequences[:, col])
        ok &= grammar.accepts(st, torch.where(ok, tokens, torch.full_like(tokens, EOT)))
        grammar.advance(st, torch.where(ok, tokens, torch.full_like(tokens, EOT)))
    ok &= st.state != SEP  # a row that already took <eot> after a failure is not accepted
    ok &= grammar.accepts(st, torch.full((len(sequences),), EOT))
    return ok.numpy()


def _python_valid(sequences: np.ndarray) -> np.ndarray:
    out = []
    for seq in sequences:
        try:
            bytes(seq.tolist()).decode("utf-8")
            out.append(True)
        except UnicodeDecodeError:
            out.append(False)
    return np.array(out)


def test_text_dfa_accepts_exactly_well_formed_utf8(tmp_path):
    grammar, name = _text_grammar(tmp_path)
    one = np.arange(256)[:, None]
    two = np.array(list(itertools.product(range(256), repeat=2)))
    rng = np.random.default_rng(0)
    leads = np.array([0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF1, 0xC2, 0xE1])
    three = np.column_stack([rng.choice(leads, 40_000), rng.integers(0x70, 0xC8, 40_000), rng.integers(0x70, 0xC8, 40_000)])
    four = np.column_stack([rng.choice(leads, 40_000), *(rng.integers(0x70, 0xC8, 40_000) for _ in range(3))])
    for sequences in (one, two, three, four):
        np.testing.assert_array_equal(_accepts_bytes(grammar, name, sequences), _python_valid(sequences))


def test_text_stops_at_max_length_characters(tmp_path):
    spec, codec, grammar, order = _setup(tmp_path, {"t": {"type": "text", "max_length": 4}})
    text = next(c for c in codec.columns if isinstance(c, TextCodec))
    never_end = lambda a: torch.where(a, torch.arange(a.shape[1]) != EOT, False).long().argmax(1)  # noqa: E731
    rows = codec.decode(_walk(grammar, order, 3, lambda a: torch.where(
        a[:, EOT] & ~a[:, BYTE0:].any(1), EOT, never_end(a))), spec)
    assert rows["t"].str.len().tolist() == [4, 4, 4] and text.max_chars == 4


def test_sampling_loop_and_generate_with_the_processor_both_give_valid_rows(tmp_path):
    spec, codec, grammar, order = _setup(tmp_path, TABULAR)
    lm = build_language_model(spec.generator, codec.symbols, seed=0)
    prompts = torch.ones((64, 1), dtype=torch.long)
    own = sample_tokens(lm, grammar, prompts=prompts, order=order, temperature=1.0,
                        generator=torch.Generator().manual_seed(0))
    hf = sample_tokens_generate(lm, grammar, prompts=prompts, order=order, temperature=1.0, seed=0)
    for tokens in (own, hf):
        frame = codec.decode(tokens.tolist(), spec)
        assert len(frame) == 64 and rows_valid(frame, spec)


def test_processor_masks_the_same_tokens_as_the_grammar(tmp_path):
    spec, codec, grammar, order = _setup(tmp_path, TABULAR)
    processor = GrammarLogitsProcessor(grammar, order=order, model_ids=torch.arange(codec.vocab_size),
                                       model_vocab=codec.vocab_size)
    seqs = codec.encode(tabular_frame(8))
    tokens = torch.tensor(seqs)
    st = grammar.start(8)
    for t in range(1, tokens.shape[1]):
        scores = processor(tokens[:, :t], torch.zeros(8, codec.vocab_size))
        assert torch.equal(torch.isfinite(scores), grammar.mask(st, order))
        grammar.advance(st, tokens[:, t])
    assert pd.Series(st.state.tolist()).eq(END).all()


def test_without_name_tokens_the_grammar_follows_the_fixed_order(tmp_path):
    columns = {**ALL_TYPES, "u": {"type": "text", "max_length": 3}}  # two text columns back to back
    spec = llm_spec(tmp_path, columns)
    codec = RowCodec.from_spec(spec, context_length=128, names=False)
    order = [8, 7, 0, 1, 2, 3, 4, 5, 6]
    grammar = Grammar(codec, order=order)
    forced = torch.tensor([*(codec.name_tokens[i] for i in order), EOS])
    seqs = _walk(grammar, forced, 300, _uniform(1))
    assert not any(t in codec.name_tokens for s in seqs for t in s)
    rows = codec.decode(seqs, spec, order=order)
    assert rows_valid(rows, spec)
    assert rows["u"].dropna().str.len().max() <= 3 and rows["t"].dropna().str.len().max() <= 6
    again = codec.encode(rows, np.tile(order, (len(rows), 1)))
    pd.testing.assert_frame_equal(codec.decode(again, spec, order=order), rows)
    length = max(map(len, again))
    tokens = torch.tensor([s + [PAD] * (length - len(s)) for s in again])
    allowed, _ = grammar.trace(tokens)
    assert bool(allowed.gather(2, tokens[:, 1:, None]).all())


def test_support_covers_every_allowed_token_and_forced_means_one_choice_per_row(tmp_path):
    for names in (True, False):
        spec = llm_spec(tmp_path, ALL_TYPES)
        codec = RowCodec.from_spec(spec, context_length=128, names=names)
        grammar, order = Grammar(codec), torch.tensor([*codec.name_tokens, EOS])
        pick, st, was_forced = _uniform(1), grammar.start(300), 0
        for _ in range(1, grammar.max_length):
            allowed = grammar.mask(st, order)
            support, forced = grammar.support(st, order)
            assert not bool(allowed[:, ~torch.isin(torch.arange(codec.vocab_size), support)].any())
            if forced:
                was_forced += 1
                assert bool((allowed.sum(1) == 1).all())
            grammar.advance(st, pick(allowed))
        assert was_forced > 0  # at least the padding after every row ended
