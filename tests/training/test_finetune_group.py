"""A fine-tuning grid as one group: each member recorded as the run alone records it."""

from __future__ import annotations

import json
import shutil

import pytest

from overtrain.config import validate
from overtrain.executors.local import run_plan
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.finetune_group import group_key, run_finetune_group
from overtrain.training.pretrain_config import PretrainConfig

FT = RUN_KINDS.get("finetune")


@pytest.fixture(scope="module")
def parent_store(tmp_path_factory):
    from tests.conftest import TINY_PRETRAIN

    root = tmp_path_factory.mktemp("parent") / "runs"
    store = Store(root)
    out = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, TINY_PRETRAIN))
    return root, out.run_id


@pytest.fixture
def two_stores(parent_store, tmp_path):
    """Two stores holding the same finished parent: one for runs alone, one for the group."""
    root, parent_id = parent_store
    stores = []
    for name in ("alone", "group"):
        dest = tmp_path / name
        shutil.copytree(root / "pretrain", dest / "pretrain")
        stores.append(Store(dest))
    return stores, parent_id


def _ft(parent_id, checkpoint="budget_5120", lr=1e-2, seed=0, **kw):
    cfg = {
        "parent": parent_id,
        "checkpoint": checkpoint,
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "train": {"steps": 8, "batch_size": 8, "lr": lr, "log_every": 4},
        "eval_batches": 2,
        "seed": seed,
        **kw,
    }
    return validate(FinetuneConfig, cfg)


def _grid(parent_id, method=None):
    method = method or {"name": "full"}
    return [
        _ft(parent_id, checkpoint, lr, seed, method=method)
        for checkpoint in ("budget_2560", "budget_5120")
        for lr, seed in ((3e-3, 0), (1e-2, 1))
    ]


def _records(store, cfg):
    run_dir = store.run_dir("finetune", FT.run_id(cfg))
    return read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "evals.jsonl")


def _execute_group(store, cfgs, stack):
    kind = FT.__class__(
        **{**FT.__dict__, "run_group": lambda c, r, p=None: run_finetune_group(c, r, p, stack=stack)}
    )
    return store.execute_group(kind, cfgs)


def test_a_group_of_one_member_at_a_time_records_exactly_what_runs_alone_record(two_stores):
    (alone, grouped), parent_id = two_stores
    cfgs = _grid(parent_id)
    for cfg in cfgs:
        alone.execute(FT, cfg)
    outcomes = _execute_group(grouped, cfgs, stack=1)
    assert all(o.status == "success" and not o.skipped for o in outcomes)
    for cfg in cfgs:
        assert _records(grouped, cfg) == _records(alone, cfg)  # bit for bit: the same code per member
        manifest = json.loads((grouped.run_dir("finetune", FT.run_id(cfg)) / "manifest.json").read_text())
        assert manifest["info"]["group_size"] == 4
        assert manifest["parents"] == [f"pretrain/{parent_id}"]
    # a rerun skips every member
    assert all(o.skipped for o in _execute_group(grouped, cfgs, stack=1))


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "rank": 2, "alpha": 4}])
def test_stacked_members_match_runs_alone_to_float_rounding(two_stores, method):
    (alone, grouped), parent_id = two_stores
    cfgs = _grid(parent_id, method)
    for cfg in cfgs:
        alone.execute(FT, cfg)
    outcomes = _execute_group(grouped, cfgs, stack=4)
    assert all(o.status == "success" for o in outcomes)
    for cfg in cfgs:
        (m_alone, e_alone), (m_group, e_group) = _records(alone, cfg), _records(grouped, cfg)
        assert [r["step"] for r in m_group] == [r["step"] for r in m_alone]
        assert m_group[0] == m_alone[0]  # the loss before fine-tuning: the same evaluation
        for a, g in zip(m_alone[1:], m_group[1:], strict=True):
            assert set(a) == set(g)
            for key in a:
                assert g[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), key
        assert set(e_group[0]) == set(e_alone[0])
        for key, value in e_alone[0].items():
            if isinstance(value, float):
                assert e_group[0][key] == pytest.approx(value, rel=2e-4, abs=1e-6), key
            else:
                assert e_group[0][key] == value, key
    # the members trained apart: different learning rates end at different task losses
    finals = {round(_records(grouped, c)[1][0]["task_loss"], 6) for c in cfgs}
    assert len(finals) == 4


