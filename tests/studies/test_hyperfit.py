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
    "seeds": [0, 1],
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
    assert (
        study_store["result"].ok and len(study_store["result"].done) == 7
    )  # 2 pretrains, 4 hyperfits, study
    the_plan = STUDY.plan(cfg)
    kinds = [item.kind for item in the_plan.items]
    assert kinds == ["pretrain"] * 2 + ["hyperfit_train"] * 4 + ["hyperfit"]
    assert the_plan.items[0].run_id != the_plan.items[1].run_id  # one base model per seed
    assert the_plan.items[-1].run_id == study_id
    ids = dict(zip([(0, 8), (0, 4), (1, 8), (1, 4)], (item.run_id for item in the_plan.items[2:6])))
    metrics = read_jsonl(store.run_dir("hyperfit_train", ids[0, 8]) / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 2, 4] and metrics[-1]["final"] == 1
    assert metrics[-1]["hyperfit/loss"] < metrics[0]["hyperfit/loss"]  # it trained on its sequences
    ablation = read_jsonl(store.run_dir("hyperfit_train", ids[0, 4]) / "metrics.jsonl")
    assert [m["epoch"] for m in ablation] == [0, 4]  # ablation_eval_every None: before and after only
    probes = read_jsonl(store.run_dir("hyperfit_train", ids[0, 8]) / "probes.jsonl")
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
        assert 0 <= r["novel_ttr"] <= r["ttr"] and r["ref_nll"] > 0 and 0 <= r["copied_words"] <= 1
    per_seed = [r for r in rows if r["record"] == "comparison_seed"]
    assert len(per_seed) == 2 * 7
    hf = [r["ttr"] for r in per_seed if r["setting"] == "hyperfit"]
    assert comparison["hyperfit"]["ttr"] == pytest.approx(np.mean(hf))  # the seed mean
    temps = [r for r in rows if r["record"] == "temperature"]
    assert [t["seed"] for t in temps] == [0, 1]
    assert comparison["base_matched"]["temperature"] == pytest.approx(np.mean([t["tau"] for t in temps]))
    claims = [r for r in rows if r["record"] == "claim"]
    assert len(claims) == 9 and {c["verdict"] for c in claims} <= {"PASS", "FAIL", "N/A", "UNDERPOWERED"}
    assert all(c["value"] is not None for c in claims[:8])
    assert [c["type"] for c in claims[:8]] == ["check"] + ["finding"] * 7
    # two seeds: no finding may PASS (or FAIL) on them
    assert all(c["verdict"] in ("UNDERPOWERED", "N/A") for c in claims if c["type"] == "finding")
    samples = [r for r in rows if r["record"] == "sample"]
    assert len(samples) == 4 * (1 + 7)
    runs = [(r["child_kind"], r["child_id"], r["seed"], r["sequences"]) for r in rows if r["record"] == "run"]
    assert runs == [
        ("pretrain", the_plan.items[0].run_id, 0, None),
        ("pretrain", the_plan.items[1].run_id, 1, None),
        *(("hyperfit_train", ids[key], *key) for key in ids),
    ]  # the report finds the study's runs here


def test_loss_matched_training_stops_at_the_target(study_store, tmp_path):
    """With `until_loss` a run stops at the end of the first epoch whose mean training loss is at most the
    target; with an unreachable target, at the step cap."""
    from overtrain.studies.hyperfit.plan import run_configs
    from overtrain.studies.hyperfit.train import HYPERFIT_TRAIN

    store = study_store["store"]
    base = run_configs(study_store["cfg"])[0, 4]

    def run(until: float, max_steps: int) -> tuple[list[dict], dict]:
        train = {**base.train.model_dump(), "until_loss": until, "max_steps": max_steps, "eval_every": 1}
        cfg = base.model_copy(update={"train": type(base.train)(**train)})
        run_id = HYPERFIT_TRAIN.run_id(cfg)
        store.execute(HYPERFIT_TRAIN, cfg)
        info = store.manifest("hyperfit_train", run_id)["info"]
        return read_jsonl(store.run_dir("hyperfit_train", run_id) / "metrics.jsonl"), info

    capped, info = run(1e-6, 5)  # one step per epoch (4 sequences, batch 4)
    losses = [m["train/loss"] for m in capped[1:]]
    assert len(losses) == 5 and info["steps"] == 5 and info["reached_target"] is False
    target = (losses[2] + losses[1]) / 2 if losses[2] < losses[1] else losses[2]
    stopped, info = run(target, 5)
    first = next(i for i, x in enumerate(losses) if x <= target)
    assert info["reached_target"] is True and info["steps"] == first + 1 == stopped[-1]["epoch"]
    assert [m["train/loss"] for m in stopped[1:]] == pytest.approx(losses[: first + 1])


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
        "seeds": [0],
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


