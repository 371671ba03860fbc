"""Generators: DP synthesizers behind one interface (see :mod:`safesynth.generator.base`)."""

from __future__ import annotations

from safesynth.generator.base import FittedGenerator, GeneratorBackend

__all__ = ["FittedGenerator", "GeneratorBackend", "get_backend"]


def get_backend(kind: str) -> GeneratorBackend:
    """The backend for ``generator.kind``; heavy imports (torch) happen only for ``llm`` and ``incontext``."""
    if kind == "marginals":
        from safesynth.generator.marginals import MarginalsBackend

        return MarginalsBackend()
    if kind == "llm":
        from safesynth.generator.llm import LLMBackend

        return LLMBackend()
    if kind == "incontext":
        from safesynth.generator.incontext.backend import InContextBackend

        return InContextBackend()
    if kind in ("aim", "mst"):
        from safesynth.generator.mbi import AIMBackend, MSTBackend

        return AIMBackend() if kind == "aim" else MSTBackend()
    raise ValueError(f"`generator.kind` ({kind!r}) must be 'marginals', 'llm', 'incontext', 'aim' or 'mst'")
