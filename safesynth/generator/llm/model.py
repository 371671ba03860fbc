"""Building, loading and saving the causal LM behind the LLM generator (the only module that knows HF).

Default: a small Llama-style model built from ``generator`` (layers, hidden_size, heads, context_length)
with untied input/output embeddings (Opacus ghost clipping refuses tied ones), whose vocabulary is
exactly the codec's symbols, initialised from the spec's seed.

``generator.model``: a pretrained model resolved by :mod:`.pretrained` (a local checkpoint directory, a GGUF
file, a hub id already in the local cache or an alias such as ``smollm2-135m``) and loaded offline; the
codec's symbols that its tokenizer lacks are added as new tokens and the embeddings are resized. ``generator.lora``: wraps the model in LoRA adapters (needs ``peft``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
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
    "LanguageModel", "build_language_model", "embedding_rows", "load_language_model", "model_device",
    "norms_for_opacus", "torch_threads",
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


def load_language_model(source: ModelSource, symbols: tuple[str, ...], *, seed: int,
                        lora: bool = False) -> LanguageModel:
    """Load a resolved pretrained model + tokenizer offline and add the codec's symbols to its vocabulary.

    Raises:
        GeneratorError: the files cannot be loaded, or ``lora`` is asked without ``peft``.
    """
    model, tokenizer = load_pretrained(source, dtype=torch.float32)
    vocab = tokenizer.get_vocab()
    missing = [s for s in symbols if s not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if len(tokenizer) > embedding_rows(model.get_input_embeddings()):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        _untie(model)
    ids = tokenizer.convert_tokens_to_ids(list(symbols))
    if lora:
        model = _with_lora(model)
    return LanguageModel(model=model.eval(), tokenizer=tokenizer, model_ids=torch.tensor(ids, dtype=torch.long))


def _untie(model: PreTrainedModel) -> None:
    """Give the output layer its own weights (ghost clipping cannot clip tied parameters)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def _with_lora(model: PreTrainedModel) -> PreTrainedModel:
    if importlib.util.find_spec("peft") is None:
        raise GeneratorError("`generator.lora` (true) needs the optional package `peft`; install it or set lora: false")
    from peft import LoraConfig, get_peft_model

    # New symbol embeddings must be learned too: train the (untied) embeddings and head in full.
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                        exclude_modules=["lm_head"], modules_to_save=["lm_head", "embed_tokens"])
    with warnings.catch_warnings():
        # peft 0.21 still calls a transformers 5 deprecated alias; nothing we can change.
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*deprecated", FutureWarning)
        # peft is untyped; a PeftModel forwards PreTrainedModel's attributes to the model it wraps.
        wrapped: PreTrainedModel = get_peft_model(model, config)
    return wrapped


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """The plain model to save and sample (LoRA adapters merged in)."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model


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
