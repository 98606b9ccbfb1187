"""``device: auto`` is every config's default: it resolves to cuda, else mps, else cpu, and never enters a
run id (so runs stored with ``device: cpu`` keep their ids)."""

from __future__ import annotations

import importlib

import pytest
import torch

from overtrain import distributed

CONFIGS = [
    "overtrain.training.pretrain_config:PretrainConfig",
    "overtrain.training.finetune:FinetuneConfig",
    "overtrain.runs.kinds.probe:ProbeRunConfig",
    "overtrain.runs.kinds.audit:AuditConfig",
    "overtrain.studies.hyperfit.config:HyperfitConfig",
    "overtrain.studies.hyperfit.train:HyperfitRunConfig",
    "overtrain.studies.repeated_data.config:RepeatedDataConfig",
]


@pytest.mark.parametrize("ref", CONFIGS)
def test_device_defaults_to_auto_and_is_not_in_the_run_id(ref):
    module, name = ref.split(":")
    cls = getattr(importlib.import_module(module), name)
    field = cls.model_fields["device"]
    assert field.default == "auto"
    assert field.json_schema_extra == {"identity": False}  # NotInId: the default's change moves no id


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert distributed.auto_device() == expected
    assert distributed.device_name("auto") == expected
    assert distributed.device_name("cpu") == "cpu"  # an explicit setting is recorded as given


def test_auto_resolves_to_the_cpu_on_a_machine_without_accelerators(monkeypatch):
    from overtrain.training.pretrain import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
