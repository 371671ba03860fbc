"""A lean decoder for Llama-architecture models over a static KV cache (inference only).

At the default model size (2 layers, width 64) one HF forward call per token costs far more in Python
and module dispatch (``DynamicCache``, mask building, rotary recomputation, ~40 ``nn.Module`` calls)
than in arithmetic. :class:`LlamaDecoder` reads the weights of a ``LlamaForCausalLM`` once and runs
the same maths with a handful of tensor calls per layer:

* q, k and v projections fused into one matrix product, gate and up projections into another, each
  RMSNorm's scale folded into the matrix after it, residual additions done by ``addmm``;
* rotary ``cos``/``sin`` computed once for every position by the model's own rotary module (so every
  RoPE type whose tables depend only on the position is reproduced exactly) and applied as one complex
  product: the q and k rows of each head are stored with the two halves that ``rotate_half`` pairs
  interleaved (the same order for q and k, so every q.k product is unchanged);
* a preallocated cache ``[max_length, B, kv_heads, 1, head_dim]`` per layer (position-major, so a
  step writes one contiguous block) attended on its filled prefix: every row of a batch sits at the
  same position, so no attention mask is built; grouped-query attention broadcasts the kv heads;
* embedding and output rows restricted to the codec's symbols (``model_ids``), so the logits come
  out in codec ids and a pretrained model's large vocabulary costs nothing per step.

:meth:`LlamaDecoder.for_model` returns ``None`` for anything it does not reproduce exactly (another
architecture, attention or MLP biases, an activation other than SiLU, a position-dependent RoPE
such as ``dynamic`` or ``longrope``, a model in training mode); callers then use the HF forward.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch.nn import functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm

from safesynth.errors import InternalError

__all__ = ["LlamaDecoder"]

#: RoPE types whose cos/sin tables depend only on the position (``dynamic``/``longrope`` do not).
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})
#: Up to this many cached positions attention is computed by broadcasting, beyond by SDPA.
_SHORT = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layer:
    """One decoder layer's weights; each RMSNorm's scale is folded into the projection that follows it."""

    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    out_t: torch.Tensor  # [heads * head_dim, hidden] (transposed for addmm)
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down_t: torch.Tensor  # [intermediate, hidden]


def _rope_type(config: object) -> str | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        kind = params.get("rope_type", "default")
        return kind if isinstance(kind, str) else None
    return None


def _layers(model: LlamaForCausalLM) -> list[LlamaDecoderLayer]:
    return [layer for layer in model.model.layers if isinstance(layer, LlamaDecoderLayer)]


def _rotation(model: LlamaForCausalLM, max_length: int) -> torch.Tensor | None:
    """``cos + i sin`` per position and rotated pair (``[max_length, head_dim / 2]`` complex), from the
    model's own rotary module; ``None`` unless its tables repeat over the two halves (HF's layout)."""
    weight = model.model.embed_tokens.weight
    positions = torch.arange(max_length, device=weight.device)[None]
    cos, sin = model.model.rotary_emb(weight[:1, None].detach().float(), positions)
    cos, sin = cos[0].float(), sin[0].float()
    half = cos.shape[-1] // 2
    if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        return None
    return torch.complex(cos[:, :half], sin[:, :half])


def _interleave_halves(weight: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rows of each head reordered ``x1[0], x2[0], x1[1], x2[1], ...`` (``x1``, ``x2``: its two halves)."""
    half = head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    index = (torch.arange(heads)[:, None] * head_dim + order[None]).flatten().to(weight.device)
    return weight.index_select(0, index)


