"""The row grammar as a small DFA in tensors: which token may come next, for a whole batch at once.

States (one row of ``allowed``/``trans`` each): ``END`` (after ``<eos>``: only padding), ``SEP`` (a column
name or ``<eos>`` comes next) and a few per column: one for a category; ``(digit position, tight)`` pairs
for a number, where *tight* means "every digit so far equals the upper bound's", so the digits never
exceed the declared maximum; nine UTF-8 states for a text (start, between characters, and the seven
continuation states of RFC 3629's well-formed byte sequences). Text length limits are two counters per
row (characters and bytes of the current text), not states. A BPE text (a codec with a pretrained model's
tokenizer) has two states (start, inside): any of the tokenizer's non-special tokens or ``<eot>``, with
the character counter counting tokens up to the column's token cap.

Sampling forces the column order: at ``SEP`` only the next column of ``order`` (or ``<eos>``) is allowed.
Without column-name tokens (a codec with ``names=False``) the order is built in: finishing a value moves
straight to the first state of the next column.
Training uses the same table without forcing and scores only value positions (column names and padding
carry no loss), so the model learns exactly the masked distribution it is sampled from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor

from safesynth.errors import InternalError
from safesynth.generator.llm.encoding import (
    BASE,
    BYTE0,
    DIGIT0,
    EOS,
    EOT,
    NULL,
    PAD,
    CategoryCodec,
    NumberCodec,
    RowCodec,
    TextCodec,
)

__all__ = ["END", "SEP", "Grammar", "GrammarLogitsProcessor", "GrammarState"]

END, SEP = 0, 1
_NO_LIMIT = 1 << 40


@dataclass(slots=True)
class GrammarState:
    """Per-row DFA state, column counter and text counters (all ``[B]`` int64 tensors)."""

    state: torch.Tensor
    k: torch.Tensor
    chars: torch.Tensor
    nbytes: torch.Tensor

    def select(self, index: torch.Tensor) -> GrammarState:
        return GrammarState(state=self.state[index], k=self.k[index], chars=self.chars[index],
                            nbytes=self.nbytes[index])


class _Builder:
    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.allowed: list[np.ndarray] = []
        self.trans: list[np.ndarray] = []
        self.text: list[bool] = []
        self.max_chars: list[int] = []
        self.max_bytes: list[int] = []
        self.col: list[int] = []
        self.column = -1  # the column whose states are being added

    def new(self, *, text: TextCodec | None = None) -> int:
        self.col.append(self.column)
        self.allowed.append(np.zeros(self.vocab, dtype=bool))
        self.trans.append(np.full(self.vocab, END, dtype=np.int64))
        self.text.append(text is not None)
        self.max_chars.append(text.max_chars if text else _NO_LIMIT)
        self.max_bytes.append(text.max_bytes if text else _NO_LIMIT)
        return len(self.allowed) - 1

    def edge(self, src: int, tokens: list[int] | range | np.ndarray, dst: int) -> None:
        self.allowed[src][tokens] = True
        self.trans[src][tokens] = dst


def _category(b: _Builder, codec: CategoryCodec) -> int:
    start = b.new()
    b.edge(start, list(codec.tokens), SEP)
    return start


def _number(b: _Builder, codec: NumberCodec) -> int:
    bound = codec.bound_digits
    states = [[b.new(), b.new()] for _ in range(codec.width)]  # [pos][tight]
    for pos in range(codec.width):
        last = pos == codec.width - 1
        for tight in (0, 1):
            src = states[pos][tight]
            top = bound[pos] if tight else BASE - 1
            for digit in range(top + 1):
                dst = SEP if last else states[pos + 1][int(tight and digit == bound[pos])]
                b.edge(src, [DIGIT0 + digit], dst)
    return states[0][1]


def _text(b: _Builder, codec: TextCodec) -> int:
    start, u0, u1, u2, u3, e0, ed, f0, f4 = (b.new(text=codec) for _ in range(9))

    def byte(lo: int, hi: int) -> np.ndarray:
        return np.arange(BYTE0 + lo, BYTE0 + hi + 1)

    for src in (start, u0):
        b.edge(src, [EOT], SEP)
        b.edge(src, byte(0x00, 0x7F), u0)
        b.edge(src, byte(0xC2, 0xDF), u1)
        b.edge(src, [BYTE0 + 0xE0], e0)
        b.edge(src, np.r_[byte(0xE1, 0xEC), byte(0xEE, 0xEF)], u2)
        b.edge(src, [BYTE0 + 0xED], ed)
        b.edge(src, [BYTE0 + 0xF0], f0)
        b.edge(src, byte(0xF1, 0xF3), u3)
        b.edge(src, [BYTE0 + 0xF4], f4)
    b.edge(u1, byte(0x80, 0xBF), u0)
    b.edge(u2, byte(0x80, 0xBF), u1)
    b.edge(u3, byte(0x80, 0xBF), u2)
    b.edge(e0, byte(0xA0, 0xBF), u1)
    b.edge(ed, byte(0x80, 0x9F), u1)
    b.edge(f0, byte(0x90, 0xBF), u2)
    b.edge(f4, byte(0x80, 0x8F), u2)
    return start


def _bpe_text(b: _Builder, codec: TextCodec, words: np.ndarray) -> int:
    """Start and inside states of a BPE text: ``words`` (codec ids) until ``<eot>``; the cap is a counter."""
    start, inside = b.new(text=codec), b.new(text=codec)
    for src in (start, inside):
        b.edge(src, [EOT], SEP)
        b.edge(src, words, inside)
    b.max_bytes[start] = b.max_bytes[inside] = _NO_LIMIT  # the token cap is max_chars (see Grammar)
    b.max_chars[start] = b.max_chars[inside] = codec.max_bytes
    return start


def _bpe_words(codec: RowCodec) -> np.ndarray:
    """Codec ids of the tokenizer's tokens a text may contain (every one but its special tokens)."""
    if codec.text is None:
        return np.zeros(0, dtype=np.int64)
    ok = np.ones(codec.text.size, dtype=bool)
    ok[list(codec.text.specials)] = False
    return BYTE0 + np.flatnonzero(ok)


