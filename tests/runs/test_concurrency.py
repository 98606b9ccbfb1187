"""Concurrency: two sweeps on one store at once finish every run exactly once and leave the store valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from overtrain.runs.store import Store


def test_two_sweeps_on_one_store_run_each_run_once(tmp_path, tiny_pretrain):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"kind": "pretrain", "base": tiny_pretrain, "seeds": [0, 1, 2]}))
    executions = tmp_path / "executions.txt"
    env = {
        **os.environ,
        "OVERTRAIN_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
        # every run that finishes its work passes this point once, in whichever process runs it
        "OVERTRAIN_FAULT_COUNT": str(executions),
    }
    env.pop("OVERTRAIN_FAULT", None)
    command = [sys.executable, "-m", "overtrain.cli.main", "sweep", str(sweep)]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err  # neither sweep fails on the other's busy runs
    finishes = [line for line in executions.read_text().split() if line == "store.before_success"]
    assert len(finishes) == 3  # three runs, each executed once in all
    store = Store(tmp_path / "home" / "runs")
    runs = list(store.iter_runs())
    assert len(runs) == 3 and all(r["status"] == "success" and r["attempts"] == 1 for r in runs)
    assert all(store.verify(r["kind"], r["run_id"]) == [] for r in runs)
    assert not list(Path(tmp_path / "home").rglob(".tmp-*"))
    tallies = sorted(err.strip().splitlines()[-1] for _, err in outputs)
    done = sum(int(t.split()[1]) for t in tallies)  # "runs: N done, M skipped, ..."
    assert done == 3, tallies
