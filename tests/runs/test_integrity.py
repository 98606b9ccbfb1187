"""Corruption: damaged store and checkpoint files are detected by their hashes, reported, and redone.

A finished run's manifest lists the sha256 of every file (``outputs``); every checkpoint directory carries
``checksums.json``. A truncated, altered or missing file is never used: loading it is a one-line
`CheckpointError` naming the file, and re-executing a damaged finished run redoes it from scratch.
"""

from __future__ import annotations

import json
import warnings

import pytest

from overtrain.config import BaseConfig, config_hash, validate
from overtrain.core.atomic import CHECKSUMS, atomic_dir, sha256_file, verify_checksums
from overtrain.errors import CheckpointError
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds import RunKind
from overtrain.runs.store import DamagedRunWarning, Store
from overtrain.training import checkpoint as ckpt
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain import _Job
from overtrain.training.pretrain_config import PretrainConfig


class ToyConfig(BaseConfig):
    n: int = 3


CALLS: list[int] = []


def _toy(cfg: ToyConfig, run) -> None:
    CALLS.append(cfg.n)
    run.truncate("metrics", 0)  # restarts from scratch, like fine-tuning
    for step in range(cfg.n):
        run.log_metrics({"step": step, "tokens_seen": 10 * step, "train/loss": 1.0 / (step + 1)})
    with atomic_dir(run.ckpt_dir("final"), checksums=True) as tmp:
        (tmp / "weights.bin").write_bytes(bytes(range(256)) * 4)
        (tmp / "meta.json").write_text('{"step": 3}')


TOY = RunKind("toy", ToyConfig, _toy)


def _damage(path, how):
    data = path.read_bytes()
    if how == "flip":  # same size, one byte changed: invisible to a size check or a parser
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()


def test_success_manifest_hashes_every_file(home):
    out = Store().execute(TOY, ToyConfig())
    outputs = json.loads((out.dir / "manifest.json").read_text())["outputs"]
    assert set(outputs) == {
        "config.yaml",
        "metrics.jsonl",
        "ckpt/final/weights.bin",
        "ckpt/final/meta.json",
        f"ckpt/final/{CHECKSUMS}",
    }
    assert outputs["metrics.jsonl"] == sha256_file(out.dir / "metrics.jsonl")
    assert Store().verify("toy", out.run_id) == []
    assert verify_checksums(out.dir / "ckpt" / "final") == []


@pytest.mark.parametrize(
    ("file", "how"),
    [
        ("metrics.jsonl", "flip"),
        ("metrics.jsonl", "truncate"),
        ("config.yaml", "flip"),
        ("ckpt/final/weights.bin", "flip"),
        ("ckpt/final/weights.bin", "delete"),
        (f"ckpt/final/{CHECKSUMS}", "truncate"),
    ],
)
def test_a_damaged_finished_run_is_reported_and_redone_from_scratch(home, file, how):
    store = Store()
    first = store.execute(TOY, ToyConfig())
    hashes = json.loads((first.dir / "manifest.json").read_text())["outputs"]
    _damage(first.dir / file, how)
    problem = f"{file}: {'missing' if how == 'delete' else 'sha256 mismatch'}"
    assert store.verify("toy", first.run_id) == [problem]
    CALLS.clear()
    with pytest.warns(DamagedRunWarning, match=f"toy/{first.run_id} is damaged \\({problem}\\); redoing"):
        again = store.execute(TOY, ToyConfig())
    assert not again.skipped and CALLS == [3]
    manifest = json.loads((again.dir / "manifest.json").read_text())
    assert manifest["attempts"] == 2 and manifest["redo_reason"] == problem
    assert manifest["status"] == "success"
    assert manifest["outputs"] == hashes  # the redo wrote the very same bytes
    assert store.verify("toy", first.run_id) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact run is skipped silently
        assert store.execute(TOY, ToyConfig()).skipped


def test_runs_finished_before_hashes_are_skipped_unchecked(home):
    store = Store()
    out = store.execute(TOY, ToyConfig())
    manifest = json.loads((out.dir / "manifest.json").read_text())
    del manifest["outputs"]
    (out.dir / "manifest.json").write_text(json.dumps(manifest))
    _damage(out.dir / "metrics.jsonl", "flip")
    assert store.verify("toy", out.run_id) == [] and store.execute(TOY, ToyConfig()).skipped
    assert store.verify("toy", "nope") == ["no manifest"]


