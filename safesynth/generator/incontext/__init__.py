"""`generator: {kind: incontext}`: training-free DP text generation in context (Tang et al., ICLR 2024).

:mod:`.mechanism` is the math (no torch), :mod:`.prompt` the columns and prompts (no torch),
:mod:`.backend` the generator (torch, transformers). Importing this package imports no torch.
"""

from __future__ import annotations

__all__ = ["InContextBackend"]


def __getattr__(name: str) -> object:
    if name == "InContextBackend":
        from safesynth.generator.incontext.backend import InContextBackend

        return InContextBackend
    raise AttributeError(name)
