"""The throughput benchmark compares like with like: same init and batches give the same losses.

Runs the benchmark's measurement function for two steps on llama-nano; no timing is asserted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "pretrain_throughput.py"
FAKE_PEAKS = {"float32": 100.0, "bfloat16": 100.0}  # skip the matmul-peak measurement


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pretrain_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, dtype="float32"):
    return bench.measure(
        "llama-nano",
        vocab=64,
        batch_size=4,
        seq_len=16,
        steps=2,
        repeats=2,
        warmup=2,
        dtype=dtype,
        peaks=FAKE_PEAKS,
    )


@pytest.fixture(scope="module")
def fp32(bench):
    return run(bench)


def test_record_structure(fp32):
    r = fp32
    assert r["settings"]["preset"] == "llama-nano" and r["settings"]["steps"] == 2
    for key in ("ours", "reference", "ours+data"):
        assert len(r["tokens_per_s"][key]) == 2
        assert r["median_tokens_per_s"][key] > 0 and r["mfu"][key] > 0
    assert r["ratio_min"] == min(r["ratio_per_repeat"]) and r["ratio_max"] == max(r["ratio_per_repeat"])
    assert r["model"]["flops_per_token"] > 6 * r["model"]["N_flops"] > 0
    assert r["peak_gflops"] == FAKE_PEAKS


def test_ours_and_reference_follow_the_same_trajectory(fp32):
    eq = fp32["equivalence"]
    assert len(eq["losses_ours"]) == len(eq["losses_reference"]) == 3  # warm-up + 2 repeats
    assert eq["max_loss_diff"] < 1e-6
    assert eq["max_param_diff_after_warmup"] < 1e-6 and eq["max_param_diff_end"] < 1e-6


def test_bf16_autocast_matches_too(bench):
    """One autocast context per forward on both sides: a context held across optimizer steps would keep
    autocast's cached bf16 weights from the first step and the copies would drift apart."""
    eq = run(bench, "bfloat16")["equivalence"]
    assert eq["max_loss_diff"] < 1e-6 and eq["max_param_diff_end"] < 1e-6
