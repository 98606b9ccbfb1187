"""The query-scale benchmark compares like with like: on its synthetic store, our tables and DuckDB's
direct read of the files count the same runs and the same training-loss records; no timing is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "query_scale.py"


def test_both_sides_answer_the_same_counts(tmp_path):
    spec = importlib.util.spec_from_file_location("query_scale", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_store(tmp_path / "runs", 7)
    _, ours = bench.ours(tmp_path / "runs")
    _, reference = bench.reference(tmp_path / "runs")
    assert ours == reference == {"runs": 7, "train_loss": 7 * bench.LINES}
