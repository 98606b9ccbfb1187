"""The single-run double-descent studies through the study interface: one compute run (the curves) and
one analysis run (the claims, decided from the compute run's stored rows) each."""

from __future__ import annotations

import json

import pytest

from overtrain.registry import STUDIES
from overtrain.report.build import build_report
from overtrain.runs.store import Store


def _claims(store: Store, study, run_id: str) -> dict[str, str]:
    """The analysis run's claims: {claim: verdict}."""
    rows = [
        json.loads(x) for x in (store.run_dir(study.kind, run_id) / "evals.jsonl").read_text().splitlines()
    ]
    return {r["claim"]: r["verdict"] for r in rows if r.get("record") == "claim"}


def _compute_rows(store: Store, study, cfg) -> list[dict]:
    path = store.run_dir(study.name, study.compute_kind().run_id(cfg)) / "evals.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "name, overrides, passing",
    [
        (
            "head_tuning",
            ["trials=8", "repr_dim=300", "snrs=[0.25,1.0]"],
            {"head-tuning risk peaks at p = n (double descent in model complexity)"},
        ),
        (
            "samplewise_linear",
            ["trials=12", "d=40"],
            {
                "more data hurts: the test MSE at n = d exceeds that at n = d/2",
                "sample-wise test MSE peaks at n = d",
            },
        ),
    ],
)
def test_study_runs_records_claims_and_reports(home, tmp_path, name, overrides, passing):
    study = STUDIES.get(name)
    cfg = study.load_config(None, None, overrides)
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    verdicts = _claims(store, study, run_id)
    assert passing <= {c for c, v in verdicts.items() if v == "PASS"}, verdicts
    manifest = store.manifest(study.kind, run_id)
    assert manifest["info"]["claims_total"] == len(verdicts)
    # the compute run holds the curves only
    assert not any(r.get("record") == "claim" for r in _compute_rows(store, study, cfg))
    html = build_report(tmp_path / "rep", name, store).read_text()
    assert "findings hold" in html
    # the one-screen summary (conclusion and main figure) comes before the study's own sections
    assert html.index("class='summary'") < html.index("Provenance</h2>")
    summary = html[html.index("class='summary'") : html.index("</section>")]
    assert "findings hold" in summary and "<img src=" in summary
    again, _ = study.run(cfg, store, progress=False)
    assert len(again.skipped) == 2 and not again.done


@pytest.mark.parametrize("seeds, findings", [("[0]", "UNDERPOWERED"), ("[0,1,2,3]", "PASS")])
def test_optimization_study_claims_on_a_reduced_config(home, seeds, findings):
    """The solver checks pass at any seed count; the findings need 4 seeds before they can PASS."""
    study = STUDIES.get("dd_optimization")
    cfg = study.load_config(None, None, [f"seeds={seeds}", "steps=[1e2,1e4,1e6]"])
    cfg = cfg.model_copy(update={"settings": cfg.settings[:4]})
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    rows = [
        json.loads(x) for x in (store.run_dir(study.kind, run_id) / "evals.jsonl").read_text().splitlines()
    ]
    claims = [r for r in rows if r.get("record") == "claim"]
    assert {r["verdict"] for r in claims if r["type"] == "check"} == {"PASS"}, claims
    assert {r["verdict"] for r in claims if r["type"] == "finding"} == {findings}, claims
    rows = _compute_rows(store, study, cfg)
    assert {r["setting"] for r in rows if r["record"] == "setting"} >= {s.name for s in cfg.settings}


def test_mlp_study_runs_both_parts_and_reports(home, tmp_path):
    study = STUDIES.get("mlp_double_descent")
    cfg = study.load_config(
        None,
        None,
        [
            "modelwise.widths=[4,16,64]",
            "modelwise.steps=200",
            "modelwise.seeds=[0]",
            "modelwise.eval_every=100",
            "epochwise.widths=[64]",
            "epochwise.steps=200",
            "epochwise.eval_every=50",
        ],
    )
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    info = store.manifest(study.kind, run_id)["info"]
    compute_info = store.manifest(study.name, study.compute_kind().run_id(cfg))["info"]
    assert info["claims_total"] == 5 and compute_info["modelwise_wall_s"] > 0
    html = build_report(tmp_path / "rep", "mlp_double_descent", store).read_text()
    assert "Two-layer networks on digits" in html and (tmp_path / "rep" / "mlp_epochwise.png").is_file()
