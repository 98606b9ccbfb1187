"""How `overtrain query` grows with the number of runs in the store, against DuckDB reading the same JSONL
files directly.

How to run (from the repository root):

    .venv/bin/python bench/query_scale.py                      # 100, 1,000 and 10,000 runs (~minutes)
    .venv/bin/python bench/query_scale.py --sizes 100 300 --repeats 1

What is timed. A synthetic store of N fine-tuning runs laid out as the store writes them (``manifest.json``,
``config.yaml``, ``metrics.jsonl`` with `LINES` records, ``evals.jsonl`` with one), and per N the wall time
of two queries through `overtrain.runs.query.query` (which builds the ``runs``, ``metrics``, ``probes`` and
``evals`` tables from every run directory, then runs the SQL):

- ``runs``: ``select kind, status, count(*) ... group by all``;
- ``metrics``: ``select name, count(*), avg(value) from metrics group by name``.

The reference answers the same two questions with DuckDB reading the files with a glob
(``read_json_auto`` over every ``manifest.json``, and over every ``metrics.jsonl`` aggregating the
``train/loss`` column), in the same process. Both sides must return the same counts (the script stops
otherwise). One untimed call of the reference warms imports and the page cache; the first call of ours is
reported apart (``runs_ours_first_s``: it builds the ``runs`` table's cache, `overtrain.runs.table_cache`).
Reported: median seconds over ``--repeats``, and ``ratio = ours / reference`` (> 1: we are slower). Issue 19's target is ≤ 1 s over ``runs`` and ≤ 3 s over ``metrics`` at 10,000 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

LINES = 20
"""Metrics records per synthetic run (a 100-step fine-tune logging every 10 steps, plus evaluations)."""

RESULTS = Path(__file__).resolve().parent / "results" / "query_scale-cpu.json"


def make_store(root: Path, n: int) -> None:
    """N synthetic fine-tuning runs under ``root/finetune/<id>``, as `Store` lays them out."""
    for i in range(n):
        run_id = f"{i:012x}"
        d = root / "finetune" / run_id
        d.mkdir(parents=True)
        manifest = {
            "run_id": run_id,
            "kind": "finetune",
            "status": "success" if i % 10 else "failed",
            "parents": [f"pretrain/{i % 4:012x}"],
            "attempts": 1,
            "created_at": "2026-12-04T17:26:35.847+00:00",
            "started_at": "2026-12-04T17:26:35.847+00:00",
            "finished_at": "2026-12-04T17:26:41.783+00:00",
            "wall_s": 5.9,
            "git": {"commit": "0" * 40, "dirty": False},
            "versions": {"python": platform.python_version()},
            "device": "cpu",
            "host": "bench",
            "error": None,
            "info": {"n_params": 10320},
            "outputs": {},
        }
        (d / "manifest.json").write_text(json.dumps(manifest))
        (d / "config.yaml").write_text(
            f"parent: {i % 4:012x}\ncheckpoint: budget_{i % 8}\nlr: 0.01\nseed: {i}\n"
        )
        lines = [
            {
                "step": 10 * s,
                "tokens_seen": 40960 * s,
                "train/loss": 4.0 - 0.01 * s + 1e-6 * i,
                "train/lr": 0.003,
            }
            for s in range(LINES)
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        (d / "evals.jsonl").write_text(json.dumps({"checkpoint": f"budget_{i % 8}", "task_loss": 3.5}) + "\n")


def ours(root: Path) -> tuple[dict, dict]:
    from overtrain.runs.query import query
    from overtrain.runs.store import Store

    store = Store(root)
    t0 = time.perf_counter()
    runs = query("select kind, status, count(*) as n from runs group by all", store).to_pylist()
    t1 = time.perf_counter()
    metrics = query(
        "select name, count(*) as n, avg(value) as mean from metrics group by name order by name", store
    ).to_pylist()
    t2 = time.perf_counter()
    counts = {
        "runs": sum(r["n"] for r in runs),
        "train_loss": next(r["n"] for r in metrics if r["name"] == "train/loss"),
    }
    return {"runs": t1 - t0, "metrics": t2 - t1}, counts


def reference(root: Path) -> tuple[dict, dict]:
    import duckdb

    con = duckdb.connect(":memory:")
    t0 = time.perf_counter()
    runs = con.sql(
        f"select kind, status, count(*) as n from read_json_auto('{root}/*/*/manifest.json') group by all"
    ).fetchall()
    t1 = time.perf_counter()
    loss = con.sql(
        'select count("train/loss"), avg("train/loss") from '
        f"read_json_auto('{root}/*/*/metrics.jsonl', union_by_name=true)"
    ).fetchall()
    t2 = time.perf_counter()
    con.close()
    return {"runs": t1 - t0, "metrics": t2 - t1}, {"runs": sum(r[2] for r in runs), "train_loss": loss[0][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "runs"
            t0 = time.perf_counter()
            make_store(root, n)
            built = time.perf_counter() - t0
            times: dict[str, dict[str, list[float]]] = {"ours": {}, "reference": {}}
            reference(root)  # warm-up: imports and the file cache, untimed
            # the first query after the runs changed re-reads every changed run and rewrites the runs
            # table's cache (here: all of them); later ones reuse it
            cold, _ = ours(root)
            for _ in range(args.repeats):
                for name, fn in (("ours", ours), ("reference", reference)):
                    t, counts = fn(root)
                    if counts != {"runs": n, "train_loss": n * LINES}:
                        raise SystemExit(f"{name} counted {counts} on a store of {n} runs")
                    for q, s in t.items():
                        times[name].setdefault(q, []).append(s)
            row = {"runs": n, "metrics_rows": n * LINES, "store_build_s": round(built, 2)}
            row["runs_ours_first_s"] = round(cold["runs"], 4)
            for q in ("runs", "metrics"):
                a, b = statistics.median(times["ours"][q]), statistics.median(times["reference"][q])
                row[f"{q}_ours_s"], row[f"{q}_reference_s"], row[f"{q}_ratio"] = (
                    round(a, 4),
                    round(b, 4),
                    round(a / b, 2),
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "repeats": args.repeats,
                "metrics_lines_per_run": LINES,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
