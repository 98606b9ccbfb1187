"""The hyperfit study end to end on a byte-level nano model pre-trained on the packaged Shakespeare excerpt:
wiring, stored rows, idempotence, the report, a user's local checkpoint as the base, and bad inputs; and
its findings' decision rules on synthetic per-prompt data: a planted effect passes, exchangeable models
fail, too few prompts are UNDERPOWERED, fpr ≤ 5% at the simulated noise."""

from __future__ import annotations

import html
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from overtrain.errors import CheckpointError, ConfigError, DataError, UserError
from overtrain.registry import STUDIES
from overtrain.report.build import build_report
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.query import query
from overtrain.runs.store import Store
from overtrain.studies.hyperfit.calibrate import (
    below,
    equivalence_calibration,
    share_calibration,
    share_rule,
    unit_calibration,
    within,
)
from overtrain.studies.hyperfit.claims import claims as hyperfit_claims
from overtrain.studies.hyperfit.config import HyperfitConfig
from overtrain.studies.hyperfit.report import _text
from overtrain.studies.hyperfit.study import STUDY

EXCERPT = Path(str(resources.files("overtrain.data").joinpath("fixtures/shakespeare_excerpt.txt")))
TEXT = {"name": "text", "train": [str(EXCERPT)], "tokenizer": "byte"}

TINY = {
    "pretrain": {
        "data": TEXT,
        "model": {"preset": "llama-nano"},
        "train": {"tokens": [2048], "batch_size": 8, "seq_len": 32, "warmup_steps": 2, "lr": 1e-2},
        "eval": {"batches": 1},
        "checkpoint": {"log_spaced": False, "step_zero": False},
    },
    "train": {"sequences": 8, "batch_size": 4, "epochs": 4, "eval_every": 2, "lr": 1e-2},
    "ablation_sequences": [4],
    "eval": {
        "prompts": 6,
        "prompt_len": 8,
        "new_tokens": 16,
        "ttr_window": 12,
        "samples": 1,
        "val_batches": 1,
        "val_batch_size": 6,
        "match_positions": 64,
        "batch_size": 4,
    },
    "bootstrap": 100,
}


def _overrides(cfg: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in cfg.items()]


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """One study run shared by the tests of this module (a few seconds)."""
    root = tmp_path_factory.mktemp("hyperfit") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("OVERTRAIN_HOME", str(root))
    study = STUDIES.get("hyperfit")
    cfg = study.load_config(None, None, _overrides(TINY))
    store = Store()
    result, study_id = study.run(cfg, store, progress=False)
    yield {"cfg": cfg, "store": store, "result": result, "study_id": study_id, "root": root}
    mp.undo()


def test_study_runs_every_run_and_stores_its_rows(study_store):
    cfg, store, study_id = study_store["cfg"], study_store["store"], study_store["study_id"]
    assert study_store["result"].ok and len(study_store["result"].done) == 4  # pretrain, 2 hyperfits, study
    the_plan = STUDY.plan(cfg)
    kinds = [item.kind for item in the_plan.items]
    assert kinds == ["pretrain", "hyperfit_train", "hyperfit_train", "hyperfit"]
    assert the_plan.items[-1].run_id == study_id
    ids = {n: run.run_id for n, run in zip((8, 4), the_plan.items[1:3])}
    metrics = read_jsonl(store.run_dir("hyperfit_train", ids[8]) / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 2, 4]
    assert metrics[-1]["hyperfit/loss"] < metrics[0]["hyperfit/loss"]  # it trained on its sequences
    probes = read_jsonl(store.run_dir("hyperfit_train", ids[8]) / "probes.jsonl")
    gens = [r for r in probes if r["record"] == "generation"]
    assert len(gens) == 6 * 3 + 6  # greedy at every evaluation, blocked at the end
    blocked = [r for r in gens if r["setting"] == "greedy, citation blocked"]
    assert all(r["longest_copy"] <= cfg.eval.block_longer_than and len(r["token_ids"]) == 16 for r in blocked)
    assert sum(r["record"] == "train_sequence" for r in probes) == 8

    rows = query("select * from evals where run_id = ?", store, [study_id]).to_pylist()
    comparison = {r["setting"]: r for r in rows if r["record"] == "comparison"}
    assert list(comparison) == [
        "human",
        "base_greedy",
        "base_nucleus",
        "base_matched",
        "hyperfit",
        "blocked",
        "ablation_4",
    ]
    for r in comparison.values():
        assert 0 < r["ttr"] <= 1 and r["ttr_ci_low"] <= r["ttr"] <= r["ttr_ci_high"] and r["base_nll"] > 0
    temp = next(r for r in rows if r["record"] == "temperature")
    assert comparison["base_matched"]["temperature"] == temp["tau"]
    if temp["inside_range"]:
        assert abs(temp["subset_entropy"] - temp["target_entropy"]) < 1e-3
    claims = [r for r in rows if r["record"] == "claim"]
    assert len(claims) == 8 and {c["verdict"] for c in claims} <= {"PASS", "FAIL", "N/A", "UNDERPOWERED"}
    assert all(c["value"] is not None for c in claims[:7])
    assert [c["type"] for c in claims] == ["check"] + ["finding"] * 7
    assert all(c["fpr"] <= 0.05 for c in claims if c["type"] == "finding" and c["verdict"] == "PASS")
    samples = [r for r in rows if r["record"] == "sample"]
    assert len(samples) == 4 * (1 + 7)
    runs = [(r["child_kind"], r["child_id"], r["sequences"]) for r in rows if r["record"] == "run"]
    assert runs == [
        ("pretrain", the_plan.items[0].run_id, None),
        ("hyperfit_train", ids[8], 8),
        ("hyperfit_train", ids[4], 4),
    ]  # the report finds the study's runs here


