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
from overtrain.runs.kinds.audit import AuditConfig, inflection_row, training_position, with_fingerprints
from overtrain.runs.query import Reader
from overtrain.runs.store import Store

FAST = ["reference_loss", "noise", "induction"]


def test_training_position_from_names_and_meta(tmp_path):
    def pos(name, meta, tps=None):
        return {k: v for k, v in training_position(tmp_path / name, meta, tps).items() if k != "tokens_from"}

    assert pos("stage1-step1000-tokens4B", {}) == {"tokens": 4 * 10**9, "step": 1000}
    assert pos("step143000", {}) == {"tokens": None, "step": 143000}
    assert pos("budget_520000", {}) == {"tokens": 520000, "step": None}
    assert pos("x", {"tokens_seen": 7, "step": 1}) == {"tokens": 7, "step": 1}
    # Pythia's step<N>: tokens only with the tokens per step, and a count from a name or meta.json wins
    assert training_position(tmp_path / "step3", {}, 2_097_152) == {
        "tokens": 3 * 2_097_152,
        "step": 3,
        "tokens_from": "step × 2097152",
    }
    assert training_position(tmp_path / "step3-tokens4B", {}, 10)["tokens_from"] == "name"
    assert training_position(tmp_path / "x", {"tokens_seen": 7, "step": 1}, 10)["tokens"] == 7


@pytest.mark.parametrize("family", ["llama", "neox", "olmo2"])
def test_audit_orders_revisions_and_runs_every_probe(tmp_path, family, save_revisions):
    dirs = save_revisions(tmp_path, family, ["step20", "step0", "step10"])
    cfg = with_fingerprints(AuditConfig(models=dirs, probes=FAST, seq_len=32))
    store = Store()
    out = store.execute(RUN_KINDS.get("audit"), cfg)
    with Reader(store) as reader:
        rows = audit_table(reader, out.run_id)
        assert reader.evals(out.run_id, record="inflection") == []  # steps only: no token counts, no U
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
        main(
            [
                "audit",
                *map(str, dirs),
                "--text",
                str(text),
                "--probes",
                "reference_loss,noise",
                "--report",
                str(tmp_path / "rep"),
                "--set",
                "seq_len=32",
            ]
        )
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "tokens1M" in out and "reference loss" in out
    html = (tmp_path / "rep" / "index.html").read_text()
    assert (
        "Audit of Hugging Face checkpoints" in html
        and "over the checkpoints: " in html
        and "lowest at " in html
    )
    # the U is computed by the audit run and stored as one evals row; the report only reads it
    with Reader(Store()) as reader:
        run = reader.latest("audit")
        (inf,) = reader.evals(run["run_id"], record="inflection")
    assert inf["law"] == "init_scale" and inf["checkpoints"] == 4 and inf["draws"] == 4
    assert 1e6 <= inf["ci_low"] <= inf["t_star"] <= inf["ci_high"] <= 8e6
    assert isinstance(inf["is_u"], bool) and inf["min_rise"] == 0.005
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
    cfg = with_fingerprints(
        AuditConfig(
            models=dirs,
            probes=["sharpness"],
            seq_len=16,
            dtype="bfloat16",
            settings={"sharpness": {"hutchinson_samples": 2, "iterations": 4}},
        )
    )
    store = Store()
    with Reader(store) as reader:
        rows = audit_table(reader, store.execute(RUN_KINDS.get("audit"), cfg).run_id)
    assert all(r["lambda_max"] > 0 and "trace" in r for r in rows)


def test_inflection_row_follows_the_perturbed_loss():
    """A U-shaped init-scale perturbed loss over four token counts gives an interior T* and is_u; too few
    checkpoints with tokens, or only relative noise, give no row."""
    checkpoints = [
        {"model_dir": f"d{i}", "tokens": t, "step": None, "order": o}
        for i, (t, o) in enumerate([(8e6, 0), (1e6, 1), (4e6, 2), (2e6, 3)])
    ]
    loss = {1e6: 3.0, 2e6: 2.5, 4e6: 2.6, 8e6: 2.9}  # the minimum at 2M tokens
    rows = [
        {
            "law": law,
            "gamma": g,
            "draw": k,
            "loss": loss[c["tokens"]] + 0.01 * k + (g == 1.0),
            "model_dir": c["model_dir"],
        }
        for c in checkpoints
        for law in ("init_scale", "relative")
        for g in (1.0, 2.0)
        for k in range(3)
    ]
    row = inflection_row(checkpoints, rows)
    assert row["record"] == "inflection" and row["gamma"] == 2.0 and row["draws"] == 3
    assert row["t_star"] == 2e6 and row["is_u"] and row["interior"]
    assert row["rise"] == pytest.approx(2.91 / 2.51 - 1)  # mean over the draws: +0.01
    assert inflection_row(checkpoints[:3], rows) is None
    assert inflection_row(checkpoints, [r for r in rows if r["law"] == "relative"]) is None


def test_a_tokenizer_that_cannot_encode_the_reference_text_is_a_one_line_error():
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from overtrain.errors import DataError
    from overtrain.runs.kinds.audit import _reference_source

    words = Tokenizer(models.WordLevel({"a": 0, "b": 1}))  # no unknown token: English cannot be encoded
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words)
    with pytest.raises(DataError, match=r"cannot encode the default reference text .* with --text") as info:
        _reference_source(SimpleNamespace(text=None), tokenizer)
    assert "\n" not in str(info.value)
