"""`generator.device`: one resolver, refused before any budget is reserved when CUDA is asked for and absent."""

from __future__ import annotations

import pytest
import torch

from safesynth.errors import SpecError
from safesynth.generator.llm.device import resolve_device
from safesynth.generator.llm.training import training_rngs
from safesynth.preflight import preflight

from .conftest import TABULAR, llm_spec


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_cpu_is_always_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_a_one_line_spec_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecError, match=r"`generator.device` \('cuda'\)") as info:
        resolve_device("cuda")
    assert "\n" not in str(info.value)


def test_auto_resolves_to_the_cpu_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == torch.device("cpu")


def test_spec_defaults_to_auto_and_rejects_other_values(tmp_path):
    assert llm_spec(tmp_path, TABULAR).generator.device == "auto"
    assert llm_spec(tmp_path, TABULAR, device="cpu").generator.device == "cpu"
    with pytest.raises(SpecError):
        llm_spec(tmp_path, TABULAR, device="tpu")


def test_preflight_refuses_cuda_without_cuda_before_touching_the_source_or_ledger(tmp_path, monkeypatch):
    import safesynth.io
    import safesynth.privacy.ledger

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    touched = []
    monkeypatch.setattr(safesynth.io, "check_source", lambda spec: touched.append("source"))
    monkeypatch.setattr(safesynth.privacy.ledger, "preflight_ledger", lambda spec: touched.append("ledger"))
    with pytest.raises(SpecError, match="generator.device"):
        preflight(llm_spec(tmp_path, TABULAR, device="cuda"))
    assert touched == []


def test_dp_noise_generator_is_made_on_the_requested_device():
    assert training_rngs(secure=False, seed=0).noise.device == torch.device("cpu")
    assert training_rngs(secure=True, seed=0, device=torch.device("cpu")).noise.device == torch.device("cpu")
