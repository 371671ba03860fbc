"""Building, loading and saving the causal LM behind the LLM generator (the only module that knows HF).

Default: a small Llama-style model built from ``generator`` (layers, hidden_size, heads, context_length)
with untied input/output embeddings (Opacus ghost clipping refuses tied ones), whose vocabulary is
exactly the codec's symbols, initialised from the spec's seed.

``generator.model``: a pretrained model resolved by :mod:`.pretrained` (a local checkpoint directory, a GGUF
file, a hub id already in the local cache or an alias such as ``smollm2-135m``) and loaded offline. Its own
tokenizer writes text cells (:class:`TokenizerText`); the codec's other symbols that it lacks are added as new
tokens and the embeddings are resized and untied. ``generator.lora``: LoRA adapters (rank 8) on every linear
layer but the output (needs ``peft``); the pretrained embedding and output rows stay frozen and only the rows
of the new tokens are trained, held as two small layers while training (:class:`NewRowsEmbedding`,
:class:`NewRowsHead`) so Opacus computes per-record gradients of ``new_rows x hidden`` values, not of the
whole ``vocab x hidden`` matrices; :func:`merged` folds them and the adapters back into a plain model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from safesynth.errors import GeneratorError
from safesynth.generator.llm.pretrained import ModelSource, load_pretrained
from safesynth.spec import LLMGeneratorSpec

__all__ = [
    "LanguageModel", "NewRowsEmbedding", "NewRowsHead", "TokenizerText", "build_language_model", "embedding_rows",
    "extend_language_model", "load_language_model", "merged", "model_device", "norms_for_opacus", "torch_threads",
]

#: SwiGLU width relative to hidden_size (Llama uses ~2.7; 2 is enough for rows of a table).
_FFN_RATIO = 2


@dataclass(slots=True, kw_only=True)
class LanguageModel:
    """A causal LM and its tokenizer; ``model_ids[i]`` is the model's id of codec symbol ``i``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_ids: torch.Tensor

    @property
    def identity_vocab(self) -> bool:
        """Whether codec ids are model ids (a model built for this codec): no logits gather needed."""
        vocab = embedding_rows(self.model.get_output_embeddings())
        return vocab == len(self.model_ids) and bool((self.model_ids == torch.arange(vocab)).all())


