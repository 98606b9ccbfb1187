"""Fault injection: SIGKILL a sweep at random moments, resume it, and compare with an uninterrupted sweep.

Run (from the repository root):

    .venv/bin/python bench/fault_injection.py                    # 10 trials, ~10-20 min on 2 busy cores
    .venv/bin/python bench/fault_injection.py --trials 2 --workloads sweep --seed 3

Each trial starts a workload through the real CLI in a fresh ``OVERTRAIN_HOME`` (its own process group),
kills it with SIGKILL one to three times, then runs it again until it finishes. Two kinds of kill:

- ``timer``: the whole process group (the CLI and any pool workers) is killed after a random delay,
  uniform over 5-95% of the uninterrupted run's wall time (5-60% for a later kill, which lands in a
  resumed attempt with less left to do);
- ``fault``: ``OVERTRAIN_FAULT=<point>@<n>`` makes a process kill itself the n-th time it reaches a
  fault point (`overtrain.core.atomic.FAULT_POINTS`): inside a checkpoint directory that is half
  written (``atomic_dir.filled``) or complete but not yet renamed into place (``atomic_dir.rename``),
  before a file's rename (``atomic_write.rename``), after half a JSONL line (``jsonl.partial_line``),
  or after a run's work but before its ``success`` manifest (``store.before_success``). n is drawn from
  how often the uninterrupted run reached that point (per process), so the kill lands. With
  ``--workers 2`` a fault kills a pool worker (``worker``): the sweep goes on without it, marks its run
  failed and exits 1; the next attempt redoes the run.

Workloads (both tiny, hermetic): ``sweep``, a pretrain sweep file (WSD and cosine x 2 seeds, resume
states every 4 steps, log-spaced checkpoints), run with ``overtrain sweep``; ``study``, a tiny
catastrophic-overtraining study (2 pre-training runs, fine-tuning and noise probes of every budget
checkpoint, the linear theory runs, the analysis run that depends on all of them), run with
``overtrain overtraining --workers 2``.

A trial survives when the final attempt exits 0 and its store equals the uninterrupted reference's:
the same run ids (zero lost, zero extra/duplicated), every run ``success``, the same sha256 for every
file of every run (metrics/evals/probes JSONL, config, checkpoints and resume state: records identical
bit for bit, no duplicated line), the same manifest ``info`` (timings and paths aside), and no
``.tmp-*`` left anywhere. A control run (a second uninterrupted run in another home) must equal the
reference first, or the comparison would prove nothing.

Results: ``bench/results/fault_injection-cpu.json`` (per trial: kills, where they landed, what the store
held after each, the verdict and any difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAULT_POINTS = (
    "atomic_dir.filled",
    "atomic_dir.rename",
    "atomic_write.rename",
    "jsonl.partial_line",
    "store.before_success",
)
FAULT_WEIGHTS = (3, 3, 2, 1, 1)  # checkpoint writes weigh most: the issue asks for kills during them
TIMING_KEYS = ("wall_s", "train_tokens_per_second")

TINY_PRETRAIN: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "hmm", "seed": 0, "states": 4, "vocab_size": 16, "floor_sequences": 64},
    "model": {"preset": "llama-nano"},
    "train": {
        "tokens": [2560, 5120],
        "batch_size": 8,
        "seq_len": 32,
        "warmup_steps": 3,
        "log_every": 2,
        "lr": 1e-2,
    },
    "eval": {"batches": 2},
    "checkpoint": {"resume_every": 4},
}

SWEEP: dict[str, Any] = {
    "kind": "pretrain",
    "base": TINY_PRETRAIN,
    "axes": {"train.schedule": ["wsd", "cosine"]},
    "seeds": [0, 1],
}

STUDY: dict[str, Any] = {
    "pretrain": {
        **TINY_PRETRAIN,
        "train": {**TINY_PRETRAIN["train"], "tokens": [2560, 5120, 10240], "log_every": 5},
        "checkpoint": {"log_spaced": False, "resume_every": 8},
        "monitor": {"start_step": 2, "per_doubling": 2, "window": 3, "patience": 1, "batch_size": 4},
    },
    "seeds": [0, 1],
    "finetune": {
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "lrs": [1e-2],
        "train": {"steps": 4, "batch_size": 8, "log_every": 2},
    },
    "sensitivity": {"gammas": [1.0, 4.0], "draws": 2, "eval_batches": 1, "batch_size": 4},
    "theory": {"dim": 8, "max_steps": 1000, "n_checkpoints": 5, "draws": 4, "seeds": [1, 2]},
    "theory_control": {
        "dim": 8,
        "max_steps": 1000,
        "n_checkpoints": 5,
        "draws": 4,
        "seeds": [1, 2],
        "spectrum_exponent": 1.0,
    },
    "bootstrap": 200,
}

WORKLOADS: dict[str, dict[str, Any]] = {
    "mini": {"file": {**SWEEP, "seeds": [0]}, "argv": ["sweep", "{file}"], "workers": 1},  # tests: 2 runs
    "sweep": {"file": SWEEP, "argv": ["sweep", "{file}"], "workers": 1},
    "study": {"file": STUDY, "argv": ["overtraining", "--config", "{file}", "--workers", "2"], "workers": 2},
}


# --- running the CLI -----------------------------------------------------------------------------------


def command(workload: str, work: Path) -> list[str]:
    """The CLI command of `workload`, its config file written into `work`."""
    import yaml

    spec = WORKLOADS[workload]
    path = work / f"{workload}.yaml"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec["file"], sort_keys=False))
    return [sys.executable, "-m", "overtrain.cli.main", *(a.format(file=path) for a in spec["argv"])]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTRAIN_FAULT")}
    env.update(OVERTRAIN_HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def attempt(
    cmd: list[str], env: dict[str, str], kill_after: float | None = None, limit: float = 1800
) -> dict[str, Any]:
    """Run `cmd` in its own process group; SIGKILL the group after `kill_after` seconds if given.

    Returns:
        ``{rc, wall_s, killed_by}`` where killed_by is ``timer``, ``fault`` (the process killed itself),
        ``worker`` (a pool worker killed itself; the sweep went on without it and exited 1), or None (it
        exited on its own), plus the tail of stderr.
    """
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        deadline = t0 + (kill_after if kill_after is not None else limit)
        killed_by = None
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_by = "timer" if kill_after is not None else "limit"
                break
            time.sleep(0.01)
        rc = proc.wait()
        if killed_by is None:
            try:  # pool workers of a finished parent must not outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        err.seek(0)
        text = err.read().decode(errors="replace")
        if killed_by is None and rc == -signal.SIGKILL:
            killed_by = "fault"
        elif killed_by is None and "BrokenProcessPool" in text:
            killed_by = "worker"
        tail = text.strip().splitlines()[-3:]
    return {"rc": rc, "wall_s": round(time.monotonic() - t0, 2), "killed_by": killed_by, "stderr_tail": tail}


# --- looking at a store --------------------------------------------------------------------------------


def temporaries(home: Path) -> list[str]:
    """``.tmp-*`` files and dirs anywhere under the runs root (relative paths)."""
    runs = home / "runs"
    return sorted(str(p.relative_to(runs)) for p in runs.rglob(".tmp-*")) if runs.is_dir() else []


def _normal_info(info: dict[str, Any], home: Path) -> dict[str, Any]:
    text = json.dumps({k: v for k, v in (info or {}).items() if k not in TIMING_KEYS}, sort_keys=True)
    return json.loads(text.replace(str(home), "<home>"))


def snapshot(home: Path) -> dict[str, Any]:
    """What a comparison needs of a store: per run dir its status, attempts, output hashes and info."""
    runs: dict[str, Any] = {}
    root = home / "runs"
    for run_dir in sorted(root.glob("*/*")) if root.is_dir() else []:
        if run_dir.name.startswith(".") or not run_dir.is_dir():
            continue
        key = f"{run_dir.parent.name}/{run_dir.name}"
        try:
            m = json.loads((run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            runs[key] = {"status": None}
            continue
        runs[key] = {
            "status": m.get("status"),
            "attempts": m.get("attempts"),
            "outputs": m.get("outputs"),
            "info": _normal_info(m.get("info"), home),
            "error": m.get("error"),
        }
    return {"runs": runs, "temporaries": temporaries(home)}


def state_after_kill(home: Path, temporaries_before: set[str]) -> dict[str, Any]:
    """Run statuses, and whether the attempt left a half-written checkpoint (a new ``ckpt/.tmp-*``)."""
    snap = snapshot(home)
    statuses: dict[str, int] = {}
    for r in snap["runs"].values():
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    in_ckpt = [t for t in set(snap["temporaries"]) - temporaries_before if "/ckpt/" in f"/{t}"]
    return {
        "statuses": statuses,
        "temporaries": len(snap["temporaries"]),
        "mid_checkpoint_write": bool(in_ckpt),
        "partial_jsonl": _partial_lines(home),
    }


def _partial_lines(home: Path) -> int:
    n = 0
    for f in (home / "runs").rglob("*.jsonl") if (home / "runs").is_dir() else []:
        data = f.read_bytes()
        n += bool(data) and not data.endswith(b"\n")
    return n


def compare(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Differences between two snapshots (empty lists everywhere: identical)."""
    ref_runs, got_runs = ref["runs"], got["runs"]
    lost = sorted(set(ref_runs) - set(got_runs))
    extra = sorted(set(got_runs) - set(ref_runs))
    not_success = sorted(k for k, r in got_runs.items() if r.get("status") != "success")
    files, info = [], []
    for key in sorted(set(ref_runs) & set(got_runs)):
        a, b = ref_runs[key].get("outputs") or {}, got_runs[key].get("outputs") or {}
        if not b and got_runs[key].get("status") == "success":
            files.append(f"{key}: no output hashes")
        for rel in sorted(set(a) | set(b)):
            if a.get(rel) != b.get(rel):
                what = "missing" if rel not in b else "extra" if rel not in a else "differs"
                files.append(f"{key}/{rel}: {what}")
        if ref_runs[key].get("info") != got_runs[key].get("info"):
            info.append(key)
    return {
        "lost": lost,
        "extra": extra,
        "not_success": not_success,
        "files_differ": files,
        "info_differs": info,
        "temporaries": got["temporaries"],
    }


