"""Determinism: the same config and seed twice on CPU give bit-identical records and checkpoints.

Pre-training, a LoRA fine-tuning of its checkpoint and a noise probe are each run twice, in two fresh
stores; every file of every run (metrics/evals/probes JSONL, configs, checkpoints, resume state) must have
the same sha256, and the manifests the same ``info`` apart from timings. docs/hardening.md says what holds
on GPUs.
"""

from __future__ import annotations

import json

from overtrain.config import validate
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain_config import PretrainConfig

TIMINGS = ("wall_s", "train_tokens_per_second")


def _runs(store: Store, tiny_pretrain) -> dict:
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    ft = store.execute(
        RUN_KINDS.get("finetune"),
        validate(
            FinetuneConfig,
            {
                "parent": pre.run_id,
                "checkpoint": "budget_5120",
                "method": {"name": "lora", "rank": 2, "alpha": 4},
                "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
                "train": {"steps": 6, "batch_size": 4, "lr": 1e-2, "log_every": 2},
                "eval_batches": 1,
                "seed": 3,
            },
        ),
    )
    pr = store.execute(
        RUN_KINDS.get("probe"),
        validate(
            ProbeRunConfig,
            {
                "parent": pre.run_id,
                "checkpoint": "budget_5120",
                "settings": {"gammas": [1.0, 4.0], "draws": 2, "eval_batches": 1, "batch_size": 4},
            },
        ),
    )
    out = {}
    for o in (pre, ft, pr):
        m = json.loads((o.dir / "manifest.json").read_text())
        info = {k: v for k, v in m["info"].items() if k not in TIMINGS and k != "init_state"}
        out[f"{o.kind}/{o.run_id}"] = {"outputs": m["outputs"], "info": info, "dir": o.dir}
    return out


def test_same_config_and_seed_twice_is_bit_identical(home, tiny_pretrain):
    a, b = _runs(Store(home / "a"), tiny_pretrain), _runs(Store(home / "b"), tiny_pretrain)
    assert a.keys() == b.keys() and len(a) == 3  # the same run ids
    for key in a:
        assert a[key]["outputs"] == b[key]["outputs"], key  # every file, byte for byte
        assert a[key]["info"] == b[key]["info"], key
    pre = next(k for k in a if k.startswith("pretrain/"))
    assert any(n.endswith("model.safetensors") for n in a[pre]["outputs"])
    losses = [r["train/loss"] for r in read_jsonl(a[pre]["dir"] / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) > 5 and len(set(losses)) > 5  # real, varying numbers, not constants
