"""The LLM generator: a causal LM trained with DP-SGD (Opacus) on rows serialised from the public spec.

Modules: :mod:`.encoding` (rows <-> tokens from the spec only), :mod:`.grammar` (allowed-next-token DFA in
tensors), :mod:`.model` (build/load/save the HF model), :mod:`.pretrained` (``generator.model`` resolved
offline: a directory, a GGUF file, a cached hub id or an alias), :mod:`.training` (noisy count, DP-SGD
schedule and loop), :mod:`.sampling` (constrained KV-cached generation), :mod:`.decoder` (the fast Llama decoder it uses),
:mod:`.device` (``generator.device``), :mod:`.backend` (the generator interface).
"""

from safesynth.generator.llm.backend import FittedLLM, LLMBackend

__all__ = ["FittedLLM", "LLMBackend"]