def identical(diff: dict[str, Any]) -> bool:
    return not any(diff.values())


# --- trials --------------------------------------------------------------------------------------------


def reference(workload: str, work: Path, control: bool = True) -> dict[str, Any]:
    """An uninterrupted run (counting fault-point hits) and, if `control`, a second one in another home
    that must equal it."""
    cmd = command(workload, work)
    counts = work / f"{workload}-hits.txt"
    ref_home, ctl_home = work / f"{workload}-ref", work / f"{workload}-control"
    run = attempt(cmd, env_for(ref_home, OVERTRAIN_FAULT_COUNT=str(counts)))
    if run["rc"] != 0:
        raise SystemExit(f"reference {workload} run failed: {run}")
    hits = {p: 0 for p in FAULT_POINTS}
    for line in counts.read_text().split():
        hits[line] = hits.get(line, 0) + 1
    snap = snapshot(ref_home)
    if control:
        again = attempt(cmd, env_for(ctl_home))
        diff = compare(snap, snapshot(ctl_home))
        if again["rc"] != 0 or not identical(diff):
            raise SystemExit(f"two uninterrupted {workload} runs differ, nothing to compare against: {diff}")
    return {
        "wall_s": run["wall_s"],
        "hits": hits,
        "runs": len(snap["runs"]),
        "snapshot": snap,
        "control_identical": control,
        "workers": WORKLOADS[workload]["workers"],
    }


