"""The Ray executor against the local one: same runs, statuses, failures and records, on a local Ray (2 CPUs).

The Ray tests skip when Ray is not installed (``pip install -e '.[ray]'``) and are ``slow`` (~45 s on 2
busy cores): they share one local Ray instance (~6 s to start, then a few seconds for each worker's first
import of torch). The tests without Ray run everywhere.
"""

from __future__ import annotations

import copy
import sys

import pytest

from overtrain.cli.main import main
from overtrain.config import config_hash, validate
from overtrain.errors import UserError
from overtrain.executors import local
from overtrain.executors.ray import gpus_needed
from overtrain.executors.ray import run_plan as ray_run_plan
from overtrain.registry import EXECUTORS, RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain_config import PretrainConfig


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _pretrain(tiny: dict, **changes) -> PretrainConfig:
    cfg = copy.deepcopy(tiny)
    for key, value in changes.items():
        cfg[key] = value
    return validate(PretrainConfig, cfg)


def _finetune(parent: PretrainConfig, checkpoint: str = "budget_5120") -> FinetuneConfig:
    return validate(
        FinetuneConfig,
        {
            "parent": config_hash(parent),
            "checkpoint": checkpoint,
            "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
            "train": {"steps": 6, "batch_size": 8, "lr": 1e-2, "log_every": 3},
            "eval_batches": 2,
        },
    )


def _plan(tiny: dict) -> tuple[Plan, dict[str, str]]:
    """Two good pre-training runs, one that fails at run time, a fine-tune of a good one (listed before its
    parent), a fine-tune of a missing checkpoint (fails) and one of the failing run (blocked)."""
    pre0, pre1 = _pretrain(tiny), _pretrain(tiny, seed=1)
    # an eval source with more symbols than the training data: a DataError once the run starts
    bad = _pretrain(tiny, eval={"batches": 2, "extra": {"wide": {"name": "hmm", "vocab_size": 32}}})
    ft0, ft_missing, ft_bad = _finetune(pre0), _finetune(pre1, "budget_999"), _finetune(bad)
    pre, ft = RUN_KINDS.get("pretrain"), RUN_KINDS.get("finetune")
    items = [
        PlanItem.from_config(ft, ft0),
        PlanItem.from_config(pre, pre0),
        PlanItem.from_config(pre, pre1),
        PlanItem.from_config(pre, bad),
        PlanItem.from_config(ft, ft_missing),
        PlanItem.from_config(ft, ft_bad),
    ]
    names = ["ft0", "pre0", "pre1", "bad", "ft_missing", "ft_bad"]
    return Plan(items), {name: item.run_id for name, item in zip(names, items)}


def _failures(result, root) -> list[tuple[str, str]]:
    """(run id, error) with the store's path taken out of the messages."""
    return sorted((run_id, error.replace(str(root), "<store>")) for run_id, error in result.failed)


def _records(store: Store, plan: Plan) -> dict[str, dict[str, list[dict]]]:
    return {
        item.run_id: {
            name: read_jsonl(store.run_dir(item.kind, item.run_id) / f"{name}.jsonl")
            for name in ("metrics", "evals")
        }
        for item in plan
    }


@pytest.mark.slow
def test_ray_runs_a_plan_like_the_local_executor(ray_instance, tiny_pretrain, tmp_path):
    plan, ids = _plan(tiny_pretrain)
    by_local = local.run_plan(plan, Store(tmp_path / "local"), progress=False)
    store = Store(tmp_path / "ray")
    by_ray = ray_run_plan(plan, store, progress=False)

    assert sorted(by_ray.done) == sorted(by_local.done) == sorted([ids["pre0"], ids["pre1"], ids["ft0"]])
    assert by_ray.done.index(ids["pre0"]) < by_ray.done.index(ids["ft0"])  # a parent settles before its child
    assert _failures(by_ray, tmp_path / "ray") == _failures(by_local, tmp_path / "local")
    assert {rid for rid, _ in by_ray.failed} == {ids["bad"], ids["ft_missing"]}
    assert by_ray.blocked == by_local.blocked == [ids["ft_bad"]]
    assert by_ray.exit_code == 1
    for item in plan:
        assert store.status(item.kind, item.run_id) == Store(tmp_path / "local").status(
            item.kind, item.run_id
        )
    # the same numbers: the runs are deterministic and thread count only reorders float sums
    ours, theirs = _records(store, plan), _records(Store(tmp_path / "local"), plan)
    for run_id in (ids["pre0"], ids["pre1"], ids["ft0"]):
        for name in ("metrics", "evals"):
            assert len(ours[run_id][name]) == len(theirs[run_id][name]) > 0
            for mine, other in zip(ours[run_id][name], theirs[run_id][name]):
                assert mine.keys() == other.keys()
                for key, value in mine.items():
                    assert value == (
                        pytest.approx(other[key], rel=1e-5, abs=1e-7)
                        if isinstance(value, float)
                        else other[key]
                    ), (run_id, name, key)

    # a rerun skips what succeeded and tries the failures again
    again = ray_run_plan(plan, store, progress=False, workers=1)
    assert sorted(again.skipped) == sorted(by_ray.done) and again.done == []
    assert sorted(again.failed) == sorted(by_ray.failed) and again.blocked == [ids["ft_bad"]]
    assert store.manifest("pretrain", ids["bad"])["attempts"] == 2


@pytest.mark.slow
def test_sweep_command_with_the_ray_executor(ray_instance, home, tiny_pretrain, tmp_path, capsys):
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"kind": "pretrain", "base": tiny_pretrain, "seeds": [0, 1]}))
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(sweep), "--executor", "ray"])  # uses the Ray this process already runs
    assert exit_.value.code == 0
    assert "runs: 2 done, 0 skipped, 0 failed, 0 blocked" in capsys.readouterr().err
    for seed in (0, 1):
        assert Store().status("pretrain", config_hash(_pretrain(tiny_pretrain, seed=seed))) == "success"


def test_ray_is_registered_and_address_belongs_to_it(home, tmp_path, capsys):
    assert EXECUTORS.get("ray") is ray_run_plan
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("kind: pretrain\nbase: {}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(sweep), "--address", "auto"])
    assert exit_.value.code == 2
    assert "--address is an option of the ray executor" in capsys.readouterr().err


def test_without_ray_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    plan = Plan([PlanItem.from_config(RUN_KINDS.get("pretrain"), validate(PretrainConfig, {}))])
    with pytest.raises(UserError, match=r"pip install -e '\.\[ray\]'"):
        ray_run_plan(plan, Store(tmp_path), progress=False)


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "want"),
    [
        ("cpu", True, 0),
        ("cuda", False, 1),
        ("cuda:1", True, 1),
        ("auto", True, 1),
        ("auto", False, 0),
        (None, True, 0),
    ],
)
def test_a_run_asks_for_a_gpu_when_its_device_is_cuda(device, cluster_gpus, want):
    class Cfg:
        pass

    cfg = Cfg()
    if device is not None:
        cfg.device = device
    assert gpus_needed(cfg, cluster_gpus) == want
