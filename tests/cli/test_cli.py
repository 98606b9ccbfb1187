"""The command line: bad input gives one line on stderr and exit 2; runs, queries and listings work."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overtrain.cli.main import main
from overtrain.paths import configs_dir
from overtrain.runs.jsonl import read_jsonl


def cli(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_version_and_a_bare_command(capsys):
    from overtrain import __version__

    assert cli(capsys, "--version") == (0, f"overtrain {__version__}\n", "")
    code, out, err = cli(capsys)  # no arguments: the help, on stdout, exit 0
    assert code == 0 and out.startswith("Usage: overtrain") and "--version" in out and not err


def test_ls_prints_bracketed_text_as_text(capsys):
    code, out, _ = cli(capsys, "ls", "executors")
    assert code == 0 and "overtrain[ray]" in out  # rich would read "[ray]" as a style tag and drop it


@pytest.fixture
def tiny_yaml(tmp_path, tiny_pretrain):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pretrain))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.tokenz=5"], "train.tokenz: unknown key"),
        (["train.batch_size=big"], "train.batch_size: Input should be a valid integer"),
        (["train.tokens=[-5]"], "train.tokens.0: Input should be greater than 0"),
        (["train.tokens=0"], "train.tokens.0: Input should be greater than 0"),
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["model.preset=llama-nan"], "unknown model preset 'llama-nan' (did you mean 'llama-nano'?)"),
        (["data.name=hmmm"], "unknown dataset 'hmmm'"),
        (["model.overrides.num_layerz=3"], "model: unknown field 'num_layerz' in overrides"),
        (["--config", "/nonexistent/x.yaml"], "config file not found: /nonexistent/x.yaml"),
        (["train.tokens=[2560,2600]"], "both round to 10 steps"),
        (["device=tpu"], "device must be cpu, cuda, cuda:N, mps or auto"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, home, tiny_yaml, args, message):
    argv = ["pretrain", "--config", str(tiny_yaml), *args] if "--config" not in args else ["pretrain", *args]
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (home / "runs").exists() or not any((home / "runs").rglob("manifest.json"))


def test_several_config_problems_are_one_line_each_and_exit_2(capsys, home, tiny_yaml):
    code, out, err = cli(capsys, "pretrain", "--config", str(tiny_yaml), "train.tokenz=5", "train.lr=-1")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        f"overtrain: error: {tiny_yaml} with overrides: 2 problems",
        "  train.lr: Input should be greater than 0 (got -1)",
        "  train.tokenz: unknown key",
    ]
    # a line break inside a value stays escaped: still one line per problem
    code, _, err = cli(capsys, "pretrain", "--config", str(tiny_yaml), "train.tokenz=5", "train.x\ny=1")
    assert code == 2 and len(err.splitlines()) == 3


def test_pretrain_then_query_and_ls(capsys, home, tiny_yaml):
    code, out, _ = cli(capsys, "pretrain", "--config", str(tiny_yaml))
    assert code == 0 and "done" in out
    code, out, _ = cli(capsys, "pretrain", "--config", str(tiny_yaml))
    assert code == 0 and "already done" in out
    code, out, _ = cli(
        capsys, "query", "select kind, status, count(*) as n from runs group by all", "--format", "json"
    )
    assert code == 0 and json.loads(out) == [{"kind": "pretrain", "status": "success", "n": 1}]
    code, out, _ = cli(
        capsys, "query", "select count(*) as n from metrics where name = 'val/loss'", "-f", "csv"
    )
    assert code == 0 and int(out.splitlines()[1]) > 5
    code, out, err = cli(capsys, "query", "select nope from runs")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "ls", "presets", "--vocab", "64")
    assert code == 0 and "llama-nano" in out and "10,320" in out
    code, out, _ = cli(capsys, "ls", "datasets")
    assert code == 0 and "hmm" in out
    code, _, err = cli(capsys, "ls", "widgets")
    assert code == 2 and "unknown listing 'widgets'" in err
    code, out, _ = cli(capsys, "ls", "runs")
    assert code == 0 and out.startswith(f"store: {home / 'runs'}") and "pretrain" in out
    code, out, _ = cli(capsys, "ls", "runs", "--kind", "pretrain", "--status", "success", "-f", "json")
    assert code == 0 and [r["kind"] for r in json.loads(out)] == ["pretrain"]
    code, out, _ = cli(capsys, "ls", "runs", "--status", "failed", "-f", "json")
    assert code == 0 and json.loads(out) == []
    code, _, err = cli(capsys, "ls", "runs", "--kind", "pretrian")
    assert code == 2 and "did you mean 'pretrain'" in err


def test_home_option_puts_the_run_there_and_dry_runs_name_the_store(capsys, home, tiny_yaml, tmp_path):
    other = tmp_path / "elsewhere"
    code, out, _ = cli(capsys, "--home", str(other), "pretrain", "--config", str(tiny_yaml), "--dry-run")
    assert code == 0 and f"store: {other / 'runs'}" in out.splitlines()
    code, out, _ = cli(capsys, "--home", str(other), "pretrain", "--config", str(tiny_yaml))
    assert code == 0 and f"store: {other / 'runs'}" in out.splitlines()
    assert "device: cpu (auto)" in out.splitlines()  # the default device, resolved on this CPU machine
    manifest = json.loads(next((other / "runs" / "pretrain").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "success" and manifest["device"] == "cpu"
    assert not (home / "runs").exists()  # not in $OVERTRAIN_HOME
    code, out, _ = cli(capsys, "--home", str(other), "random-features", "--dry-run")
    assert code == 0 and f"store: {other / 'runs'}" in out.splitlines()
    code, out, _ = cli(
        capsys, "--home", str(other), "sweep", str(configs_dir() / "sweeps" / "demo.yaml"), "--dry-run"
    )
    assert code == 0 and f"store: {other / 'runs'}" in out.splitlines()


def test_study_and_sweep_summaries_name_the_device_their_runs_used(home, tiny_pretrain):
    from overtrain.cli.output import plan_facts
    from overtrain.config import validate
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.plan import Plan, PlanItem
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    store, kind = Store(), RUN_KINDS.get("pretrain")
    cfg = validate(PretrainConfig, tiny_pretrain)
    plan = Plan([PlanItem.from_config(kind, cfg)])
    assert plan_facts(store, plan).splitlines() == [f"store: {store.root}"]  # nothing ran yet
    store.execute(kind, cfg)
    assert plan_facts(store, plan).splitlines() == ["device: cpu", f"store: {store.root}"]


def test_corrupt_resume_state_is_a_one_line_error(capsys, home, tiny_yaml, tiny_pretrain, monkeypatch):
    from overtrain.training.pretrain import _Job

    original = _Job.save_resume

    def crash(self, *args):
        original(self, *args)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(_Job, "save_resume", crash)
    code, _, err = cli(capsys, "pretrain", "--config", str(tiny_yaml))
    assert code == 1 and "simulated crash" in err
    monkeypatch.setattr(_Job, "save_resume", original)
    state = next(home.rglob("resume/optimizer.safetensors"))
    state.write_bytes(state.read_bytes()[:50])  # truncated
    code, _, err = cli(capsys, "pretrain", "--config", str(tiny_yaml))
    assert code == 2 and "corrupt resume state" in err and len(err.strip().splitlines()) == 1
    manifest = json.loads(next(home.rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed"


def test_sigkill_mid_run_then_rerun_matches_an_uninterrupted_run(tmp_path, tiny_pretrain):
    """A real process killed with SIGKILL part-way, started again, ends with the same metrics."""
    cfg = dict(tiny_pretrain)
    cfg["train"] = {**cfg["train"], "tokens": [25_600, 51_200], "log_every": 5}  # 200 steps
    cfg["checkpoint"] = {"resume_every": 10, "log_spaced": False, "step_zero": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "overtrain.cli.main", "pretrain", "--config", str(path)]

    def env(home):
        return {**os.environ, "OVERTRAIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}

    subprocess.run(command, env=env(tmp_path / "ref"), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(
        command, env=env(tmp_path / "kill"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        # glob, not Path.rglob: rglob raises when a checkpoint's temp dir is renamed while it walks, and the
        # resume dir itself is replaced atomically (so it can vanish between the glob and the read)
        states = glob.glob(
            str(tmp_path / "kill" / "runs" / "*" / "*" / "ckpt" / "resume" / "trainer_state.json")
        )
        try:
            if states and json.loads(Path(states[0]).read_text())["state"]["step"] >= 60:
                state = Path(states[0])
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert state is not None and proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    manifest = json.loads((state.parents[2] / "manifest.json").read_text())
    assert manifest["status"] == "running"  # killed: nothing got to mark it either way
    subprocess.run(command, env=env(tmp_path / "kill"), check=True, capture_output=True, timeout=300)
    run_dir = state.parents[2]
    ref_dir = next((tmp_path / "ref").rglob("manifest.json")).parent
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "success"
    for name in ("metrics.jsonl", "evals.jsonl"):
        assert read_jsonl(run_dir / name) == read_jsonl(ref_dir / name)