def plan_kills(rng: random.Random, ref: dict[str, Any], n_kills: int | None = None) -> list[dict[str, Any]]:
    """One to three kills: each a fault point with n drawn from the reference's hit count, or a timer."""
    kills = []
    for i in range(n_kills or rng.choice((1, 2, 3))):
        if rng.random() < 0.5:
            points = [p for p in FAULT_POINTS if ref["hits"].get(p)]
            point = rng.choices(points, weights=[FAULT_WEIGHTS[FAULT_POINTS.index(p)] for p in points])[0]
            # n counts per process: with a pool each worker sees its share; later kills land in a resumed
            # attempt, which has less left to do: aim early
            top = max(1, ref["hits"][point] // ref["workers"] // (1 + i))
            kills.append({"mode": "fault", "point": point, "n": rng.randint(1, top)})
        else:
            late = 0.95 if i == 0 else 0.6
            kills.append({"mode": "timer", "after_s": round(rng.uniform(0.05, late) * ref["wall_s"], 2)})
    return kills


def trial(
    index: int,
    workload: str,
    ref: dict[str, Any],
    kills: list[dict[str, Any]],
    work: Path,
    keep: bool = False,
) -> dict[str, Any]:
    """Run `workload` with `kills`, then to the end; compare the store with the reference."""
    home = work / f"trial-{index:02d}-{workload}"
    shutil.rmtree(home, ignore_errors=True)
    cmd = command(workload, work)
    log = []
    for kill in kills:
        before = set(temporaries(home))
        if kill["mode"] == "fault":
            result = attempt(cmd, env_for(home, OVERTRAIN_FAULT=f"{kill['point']}@{kill['n']}"))
        else:
            result = attempt(cmd, env_for(home), kill_after=kill["after_s"])
        log.append({**kill, **result, "after": state_after_kill(home, before)})
    final = attempt(cmd, env_for(home))
    diff = compare(ref["snapshot"], snapshot(home))
    survived = final["rc"] == 0 and identical(diff)
    attempts = {k: r.get("attempts") for k, r in snapshot(home)["runs"].items()}
    if not keep and survived:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "trial": index,
        "workload": workload,
        "kills": log,
        "final": final,
        "survived": survived,
        "kills_landed": sum(k["killed_by"] is not None for k in log),
        "runs_redone": sum(1 for a in attempts.values() if (a or 0) > 1),
        "diff": diff,
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--workloads", default="sweep,study", help="comma-separated; trials alternate")
    parser.add_argument("--work", type=Path, default=None, help="working dir (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores of surviving trials too")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fault_injection-cpu.json")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="overtrain-faults-"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    refs = {}
    for w in workloads:
        refs[w] = reference(w, work)
        print(
            f"reference {w}: {refs[w]['runs']} runs in {refs[w]['wall_s']} s, control identical; "
            f"fault-point hits {refs[w]['hits']}",
            flush=True,
        )
    results = []
    for i in range(args.trials):
        w = workloads[i % len(workloads)]
        kills = plan_kills(rng, refs[w])
        r = trial(i, w, refs[w], kills, work, keep=args.keep)
        results.append(r)
        where = ", ".join(
            f"{k['point']}@{k['n']}" if k["mode"] == "fault" else f"timer {k['after_s']}s" for k in r["kills"]
        )
        mid = " mid-checkpoint"
        landed = "; ".join(
            f"{k['killed_by'] or 'finished'}{mid * k['after']['mid_checkpoint_write']}" for k in r["kills"]
        )
        print(
            f"trial {i} ({w}): kills [{where}] -> [{landed}]; {r['runs_redone']} runs redone; "
            f"{'SURVIVED' if r['survived'] else 'FAILED ' + json.dumps(r['diff'])}",
            flush=True,
        )
    survived = sum(r["survived"] for r in results)
    kills = [k for r in results for k in r["kills"]]
    summary = {
        "survived": survived,
        "trials": len(results),
        "kills": len(kills),
        "kills_landed": sum(k["killed_by"] is not None for k in kills),
        "killed_by": {
            str(w): sum(k["killed_by"] == w for k in kills) for w in ("timer", "fault", "worker", None)
        },
        "kills_mid_checkpoint_write": sum(k["after"]["mid_checkpoint_write"] for k in kills),
        "kills_leaving_partial_jsonl_line": sum(bool(k["after"]["partial_jsonl"]) for k in kills),
        "fault_points_hit": sorted({k["point"] for k in kills if k["killed_by"] in ("fault", "worker")}),
        "lost_runs": sum(len(r["diff"]["lost"]) for r in results),
        "extra_runs": sum(len(r["diff"]["extra"]) for r in results),
        "differing_files": sum(len(r["diff"]["files_differ"]) for r in results),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(f"survived {survived}/{len(results)}: {json.dumps(summary)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        refs_out = {w: {k: v for k, v in r.items() if k != "snapshot"} for w, r in refs.items()}
        args.out.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "machine": machine(),
                    "seed": args.seed,
                    "references": refs_out,
                    "trials": results,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"results: {args.out}")
    if args.work is None and survived == len(results):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if survived == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