def _lead_lengths(vocab: int, has_text: bool) -> np.ndarray:
    out = np.zeros(vocab, dtype=np.int64)
    if has_text:
        lengths = np.zeros(256, dtype=np.int64)
        lengths[0x00:0x80], lengths[0xC2:0xE0], lengths[0xE0:0xF0], lengths[0xF0:0xF5] = 1, 2, 3, 4
        out[BYTE0:BYTE0 + 256] = lengths
    return out


class Grammar:
    """Allowed-next-token masks and transitions for every row of a batch, as tensor lookups."""

    def __init__(self, codec: RowCodec, *, order: list[int] | tuple[int, ...] | None = None) -> None:
        vocab = codec.vocab_size
        b = _Builder(vocab)
        end, sep = b.new(), b.new()
        if (end, sep) != (END, SEP):
            raise InternalError(f"the grammar's first states ({end}, {sep}) must be END ({END}) and SEP ({SEP})")
        b.edge(END, [PAD], END)
        b.edge(SEP, [EOS], END)
        starts = []
        words = _bpe_words(codec)
        for index, (name_token, column) in enumerate(zip(codec.name_tokens, codec.columns, strict=True)):
            b.column = index
            if isinstance(column, CategoryCodec):
                start = _category(b, column)
            elif isinstance(column, NumberCodec):
                start = _number(b, column)
            elif column.bpe is not None:
                start = _bpe_text(b, column, words)
            else:
                start = _text(b, column)
            if column.nullable:
                b.edge(start, [NULL], SEP)
            b.edge(SEP, [name_token], start)
            starts.append(start)
        # Without name tokens the column order is part of the grammar: leaving a value jumps straight to
        # the start state of the next column (an epsilon move), and only <eos> follows the last one.
        self.names = codec.names
        self.starts = torch.tensor(starts)
        self.order = torch.tensor(list(range(len(starts))) if order is None else list(order))
        if not self.names and sorted(self.order.tolist()) != list(range(len(starts))):
            raise ValueError("`order` must list every column once")
        self.state_col = torch.tensor(b.col)
        has_text = any(isinstance(c, TextCodec) for c in codec.columns)
        self.allowed = torch.from_numpy(np.stack(b.allowed))
        self.single = self.allowed.sum(1) == 1  # states with one way on (before any length limit or order)
        self.trans = torch.from_numpy(np.stack(b.trans))
        self.is_text = torch.tensor(b.text)
        self.max_chars = torch.tensor(b.max_chars)
        self.max_bytes = torch.tensor(b.max_bytes)
        self.is_byte = torch.zeros(vocab, dtype=torch.bool)
        if codec.text is not None:
            # BPE: every token of a text counts as one "character" against the column's token cap.
            self.lead_len = torch.zeros(vocab, dtype=torch.long)
            self.is_lead = torch.zeros(vocab, dtype=torch.bool)
            self.is_lead[torch.from_numpy(words)] = True
        else:
            self.lead_len = torch.from_numpy(_lead_lengths(vocab, has_text))
            self.is_lead = self.lead_len > 0
            if has_text:
                self.is_byte[BYTE0:BYTE0 + 256] = True
        self.is_name = torch.zeros(vocab, dtype=torch.bool)
        self.is_name[list(codec.name_tokens)] = True
        self.has_text = has_text
        self.max_length = codec.max_length
        self.vocab_size = vocab

    @property
    def num_states(self) -> int:
        return int(self.allowed.shape[0])

    @property
    def device(self) -> torch.device:
        return self.allowed.device

    def to(self, device: torch.device | str) -> Grammar:
        """This grammar with its tables on ``device`` (``self`` when they are there already)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
        return moved

    def start(self, batch: int) -> GrammarState:
        """The state after ``<bos>`` (on the grammar's device)."""
        zeros = torch.zeros(batch, dtype=torch.long, device=self.device)
        st = GrammarState(state=torch.full((batch,), SEP, dtype=torch.long, device=self.device), k=zeros,
                          chars=zeros.clone(), nbytes=zeros.clone())
        if not self.names:
            self._enter_next(st)
        return st

    def _enter_next(self, st: GrammarState) -> None:
        jump = (st.state == SEP) & (st.k < len(self.order))
        if bool(jump.any()):
            nxt = self.starts[self.order[st.k.clamp(max=len(self.order) - 1)]]
            st.state = torch.where(jump, nxt, st.state)
            st.k = st.k + jump.long()

    def mask(self, st: GrammarState, order: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, V]`` bool: tokens allowed next. With ``order`` (name tokens then ``<eos>``), ``SEP`` is forced."""
        allowed = self.allowed[st.state]
        if self.has_text:
            text = self.is_text[st.state]
            if bool(text.any()):
                over = (st.chars + 1 > self.max_chars[st.state])[:, None] | (
                    st.nbytes[:, None] + self.lead_len[None, :] > self.max_bytes[st.state][:, None])
                allowed = allowed & ~(text[:, None] & self.is_lead[None, :] & over)
        if order is not None:
            sep = st.state == SEP
            if bool(sep.any()):
                forced = torch.zeros_like(allowed)
                forced[torch.arange(len(forced), device=forced.device), order[st.k.clamp(max=len(order) - 1)]] = True
                allowed = torch.where(sep[:, None], forced, allowed)
        return allowed

    def support(self, st: GrammarState, order: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """Token ids some row may take next (a superset of the union of :meth:`mask`'s rows with the
        same ``order``), and whether :meth:`mask` certainly allows a single token in every row.
        """
        present = torch.bincount(st.state, minlength=self.num_states) > 0
        forced_sep = order is not None and bool(present[SEP])
        if forced_sep:  # with a forced order a row at SEP has one way on: the next column's name (or <eos>)
            present[SEP] = False
        union = self.allowed[present].any(0)
        if forced_sep and order is not None:
            union[order[st.k[st.state == SEP].clamp(max=len(order) - 1)]] = True
        return torch.nonzero(union).squeeze(1), bool(self.single[present].all())

    def advance(self, st: GrammarState, tokens: torch.Tensor) -> None:
        """Consume one token per row (in place)."""
        new = self.trans[st.state, tokens]
        st.k += self.is_name[tokens].long()
        old = st.state
        st.state = new
        if not self.names:
            self._enter_next(st)
        if self.has_text:
            # Count within one text value; a new column (even another text column) starts from zero.
            keep = self.is_text[st.state] & (self.state_col[st.state] == self.state_col[old])
            st.chars = torch.where(keep, st.chars + self.is_lead[tokens].long(), 0)
            st.nbytes = torch.where(keep, st.nbytes + self.is_byte[tokens].long(), 0)

    def accepts(self, st: GrammarState, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` bool: whether each row may take its token next."""
        return self.mask(st, order).gather(1, tokens[:, None]).squeeze(1)

    def trace(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For teacher forcing: masks ``[B, T-1, V]`` for predicting ``tokens[:, 1:]`` and which are scored.

        Position t is scored when it predicts part of a value (not a column name, ``<eos>`` or padding).
        """
        batch, length = tokens.shape
        st = self.start(batch)
        masks, scored = [], []
        for t in range(length - 1):
            masks.append(self.mask(st))
            scored.append(st.state > SEP)
            self.advance(st, tokens[:, t + 1])
        return torch.stack(masks, 1), torch.stack(scored, 1)


class GrammarLogitsProcessor(LogitsProcessor):
    """The grammar as a ``transformers`` logits processor (used with ``model.generate``).

    Keeps the batch's DFA state between calls; one vectorised mask per step, no per-row Python.
    """

    def __init__(self, grammar: Grammar, *, order: torch.Tensor, model_ids: torch.Tensor, model_vocab: int) -> None:
        self.grammar = grammar
        self.order = order
        self.model_ids = model_ids
        self.to_ours = torch.full((model_vocab,), PAD, dtype=torch.long)
        self.to_ours[model_ids] = torch.arange(len(model_ids))
        # With a pretrained tokenizer <bos>/<eos> are also in its BPE block: they read as ours.
        self.to_ours[model_ids[:BYTE0]] = torch.arange(BYTE0)
        self.state: GrammarState | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ours = self.to_ours[input_ids]
        if self.state is None:
            self.state = self.grammar.start(len(ours))
            for t in range(1, ours.shape[1]):
                self.grammar.advance(self.state, ours[:, t])
        else:
            self.grammar.advance(self.state, ours[:, -1])
        allowed = self.grammar.mask(self.state, self.order)
        # A model id may stand for two codec ids (a pretrained <eos> is also in its BPE block): allowed if
        # either is, so the mask is summed into model ids rather than assigned.
        votes = torch.zeros(scores.shape, dtype=torch.long, device=scores.device)
        votes.index_add_(1, self.model_ids.to(scores.device), allowed.long())
        return scores.masked_fill(votes == 0, float("-inf"))
