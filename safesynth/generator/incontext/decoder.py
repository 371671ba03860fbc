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

import numpy as np
import torch

from safesynth.generator.incontext.mechanism import aggregate, noisy_argmax, restrict
from safesynth.privacy.noise import NoiseSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TextDecoder", "TextState"]


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

    def begin(self, public: list[int], private: list[list[int]]) -> TextState:
        """Prefill the public and the private prompts as one left-padded batch: a text ready to decode."""
        return TextState(self, public, private)

    def decode(self, public: list[int], private: list[list[int]], *, noise_multiplier: float, noise: NoiseSource,
               max_chars: int) -> str:
        """One text: ``max_new_tokens`` noisy-argmax steps at most (fewer at a stop token or newline).

        Privacy:
            Per step one :func:`~.mechanism.noisy_argmax` on the sum of the private prompts' restricted
            distributions (L2 sensitivity sqrt(2)); the candidates come from ``public`` only.
        """
        state = self.begin(public, private)
        while not state.done:
            candidates, summed = state.proposal()
            state.advance(int(candidates[noisy_argmax(summed, noise_multiplier=noise_multiplier, noise=noise)]),
                          max_chars=max_chars)
        return state.text(max_chars)


class TextState:
    """One text being decoded: the KV cache of its ``prompts + 1`` sequences and the tokens chosen so far.

    :meth:`proposal` gives the public candidates and the private prompts' summed distribution over them
    (unnoised: it goes only to the caller that adds the noise); :meth:`advance` appends the chosen token and
    runs the next forward pass, until a stop token, a newline, ``max_chars`` or ``max_new_tokens``.
    """

    def __init__(self, decoder: TextDecoder, public: list[int], private: list[list[int]]) -> None:
        self.decoder = decoder
        seqs = [public, *private]
        self.size = len(seqs)
        width = max(len(s) for s in seqs)
        device = decoder.device
        ids = torch.tensor([[decoder.pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=device)
        self.mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long,
                                 device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.generated: list[int] = []
        self.decoded = ""
        self.done = decoder.max_new_tokens < 1
        with torch.inference_mode():
            self.logits, self.past = decoder._forward(ids, self.mask, self.positions, None)

    def proposal(self) -> tuple[np.ndarray, np.ndarray]:
        """The candidates (top-k of the public prompt) and the private prompts' summed restricted distribution."""
        decoder = self.decoder
        with torch.inference_mode():
            candidates = torch.topk(self.logits[0], min(decoder.top_k, self.logits.shape[-1])).indices
            chosen = self.logits[1:, candidates].double().cpu().numpy()
        summed = aggregate(restrict(chosen, temperature=decoder.temperature))
        return candidates.cpu().numpy(), summed

    def advance(self, token: int, *, max_chars: int) -> bool:
        """Append ``token`` (a released choice) and prepare the next step; True when the text is complete.

        Stopping (a stop token, a newline, ``max_chars``, ``max_new_tokens``) is post-processing of released
        tokens.
        """
        decoder = self.decoder
        if self.done:
            raise RuntimeError("the text is already complete")
        if token in decoder.stop_ids:
            self.done = True
            return True
        self.generated.append(token)
        self.decoded = str(decoder.tokenizer.decode(self.generated, skip_special_tokens=True))
        if ("\n" in self.decoded or len(self.decoded.strip()) >= max_chars
                or len(self.generated) >= decoder.max_new_tokens):
            self.done = True
            return True
        device = decoder.device
        with torch.inference_mode():
            step = torch.full((self.size, 1), token, dtype=torch.long, device=device)
            self.mask = torch.cat([self.mask, torch.ones_like(step)], dim=1)
            self.positions = self.positions[:, -1:] + 1
            self.logits, self.past = decoder._forward(step, self.mask, self.positions, self.past)
        return False

    def text(self, max_chars: int) -> str:
        """The text so far: its first line, stripped, at most ``max_chars`` characters."""
        return self.decoded.split("\n")[0].strip()[:max_chars]
