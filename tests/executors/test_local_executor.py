"""The local executor: dependency order, skip-if-done, failure blocking, and the spawn process pool.

The toy kinds live at module level so that worker processes (spawn) can unpickle them by reference.
"""

from __future__ import annotations

import pytest

from overtrain.config import BaseConfig, Count, config_hash
from overtrain.errors import UserError
from overtrain.executors.local import PlanResult, run_plan
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds import RunKind
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store


class UpConfig(BaseConfig):
    n: Count = 3
    """Steps."""
    fail: bool = False
    """Raise after the last step."""


class DownConfig(BaseConfig):
    up_n: Count = 3
    """`n` of the upstream run."""
    up_fail: bool = False
    """`fail` of the upstream run."""


def up_run(cfg: UpConfig, run) -> None:
    for step in range(1, cfg.n + 1):
        run.log_metrics({"step": step, "train/loss": 1.0 / step})
        run.progress(step)
    if cfg.fail:
        raise RuntimeError(f"upstream n={cfg.n} failed")


def _up_id(cfg: DownConfig) -> str:
    return config_hash(UpConfig(n=cfg.up_n, fail=cfg.up_fail))


def down_run(cfg: DownConfig, run) -> None:
    # reads its parent's output, as a fine-tune reads its pre-training checkpoint
    parent = run.store.run_dir("up", _up_id(cfg))
    records = read_jsonl(parent / "metrics.jsonl")
    run.log_metrics({"step": 0, "parent/final_loss": records[-1]["train/loss"]})


def up_steps(cfg: UpConfig) -> int:
    return cfg.n


def down_parents(cfg: DownConfig) -> list[tuple[str, str]]:
    return [("up", _up_id(cfg))]


UP = RunKind("up", UpConfig, up_run, total_steps=up_steps)
DOWN = RunKind("down", DownConfig, down_run, parents=down_parents)
KINDS = {"up": UP, "down": DOWN}


def _plan() -> Plan:
    """Two upstream runs (one failing), a dependent of each, and an independent run."""
    items = [
        PlanItem.from_config(DOWN, DownConfig(up_n=2)),  # listed before its parent on purpose
        PlanItem.from_config(UP, UpConfig(n=2)),
        PlanItem.from_config(UP, UpConfig(n=3, fail=True)),
        PlanItem.from_config(DOWN, DownConfig(up_n=3, up_fail=True)),
        PlanItem.from_config(UP, UpConfig(n=4)),
    ]
    return Plan(items)


def _ids():
    return {
        "up2": config_hash(UpConfig(n=2)),
        "upfail": config_hash(UpConfig(n=3, fail=True)),
        "up4": config_hash(UpConfig(n=4)),
        "down2": config_hash(DownConfig(up_n=2)),
        "downfail": config_hash(DownConfig(up_n=3, up_fail=True)),
    }


def _check_first_pass(result: PlanResult, store: Store) -> None:
    ids = _ids()
    assert sorted(result.done) == sorted([ids["up2"], ids["up4"], ids["down2"]])
    assert result.done.index(ids["up2"]) < result.done.index(ids["down2"])
    assert result.skipped == []
    assert result.failed == [(ids["upfail"], "RuntimeError: upstream n=3 failed")]
    assert result.blocked == [ids["downfail"]]
    assert not result.ok and result.exit_code == 1
    assert store.status("up", ids["upfail"]) == "failed"
    assert store.status("down", ids["downfail"]) is None  # never started
    down = read_jsonl(store.run_dir("down", ids["down2"]) / "metrics.jsonl")
    assert down == [{"step": 0, "parent/final_loss": 0.5}]


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_blocks_dependents_only_and_rerun_skips_done(home, workers):
    store = Store()
    result = run_plan(_plan(), store, workers=workers, progress=False, kinds=KINDS)
    _check_first_pass(result, store)

    # a rerun skips the successes and tries the failed run again (it fails again, deterministically)
    again = run_plan(_plan(), store, workers=workers, progress=False, kinds=KINDS)
    ids = _ids()
    assert sorted(again.skipped) == sorted([ids["up2"], ids["up4"], ids["down2"]])
    assert again.done == [] and [f[0] for f in again.failed] == [ids["upfail"]]
    assert again.blocked == [ids["downfail"]]
    assert store.manifest("up", ids["upfail"])["attempts"] == 2


def test_all_done_plan_is_ok(home):
    plan = Plan([PlanItem.from_config(UP, UpConfig(n=n)) for n in (1, 2)])
    first = run_plan(plan, Store(), progress=False, kinds=KINDS)
    assert first.ok and first.exit_code == 0 and len(first.done) == 2
    assert first.summary() == "2 done, 0 skipped, 0 failed, 0 blocked"
    second = run_plan(plan, Store(), progress=False, kinds=KINDS)
    assert second.ok and second.done == [] and len(second.skipped) == 2


def test_stop_on_failure_starts_nothing_after_a_failure(home):
    items = [
        PlanItem.from_config(UP, UpConfig(n=1, fail=True)),
        PlanItem.from_config(UP, UpConfig(n=2)),
    ]
    result = run_plan(Plan(items), Store(), progress=False, stop_on_failure=True, kinds=KINDS)
    assert [f[0] for f in result.failed] == [items[0].run_id]
    assert result.blocked == [items[1].run_id] and result.done == []


def test_progress_output_goes_to_stderr_when_not_a_terminal(home, capsys):
    result = run_plan(_plan(), Store(), workers=1, progress=True, kinds=KINDS)
    captured = capsys.readouterr()
    assert captured.out == ""
    ids = _ids()
    assert f"failed up/{ids['upfail']}: RuntimeError: upstream n=3 failed" in captured.err
    assert "traceback.txt" in captured.err
    assert f"blocked down/{ids['downfail']}" in captured.err
    assert f"runs: {result.summary()}" in captured.err


def test_progress_callback_reaches_the_display(home, monkeypatch):
    """The per-run bar is fed by Run.progress, with the total from kind.total_steps."""
    from overtrain.executors import local

    updates = []
    real = local._Display.run_bar

    def spy(self, item, total):
        task, on_progress = real(self, item, total)
        updates.append(("start", total))
        return task, lambda completed, total=None: (updates.append(completed), on_progress(completed, total))

    monkeypatch.setattr(local._Display, "run_bar", spy)
    run_plan(Plan([PlanItem.from_config(UP, UpConfig(n=3))]), Store(), progress=True, kinds=KINDS)
    assert updates == [("start", 3), 1, 2, 3]


def test_bad_arguments_are_user_errors(home):
    plan = Plan([PlanItem.from_config(UP, UpConfig())])
    with pytest.raises(UserError, match="workers"):
        run_plan(plan, Store(), workers=0, kinds=KINDS)
    with pytest.raises(UserError, match="unknown run kind 'up'"):
        run_plan(plan, Store(), progress=False, kinds={})
    orphan = Plan([PlanItem.from_config(DOWN, DownConfig(up_n=9))])
    with pytest.raises(UserError, match="neither in this plan nor finished"):
        run_plan(orphan, Store(), progress=False, kinds=KINDS)


def test_unpicklable_kind_is_refused_for_workers(home):
    local_kind = RunKind("up", UpConfig, lambda cfg, run: None)
    plan = Plan([PlanItem.from_config(local_kind, UpConfig(n=n)) for n in (1, 2)])
    with pytest.raises(UserError, match="cannot be sent to worker processes"):
        run_plan(plan, Store(), workers=2, progress=False, kinds={"up": local_kind})


def test_registered_as_local_executor():
    from overtrain.registry import EXECUTORS

    assert EXECUTORS.get("local") is run_plan