def test_stale_temporaries_of_a_killed_attempt_are_removed(home):
    store = Store()
    run_dir = store.run_dir("toy", store.execute(TOY, ToyConfig(n=2)).run_id)
    (run_dir / "manifest.json").write_text(json.dumps({"status": "running"}))  # as if killed
    (run_dir / "ckpt" / ".tmp-final.abc").mkdir()
    (run_dir / "ckpt" / ".tmp-final.abc" / "weights.bin").write_bytes(b"half")
    (run_dir / ".tmp-metrics.jsonl.xyz").write_text("{")
    store.execute(TOY, ToyConfig(n=2))
    assert not list(run_dir.rglob(".tmp-*"))


# --- checkpoints ---------------------------------------------------------------------------------------


def test_an_altered_weight_file_is_refused_by_name(home, tiny_pretrain):
    """One flipped byte inside a tensor still parses as safetensors: only the hash catches it."""
    out = Store().execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    path = out.dir / "ckpt" / "budget_5120"
    assert json.loads((path / CHECKSUMS).read_text())["sha256"].keys() >= {"model.safetensors", "config.json"}
    ckpt.load_checkpoint(path)
    _damage(path / "model.safetensors", "flip")
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch") as info:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_damaged_parent_fails_its_child_then_the_rerun_redoes_the_parent(home, tiny_pretrain):
    store = Store()
    pre_cfg = validate(PretrainConfig, tiny_pretrain)
    pre = store.execute(RUN_KINDS.get("pretrain"), pre_cfg)
    ft_cfg = validate(
        FinetuneConfig,
        {
            "parent": pre.run_id,
            "checkpoint": "budget_5120",
            "eval_batches": 1,
            "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
            "train": {"steps": 2, "batch_size": 4, "log_every": 1},
        },
    )
    _damage(pre.dir / "ckpt" / "budget_5120" / "model.safetensors", "truncate")
    with pytest.raises(CheckpointError, match="budget_5120: model.safetensors: sha256 mismatch"):
        store.execute(RUN_KINDS.get("finetune"), ft_cfg)
    assert store.manifest("finetune", config_hash(ft_cfg))["status"] == "failed"  # never marked done
    with pytest.warns(DamagedRunWarning, match="ckpt/budget_5120/model.safetensors: sha256 mismatch"):
        redone = store.execute(RUN_KINDS.get("pretrain"), pre_cfg)
    assert not redone.skipped and store.verify("pretrain", pre.run_id) == []
    assert store.execute(RUN_KINDS.get("finetune"), ft_cfg).status == "success"


def test_a_damaged_resume_state_is_reported_then_the_run_starts_over(home, tiny_pretrain, monkeypatch):
    store = Store(home / "ref")
    cfg = validate(PretrainConfig, tiny_pretrain)
    ref = store.execute(RUN_KINDS.get("pretrain"), cfg)
    original = _Job.save_resume
    calls = {"n": 0}

    def crash_after_second_save(self, *args):
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(_Job, "save_resume", crash_after_second_save)
    crashed = Store(home / "crash")
    with pytest.raises(RuntimeError):
        crashed.execute(RUN_KINDS.get("pretrain"), cfg)
    monkeypatch.setattr(_Job, "save_resume", original)
    run_dir = crashed.run_dir("pretrain", ref.run_id)
    _damage(run_dir / "ckpt" / "resume" / "optimizer.safetensors", "flip")
    damaged = "corrupt resume state .*optimizer.safetensors: sha256 mismatch.*moved aside"
    with pytest.raises(CheckpointError, match=damaged) as info:
        crashed.execute(RUN_KINDS.get("pretrain"), cfg)
    assert "\n" not in str(info.value)
    assert crashed.manifest("pretrain", ref.run_id)["status"] == "failed"
    assert len(list((run_dir / "ckpt").glob(".damaged-resume-*"))) == 1
    done = crashed.execute(RUN_KINDS.get("pretrain"), cfg)  # the next attempt starts over, reusing nothing
    assert done.status == "success"
    for name in ("metrics.jsonl", "evals.jsonl"):
        assert read_jsonl(run_dir / name) == read_jsonl(ref.dir / name)
    ref_out = json.loads((ref.dir / "manifest.json").read_text())["outputs"]
    assert json.loads((run_dir / "manifest.json").read_text())["outputs"] == ref_out
