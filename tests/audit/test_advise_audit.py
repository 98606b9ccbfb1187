"""`overtrain advise` on an audit of checkpoints from outside the store: the forecast over the checkpoints
and the perturbed loss across them, with the limit (no fine-tunes) stated."""

from __future__ import annotations

import re


def test_advise_reads_an_audit_of_a_checkpoint_family(tmp_path, save_revisions, cli):
    dirs = save_revisions(tmp_path, "llama", [f"tokens{n}M" for n in (1, 2, 4, 8, 16, 32)])
    text = tmp_path / "ref.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    args = ["audit", *map(str, dirs), "--text", str(text), "--probes", "noise", "--set", "seq_len=32"]
    code, out, _ = cli(*args)
    assert code == 0
    audit_id = re.search(r"audit run (\w+):", out).group(1)
    code, out, err = cli("advise", audit_id, "--objective", "retention")
    assert code == 0, err
    assert f"audit run {audit_id}" in out and "6 checks" in out and "init-scale noise" in out
    assert all(f"tokens{n}M" in out for n in (1, 32)) and "stands in" in out
    code, out, _ = cli("advise", audit_id, "--objective", "id")
    assert code == 0 and "needs fine-tuning runs" in out
    # the checkpoint directories themselves: audited first with the noise probe
    code, direct, _ = cli("advise", *map(str, dirs), "--text", str(text), "--objective", "retention")
    assert code == 0 and "audit run" in direct and "6 checks" in direct
    code, _, err = cli("advise", str(dirs[0]), "no-such-dir")
    assert code == 2 and "not directories: no-such-dir" in err
    # no token counts: one line, exit 2
    plain = save_revisions(tmp_path / "plain", "llama", ["a", "b", "c"])
    args = ["audit", *map(str, plain), "--text", str(text), "--probes", "noise", "--set", "seq_len=32"]
    code, out, _ = cli(*args)
    assert code == 0
    code, _, err = cli("advise", re.search(r"audit run (\w+):", out).group(1))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no token count" in err


def test_too_few_checks_says_what_would_give_more():
    from overtrain.cli.advise import forecast_line
    from overtrain.studies.overtraining.advise import Advice

    audit = forecast_line(Advice("abc", "retention", None, [], source="audit"))
    assert "fewer than 5 checks" in audit and "checkpoints with token counts" in audit
    assert "pretrain.monitor" in forecast_line(Advice("abc", "retention", None, [], source="pretrain"))
