"""The repeated-data study end to end on a tiny preset: plan, runs through the store, analysis rows,
claims, report (from the analysis rows only), and a rerun that skips every finished run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from overtrain.analysis.calibration import no_peak, planted_peak
from overtrain.config import ConfigError, validate
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.report.build import build_report
from overtrain.runs.query import Reader
from overtrain.runs.store import Store
from overtrain.studies.repeated_data.calibrate import (
    PAPER_EFFECT,
    gap_bump,
    gap_calibration,
    gap_rule,
    held_out_bump,
    loo_damage,
    lower_bound,
    order_calibration,
    order_rule,
    paired_calibration,
    paired_rule,
    rise_calibration,
    rise_rule,
    shrink_calibration,
    shrink_rule,
    text_peak_calibration,
    text_peak_rule,
)
from overtrain.studies.repeated_data.config import RepeatedDataConfig
from overtrain.studies.repeated_data.findings import decide, worst_rows
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
    "induction": {"sequences": 8, "batch_size": 8, "ablate_top": 1},
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
    assert len(by["law"]) == 100 and all(r["loss"] > 0 for r in by["law"])
    assert by["scaling_fit"][0]["loss_key"] == "spans_loss"  # the law is on the text, like the worst E
    # the induction probe at every checkpoint of every run (steps 12 and 24), timing read from it
    assert len(by["induction_curve"]) == 6 * 2 and {r["step"] for r in by["induction_curve"]} == {12, 24}
    for p in by["point"]:
        assert 0 <= p["induction_mean_score"] <= 1 and 12 <= p["phase_change_step"] <= 24
        assert p["ablation_effect"] is not None
    claims = by["claim"]
    # per size: text peak, precondition, copying, induction, ablation, mean score, phase change, rise, gap;
    # then the size order and the effective size per size
    assert len(claims) == 2 * 10 + 1 and all(c["value"] is not None for c in claims if c["verdict"] != "N/A")
    # one seed: no finding can PASS or FAIL (fewer than 4 seeds), the checks can
    assert all(c["verdict"] in ("UNDERPOWERED", "N/A") for c in claims if c["type"] == "finding")
    assert {r["chosen_on"] for r in by["worst"]} == {"spans_loss"}


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


# --- the claims on synthetic rows ----------------------------------------------------------------------

SIX = {**TINY, "repeats": [1, 2, 4, 8, 16], "seeds": [0, 1, 2, 3, 4, 5]}  # subsets 19, 10, 5, 2, 1


def _points(cfg, tables, noise=0.003):
    """Synthetic per-run rows: `tables` is {key: {size: [per-E values]}}, each value times (1 + noise·z)
    with z standard normal per (size, E, seed, key), from a fixed generator."""
    rng = np.random.default_rng(0)
    n = {"nano": 8000, "micro": 32000}
    return [
        {
            "size": size,
            "repeats": e,
            "seed": seed,
            "n_params_non_embedding": n[size],
            "uniform_prefix_matching": 0.02,
            **{key: t[size][i] * (1 + noise * rng.standard_normal()) for key, t in tables.items()},
        }
        for size in n
        for i, e in enumerate(cfg.repeats)
        for seed in cfg.seeds
    ]


def _curves(cfg, shapes, noise=0.002):
    """Text-loss curves over 8 steps at every (size, E, seed): `shapes` is {size: {E: curve}} (key None: every
    other E), each value times (1 + noise·z)."""
    rng = np.random.default_rng(1)
    return [
        {"size": s, "repeats": e, "seed": seed, "step": 100 * (k + 1), "spans_loss": v * (1 + noise * z)}
        for s, by_e in shapes.items()
        for e in cfg.repeats
        for seed in cfg.seeds
        for k, (v, z) in enumerate(zip(by_e.get(e, by_e[None]), rng.standard_normal(8)))
    ]


TABLES = {
    # text: nano peaks at E = 4 (+5%), micro at E = 2 (+6%): the larger model at the larger subset
    "spans_loss": {"nano": [3.4, 3.42, 3.57, 3.42, 3.43], "micro": [3.3, 3.5, 3.32, 3.31, 3.33]},
    # the mixed held-out loss is worst at E = 16 for micro: the worst E must not be chosen on it
    "heldout_loss": {"nano": [3.7, 3.71, 3.8, 3.72, 3.73], "micro": [3.2, 3.3, 3.21, 3.22, 3.6]},
    "copy_task_loss": {"nano": [4.4] * 5, "micro": [2.0, 2.6, 2.0, 2.1, 3.5]},
    # micro's copying 50% worse and its head 20% weaker at E = 2; nano has no head
    "copying_loss": {"nano": [4.0] * 5, "micro": [1.0, 1.5, 1.0, 1.05, 2.0]},
    "max_prefix_matching": {"nano": [0.02] * 5, "micro": [0.6, 0.48, 0.6, 0.6, 0.3]},
    # micro's top head carries 30% less copying at E = 2, its head forms 40% later, its mean score is 25% lower
    "ablation_effect": {"nano": [0.01] * 5, "micro": [1.0, 0.7, 1.0, 1.0, 0.5]},
    "phase_change_step": {"nano": [1500.0] * 5, "micro": [500.0, 700.0, 500.0, 510.0, 900.0]},
    "induction_mean_score": {"nano": [0.02] * 5, "micro": [0.4, 0.3, 0.4, 0.4, 0.2]},
}
BUMP = [4.0, 3.6, 3.4, 3.3, 3.5, 3.4, 3.35, 3.3]  # 6% above the running minimum at step 5
SMALL_BUMP = [4.0, 3.6, 3.4, 3.3, 3.33, 3.32, 3.31, 3.3]  # 1% at step 5: the induction phase change
FALLING = [4.0, 3.7, 3.55, 3.45, 3.4, 3.37, 3.35, 3.34]
# micro rises 6% at its worst E (2) and 1% without repetition; nano rises 1% at every E
CURVES = {"nano": {None: SMALL_BUMP}, "micro": {2: BUMP, None: SMALL_BUMP}}


def _decide(cfg, tables=TABLES, curves=None):
    curves = _curves(cfg, curves or CURVES)
    claims, worst, fit, effective, headline = decide(cfg, _points(cfg, tables), curves)
    return {c.claim: c for c in claims}, worst, fit, effective, headline


def test_claims_on_synthetic_points():
    cfg = validate(RepeatedDataConfig, SIX)
    by, worst, fit, effective, headline = _decide(cfg)
    assert worst == {"nano": 4, "micro": 2}  # chosen on the text, not on the mixed held-out loss
    for size in ("nano", "micro"):
        peak = by[f"An intermediate E is worst for the text loss ({size})"]
        assert peak.verdict == "PASS" and peak.type == "finding" and peak.ci_low > cfg.min_peak
        assert peak.fpr <= 0.05 and peak.power > 0.9
    assert by["At the worst E on text, copying is worse (micro)"].verdict == "PASS"
    weaker = by["At the worst E on text, induction heads are weaker (micro)"]
    assert weaker.verdict == "PASS" and weaker.value == pytest.approx(-0.2, abs=0.01) and weaker.ci_high < 0
    causal = by["At the worst E on text, the top head carries less copying (micro)"]
    assert causal.verdict == "PASS" and causal.value == pytest.approx(-0.3, abs=0.01)
    later = by["At the worst E on text, the induction phase change comes later (micro)"]
    assert later.verdict == "PASS" and later.value == pytest.approx(0.4, abs=0.01) and later.ci_low > 0
    over = by["At the worst E on text, induction is weaker over training (micro)"]
    assert over.verdict == "PASS" and over.value == pytest.approx(-0.25, abs=0.01)
    assert by["At the worst E on text, the induction phase change comes later (nano)"].verdict == "N/A"
    # the copy task is read at the E chosen on the text (E = 2: 2.6 vs 2.0), not at its own worst (E = 16)
    rows = {r["size"]: r for r in worst_rows(cfg, _points(cfg, TABLES), worst)}
    assert rows["micro"]["copy_task_loss"] == pytest.approx(2.6, rel=0.01)
    assert rows["micro"]["copy_task_loss_e1"] == pytest.approx(2.0, rel=0.01)
    assert by["At the worst E on text, copying is worse (nano)"].verdict == "N/A"  # no head at E = 1
    assert by["Precondition: an induction head forms without repetition (nano)"].verdict == "FAIL"
    order = by["Larger models are hurt most by larger repeated subsets"]
    assert order.verdict == "PASS" and order.value == pytest.approx(1.0) and order.fpr <= 0.05
    rise = by["The text loss rises mid-training at the worst E, more than at E = 1 (micro)"]
    assert rise.verdict == "PASS" and rise.value == pytest.approx(3.5 / 3.3 - 3.33 / 3.3, abs=0.005)
    assert rise.fpr <= 0.05 and rise.power > 0.9
    gap = by["The worst E's gap to E = 1 peaks mid-training (micro)"]
    assert gap.verdict == "PASS" and gap.value == pytest.approx(3.5 / 3.33 - 1, abs=0.01) and gap.fpr <= 0.05
    assert by["The worst E's gap to E = 1 peaks mid-training (nano)"].verdict == "FAIL"
    # nano's text loss rises as much at its worst E as at E = 1: not the repetition's doing
    assert by["The text loss rises mid-training at the worst E, more than at E = 1 (nano)"].verdict == "FAIL"
    smaller = by["Repetition makes the model behave like a smaller one (micro)"]
    assert smaller.type == "finding" and smaller.verdict == "PASS" and smaller.fpr <= 0.05
    # micro's text loss is 6% higher at E = 2, read through the power law fitted on the E = 1 runs: the ratio
    # is (1 + d)^(-1/b) with 1/b ≈ 48, so the 0.3% noise of each loss moves it by several percent
    assert smaller.value == pytest.approx((3.5 / 3.3) ** (-1 / fit["b"]), rel=0.1)
    assert smaller.ci_low < smaller.value < smaller.ci_high < 1
    assert fit["form"] == "power" and fit["b"] > 0 and headline.startswith("Repeating")
    assert f"{1 / smaller.value:.2f}x smaller" in headline and "PASS" in headline
    micro = next(r for r in effective if r["size"] == "micro" and r["repeats"] == 2)
    assert micro["ratio"] < 1


def test_findings_with_fewer_than_4_seeds_are_underpowered():
    cfg = validate(RepeatedDataConfig, {**SIX, "seeds": [0, 1, 2]})
    by, _, _, _, headline = _decide(cfg)
    findings = [c for c in by.values() if c.type == "finding"]
    assert findings and all(c.verdict in ("UNDERPOWERED", "N/A") for c in findings)
    # the noise is measured from 3 seeds, so the rules are still calibrated (and cannot pass with 3)
    peak = by["An intermediate E is worst for the text loss (micro)"]
    assert peak.fpr is not None and peak.power == 0.0
    assert headline.endswith("The finding is UNDERPOWERED.")


def test_no_text_peak_makes_the_size_order_not_testable():
    cfg = validate(RepeatedDataConfig, SIX)
    flat = {**TABLES, "spans_loss": {**TABLES["spans_loss"], "nano": [3.4, 3.41, 3.42, 3.43, 3.44]}}
    by, worst, *_ = _decide(cfg, flat)
    assert worst["nano"] == 16  # its worst E is the grid edge: no interior peak
    assert by["An intermediate E is worst for the text loss (nano)"].verdict == "FAIL"
    order = by["Larger models are hurt most by larger repeated subsets"]
    assert order.verdict == "N/A" and "not testable" in order.detail


# --- the decision rules on planted nulls and effects ----------------------------------------------------


def _noisy(mean, sigma=0.01, seeds=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(mean, dtype=float) + rng.normal(0, sigma, (seeds, len(mean)))


def test_text_peak_rule_passes_a_planted_peak_and_fails_the_null():
    null = no_peak(np.array([3.4, 3.38, 3.39, 3.42]))
    rule = text_peak_rule(0.01)
    assert rule(_noisy(planted_peak(null, PAPER_EFFECT, 2)))
    assert not rule(_noisy(null))
    assert not rule(_noisy(planted_peak(null, PAPER_EFFECT, 2), seeds=3))  # no bound below 4 seeds
    cal = text_peak_calibration(_noisy(null), 0.01)
    assert cal.fpr <= 0.05 and cal.power > 0.9


def test_paired_rule_passes_a_planted_change_and_fails_the_null():
    rule = paired_rule(0.05)
    assert rule(_noisy([0.3], sigma=0.05))
    assert not rule(_noisy([0.0], sigma=0.05))
    assert not rule(_noisy([0.03], sigma=0.001))  # significant but below the 5% gate
    cal = paired_calibration(_noisy([0.0], sigma=0.01)[:, 0], 0.05)
    assert cal.fpr <= 0.05 and cal.power > 0.5
    assert paired_calibration(np.array([0.1]), 0.05) is None  # one seed: no noise to measure


def test_rise_rule_passes_a_rise_beyond_e1_and_fails_the_same_rise():
    base = np.array([4.0, 3.7, 3.55, 3.45, 3.5, 3.42, 3.38, 3.36])  # a 1.4% rise at step 4 without repetition
    rule = rise_rule(8, 0.005)
    worse = np.concatenate([_noisy(base), _noisy(planted_peak(base, PAPER_EFFECT, 4), seed=1)], axis=1)
    same = np.concatenate([_noisy(base), _noisy(base, seed=1)], axis=1)
    assert rule(worse) and not rule(same)
    bump = held_out_bump(_noisy(base, sigma=0.001))
    assert set(bump.step_index) == {4} and bump.excess == pytest.approx(3.5 / 3.45 - 1, abs=0.002)
    cal = rise_calibration(_noisy(base), _noisy(base, seed=1), 0.005)
    assert cal.fpr <= 0.05 and cal.power > 0.9


def test_gap_rule_passes_a_mid_training_bump_of_the_ratio_and_fails_a_widening_gap():
    # the worst E's loss relative to E = 1: a gap that widens and stays (no bump) vs one that peaks at
    # evaluation 3 by 5.4% over where it ends
    widening = np.array([1.0, 1.005, 1.01, 1.015, 1.02, 1.02, 1.021, 1.022])
    rule = gap_rule(0.005)
    bumped = planted_peak(widening, PAPER_EFFECT, 3)
    assert rule(_noisy(bumped, sigma=0.005)) and not rule(_noisy(widening, sigma=0.005))
    bump = gap_bump(_noisy(bumped, sigma=0.0005))
    assert set(bump.step_index) == {3}
    assert bump.excess == pytest.approx(bumped[3] / widening[4:].min() - 1, abs=0.003)
    cal = gap_calibration(_noisy(widening, sigma=0.005), 0.005)
    assert cal.fpr <= 0.05 and cal.power > 0.9
    assert gap_calibration(_noisy(widening)[:1], 0.005) is None  # one seed


def test_order_rule_passes_a_shifted_peak_and_fails_a_common_one():
    null = np.array([3.4, 3.41, 3.42, 3.43, 3.44])
    same = np.concatenate([planted_peak(null, PAPER_EFFECT, 2), planted_peak(null, PAPER_EFFECT, 2)])
    shifted = np.concatenate([planted_peak(null, PAPER_EFFECT, 2), planted_peak(null, PAPER_EFFECT, 1)])
    rule = order_rule(5)
    assert rule(_noisy(shifted)) and not rule(_noisy(same))
    cal = order_calibration(_noisy(planted_peak(null, 0.05, 2)), _noisy(planted_peak(null, 0.05, 1)))
    assert cal.fpr <= 0.05 and cal.power > 0.9


def test_lower_bound_needs_4_values():
    assert lower_bound([1.0, 2.0, 3.0]) is None
    assert lower_bound([1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert PAPER_EFFECT == pytest.approx(0.054, abs=0.001)


def test_shrink_rule_locates_the_worst_e_on_the_other_seeds():
    flat = np.full(4, 3.3)
    hurt = flat * np.array([1, 1.01, 1.05, 1.02])  # E index 2 is 5% worse than E = 1
    rule = shrink_rule()
    # (a null draw passes ~2% of the time, as the calibration says; this one is not among them)
    assert rule(_noisy(hurt)) and not rule(_noisy(flat, seed=1))
    # each seed's change is read at the E the other seeds pick: index 2 here, so about +5% per seed
    assert loo_damage(_noisy(hurt, sigma=0.001)) == pytest.approx(np.full(6, 0.05), abs=0.002)
    # on a flat null a seed whose own noise peaks somewhere cannot pick that E for itself
    y = np.full((4, 3), 3.3)
    y[1:, 2], y[0, 1] = 3.31, 3.8  # seed 0's own noise peaks at E index 1, the others' at index 2
    # seed 0 reads index 2 (0%), not its own +15%; the others read index 1, where seed 0 peaks (0% for them)
    assert loo_damage(y) == pytest.approx([0.0, 0.0, 0.0, 0.0])
    cal = shrink_calibration(_noisy(flat), PAPER_EFFECT)
    assert cal.fpr <= 0.05 and cal.power > 0.9
    assert shrink_calibration(_noisy(flat)[:1], PAPER_EFFECT) is None  # one seed


def test_a_wsd_run_s_curve_is_its_stable_line_then_its_decay():
    """Under WSD the budget's line is only the decay, branched at step 30 from `main`: the curve must hold
    main's evaluations up to the branch, then the decay's (cosine runs log their budget's line only)."""
    import json

    from overtrain.studies.repeated_data.analysis import _evaluations

    def row(step, line, value):
        tags = json.dumps({"line": line})
        return {
            "run_id": "r",
            "step": step,
            "tokens_seen": step,
            "name": "val/loss",
            "value": value,
            "tags": tags,
        }

    class Reader:
        def metrics(self, run_ids, names):
            main = [row(s, "main", 4.0 - s / 100) for s in (10, 20, 30)]
            return main + [row(40, "main", 9.0)] + [row(s, "budget_40", 3.0 - s / 100) for s in (30, 40)]

    got = _evaluations(Reader(), ["r"], "budget_40")["r"]
    # step 40 of main (past the branch) is not the budget's; the branch point is logged on both lines
    assert [(r["step"], round(r["val/loss"], 2)) for r in got] == [
        (10, 3.9),
        (20, 3.8),
        (30, 3.7),
        (30, 2.7),
        (40, 2.6),
    ]
