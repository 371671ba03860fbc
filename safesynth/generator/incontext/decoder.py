"""One text from one public and ``prompts`` private prompts, run as one KV-cached batch (torch).

Each token is one forward pass of the ``prompts + 1`` sequences (left padded, with an attention mask and
explicit positions, under ``torch.inference_mode``); the KV cache holds the prompts, so a prompt is prefilled
once per text. The noisy choice of each token is :func:`~.mechanism.noisy_argmax`.

Privacy:
    Per token one Gaussian mechanism on the sum of the private prompts' distributions restricted to the
    public prompt's top-k (L2 sensitivity sqrt(2), add/remove one record); the caller accounts the text as
    :func:`~.mechanism.row_event`. Stopping early (a stop token, a newline, the column's length) is
    post-processing of released tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from safesynth.generator.incontext.mechanism import aggregate, noisy_argmax, restrict
from safesynth.privacy.noise import NoiseSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TextDecoder"]


class TextDecoder:
    """Runs one public and ``prompts`` private prompts as one KV-cached batch and decodes one text.

    Each token is one forward pass of the ``prompts + 1`` sequences (left padded, with an attention mask and
    explicit positions), under ``torch.inference_mode``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, top_k: int,
                 temperature: float, max_new_tokens: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.top_k, self.temperature, self.max_new_tokens = top_k, temperature, max_new_tokens
        stops = {tokenizer.eos_token_id}
        configured = getattr(model.generation_config, "eos_token_id", None)
        stops.update(configured if isinstance(configured, list) else [configured])
        self.stop_ids = {int(i) for i in stops if i is not None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 past: Any) -> tuple[torch.Tensor, Any]:
        # transformers 5 names the KV cache ``cache`` (``past_key_values`` is deprecated); only the last
        # position's logits are computed.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1, :], out.cache

    def decode(self, public: list[int], private: list[list[int]], *, noise_multiplier: float, noise: NoiseSource,
               max_chars: int) -> str:
        """One text: ``max_new_tokens`` noisy-argmax steps at most (fewer at a stop token or newline).

        Privacy:
            Per step one :func:`~.mechanism.noisy_argmax` on the sum of the private prompts' restricted
            distributions (L2 sensitivity sqrt(2)); the candidates come from ``public`` only.
        """
        seqs = [public, *private]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long,
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generated: list[int] = []
        text = ""
        with torch.inference_mode():
            logits, past = self._forward(ids, mask, positions, None)
            for _ in range(self.max_new_tokens):
                candidates = torch.topk(logits[0], min(self.top_k, logits.shape[-1])).indices
                chosen = logits[1:, candidates].double().cpu().numpy()
                summed = aggregate(restrict(chosen, temperature=self.temperature))
                token = int(candidates[noisy_argmax(summed, noise_multiplier=noise_multiplier, noise=noise)])
                if token in self.stop_ids:
                    break
                generated.append(token)
                text = str(self.tokenizer.decode(generated, skip_special_tokens=True))
                if "\n" in text or len(text.strip()) >= max_chars:
                    break
                step = torch.full((len(seqs), 1), token, dtype=torch.long, device=self.device)
                mask = torch.cat([mask, torch.ones_like(step)], dim=1)
                positions = positions[:, -1:] + 1
                logits, past = self._forward(step, mask, positions, past)
        return text.split("\n")[0].strip()[:max_chars]
