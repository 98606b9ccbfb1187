"""bench/gpu_check.sh runs end to end in its CPU mode (the tiny configuration a session without a device
can run), so the script a GPU session runs once has not rotted: every step exits 0 and writes its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_runs_in_its_cpu_mode(tmp_path):
    env = {
        **os.environ,
        "PY": sys.executable,
        "OUT": str(tmp_path / "results"),
        "OVERTRAIN_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_check: device cpu" in done.stdout
    step = json.loads((tmp_path / "results" / "batched_training-gpu-check-cpu-tiny.json").read_text())
    assert [(row["batch"], row["members"]) for row in step["step"]] == [("16x64", 1), ("16x64", 2)]
    assert (tmp_path / "home" / "report" / "index.html").is_file()
