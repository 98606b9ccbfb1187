"""Fine-tuning a pre-training checkpoint: task loss falls, forgetting is measured, LoRA trains adapters only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overtrain.config import validate
from overtrain.errors import CheckpointError, ConfigError, UserError
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain_config import PretrainConfig


@pytest.fixture
def parent(home, tiny_pretrain):
    store = Store()
    out = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    return store, out


def _ft(parent_id, **kw):
    cfg = {
        "parent": parent_id,
        "checkpoint": "budget_5120",
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "train": {"steps": 12, "batch_size": 8, "lr": 1e-2, "log_every": 4},
        "eval_batches": 2,
    }
    cfg.update(kw)
    return validate(FinetuneConfig, cfg)


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "rank": 2, "alpha": 4}])
def test_finetune_learns_the_task_and_records_forgetting(parent, method):
    store, pre = parent
    out = store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, method=method))
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["task_loss"] < row["base_task_loss"]
    assert row["forgetting"] == pytest.approx(row["pretrain_loss"] - row["base_pretrain_loss"])
    # the base pre-training loss is the parent's own evaluation of that checkpoint (same batches)
    parent_eval = next(r for r in read_jsonl(pre.dir / "evals.jsonl") if r["checkpoint"] == "budget_5120")
    assert row["base_pretrain_loss"] == pytest.approx(parent_eval["loss"], rel=1e-6)
    assert row["budget"] == 5120 and row["tokens_seen"] == 5120
    manifest = json.loads((out.dir / "manifest.json").read_text())
    assert manifest["parents"] == [f"pretrain/{pre.run_id}"]
    if method["name"] == "lora":
        assert 0 < row["trainable_params"] < row["n_params"] / 2
    else:
        assert row["trainable_params"] == row["n_params"]


def test_held_out_capability_and_selection_split(parent):
    """The OOD language's loss is measured before and after; the selection loss is on val batches disjoint
    from the reported ones (so it differs from the task loss); adding neither changes the run id."""
    store, pre = parent
    ood = {"name": "hmm", "seed": 2, "states": 4, "vocab_size": 16, "floor_sequences": 64}
    plain = _ft(pre.run_id)
    cfg = _ft(pre.run_id, ood_data=ood, selection_batches=2)
    assert (
        store.execute(RUN_KINDS.get("finetune"), plain).run_id
        != store.execute(RUN_KINDS.get("finetune"), cfg).run_id
    )
    out = store.execute(RUN_KINDS.get("finetune"), cfg)
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["base_ood_loss"] > 0 and row["ood_loss"] > 0 and row["ood_loss"] != row["base_ood_loss"]
    assert row["select_loss"] != row["task_loss"] and abs(row["select_loss"] - row["task_loss"]) < 0.5
    assert "steps_run" not in row
    plain_row = read_jsonl(store.execute(RUN_KINDS.get("finetune"), plain).dir / "evals.jsonl")[0]
    assert plain_row["task_loss"] == row["task_loss"]  # the extra evaluations do not touch training


def test_fine_tuning_to_convergence_stops_at_a_plateau(parent):
    store, pre = parent
    with pytest.raises(ConfigError, match="selection_batches"):
        _ft(pre.run_id, train={"steps": 40, "batch_size": 8, "lr": 1e-2, "converge": {"every": 4}})
    train = {
        "steps": 400,
        "batch_size": 8,
        "lr": 1e-2,
        "log_every": 4,
        "converge": {"every": 4, "patience": 2},
    }
    out = store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, train=train, selection_batches=2))
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["converged"] and row["steps_run"] < 400 and row["steps_run"] % 4 == 0
    select = [m["task/select_loss"] for m in read_jsonl(out.dir / "metrics.jsonl") if "task/select_loss" in m]
    best = min(select[:-2])
    # it stopped because the last two checks did not beat the best before them by 0.2%
    assert all(x >= best * (1 - 0.002) for x in select[-2:])


def test_bad_parent_and_checkpoint(parent):
    store, pre = parent
    with pytest.raises(ConfigError, match="12 hex digits"):
        validate(FinetuneConfig, {"parent": "xyz", "checkpoint": "a", "data": "hmm"})
    with pytest.raises(UserError, match="parent run pretrain/0123456789ab not found"):
        store.execute(RUN_KINDS.get("finetune"), _ft("0123456789ab"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, checkpoint="budget_1"))


def test_token_ids_must_mean_the_same_to_task_and_parent():
    from overtrain.data.tokenizer import byte_tokenizer, id_tokenizer, train_bpe
    from overtrain.training.finetune import check_same_tokens

    check_same_tokens(byte_tokenizer(), byte_tokenizer())
    check_same_tokens(id_tokenizer(16), id_tokenizer(64))  # fewer symbols, same ids
    bpe = train_bpe(["the king and the crown " * 50, "a sword for the queen " * 50], 300)
    with pytest.raises(UserError, match="tokenizer does not match the parent's"):
        check_same_tokens(byte_tokenizer(), bpe)


def test_finetune_a_text_model_on_instructions(home, tiny_pretrain):
    """Pre-train on the packaged Shakespeare excerpt (bytes), fine-tune on the instruction task."""
    from overtrain.data import corpus

    excerpt = str(Path(corpus.__file__).parent / "fixtures" / "shakespeare_excerpt.txt")
    store = Store()
    tiny_pretrain["data"] = {"name": "text", "train": [excerpt]}
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    cfg = _ft(pre.run_id, data={"name": "instructions", "examples": 400, "val_examples": 50})
    out = store.execute(RUN_KINDS.get("finetune"), cfg)
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["task_loss"] < row["base_task_loss"]
    assert row["n_params"] > 256 * 16  # a byte-level embedding


def test_a_bpe_model_fine_tunes_on_text_through_its_own_tokenizer(home, tiny_pretrain):
    """``tokenizer: parent`` tokenises the task with the checkpoint's BPE; a task BPE of its own is refused."""
    from overtrain.data import corpus

    excerpt = str(Path(corpus.__file__).parent / "fixtures" / "shakespeare_excerpt.txt")
    store = Store()
    tiny_pretrain["data"] = {"name": "text", "train": [excerpt], "tokenizer": "bpe", "bpe_vocab_size": 300}
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    task = {"name": "instructions", "examples": 400, "val_examples": 50, "tokenizer": "parent"}
    out = store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, data=task))
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["task_loss"] < row["base_task_loss"]
    own_bpe = {**task, "tokenizer": "bpe", "bpe_vocab_size": 300}
    with pytest.raises(UserError, match="tokenizer does not match"):
        store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, data=own_bpe))
    with pytest.raises(UserError, match="needs a parent checkpoint"):
        validate(FinetuneConfig, _ft(pre.run_id, data=task).model_dump()).data.build()