def synthetic(seeds: int = 6, effect: bool = True, seed: int = 0) -> dict:
    """Per-seed values like `unit_table`'s. With `effect`: the paper's picture (entropy halved, perplexity
    x20, TTR +0.2 over base greedy and +0.1 over the matched base, no copying beyond the baselines, blocking
    changes nothing, reference NLL no worse than nucleus, the n = 8 run keeps none of the novel-TTR gain
    and the n = 16 run all of it); without: every compared pair exchangeable, copying common, blocking
    costs 0.1 TTR, the hyperfitted text 1 nat less fluent."""
    rng = np.random.default_rng(seed)

    def noise(sd: float) -> np.ndarray:
        return rng.normal(0.0, sd, seeds)

    zeros = np.zeros(seeds)
    base = 0.3 + noise(0.01)
    main = base + (0.2 if effect else 0.0) + noise(0.01)

    def setting(ttr, copied=zeros, ref=3.0, **more) -> dict:
        return {
            "ttr": ttr,
            "novel_ttr": ttr - copied,
            "copied_words": copied,
            "copied": copied,
            "longest_copy_words": 3.0 + zeros,
            "ref_nll": ref + noise(0.05),
            "self_bleu": 0.5 + zeros,
            "distinct_2": 0.5 + zeros,
            **more,
        }

    entropy, nll = 4.0 + noise(0.1), 4.3 + noise(0.1)
    train = {"train_loss": 0.02 + zeros, "steps": 300 + zeros}
    copied = np.abs(noise(0.01)) if effect else 0.3 + noise(0.02)
    return {
        "human": setting(0.7 + noise(0.01), copied=0.02 + zeros),
        "base_greedy": setting(base, val_entropy=entropy, val_nll=nll, val_top1=0.2 + zeros),
        "base_nucleus": setting(0.6 + noise(0.01)),
        "base_matched": setting(main - (0.1 if effect else 0.0) + noise(0.01)),
        "hyperfit": setting(
            main,
            copied=copied,
            ref=3.0 if effect else 4.0,
            val_entropy=entropy * (0.5 if effect else 1.0) + noise(0.05),
            val_nll=nll + (3.0 if effect else 0.0) + noise(0.1),
            val_top1=0.5 + zeros,
            **train,
        ),
        "blocked": setting(main + (0.0 if effect else -0.1) + noise(0.005), **train),
        "ablation_8": setting((base if effect else main) + noise(0.01), **train),
        "ablation_16": setting((main if effect else base) + noise(0.01), **train),
    }


TEMPERATURES = [{"tau": 0.6, "entropy_at_tau": 2.0, "target_entropy": 2.0}]


def run_claims(units: dict):
    return hyperfit_claims(HyperfitConfig(ablation_sequences=[8, 16]), units, TEMPERATURES)


def test_planted_effects_pass_and_exchangeable_models_fail():
    found = run_claims(synthetic())
    assert [c.type for c in found] == ["check"] + ["finding"] * 9
    assert [c.verdict for c in found] == ["PASS"] * 10, [(c.claim, c.verdict, c.detail) for c in found]
    for c in found[1:]:
        assert c.fpr is not None and c.fpr <= 0.05 and c.power >= 0.8 and "seeds" in c.detail
    null = run_claims(synthetic(effect=False))
    assert [c.verdict for c in null[1:8]] == ["FAIL"] * 7, [(c.claim, c.verdict) for c in null]
    assert null[8].verdict == "N/A" and "gained nothing" in null[8].detail  # no gain to lose
    recites = synthetic()  # the n = 8 run keeps the token TTR by reciting: the novel TTR sees it
    recites["ablation_8"].update(
        ttr=recites["hyperfit"]["ttr"], novel_ttr=recites["base_greedy"]["novel_ttr"]
    )
    assert run_claims(recites)[8].verdict == "PASS"
    keeps = synthetic()  # the n = 8 run keeps all of the novel-TTR gain
    keeps["ablation_8"]["novel_ttr"] = keeps["hyperfit"]["novel_ttr"] + np.random.default_rng(2).normal(
        0, 0.01, 6
    )
    last = run_claims(keeps)[8]
    assert last.verdict == "FAIL" and last.value == pytest.approx(1.0, abs=0.05)


def test_copying_is_counted_beyond_the_baselines():
    units = synthetic()
    units["base_nucleus"]["copied_words"] = 0.3 + np.zeros(6)  # the base copies as much
    units["hyperfit"]["copied_words"] = 0.3 + np.random.default_rng(3).normal(0, 0.01, 6)
    copy = run_claims(units)[4]
    assert copy.value == pytest.approx(0.0, abs=0.02) and copy.verdict == "PASS"


def test_too_few_seeds_are_underpowered():
    found = run_claims(synthetic(seeds=3))
    assert [c.verdict for c in found[1:]] == ["UNDERPOWERED"] * 9


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
    assert unit_calibration(d[:2], below(0.0), 0, 1) is None
