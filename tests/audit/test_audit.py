"""``overtrain audit`` on tiny GPT-NeoX, Llama and OLMo-2 "revisions" built and saved locally."""

from __future__ import annotations

import json

import pytest
import torch

from overtrain.cli.main import main
from overtrain.data.tokenizer import id_tokenizer
from overtrain.models.presets import ModelConfig, build_model
from overtrain.registry import RUN_KINDS
from overtrain.report.audit import audit_table
from overtrain.runs.kinds.audit import AuditConfig, training_position, with_fingerprints
from overtrain.runs.store import Store

FAST = ["reference_loss", "noise", "induction"]


def test_training_position_from_names_and_meta(tmp_path):
    assert training_position(tmp_path / "stage1-step1000-tokens4B", {}) == {"tokens": 4 * 10**9, "step": 1000}
    assert training_position(tmp_path / "step143000", {}) == {"tokens": None, "step": 143000}
    assert training_position(tmp_path / "budget_520000", {}) == {"tokens": 520000, "step": None}
    assert training_position(tmp_path / "x", {"tokens_seen": 7, "step": 1}) == {"tokens": 7, "step": 1}


@pytest.mark.parametrize("family", ["llama", "neox", "olmo2"])
def test_audit_orders_revisions_and_runs_every_probe(tmp_path, family, save_revisions):
    dirs = save_revisions(tmp_path, family, ["step20", "step0", "step10"])
    cfg = with_fingerprints(AuditConfig(models=dirs, probes=FAST, seq_len=32))
    store = Store()
    out = store.execute(RUN_KINDS.get("audit"), cfg)
    rows = audit_table(store, out.run_id)
    assert [r["checkpoint"] for r in rows] == ["step0", "step10", "step20"]
    for r in rows:
        assert r["reference loss"] > 0 and r["Δ init_scale γ=4"] > 0 and 0 <= r["max prefix-matching"] <= 1
    # revisions differ, so their losses do
    assert len({round(r["reference loss"], 6) for r in rows}) == 3
    again = store.execute(RUN_KINDS.get("audit"), cfg)
    assert again.skipped


def test_cli_audit_with_u_analysis_and_report(tmp_path, capsys, save_revisions):
    dirs = save_revisions(tmp_path, "llama", [f"tokens{n}M" for n in (1, 2, 4, 8)])
    text = tmp_path / "ref.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    with pytest.raises(SystemExit) as exc:
        main(["audit", *map(str, dirs), "--text", str(text), "--probes", "reference_loss,noise",
              "--report", str(tmp_path / "rep"), "--set", "seq_len=32"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "tokens1M" in out and "reference loss" in out
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Audit of Hugging Face checkpoints" in html and "T* =" in html
    assert (tmp_path / "rep" / "audit_probes.png").stat().st_size > 10_000


def test_bad_inputs_are_one_line_errors(tmp_path, save_revisions, fails):
    (good,) = save_revisions(tmp_path, "llama", ["good"])
    fails([str(tmp_path / "missing")], "checkpoint not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails([str(empty)], "no config.json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((good / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    fails([str(pickled)], "refusing to unpickle")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((good / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    fails([str(corrupt)], "corrupt checkpoint")
    (other,) = save_revisions(tmp_path / "o", "llama", ["other"], tokenizer=id_tokenizer(256))
    fails([str(good), str(other), "--probes", "reference_loss"], "another tokenizer")
    fails([str(good), "--probes", "nosie"], "nosie")
    fails([str(good), "--text", str(tmp_path / "nope.txt")], "reference text not found")


def test_fingerprint_changes_when_weights_are_rewritten(tmp_path, save_revisions):
    (d,) = save_revisions(tmp_path, "llama", ["r"])
    a = with_fingerprints(AuditConfig(models=[d]))
    cfg = json.loads((d / "config.json").read_text())
    model = build_model(ModelConfig(preset="llama-nano"), 256, 64)
    model.config.update({k: v for k, v in cfg.items() if k == "vocab_size"})
    model.save_pretrained(d, safe_serialization=True)
    b = with_fingerprints(AuditConfig(models=[d]))
    assert a.fingerprints != b.fingerprints


def test_audit_runs_the_curvature_probe_in_float32_under_bf16(tmp_path, save_revisions):
    dirs = save_revisions(tmp_path, "olmo2", ["step0", "step1"])
    cfg = with_fingerprints(AuditConfig(models=dirs, probes=["sharpness"], seq_len=16, dtype="bfloat16",
                                        settings={"sharpness": {"hutchinson_samples": 2, "iterations": 4}}))
    store = Store()
    rows = audit_table(store, store.execute(RUN_KINDS.get("audit"), cfg).run_id)
    assert all(r["lambda_max"] > 0 and "trace" in r for r in rows)