def _supported(model: torch.nn.Module) -> TypeGuard[LlamaForCausalLM]:
    """Whether ``model`` is a plain HF ``LlamaForCausalLM`` whose maths this module reproduces exactly."""
    if type(model) is not LlamaForCausalLM or model.training:
        return False
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    if (getattr(config, "model_type", None) != "llama" or getattr(config, "hidden_act", None) != "silu"
            or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
            or getattr(config, "pretraining_tp", 1) not in (None, 1) or _rope_type(config) not in _STATIC_ROPE
            or rope.get("partial_rotary_factor", 1.0) != 1.0
            or config.num_attention_heads % (config.num_key_value_heads or config.num_attention_heads)):
        return False
    layers = list(model.model.layers)
    if (len(layers) != config.num_hidden_layers or len(_layers(model)) != len(layers)
            or type(model.model.norm) is not LlamaRMSNorm):
        return False
    for layer in _layers(model):
        if (type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention
                or type(layer.mlp) is not LlamaMLP or type(layer.input_layernorm) is not LlamaRMSNorm
                or type(layer.post_attention_layernorm) is not LlamaRMSNorm
                or layer.self_attn.head_dim % 2):
            return False
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear) and head.bias is None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A model's weights rearranged for :class:`LlamaDecoder`: computed once per model and weights version."""

    device: torch.device
    dtype: torch.dtype
    embed: torch.Tensor
    head: torch.Tensor
    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    layers: list[_Layer]
    rotation: torch.Tensor


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[Any, ...], _Prepared]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _prepared(model: LlamaForCausalLM, model_ids: torch.Tensor, max_length: int) -> _Prepared:
    """The rearranged weights, cached per model: a shard's batches (and later shards) reuse them.

    The key holds every parameter's in-place version counter, so training the model again invalidates it.
    """
    key = (tuple(model_ids.tolist()), max_length,
           tuple((id(p), p._version, p.device, p.dtype) for p in model.parameters()))
    with _CACHE_LOCK:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    prepared = _prepare(model, model_ids, max_length)
    with _CACHE_LOCK:
        _CACHE[model] = (key, prepared)
    return prepared


@torch.no_grad()
def _prepare(model: LlamaForCausalLM, model_ids: torch.Tensor, max_length: int) -> _Prepared:
    inner = model.model
    layers = _layers(model)
    weight = inner.embed_tokens.weight
    device, dtype = weight.device, weight.dtype
    ids = model_ids.to(device)
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise InternalError(f"the output layer ({type(head).__name__}) must be a Linear")
    embed = weight.detach().index_select(0, ids)
    # W @ (g * h) == (W * g) @ h: the norms' scales ride along in the matrix products.
    head_weight = head.weight.detach().index_select(0, ids) * inner.norm.weight.detach()
    eps = float(inner.norm.variance_epsilon)
    attention = layers[0].self_attn
    heads = int(model.config.num_attention_heads)
    kv_heads = int(model.config.num_key_value_heads or heads)
    head_dim = int(attention.head_dim)
    scale = float(attention.scaling)
    layers_ = [
        _Layer(
            qkv=torch.cat([_interleave_halves(layer.self_attn.q_proj.weight, heads, head_dim),
                           _interleave_halves(layer.self_attn.k_proj.weight, kv_heads, head_dim),
                           layer.self_attn.v_proj.weight]).detach() * layer.input_layernorm.weight.detach(),
            out_t=layer.self_attn.o_proj.weight.detach().t().contiguous(),
            gate_up=torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).detach()
            * layer.post_attention_layernorm.weight.detach(),
            down_t=layer.mlp.down_proj.weight.detach().t().contiguous(),
        )
        for layer in layers
    ]
    rotation = _rotation(model, max_length)
    if rotation is None:
        raise InternalError("the model's rotary tables must repeat over the two halves of a head")
    return _Prepared(device=device, dtype=dtype, embed=embed, head=head_weight, eps=eps, heads=heads,
                     kv_heads=kv_heads, head_dim=head_dim, scale=scale, layers=layers_, rotation=rotation)