def test_rerun_skips_and_report_renders(study_store, tmp_path):
    study = STUDIES.get("hyperfit")
    again, study_id = study.run(study_store["cfg"], study_store["store"], progress=False)
    assert again.ok and not again.done and study_id == study_store["study_id"]
    page = build_report(tmp_path / "rep", "hyperfit", study_store["store"]).read_text()
    assert "Hyperfitting: claims" in page and (tmp_path / "rep" / "hyperfit_curves.png").is_file()
    assert (tmp_path / "rep" / "hyperfit_settings.png").is_file()
    texts = query(
        "select text from evals where run_id = ? and record = 'sample'", study_store["store"], [study_id]
    ).to_pylist()
    assert all(html.escape(_text(r["text"])) in page for r in texts)  # generated text is escaped


def test_a_local_checkpoint_can_be_the_base(study_store, tmp_path, monkeypatch):
    """A user's HF directory (here: the pre-trained checkpoint copied out) replaces the pretrain run."""
    monkeypatch.setenv("OVERTRAIN_HOME", str(study_store["root"]))
    pre = next(item for item in STUDY.plan(study_store["cfg"]).items if item.kind == "pretrain")
    model_dir = tmp_path / "my-model"
    shutil.copytree(study_store["store"].run_dir("pretrain", pre.run_id) / "ckpt" / "budget_2048", model_dir)
    study = STUDIES.get("hyperfit")
    local = {
        **TINY,
        "base_model": str(model_dir),
        "data": {**TEXT, "tokenizer": "parent"},
        "ablation_sequences": [],
        "train": {**TINY["train"], "epochs": 2},
    }
    cfg = study.load_config(None, None, _overrides(local))
    the_plan = STUDY.plan(cfg)
    assert [item.kind for item in the_plan.items] == ["hyperfit_train", "hyperfit"]
    assert the_plan.items[-1].config.base_fingerprint  # a changed checkpoint would be a new run
    result, study_id = study.run(cfg, study_store["store"], progress=False)
    assert result.ok
    assert study_id == the_plan.items[-1].run_id
    claims = query(
        "select claim, verdict from evals where run_id = ? and record = 'claim'",
        study_store["store"],
        [study_id],
    ).to_pylist()
    assert claims[-1]["verdict"] == "N/A"  # no ablation


def test_bad_inputs_are_one_line_user_errors(home, tmp_path):
    study = STUDIES.get("hyperfit")
    assert study is STUDY
    with pytest.raises(ConfigError, match="ablation_sequences"):
        study.load_config(None, None, ["ablation_sequences=[4, 4]"])
    with pytest.raises(ConfigError, match="exceeds the base model's context"):
        study.load_config(None, None, [*_overrides(TINY), "eval.new_tokens=40"])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        study.plan(
            study.load_config(
                None,
                None,
                [
                    *_overrides(TINY),
                    f"base_model={tmp_path / 'none'}",
                    f"data={json.dumps({**TEXT, 'tokenizer': 'parent'})}",
                ],
            )
        )
    with pytest.raises(UserError, match="base_model needs"):
        study.plan(study.load_config(None, None, [*_overrides(TINY), f"base_model={tmp_path}"]))
    with pytest.raises(DataError, match="overtrain data prepare shakespeare"):  # default preset, unprepared
        study.plan(study.load_config())


# --- the findings' decision rules on synthetic per-prompt data ------------------------------------------


