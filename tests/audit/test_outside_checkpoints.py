"""Checkpoints from outside the store (issue 21): Pythia-style ``step<N>`` directories (the U on steps,
or on tokens with ``--tokens-per-step``), a tokenizer given once with ``--tokenizer``."""

from __future__ import annotations

import re

from overtrain.config import config_hash
from overtrain.runs.kinds.audit import AuditConfig
from overtrain.runs.query import Reader
from overtrain.runs.store import Store

STEPS = (1000, 2000, 4000, 8000)
PYTHIA = 2_097_152


def _text(tmp_path):
    text = tmp_path / "ref.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    return text


def _inflection(out):
    run_id = re.search(r"audit run (\w+):", out).group(1)
    with Reader(Store()) as reader:
        (inf,) = reader.evals(run_id, record="inflection")
    return inf


def test_old_audit_ids_do_not_change_when_tokens_per_step_is_unset():
    cfg = AuditConfig(models=["/x/step1"], fingerprints={"/x/step1": "a:1:2"})
    assert config_hash(cfg) == "bb80c93c3c72"  # the id before tokens_per_step and tokenizer existed
    assert config_hash(cfg.model_copy(update={"tokens_per_step": PYTHIA})) != "bb80c93c3c72"


def test_step_dirs_get_the_u_on_steps_or_on_tokens_per_step(tmp_path, save_revisions, cli):
    dirs = save_revisions(tmp_path, "neox", [f"step{n}" for n in STEPS])
    base = ["audit", *map(str, dirs), "--text", str(_text(tmp_path)), "--probes", "noise"]
    base += ["--set", "seq_len=32"]
    code, out, err = cli(*base)
    assert code == 0, err
    inf = _inflection(out)
    assert inf["axis"] == "steps" and 1000 <= inf["ci_low"] <= inf["t_star"] <= inf["ci_high"] <= 8000
    assert re.search(r"lowest at [\d,]+ steps", out)
    code, out, err = cli(*base, "--tokens-per-step", str(PYTHIA))
    assert code == 0, err
    inf = _inflection(out)
    assert inf["axis"] == "tokens" and 1000 * PYTHIA <= inf["t_star"] <= 8000 * PYTHIA
    assert re.search(r"lowest at [\d,]+ tokens", out) and f"step × {PYTHIA}" in out
    code, _, err = cli(*base, "--tokens-per-step", "0")
    assert code == 2 and "tokens_per_step" in err


def test_advise_on_step_dirs_needs_tokens_per_step(tmp_path, save_revisions, cli):
    dirs = save_revisions(tmp_path, "llama", [f"step{n}" for n in (*STEPS, 16000)])
    args = ["advise", *map(str, dirs), "--text", str(_text(tmp_path)), "--objective", "retention"]
    code, _, err = cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--tokens-per-step" in err
    code, out, err = cli(*args, "--tokens-per-step", str(PYTHIA))
    assert code == 0, err
    assert "5 checks" in out and f"({16000 * PYTHIA:,} tokens)" in out


def test_tokenizer_given_once_for_checkpoints_saved_without_one(tmp_path, save_revisions, fails, cli):
    dirs = save_revisions(tmp_path, "llama", ["step1", "step2"])
    tok = tmp_path / "tok"
    tok.mkdir()
    for d in dirs:
        for f in d.iterdir():
            if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
                f.replace(tok / f.name)
    args = [*map(str, dirs), "--probes", "reference_loss", "--set", "seq_len=32"]
    fails(args, "--tokenizer DIR")
    fails([*args, "--tokenizer", str(tmp_path / "missing")], "tokenizer directory not found")
    code, out, err = cli("audit", *args, "--tokenizer", str(tok))
    assert code == 0, err
    assert "step1" in out and "step2" in out