def embedding_rows(layer: nn.Module | None) -> int:
    """The vocabulary size of an embedding or output layer (the rows of its weight matrix)."""
    if isinstance(layer, NewRowsEmbedding | NewRowsHead):
        layer = layer.base  # its rows: the pretrained ones and (stale while training) the new ones
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise GeneratorError(f"the model's embedding layer ({type(layer).__name__}) has no weight matrix")
    return int(weight.shape[0])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs and generators must live)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _tokenizer(symbols: tuple[str, ...]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    # A vocabulary holder: rows are encoded by the codec, never by tokenizing text.
    tok = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(symbols)}, unk_token="<null>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_language_model(gen: LLMGeneratorSpec, symbols: tuple[str, ...], *, seed: int) -> LanguageModel:
    """A fresh Llama-style model for ``symbols``; weights drawn from ``seed`` (global RNG untouched)."""
    if gen.hidden_size % gen.heads:
        raise GeneratorError(f"`generator.hidden_size` ({gen.hidden_size}) must be a multiple of `heads` ({gen.heads})")
    config = LlamaConfig(
        vocab_size=len(symbols), hidden_size=gen.hidden_size, intermediate_size=_FFN_RATIO * gen.hidden_size,
        num_hidden_layers=gen.layers, num_attention_heads=gen.heads, num_key_value_heads=gen.heads,
        max_position_embeddings=gen.context_length, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    return LanguageModel(model=model.eval(), tokenizer=_tokenizer(symbols), model_ids=torch.arange(len(symbols)))


class TokenizerText:
    """A pretrained tokenizer's base vocabulary as the codec's text tokens (:class:`.encoding.TextTokens`).

    Encodes with a snapshot of the tokenizer taken here, so tokens added later (the codec's symbols) are
    never produced from a text; ids outside the base vocabulary or special are dropped from encodings.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise GeneratorError(f"the model's tokenizer ({type(tokenizer).__name__}) must be a fast (tokenizers) one")
        self._tok = Tokenizer.from_str(backend.to_str())
        self._size = int(tokenizer.vocab_size)
        added = [int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})]
        self._specials = tuple(sorted({i for i in [*tokenizer.all_special_ids, *added] if 0 <= i < self._size}))
        self._bos = tokenizer.bos_token if isinstance(tokenizer.bos_token, str) else None
        self._eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
        self._names = tokenizer.convert_ids_to_tokens(list(range(self._size)))
        if len(set(self._names)) != self._size:
            raise GeneratorError("the model's tokenizer must name each of its base tokens once")

    @property
    def size(self) -> int:
        return self._size

    @property
    def specials(self) -> tuple[int, ...]:
        return self._specials

    @property
    def bos(self) -> str | None:
        return self._bos

    @property
    def eos(self) -> str | None:
        return self._eos

    def tokens(self) -> list[str]:
        return list(self._names)

    def encode(self, texts: list[str]) -> list[list[int]]:
        skip = set(self._specials)
        encoded = self._tok.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        return [[i for i in e.ids if i < self._size and i not in skip] for e in encoded]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=False))


def load_language_model(source: ModelSource, symbols: tuple[str, ...], *, seed: int,
                        lora: bool = False) -> LanguageModel:
    """Load a resolved pretrained model + tokenizer offline and add the codec's symbols to its vocabulary.

    Raises:
        GeneratorError: the files cannot be loaded, or ``lora`` is asked without ``peft``.
    """
    model, tokenizer = load_pretrained(source, dtype=torch.float32)
    return extend_language_model(model, tokenizer, symbols, seed=seed, lora=lora)


def extend_language_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, symbols: tuple[str, ...], *,
                          seed: int, lora: bool = False) -> LanguageModel:
    """Add the codec's missing symbols to a loaded model's vocabulary, untie, and wrap for LoRA.

    Raises:
        GeneratorError: ``lora`` is asked without ``peft``.
    """
    first_new = min(len(tokenizer), embedding_rows(model.get_input_embeddings()))
    vocab = tokenizer.get_vocab()
    missing = [s for s in symbols if s not in vocab]
    readings = _readings(tokenizer, missing)
    if missing:
        tokenizer.add_tokens(missing)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if len(tokenizer) > embedding_rows(model.get_input_embeddings()):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        _untie(model)
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    _init_rows(model, new_ids if isinstance(new_ids, list) else [new_ids], readings)
    ids = tokenizer.convert_tokens_to_ids(list(symbols))
    if lora:
        model = _with_lora(model, first_new=first_new)
    return LanguageModel(model=model.eval(), tokenizer=tokenizer, model_ids=torch.tensor(ids, dtype=torch.long))


def _readings(tokenizer: PreTrainedTokenizerBase, symbols: list[str]) -> list[list[int]]:
    """Each new symbol's meaning in the model's own tokens (public: from the spec's names and labels).

    ``<eot>`` reads as the model's end-of-sequence token, ``<d07>`` as ``07``, ``<col:age>`` as ``age``,
    ``<dept=Tops>`` as ``Tops``, ``<null>`` as ``null``; ``<pad>`` and bytes read as nothing.
    """
    eos = tokenizer.eos_token_id
    texts: list[str] = []
    for symbol in symbols:
        inner = symbol[1:-1] if symbol.startswith("<") and symbol.endswith(">") else ""
        if inner.startswith("col:"):
            texts.append(inner[4:])
        elif "=" in inner:
            texts.append(inner.split("=", 1)[1])
        elif inner in ("null",) or (len(inner) == 3 and inner[0] == "d" and inner[1:].isdigit()):
            texts.append(inner.lstrip("d"))
        else:
            texts.append("")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = [list(i) for i in ids]
    for k, symbol in enumerate(symbols):
        if symbol == "<eot>" and isinstance(eos, int):
            out[k] = [eos]
    return out


@torch.no_grad()
def _init_rows(model: PreTrainedModel, ids: list[int], readings: list[list[int]]) -> None:
    """Start each new token's embedding and output rows at the mean of its reading's rows (when it has one).

    A new token then begins close to what it means (``<eot>`` ends a text as the model's EOS ends a message),
    so the few steps DP-SGD can afford go to the table, not to learning the new tokens from random rows.
    """
    embed, head = getattr(model.get_input_embeddings(), "weight", None), getattr(model.get_output_embeddings(),
                                                                                  "weight", None)
    if not isinstance(embed, torch.Tensor):
        return
    for row, reading in zip(ids, readings, strict=True):
        known = [i for i in reading if i < row]
        if not known:
            continue
        embed[row] = embed[known].mean(0)
        if isinstance(head, torch.Tensor) and head is not embed:
            head[row] = head[known].mean(0)


def _untie(model: PreTrainedModel) -> None:
    """Give the output layer its own weights (ghost clipping cannot clip tied parameters)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


class NewRowsEmbedding(nn.Module):
    """An embedding whose rows from ``first`` on (the added tokens) are a separate, trainable ``nn.Embedding``.

    The pretrained rows stay frozen in ``base``; Opacus sees one small embedding it has a per-sample rule for.
    """

    base: nn.Embedding
    new: nn.Embedding
    first: int

    def __init__(self, base: nn.Embedding, first: int) -> None:
        super().__init__()
        self.base, self.first = base, first
        self.new = nn.Embedding(base.num_embeddings - first, base.embedding_dim,
                                device=base.weight.device, dtype=base.weight.dtype)
        self.new.weight = nn.Parameter(base.weight.detach()[first:].clone())
        base.weight.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        old = self.base(ids.clamp(max=self.first - 1))
        fresh = self.new((ids - self.first).clamp(min=0))  # rows of old tokens get zero gradient (where)
        return torch.where((ids >= self.first).unsqueeze(-1), fresh, old)

    def folded(self) -> nn.Embedding:
        with torch.no_grad():
            self.base.weight[self.first:] = self.new.weight
        return self.base


class NewRowsHead(nn.Module):
    """An output layer whose rows from ``first`` on are a separate, trainable ``nn.Linear`` (no bias)."""

    base: nn.Linear
    new: nn.Linear
    first: int

    def __init__(self, base: nn.Linear, first: int) -> None:
        super().__init__()
        if base.bias is not None:
            raise GeneratorError("the model's output layer must have no bias for LoRA")
        self.base, self.first = base, first
        self.new = nn.Linear(base.in_features, base.out_features - first, bias=False,
                             device=base.weight.device, dtype=base.weight.dtype)
        self.new.weight = nn.Parameter(base.weight.detach()[first:].clone())
        base.weight.requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.linear(hidden, self.base.weight[:self.first]), self.new(hidden)], dim=-1)

    def folded(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight[self.first:] = self.new.weight
        return self.base


def _with_lora(model: PreTrainedModel, *, first_new: int) -> PreTrainedModel:
    if importlib.util.find_spec("peft") is None:
        raise GeneratorError("`generator.lora` (true) needs the optional package `peft`; install it or set lora: false")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                        exclude_modules=["lm_head"])
    with warnings.catch_warnings():
        # peft 0.21 still calls a transformers 5 deprecated alias; nothing we can change.
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*deprecated", FutureWarning)
        # A PeftModel forwards PreTrainedModel's attributes to the model it wraps.
        wrapped = cast(PreTrainedModel, get_peft_model(model, config))
    # The added tokens' rows must be learned too; peft's modules_to_save would train (and Opacus clip)
    # the whole vocab x hidden matrices: train only the new rows (frozen by get_peft_model until here).
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if first_new < embedding_rows(embed) and isinstance(embed, nn.Embedding) and isinstance(head, nn.Linear):
        model.set_input_embeddings(NewRowsEmbedding(embed, first_new))
        model.set_output_embeddings(NewRowsHead(head, first_new))
    return wrapped


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """The plain model to save and sample (LoRA adapters merged in, new-row layers folded back)."""
    merge = getattr(model, "merge_and_unload", None)
    plain: PreTrainedModel = merge() if callable(merge) else model
    embed, head = plain.get_input_embeddings(), plain.get_output_embeddings()
    if isinstance(embed, NewRowsEmbedding):
        plain.set_input_embeddings(embed.folded())
    if isinstance(head, NewRowsHead):
        plain.set_output_embeddings(head.folded())
    return plain


@contextlib.contextmanager
def norms_for_opacus(model: nn.Module) -> Iterator[None]:
    """Swap HF RMSNorm modules for ``torch.nn.RMSNorm`` (same maths, same weights) while training.

    Opacus has per-sample gradient rules for ``nn.RMSNorm`` but not for model-specific classes such as
    ``LlamaRMSNorm``, which would fall back to functorch (about 3x slower with ghost clipping). The trained
    weights are copied back, so the saved checkpoint is an ordinary HF model.
    """
    swaps: list[tuple[nn.Module, str, nn.Module, nn.RMSNorm]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            eps = getattr(child, "variance_epsilon", getattr(child, "eps", None))
            weight = getattr(child, "weight", None)
            if (type(child).__name__.endswith("RMSNorm") and not isinstance(child, nn.RMSNorm)
                    and isinstance(weight, nn.Parameter) and weight.dim() == 1 and eps is not None
                    and not hasattr(child, "bias")):
                new = nn.RMSNorm(weight.shape[0], eps=float(eps))
                new.weight = weight
                setattr(parent, name, new)
                swaps.append((parent, name, child, new))
    try:
        yield
    finally:
        for parent, name, original, new in swaps:
            original.weight = new.weight
            setattr(parent, name, original)


@contextlib.contextmanager
def torch_threads() -> Iterator[int]:
    """Use every core this process may run on (``SAFESYNTH_TORCH_THREADS`` overrides), then restore."""
    before = torch.get_num_threads()
    wanted = os.environ.get("SAFESYNTH_TORCH_THREADS")
    threads = int(wanted) if wanted else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
