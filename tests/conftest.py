"""Shared fixtures: an isolated OVERTRAIN_HOME per test and a tiny pre-training config."""

from __future__ import annotations

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty OVERTRAIN_HOME so no test sees another's runs or data cache."""
    root = tmp_path / "home"
    monkeypatch.setenv("OVERTRAIN_HOME", str(root))
    return root


TINY_PRETRAIN = {
    "seed": 0,
    "data": {"name": "hmm", "seed": 0, "states": 4, "vocab_size": 16, "floor_sequences": 64},
    "model": {"preset": "llama-nano"},
    "train": {
        "tokens": [2560, 5120],  # 10 and 20 steps of 8 x 32 tokens
        "batch_size": 8,
        "seq_len": 32,
        "warmup_steps": 3,
        "log_every": 2,
        "lr": 1e-2,
    },
    "eval": {"batches": 2},
    "checkpoint": {"resume_every": 4},
}


@pytest.fixture
def tiny_pretrain():
    """Plain-dict config of a ~8K-parameter model trained for 20 steps (about a second)."""
    import copy

    return copy.deepcopy(TINY_PRETRAIN)