def test_a_diverging_member_fails_alone(two_stores):
    (_, grouped), parent_id = two_stores
    cfgs = [_ft(parent_id, lr=1e-2), _ft(parent_id, lr=1e9, seed=1)]
    # grad_clip 0 and a huge rate: the second member's weights blow up within its first steps
    cfgs = [c.model_copy(update={"train": c.train.model_copy(update={"grad_clip": 0.0})}) for c in cfgs]
    outcomes = _execute_group(grouped, cfgs, stack=2)
    assert outcomes[0].status == "success"
    assert "diverged: fine-tuning loss" in str(outcomes[1])
    bad = json.loads((grouped.run_dir("finetune", FT.run_id(cfgs[1])) / "manifest.json").read_text())
    assert bad["status"] == "failed" and "diverged" in bad["error"]


def test_runs_the_group_path_cannot_take_execute_alone(two_stores):
    (_, grouped), parent_id = two_stores
    assert group_key(_ft(parent_id), grouped) is not None
    assert group_key(_ft(parent_id, lr=3e-3, seed=4, checkpoint="budget_2560"), grouped) == group_key(
        _ft(parent_id), grouped
    )
    assert group_key(_ft(parent_id, method={"name": "flat_lora"}), grouped) is None  # its own step rule
    converge = _ft(
        parent_id, selection_batches=1, train={"steps": 8, "batch_size": 8, "converge": {"every": 4}}
    )
    assert group_key(converge, grouped) is None
    assert group_key(_ft("0" * 12), grouped) is None  # no such parent (yet)
    other_task = _ft(parent_id, data={"name": "hmm", "seed": 2, "states": 4, "vocab_size": 16})
    assert group_key(other_task, grouped) != group_key(_ft(parent_id), grouped)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_executor_groups_ready_fine_tuning_runs(two_stores, workers):
    (_, grouped), parent_id = two_stores
    cfgs = _grid(parent_id)
    plan = Plan([PlanItem.from_config(FT, cfg) for cfg in cfgs])
    result = run_plan(plan, grouped, workers=workers, progress=False)
    assert result.ok and len(result.done) == 4
    sizes = [
        json.loads((grouped.run_dir("finetune", FT.run_id(c)) / "manifest.json").read_text())["info"][
            "group_size"
        ]
        for c in cfgs
    ]
    assert sizes == ([4] * 4 if workers == 1 else [2] * 4)  # split in one share per worker
    assert len(run_plan(plan, grouped, workers=workers, progress=False).skipped) == 4


def test_a_killed_group_redoes_only_its_unfinished_members(two_stores):
    """After a kill, finished members are skipped and an unfinished one (manifest ``running``, records
    cut mid-way) restarts from its checkpoint, ending with the records of an uninterrupted group."""
    (_, grouped), parent_id = two_stores
    cfgs = _grid(parent_id)
    _execute_group(grouped, cfgs, stack=1)
    before = [_records(grouped, c) for c in cfgs]
    victim = grouped.run_dir("finetune", FT.run_id(cfgs[2]))
    manifest = json.loads((victim / "manifest.json").read_text())
    (victim / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    lines = (victim / "metrics.jsonl").read_text().splitlines(keepends=True)
    (victim / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:10])  # a partial last line
    (victim / "evals.jsonl").unlink()
    outcomes = _execute_group(grouped, cfgs, stack=1)
    assert [o.skipped for o in outcomes] == [True, True, False, True]
    assert [_records(grouped, c) for c in cfgs] == before
