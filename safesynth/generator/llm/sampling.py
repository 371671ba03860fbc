"""Constrained, KV-cached, batched generation of rows (post-processing: reads no private data).

:func:`sample_tokens` is our own decoding loop: one model step per token position for the whole batch
(:class:`~safesynth.generator.llm.decoder.LlamaDecoder` for Llama models, else the HF forward with a
``DynamicCache``), the grammar's vectorised mask, inverse-CDF draws over the tokens some row may take,
no model step where every row's token is forced, and rows that have finished are dropped from the
batch (and from the cache) so long texts do not drag finished rows along. Every generated row is valid
by construction. It runs on the model's device and returns CPU tensors. :func:`sample_tokens_generate`
does the same with ``model.generate`` and :class:`GrammarLogitsProcessor`; it is the baseline of
``bench/bench_speed.py``.

Determinism: for a fixed model, prompts and ``torch.Generator`` state the tokens are identical run to
run; the result also depends on the batch layout (rows per call), so callers fix it (see
:meth:`FittedLLM.sample <safesynth.generator.llm.backend.FittedLLM.sample>`), and on the device type
(CPU and CUDA generators draw different streams).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, GenerationConfig, GenerationMixin, LogitsProcessorList

from safesynth.errors import InternalError
from safesynth.generator.llm.decoder import LlamaDecoder
from safesynth.generator.llm.encoding import PAD
from safesynth.generator.llm.grammar import END, Grammar, GrammarLogitsProcessor
from safesynth.generator.llm.model import LanguageModel, embedding_rows, model_device

__all__ = ["sample_tokens", "sample_tokens_generate"]

#: Drop finished rows from the batch once at least this share of the active rows has finished.
_COMPACT_SHARE = 0.125


def _draw(logits: torch.Tensor, allowed: torch.Tensor, temperature: float, generator: torch.Generator, *,
          support: torch.Tensor | None = None, forced: bool = False) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to ``allowed`` (``[B, V]``).

    With ``support`` (the token ids any row may take), ``logits`` are ``[B, len(support)]``, over those
    ids only. Inverse-CDF sampling: one uniform per row against the cumulative probabilities, ~20x
    cheaper than ``torch.multinomial`` over the vocabulary on a CPU. A masked token has probability 0, so its CDF interval is empty and it is never
    drawn; a row with one allowed token always gets it. With ``forced`` (every row has exactly one
    allowed token) no uniform is drawn.
    """
    if forced:
        return allowed.to(torch.int8).argmax(1)
    if support is not None:
        allowed = allowed.index_select(1, support)
    scores = logits.float() if temperature == 1.0 else logits.float() / temperature
    cdf = torch.softmax(torch.where(allowed, scores, float("-inf")), dim=-1).cumsum(-1)
    total = cdf[:, -1:]
    uniform = torch.rand((len(cdf), 1), generator=generator, device=generator.device).to(cdf.device)
    # u < total strictly (the product may round up to it), so the draw is always an allowed token.
    u = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    drawn = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return drawn if support is None else support[drawn]


class _HFDecoder:
    """Any causal LM through its HF forward and a ``DynamicCache`` (the fallback of :class:`LlamaDecoder`)."""

    def __init__(self, lm: LanguageModel, *, device: torch.device) -> None:
        self.model, self.identity = lm.model, lm.identity_vocab
        self.model_ids = lm.model_ids.to(device)
        self.cache = DynamicCache(config=self.model.config)
        self.length = 0

    def forward(self, tokens: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps = tokens.shape
        ids = tokens if self.identity else self.model_ids[tokens]
        positions = torch.arange(self.length, self.length + steps, device=tokens.device).expand(batch, -1)
        logits: torch.Tensor = self.model(input_ids=ids, position_ids=positions.contiguous(), cache=self.cache,
                                          use_cache=True, logits_to_keep=1).logits[:, -1]
        self.length += steps
        wanted = self.model_ids if columns is None else self.model_ids[columns]
        return logits.index_select(-1, wanted) if columns is not None or not self.identity else logits

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)


@torch.inference_mode()
def sample_tokens(
    lm: LanguageModel,
    grammar: Grammar,
    *,
    prompts: torch.Tensor,
    order: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    fast: bool = True,
) -> torch.Tensor:
    """Complete each prompt (codec ids, ``[B, P]``, starting with ``<bos>``) into a row.

    Runs on the model's device (``generator`` should live there too); ``fast`` uses
    :class:`~safesynth.generator.llm.decoder.LlamaDecoder` when the model is a Llama it reproduces
    exactly, else the model's HF forward with a ``DynamicCache`` (same logits, more overhead per token).

    Returns:
        ``[B, grammar.max_length]`` codec ids on the CPU: the prompt, the generated tokens, ``<eos>``, padding.
    """
    device = model_device(lm.model)
    grammar = grammar.to(device)
    prompts, order = prompts.to(device), order.to(device)
    batch, plen = prompts.shape
    st = grammar.start(batch)
    for t in range(1, plen):
        grammar.advance(st, prompts[:, t])
    out = torch.full((batch, grammar.max_length), PAD, dtype=torch.long, device=device)
    out[:, :plen] = prompts
    decoder = LlamaDecoder.for_model(lm.model, model_ids=lm.model_ids, batch=batch,
                                     max_length=grammar.max_length) if fast else None
    step = decoder if decoder is not None else _HFDecoder(lm, device=device)
    active: torch.Tensor | None = None  # rows still in the batch (None: all of them)
    pending: torch.Tensor | None = prompts  # tokens not fed to the model yet ([rows, n])
    logits = torch.empty(0)
    for t in range(plen, grammar.max_length):
        support, forced = grammar.support(st, order)
        if pending is not None and not forced:
            # Logits are needed only where some row has a choice, and only for the tokens some row may
            # take: forced tokens (the final <eos>, ...) are fed with the next token that needs logits,
            # or never when the rows end first.
            logits, pending = step.forward(pending, support), None
        tokens = _draw(logits, grammar.mask(st, order), temperature, generator, support=support, forced=forced)
        if active is None:
            out[:, t] = tokens
        else:
            out[active, t] = tokens
        grammar.advance(st, tokens)
        done = st.state == END
        finished = int(done.sum())
        if finished == len(done):
            break
        if finished >= max(1, int(_COMPACT_SHARE * len(done))):
            keep = torch.nonzero(~done).squeeze(1)
            step.select(keep)
            st, tokens = st.select(keep), tokens[keep]
            pending = None if pending is None else pending[keep]
            active = keep if active is None else active[keep]
        pending = tokens[:, None] if pending is None else torch.cat([pending, tokens[:, None]], dim=1)
    return out.cpu()


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