def synthetic(prompts: int = 128, windows: int = 256, effect: bool = True, seed: int = 0) -> dict:
    """Per-prompt and per-window arrays like the analysis's. With `effect`: the paper's picture (entropy
    halved, perplexity x20, TTR +0.2 over base greedy and +0.1 over the matched base, no copying, blocking
    changes nothing, the n = 8 run keeps none of the gain); without: every compared pair exchangeable
    (same mean), copying common, blocking costs 0.1 TTR."""
    rng = np.random.default_rng(seed)

    def noise(sd: float, n: int = prompts) -> np.ndarray:
        return rng.normal(0.0, sd, n)

    base = 0.3 + noise(0.05)
    main = base + (0.2 if effect else 0.0) + noise(0.05)
    zeros = np.zeros(prompts)
    per = {
        "human": {"ttr": 0.7 + noise(0.03), "copied": zeros},
        "base_greedy": {"ttr": base, "copied": zeros},
        "base_nucleus": {"ttr": 0.6 + noise(0.03), "copied": zeros},
        "base_matched": {"ttr": main - (0.1 if effect else 0.0) + noise(0.05), "copied": zeros},
        "hyperfit": {
            "ttr": main,
            "copied": zeros if effect else (rng.random(prompts) < 0.3).astype(float),
            "longest_copy": 3.0 + zeros,
        },
        "blocked": {"ttr": main + (0.0 if effect else -0.1) + noise(0.01), "copied": zeros},
        "ablation_8": {"ttr": (base if effect else main) + noise(0.03), "copied": zeros},
    }
    entropy = 4.0 + rng.normal(0, 0.3, windows)
    nll = 4.3 + rng.normal(0, 0.3, windows)
    base_val = {"entropy": entropy, "nll": nll, "top1": 0.2 + 0 * entropy}
    hf_val = {
        "entropy": entropy * (0.5 if effect else 1.0) + rng.normal(0, 0.1, windows),
        "nll": nll + (3.0 if effect else 0.0) + rng.normal(0, 0.2, windows),
        "top1": 0.5 + 0 * entropy,
    }
    train = {64: np.full(64, 0.02), 8: np.full(8, 0.2)}
    temperature = {"tau": 0.6, "entropy_at_tau": 2.0, "target_entropy": 2.0}
    return {
        "per": per,
        "base_val": base_val,
        "hf_val": hf_val,
        "train_nll": train,
        "temperature": temperature,
    }


def run_claims(data: dict):
    cfg = HyperfitConfig(bootstrap=200)
    return hyperfit_claims(
        cfg, data["per"], data["base_val"], data["hf_val"], data["train_nll"], data["temperature"]
    )


def test_planted_effects_pass_and_exchangeable_models_fail():
    found = run_claims(synthetic())
    assert [c.type for c in found] == ["check"] + ["finding"] * 7
    assert [c.verdict for c in found] == ["PASS"] * 8, [(c.claim, c.verdict, c.detail) for c in found]
    for c in found[1:]:
        assert c.fpr is not None and c.fpr <= 0.05 and c.power >= 0.8 and "replicates" in c.detail
    null = run_claims(synthetic(effect=False))
    assert [c.verdict for c in null[1:7]] == ["FAIL"] * 6, [(c.claim, c.verdict) for c in null]
    assert null[7].verdict == "N/A" and "gained nothing" in null[7].detail  # no gain to lose
    keeps = synthetic()  # the main run gains, and the n = 8 run keeps all of it
    keeps["per"]["ablation_8"]["ttr"] = keeps["per"]["hyperfit"]["ttr"] + np.random.default_rng(2).normal(
        0, 0.03, 128
    )
    last = run_claims(keeps)[7]
    assert last.verdict == "FAIL" and last.value == pytest.approx(1.0, abs=0.05)


def test_too_few_prompts_are_underpowered():
    found = run_claims(synthetic(prompts=3, windows=3))
    assert [c.verdict for c in found[1:]] == ["UNDERPOWERED"] * 7


def test_rules_and_their_calibrations():
    rng = np.random.default_rng(1)
    d = rng.normal(0.0, 0.05, 128)
    assert not below(0.0)(d) and below(0.0)(d - 0.05) and not below(0.0)(d + 0.05)
    cal = unit_calibration(d, below(0.0), 0.0, -0.03)
    assert cal.fpr <= 0.05 and cal.power >= 0.8 and cal.n_groups == 128
    assert cal.sigma == pytest.approx(0.05, rel=0.2)
    assert within(0.05)(d) and not within(0.05)(d + 0.06)
    cal = equivalence_calibration(d, 0.05, 0.0)
    assert cal.fpr <= 0.05 and cal.power >= 0.8
    assert share_rule(0.1)(np.zeros(128)) and not share_rule(0.1)(np.r_[np.ones(13), np.zeros(115)])
    cal = share_calibration(128, 0.1, 0.02)
    assert cal.fpr <= 0.05 and cal.power >= 0.8
    assert share_calibration(3, 0.1, 0.02) is None and unit_calibration(d[:2], below(0.0), 0, 1) is None
