"""The overtraining study end to end on a tiny preset: wiring, idempotence, analysis rows."""

from __future__ import annotations

import pytest

from overtrain.config import validate
from overtrain.errors import ConfigError
from overtrain.registry import STUDIES
from overtrain.report.build import build_report
from overtrain.runs.query import query
from overtrain.runs.store import Store
from overtrain.studies import base as study_base
from overtrain.studies.overtraining.config import OvertrainingConfig

TINY = {
    "pretrain": {
        "data": {"name": "hmm", "seed": 0, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "model": {"preset": "llama-nano"},
        "train": {
            "tokens": [2560, 5120, 10240],
            "batch_size": 8,
            "seq_len": 32,
            "warmup_steps": 3,
            "lr": 1e-2,
            "log_every": 5,
        },
        "eval": {"batches": 2},
        "checkpoint": {"log_spaced": False, "resume_every": 50},
        "monitor": {"start_step": 2, "per_doubling": 2, "window": 3, "patience": 1, "batch_size": 4},
    },
    "seeds": [0, 1],
    "finetune": {
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "lrs": [1e-3, 1e-2],
        "train": {"steps": 4, "batch_size": 8, "log_every": 2},
        "ood": {"name": "hmm", "seed": 2, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "selection_batches": 2,
    },
    "sensitivity": {"gammas": [1.0, 4.0], "draws": 2, "eval_batches": 1, "batch_size": 4},
    "theory": {"dim": 8, "max_steps": 1000, "n_checkpoints": 5, "draws": 4, "seeds": [1, 2]},
    "theory_control": {
        "dim": 8,
        "max_steps": 1000,
        "n_checkpoints": 5,
        "draws": 4,
        "seeds": [1, 2],
        "spectrum_exponent": 1.0,
    },
    "forecast_theory": {
        "dim": 8,
        "max_steps": 1000,
        "n_checkpoints": 9,
        "draws": 2,
        "seeds": [1, 2],
        "gammas": [0.01, 0.03],
        "ft_steps": 1,
    },
    "bootstrap": 200,
}


@pytest.fixture
def tiny_cfg():
    return validate(OvertrainingConfig, TINY)


def test_plan_expands_every_run_once(tiny_cfg):
    plan = STUDIES.get("overtraining").plan(tiny_cfg)
    kinds = [item.kind for item in plan.items]
    assert kinds.count("pretrain") == 2 and kinds.count("probe") == 2 * 3
    assert kinds.count("finetune") == 2 * 3 * 2 and kinds.count("linear_theory") == 4
    assert kinds[-1] == "overtraining" and len(plan.items[-1].deps) == len(plan.items) - 1
    assert len({item.run_id for item in plan.items}) == len(plan.items)
    ordered = plan.order()
    assert ordered[-1].kind == "overtraining"


def test_a_method_can_have_its_own_lr_grid():
    cfg = validate(
        OvertrainingConfig,
        {
            **TINY,
            "finetune": {
                **TINY["finetune"],
                "methods": [{"name": "full"}, {"name": "lora", "rank": 2}],
                "method_lrs": {"lora": [3e-2, 1e-2, 3e-3]},
            },
        },
    )
    assert cfg.finetune.lrs_for("lora") == [3e-3, 1e-2, 3e-2] and cfg.finetune.lrs_for("full") == [1e-3, 1e-2]
    labels = [item.label for item in STUDIES.get("overtraining").plan(cfg).items if item.kind == "finetune"]
    assert len(labels) == 2 * 3 * (2 + 3)
    assert sum("lora lr=0.03" in label for label in labels) == 2 * 3
    with pytest.raises(ConfigError, match="method_lrs names 'dora'"):
        validate(
            OvertrainingConfig, {**TINY, "finetune": {**TINY["finetune"], "method_lrs": {"dora": [1e-3]}}}
        )


def test_study_runs_end_to_end_and_reruns_in_place(home, tiny_cfg, monkeypatch, capsys):
    store = Store()
    result, study_id = STUDIES.get("overtraining").run(tiny_cfg, store, progress=False)
    assert result.ok and len(result.done) == 25
    claims = query(
        "select claim, verdict, type, fpr, power from evals where run_id = ? and record = 'claim'",
        store,
        [study_id],
    ).to_pylist()
    assert len(claims) >= 8 and all(c["verdict"] in ("PASS", "FAIL", "N/A", "UNDERPOWERED") for c in claims)
    findings = [c for c in claims if c["type"] == "finding"]
    assert [c["claim"] for c in claims if c["type"] == "check"] == [
        c["claim"]
        for c in claims
        if c["claim"].startswith(("Linear theory", "Precondition", "T* forecaster's", "T* forecaster raises"))
    ]
    # the forecaster validated on the theory model: a finding per spectrum, checks of coverage and alarms
    assert sum(c["claim"].startswith("T* forecaster warns before T* (linear theory") for c in findings) == 2
    # two seeds: no finding may PASS; the rise and trend rules carry their measured fpr and power
    assert not any(c["verdict"] == "PASS" for c in findings)
    rises = [c for c in findings if "U-shaped" in c["claim"] or "degrad" in c["claim"]]
    # the perturbed U, and per quantity (retention, in-distribution, held-out language) the top and tuned LR
    assert len(rises) == 7 and all(0 <= c["fpr"] <= 1 and 0 <= c["power"] <= 1 for c in rises)
    for what in ("Task loss", "Held-out language loss", "Post-fine-tuning pre-training loss"):
        assert (
            sum(
                c["claim"].startswith(f"{what} after fine-tuning degrades") or c["claim"].startswith(what)
                for c in rises
            )
            == 2
        )
    details = (
        query(
            "select detail from evals where run_id = ? and record = 'claim' and claim like '%tuned%'",
            store,
            [study_id],
        )
        .column("detail")
        .to_pylist()
    )
    assert details and all("chosen on task batches disjoint from the reported ones" in d for d in details)
    advice = Store().manifest("overtraining", study_id)["info"]["recommendation"]
    assert "in-distribution:" in advice and "retention:" in advice and "both:" in advice
    tuned = query("select value from evals where run_id = ? and curve = 'tuned LR'", store, [study_id])
    assert set(tuned.column("value").to_pylist()) <= {1e-3, 1e-2}  # the chosen LR of every (seed, budget)
    infl = query(
        f"select * from evals where run_id = '{study_id}' and record = 'inflection'", store
    ).to_pylist()
    fixed = [r for r in infl if r["regime"] == "fixed LR" and r["quantity"].startswith("pre-training")]
    assert sorted(r["lr"] for r in fixed) == [1e-3, 1e-2]
    assert all(r["t_star"] in (2560, 5120, 10240) for r in fixed)  # T* is a budget of the grid
    again, _ = STUDIES.get("overtraining").run(tiny_cfg, store, progress=False)
    assert again.ok and not again.done and len(again.skipped) == 25

    # the analysis is addressed by the code that decides the verdicts: new code, new analysis run,
    # and no training run is redone; --redo-analysis redoes it on request
    study = STUDIES.get("overtraining")
    with monkeypatch.context() as m:  # as if analysis.py had been edited
        m.setitem(study_base._DIGESTS, (*study.analysis_modules, "overtrain.analysis"), "edited")
        edited_id = study.analysis_id(tiny_cfg)
        after_edit, _ = study.run(tiny_cfg, store, progress=False)
    assert edited_id != study_id and after_edit.ok and after_edit.done == [edited_id]
    assert len(after_edit.skipped) == 24
    redone, same_id = study.run(tiny_cfg, store, progress=False, redo_analysis=True)
    assert same_id == study_id and redone.done == [study_id] and len(redone.skipped) == 24
    assert Store().manifest("overtraining", study_id)["redo_reason"] == "requested"
    assert Store().manifest("overtraining", study_id)["version"] == study.version()

    page = build_report(home / "report", "overtraining", store)
    html = page.read_text()
    monitor = query(
        f"select * from evals where run_id = '{study_id}' and record = 'monitor'", store
    ).to_pylist()
    assert {r["seed"] for r in monitor} == {0, 1} and all(r["t_star"] > 0 for r in monitor)
    assert any(c["claim"].startswith("Early-warning monitor") for c in claims)
    forecast = query(
        f"select * from evals where run_id = '{study_id}' and record = 'forecast'", store
    ).to_pylist()
    assert {r["seed"] for r in forecast} == {0, 1}  # the forecaster replayed on every seed's monitor checks
    assert any(c["claim"].startswith("T* forecaster warns before T*") for c in claims)
    for name in ("sensitivity", "perturbed", "finetune_full", "theory", "monitor"):
        assert (page.parent / f"overtraining_{name}.png").stat().st_size > 10_000
        assert f"overtraining_{name}.png" in html
    assert sum(html.count(f'class="{css}"') for css in ("pass", "fail", "na", "under")) >= len(claims)
    assert "findings hold" in html and "<th>fpr</th>" in html
    assert "How many tokens to pre-train (overtrain advise)" in html and "Trade-off across budgets" in html

    # `overtrain advise` on one seed's pre-training run: the forecast from its monitor checks, the trade-off
    # of its budgets after fine-tuning and a recommendation per method; bad input exits 2 in one line
    from overtrain.cli.main import main

    def cli(*argv):
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        out = capsys.readouterr()
        return info.value.code, out.out, out.err

    pretrain_id = monitor[0]["run_id_pretrain"]
    code, out, _ = cli("advise", pretrain_id, "--objective", "retention")
    assert code == 0 and f"pre-training run {pretrain_id}" in out and "forecast" in out
    assert "budget_10240" in out and out.count("for 'retention'") == 1  # one line per method (full)
    code, _, err = cli("advise", pretrain_id, "--objective", "speed")
    assert code == 2 and "unknown objective 'speed'" in err
    code, _, err = cli("advise", study_id)
    assert code == 2 and "advise reads a pre-training or an audit run" in err
    code, out, _ = cli("advise", pretrain_id, "--ft-lr", "0.001")
    assert code == 0 and "LR 0.001" in out
    code, _, err = cli("advise", pretrain_id, "--ft-lr", "0.5")
    assert code == 2 and "no fine-tunes of run" in err and "0.001, 0.01" in err
