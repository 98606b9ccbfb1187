"""NaN / inf: a diverging run stops at once, is marked failed with the reason and the step, the sweep goes
on, and the report lists it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from overtrain.config import config_hash, validate
from overtrain.executors.local import run_plan
from overtrain.registry import RUN_KINDS
from overtrain.report.build import build_report
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store
from overtrain.training.loop import build_optimizer, divergence, train_segment
from overtrain.training.pretrain_config import PretrainConfig


class Poisoned(torch.nn.Module):
    """A one-parameter 'language model' whose loss is the batch's mean times w: inf where the batch is."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, 2))

    def forward(self, input_ids, labels=None, use_cache=False):
        return SimpleNamespace(loss=(self.w.sum() * input_ids.float().mean()) ** 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_first_non_finite_step_is_found(bad):
    model = Poisoned()
    opt = build_optimizer(model, 1e-3, 0.0, (0.9, 0.95), 1e-8)

    def batch_at(step):
        return torch.full((2, 3), bad if step == 13 else 1.0)

    stats = train_segment(model, opt, batch_at, lambda s: 1e-3, 10, 20, grad_clip=None)
    assert stats.first_nonfinite_step == 13
    assert divergence(stats, 10, 20) == "diverged: training loss became nan at step 13 (segment 10-20)"
    model = Poisoned()
    opt = build_optimizer(model, 1e-3, 0.0, (0.9, 0.95), 1e-8)
    healthy = train_segment(model, opt, lambda s: torch.ones(2, 3), lambda s: 1e-3, 0, 4, grad_clip=None)
    assert healthy.first_nonfinite_step is None and divergence(healthy, 0, 4) is None


def test_a_diverging_run_fails_with_its_step_and_the_sweep_goes_on(home, tiny_pretrain):
    diverging = validate(
        PretrainConfig,
        {**tiny_pretrain, "seed": 1, "train": {**tiny_pretrain["train"], "lr": 1e6, "grad_clip": 0}},
    )
    healthy = validate(PretrainConfig, tiny_pretrain)
    kind = RUN_KINDS.get("pretrain")
    store = Store()
    plan = Plan([PlanItem.from_config(kind, c) for c in (diverging, healthy)])
    result = run_plan(plan, store, progress=False)
    bad_id = config_hash(diverging)
    assert result.done == [config_hash(healthy)] and [rid for rid, _ in result.failed] == [bad_id]
    manifest = store.manifest("pretrain", bad_id)
    assert manifest["status"] == "failed"
    assert manifest["error"].startswith("RunFailed: diverged: training loss became nan at step ")
    step = manifest["info"]["diverged_at_step"]
    assert f"at step {step} " in manifest["error"] and 0 <= step < 20
    assert not (store.run_dir("pretrain", bad_id) / "ckpt" / "budget_5120").exists()  # stopped at once
    page = build_report(home / "report", "pretrain", store).read_text()
    assert "Failed or unfinished runs" in page and bad_id in page and f"at step {step}" in page


def test_the_report_of_a_store_with_only_failed_runs_still_lists_them(home, tiny_pretrain):
    cfg = validate(
        PretrainConfig, {**tiny_pretrain, "train": {**tiny_pretrain["train"], "lr": 1e6, "grad_clip": 0}}
    )
    run_plan(Plan([PlanItem.from_config(RUN_KINDS.get("pretrain"), cfg)]), Store(), progress=False)
    page = build_report(home / "report", None, Store()).read_text()
    assert "diverged: training loss became nan" in page
    info = json.loads((Store().run_dir("pretrain", config_hash(cfg)) / "manifest.json").read_text())["info"]
    assert "diverged_at_step" in info
