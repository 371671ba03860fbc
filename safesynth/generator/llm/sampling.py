"""Constrained, KV-cached, batched generation of rows (post-processing: reads no private data).

:func:`sample_tokens` is our own decoding loop over the KV cache (transformers 5.24 `cache=`): one forward call per token
position for the whole batch, the grammar's vectorised mask, rows that have finished are dropped from
the batch (and from the cache) so long texts do not drag finished rows along. Every generated row is
valid by construction. :func:`sample_tokens_generate` does the same with ``model.generate`` and
:class:`GrammarLogitsProcessor`; it is the baseline of ``bench/bench_speed.py``.

Determinism: for a fixed model, prompts and ``torch.Generator`` state the tokens are identical run to
run; the result also depends on the batch layout (rows per call), so callers fix it (see
:meth:`FittedLLM.sample <safesynth.generator.llm.backend.FittedLLM.sample>`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, GenerationConfig, GenerationMixin, LogitsProcessorList

from safesynth.errors import InternalError
from safesynth.generator.llm.encoding import PAD
from safesynth.generator.llm.grammar import END, Grammar, GrammarLogitsProcessor
from safesynth.generator.llm.model import LanguageModel, embedding_rows

__all__ = ["sample_tokens", "sample_tokens_generate"]

#: Drop finished rows from the batch once at least this share of the active rows has finished.
_COMPACT_SHARE = 0.125


def _draw(logits: torch.Tensor, allowed: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    forced = allowed.sum(1) == 1
    only = allowed.to(torch.int8).argmax(1)
    if bool(forced.all()):
        return only
    scores = (logits / temperature).masked_fill(~allowed, float("-inf"))
    drawn = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
    return torch.where(forced, only, drawn)


@torch.inference_mode()
def sample_tokens(
    lm: LanguageModel,
    grammar: Grammar,
    *,
    prompts: torch.Tensor,
    order: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Complete each prompt (codec ids, ``[B, P]``, starting with ``<bos>``) into a row.

    Returns:
        ``[B, grammar.max_length]`` codec ids: the prompt, the generated tokens, ``<eos>``, padding.
    """
    model, model_ids, identity = lm.model, lm.model_ids, lm.identity_vocab
    batch, plen = prompts.shape
    st = grammar.start(batch)
    for t in range(1, plen):
        grammar.advance(st, prompts[:, t])
    out = torch.full((batch, grammar.max_length), PAD, dtype=torch.long)
    out[:, :plen] = prompts
    cache = DynamicCache(config=model.config)
    ids = prompts if identity else model_ids[prompts]
    positions = torch.arange(plen).unsqueeze(0).expand(batch, -1).contiguous()
    logits = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    active = torch.arange(batch)
    for t in range(plen, grammar.max_length):
        if not identity:
            logits = logits.index_select(-1, model_ids)
        tokens = _draw(logits, grammar.mask(st, order), temperature, generator)
        out[active, t] = tokens
        grammar.advance(st, tokens)
        done = st.state == END
        if bool(done.all()):
            break
        if int(done.sum()) >= max(1, int(_COMPACT_SHARE * len(active))):
            keep = torch.nonzero(~done).squeeze(1)
            cache.batch_select_indices(keep)
            st, active, tokens = st.select(keep), active[keep], tokens[keep]
        step_ids = (tokens if identity else model_ids[tokens]).unsqueeze(1)
        logits = model(input_ids=step_ids, position_ids=torch.full((len(active), 1), t, dtype=torch.long),
                       cache=cache, use_cache=True).logits[:, -1]
    return out


@torch.inference_mode()
def sample_tokens_generate(
    lm: LanguageModel,
    grammar: Grammar,
    *,
    prompts: torch.Tensor,
    order: torch.Tensor,
    temperature: float,
    seed: int,
) -> torch.Tensor:
    """The same rows through ``model.generate`` + :class:`GrammarLogitsProcessor` (KV cache on)."""
    model = lm.model
    model_vocab = embedding_rows(model.get_output_embeddings())
    if not isinstance(model, GenerationMixin):
        raise InternalError(f"the model ({type(model).__name__}) must be a causal LM with `generate`")
    processor = GrammarLogitsProcessor(grammar, order=order, model_ids=lm.model_ids, model_vocab=model_vocab)
    pad = int(lm.model_ids[PAD])
    config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=temperature, use_cache=True,
                              max_new_tokens=grammar.max_length - prompts.shape[1], pad_token_id=pad,
                              eos_token_id=int(lm.model_ids[2]))
    ids = prompts if lm.identity_vocab else lm.model_ids[prompts]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                   logits_processor=LogitsProcessorList([processor]))
    ours = processor.to_ours[generated]
    out = torch.full((len(ours), grammar.max_length), PAD, dtype=torch.long)
    out[:, :ours.shape[1]] = ours
    return out
