"""The repeated-data study end to end on a tiny preset: plan, runs through the store, analysis rows,
claims, report (from the analysis rows only), and a rerun that skips every finished run."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from overtrain.config import ConfigError, validate
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.report.build import build_report
from overtrain.runs.query import Reader
from overtrain.runs.store import Store
from overtrain.studies.repeated_data.analysis import decide
from overtrain.studies.repeated_data.config import RepeatedDataConfig
from overtrain.studies.repeated_data.plan import cells
from overtrain.studies.repeated_data.study import STUDY

V, T = 16, 16
SPANS = {"name": "copy", "mode": "spans", "vocab_size": V, "spans": [1, 2], "span_len": [2, 4]}
COPY = {"name": "copy", "mode": "repeat", "vocab_size": V}
TINY = {
    "data": {"name": "mixture", "sources": [SPANS, COPY], "weights": [0.75, 0.25]},
    "fraction": 0.1,
    "repeats": [1, 4, 16],
    "models": {"nano": {"preset": "llama-nano"}, "micro": {"preset": "llama-micro"}},
    "seeds": [0],
    "train": {
        "tokens": [3072],
        "schedule": "cosine",
        "batch_size": 8,
        "seq_len": T,
        "warmup_steps": 4,
        "lr": 1e-2,
        "log_every": 8,
    },  # 24 steps, N = 192 sequences, 19 of them repeats
    "eval": {"batches": 2, "every": 8, "extra": {"copy": COPY, "spans": SPANS}},
    "checkpoint": {"log_spaced": False, "every": 12, "step_zero": False, "resume_every": 12},
    "induction": {"sequences": 8, "batch_size": 8},
    "memorisation": {"split": "repeated", "eval_batches": 2, "batch_size": 4},
    "bootstrap": 100,
}


@pytest.fixture
def tiny_cfg():
    return validate(RepeatedDataConfig, TINY)


def test_registered():
    assert STUDIES.get("repeated_data") is STUDY and STUDY.kind == "repeated_data"
    assert STUDIES.get("repeated_data").config_cls is RepeatedDataConfig
    assert RUN_KINDS.get("repeated_data").config_cls is RepeatedDataConfig


def test_plan_has_one_pretrain_and_two_probes_per_cell(tiny_cfg):
    plan = STUDY.plan(tiny_cfg)
    kinds = [item.kind for item in plan.items]
    assert kinds.count("pretrain") == 2 * 3 and kinds.count("probe") == 2 * 2 * 3
    assert kinds[-1] == "repeated_data" and len(plan.items[-1].deps) == len(plan.items) - 1
    assert len({item.run_id for item in plan.items}) == len(plan.items)
    # every run trains on the same budget with the subset the config names
    for c in cells(tiny_cfg):
        src = c["pretrain"].data.build()
        lay = src.layout(T)
        assert lay.sequences == 192
        assert lay.subset == tiny_cfg.subset(c["repeats"]) == round(19.2 / c["repeats"])


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"repeats": [4, 16, 64]}, "include E = 1"),
        ({"repeats": [1, 1, 4]}, "distinct"),
        ({"repeats": [1, 4, 1000]}, "0 subset sequences"),
        ({"train": {**TINY["train"], "tokens": [5120, 10240]}}, "exactly one token budget"),
        ({"models": {}}, "at least one model"),
        ({"fraction": 1.5}, "fraction"),
    ],
)
def test_bad_config_is_one_line_error(change, text):
    with pytest.raises(ConfigError, match=text):
        validate(RepeatedDataConfig, {**TINY, **change})


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study run once through the store in a fresh OVERTRAIN_HOME, on one torch thread (tiny models
    on shared cores are many times slower with two)."""
    home = tmp_path_factory.mktemp("home")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OVERTRAIN_HOME", str(home))
        cfg = validate(RepeatedDataConfig, TINY)
        store = Store()
        result, study_id = STUDY.run(cfg, store, progress=False)
        yield home, cfg, store, result, study_id
    torch.set_num_threads(threads)


def test_study_writes_rows_and_claims(done):
    _, _, store, result, study_id = done
    assert result.ok and len(result.done) == 6 + 12 + 1
    with Reader(store) as reader:
        rows = reader.evals(study_id)
    by = {}
    for r in rows:
        by.setdefault(r["record"], []).append(r)
    assert len(by["point"]) == 6
    assert all(p["heldout_loss"] > 0 and p["repeated_loss"] > 0 for p in by["point"])
    assert {p["subset_sequences"] for p in by["point"]} == {19, 5, 1}
    assert all(p["repeated_share"] == p["subset_sequences"] * p["repeats"] / 192 for p in by["point"])
    assert len(by["layer"]) == 6 * 2  # llama-nano and -micro have 2 layers
    assert {r["step"] for r in by["curve"]} == {8, 12, 16, 24}  # eval.every and checkpoints
    assert {r["step"] for r in by["subset_curve"]} == {12, 24}
    assert by["scaling_fit"][0]["form"] == "power" and len(by["effective_size"]) == 6
    # what the report reads instead of recomputing it: the worst E per size and the fitted law
    assert {r["size"] for r in by["worst"]} == {"nano", "micro"} and all(
        r["repeats"] > 1 for r in by["worst"]
    )
    assert len(by["law"]) == 100 and all(r["heldout_loss"] > 0 for r in by["law"])
    claims = by["claim"]
    assert len(claims) == 2 * 4 + 3 and all(c["verdict"] in ("PASS", "FAIL", "N/A") for c in claims)
    assert all(c["value"] is not None for c in claims if c["verdict"] != "N/A")


