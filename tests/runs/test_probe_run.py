"""The probe run kind: a registered probe on a pre-training checkpoint, rows into probes/evals."""

from __future__ import annotations

import json

import pytest

from overtrain.config import validate
from overtrain.errors import ConfigError
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.store import Store
from overtrain.training.pretrain_config import PretrainConfig


def test_noise_probe_on_a_budget_checkpoint(home, tiny_pretrain):
    store = Store()
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    cfg = validate(
        ProbeRunConfig,
        {
            "parent": pre.run_id,
            "checkpoint": "budget_5120",
            "settings": {
                "gammas": [0.0, 2.0],
                "draws": 2,
                "eval_batches": 1,
                "batch_size": 4,
                "law": "init_scale",
            },
        },
    )
    out = store.execute(RUN_KINDS.get("probe"), cfg)
    rows = read_jsonl(out.dir / "probes.jsonl")
    assert len(rows) == 2 * 2 and all(r["checkpoint"] == "budget_5120" and r["budget"] == 5120 for r in rows)
    summary = {r["gamma"]: r for r in read_jsonl(out.dir / "evals.jsonl")}
    assert summary[0.0]["delta"] == 0.0 and summary[2.0]["delta"] > 0
    info = json.loads((out.dir / "manifest.json").read_text())["info"]
    assert info["init_state"].endswith("step_00000000")  # init-scale noise measured from the real init


def test_probe_settings_are_validated_by_the_probe_config():
    with pytest.raises(ConfigError, match="settings.gammaz: unknown key"):
        validate(ProbeRunConfig, {"parent": "0123456789ab", "checkpoint": "b", "settings": {"gammaz": [1]}})
    with pytest.raises(ConfigError, match="unknown probe 'nosie'"):
        validate(ProbeRunConfig, {"parent": "0123456789ab", "checkpoint": "b", "probe": "nosie"})
