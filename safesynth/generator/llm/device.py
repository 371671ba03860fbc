"""Where the LLM generator's tensors live: ``generator.device`` resolved once, to a ``torch.device``.

``auto`` is the machine's first CUDA device when torch sees one, else the CPU, so the same spec trains
on a GPU box and samples on a CPU-only Dask worker (or the reverse). ``cuda`` on a machine without
CUDA is a spec error, raised by the pre-flight checks before any budget is reserved.
"""

from __future__ import annotations

import torch

from safesynth.errors import SpecError

__all__ = ["resolve_device"]


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cpu``; ``cuda`` (the current CUDA device).

    Raises:
        SpecError: ``cuda`` without a CUDA device, or an unknown setting.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("`generator.device` ('cuda') must name a device this machine has: torch sees no CUDA "
                            "device; use 'auto' or 'cpu'")
        return torch.device("cuda", torch.cuda.current_device())
    raise SpecError(f"`generator.device` ({setting!r}) must be 'auto', 'cpu' or 'cuda'")