class LlamaDecoder:
    """Cache-backed forward passes of a ``LlamaForCausalLM`` for one batch of rows, one position at a time.

    Tokens in and logits out are codec ids (``model_ids[i]`` is the model's id of codec symbol ``i``).
    Every row of the batch is at the same position; :meth:`select` keeps a subset of the rows.
    """

    def __init__(self, model: LlamaForCausalLM, *, model_ids: torch.Tensor, batch: int, max_length: int) -> None:
        prepared = _prepared(model, model_ids, max_length)
        self.device, self.dtype = prepared.device, prepared.dtype
        self.embed, self.head, self.eps = prepared.embed, prepared.head, prepared.eps
        self.heads, self.kv_heads, self.head_dim, self.scale = (prepared.heads, prepared.kv_heads, prepared.head_dim,
                                                                prepared.scale)
        self.layers, self.rotation = prepared.layers, prepared.rotation
        # Position-major cache: writing a step is one contiguous copy, reading the prefix a contiguous slice.
        shape = (max_length, batch, self.kv_heads, 1, self.head_dim)
        self.keys = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self._ones = torch.ones(self.head_dim, dtype=self.dtype, device=self.device)
        self.length = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, *, model_ids: torch.Tensor, batch: int,
                  max_length: int) -> LlamaDecoder | None:
        """The fast decoder for ``model``, or ``None`` when only the HF forward is exact for it."""
        if not _supported(model) or _rotation(model, max_length) is None:
            return None
        return cls(model, model_ids=model_ids, batch=batch, max_length=max_length)

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        # LlamaRMSNorm without its scale (folded into the next weights): normalise in float32, cast back.
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rotate(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        # (x1 + i x2)(cos + i sin) = (x1 cos - x2 sin) + i (x2 cos + x1 sin): rotate_half's formula.
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention of one query per row (``[B, kv, groups, head_dim]``) over the cached prefix."""
        if len(keys) <= _SHORT:
            # Few positions: broadcast products beat a batched matrix product of tiny matrices.
            # The sum over head_dim as a matrix-vector product: ~2x faster than .sum(-1) on a CPU.
            scores = torch.matmul(keys * (q * self.scale), self._ones)  # [T, B, kv, groups]
            weights = torch.softmax(scores.float(), dim=0).to(q.dtype)
            return (weights.unsqueeze(-1) * values).sum(0)
        batch, kv, groups, dim = q.shape
        attended = F.scaled_dot_product_attention(
            q.reshape(batch, kv * groups, 1, dim), keys[:, :, :, 0].permute(1, 2, 0, 3),
            values[:, :, :, 0].permute(1, 2, 0, 3), scale=self.scale, enable_gqa=groups > 1)
        return attended.view(batch, kv, groups, dim)

    def forward(self, tokens: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Feed ``tokens`` (codec ids ``[B, S]``) at the next ``S`` positions; logits of the last.

        Several tokens (a prompt) are fed one position at a time: the same causal attention as one
        masked pass, and prompts here are a token or two.

        Returns:
            ``[B, V]`` logits over the codec ids, or ``[B, len(columns)]`` over the ids ``columns`` only
            (the output product shrinks with them).
        """
        for t in range(tokens.shape[1] - 1):
            self._step(tokens[:, t])
        x = self._step(tokens[:, -1])
        if columns is None:
            return F.linear(x, self.head)
        if 2 * len(columns) > len(self.head):
            # Most of a large vocabulary (a BPE text): gathering the logits beats copying the head's rows.
            return F.linear(x, self.head).index_select(-1, columns)
        return F.linear(x, self.head.index_select(0, columns))

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One position for every row; returns the normalised final hidden state ``[B, hidden]``."""
        batch = len(tokens)
        t = self.length
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        rotation = self.rotation[t]
        x = F.embedding(tokens, self.embed)  # [B, hidden]
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            qkv = F.linear(self._rms(x), layer.qkv).view(batch, heads + 2 * kv, dim)
            qk = self._rotate(qkv[:, :heads + kv], rotation)
            keys[t] = qk[:, heads:, None]
            values[t] = qkv[:, heads + kv:, None]
            attended = self._attend(qk[:, :heads].view(batch, kv, heads // kv, dim), keys[:t + 1], values[:t + 1])
            x = torch.addmm(x, attended.reshape(batch, heads * dim), layer.out_t)
            gate, up = F.linear(self._rms(x), layer.gate_up).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate, inplace=True).mul_(up), layer.down_t)
        self.length = t + 1
        return self._rms(x)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (indices into the current batch) in the cache."""
        self.keys = [k.index_select(1, keep) for k in self.keys]
        self.values = [v.index_select(1, keep) for v in self.values]