def test_rerun_skips_every_finished_run(done):
    _, cfg, store, _, study_id = done
    again, again_id = STUDY.run(cfg, store, progress=False)
    assert again.ok and not again.done and len(again.skipped) == 19 and again_id == study_id


def test_report_has_the_figures_and_claims(done):
    home, _, store, _, _ = done
    page = build_report(home / "report", "repeated_data", store)
    html = page.read_text()
    assert "Repeated data: claims" in html and "repeated_heldout.png" in html
    assert (page.parent / "repeated_effective_size.png").is_file()


def test_resume_redoes_only_missing_runs(done):
    _, cfg, store, _, study_id = done
    probe_id = cells(cfg)[0]["probe_ids"]["induction"]
    shutil.rmtree(store.run_dir("probe", probe_id))
    shutil.rmtree(store.run_dir("repeated_data", study_id))
    again, _ = STUDY.run(cfg, store, progress=False)
    assert again.ok and sorted(again.done) == sorted([probe_id, study_id]) and len(again.skipped) == 17


def _points(cfg, heldout, copying, prefix):
    """Synthetic per-run rows: value tables are {size: [per-E values]}, the same for every seed plus a
    small seed offset."""
    n = {"nano": 8000, "micro": 32000}
    return [
        {
            "size": size,
            "repeats": e,
            "seed": seed,
            "n_params_non_embedding": n[size],
            "heldout_loss": heldout[size][i] + 0.001 * seed,
            "copying_loss": copying[size][i] + 0.01 * seed,
            "max_prefix_matching": prefix[size][i] + 0.001 * seed,
            "uniform_prefix_matching": 0.02,
        }
        for size in n
        for i, e in enumerate(cfg.repeats)
        for seed in cfg.seeds
    ]


def test_claims_on_synthetic_points():
    cfg = validate(RepeatedDataConfig, {**TINY, "seeds": [0, 1, 2]})
    # micro: an interior peak of 3% at E = 4, copying 50% worse and induction 20% weaker there;
    # nano: loss rising to the last E (no interior peak) and no induction head
    points = _points(
        cfg,
        heldout={"nano": [3.0, 3.01, 3.05], "micro": [2.5, 2.575, 2.52]},
        copying={"nano": [4.0, 4.0, 4.0], "micro": [1.0, 1.5, 1.1]},
        prefix={"nano": [0.02, 0.02, 0.02], "micro": [0.6, 0.48, 0.59]},
    )
    # held-out curve 2.9, 2.8, 2.85, 2.6: a rise of 0.05 above the running minimum at step 3
    curves = [
        {"size": s, "repeats": e, "step": step, "heldout_loss": loss}
        for s in ("nano", "micro")
        for e in cfg.repeats
        for step, loss in enumerate((2.9, 2.8, 2.85, 2.6))
    ]
    claims, worst, fit, effective, headline = decide(cfg, points, curves)
    by = {c.claim: c for c in claims}
    assert worst == {"nano": 16, "micro": 4}
    peak = by["Held-out loss peaks at an intermediate E (micro)"]
    assert peak.verdict == "PASS" and peak.value == pytest.approx(2.576 / 2.521 - 1, rel=1e-9)
    assert peak.ci_low is not None and peak.ci_low <= peak.value <= peak.ci_high
    assert by["Held-out loss peaks at an intermediate E (nano)"].verdict == "FAIL"
    assert by["At the worst E, copying is worse (micro)"].verdict == "PASS"
    assert by["At the worst E, induction heads are weaker (micro)"].verdict == "PASS"
    assert by["At the worst E, copying is worse (nano)"].verdict == "N/A"  # no head at E = 1
    assert by["Precondition: an induction head forms without repetition (nano)"].verdict == "FAIL"
    # nano's worst E (16) holds 1 sequence, micro's (4) holds 5: larger model, larger subset
    assert by["Larger models are hurt most by larger repeated subsets"].value == pytest.approx(math.log2(5))
    assert fit["form"] == "power" and fit["b"] > 0
    micro = next(r for r in effective if r["size"] == "micro" and r["repeats"] == 4)
    assert micro["ratio"] < 1 and headline.startswith("Repeating")
    assert by["Held-out loss rises mid-training at the worst E"].value == pytest.approx(0.05 / 2.8)
