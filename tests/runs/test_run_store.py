"""The run store: run directories, manifests, skip-if-done, failure records, resume and the run lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from overtrain.config import BaseConfig, Count, NotInId, config_hash
from overtrain.core.atomic import atomic_dir
from overtrain.errors import RunBusy, UserError
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds import RunKind
from overtrain.runs.store import Store


class ToyConfig(BaseConfig):
    n: Count = 4
    """Steps."""
    fail: bool = False
    """Raise at the end (a run that always fails)."""
    crash_after: int | None = NotInId(None)
    """Raise after logging this step but before checkpointing it (not in the run id: a rerun without
    it is the same run, which must resume)."""
    device: str = NotInId("cpu")
    """Recorded in the manifest."""


def toy_run(cfg: ToyConfig, run) -> None:
    """Counts to `n`, one metrics line and one checkpoint per step, resuming from the checkpoint."""
    state_file = run.ckpt_dir("latest") / "state.json"
    start = 0
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        start = state["step"]
        run.truncate("metrics", state["metric_lines"])
    run.set_info(starts=[*run.info.get("starts", []), start])
    for step in range(start + 1, cfg.n + 1):
        run.log_metrics({"step": step, "tokens_seen": 8 * step, "train/loss": 1.0 / step, "branch": "main"})
        run.progress(step, cfg.n)
        if cfg.crash_after == step:
            raise RuntimeError(f"crashed after step {step}")
        run.sync()
        with atomic_dir(run.ckpt_dir("latest")) as tmp:
            (tmp / "state.json").write_text(
                json.dumps({"step": step, "metric_lines": run.line_count("metrics")})
            )
    if cfg.fail:
        raise ValueError("toy failure\nwith a second line")


TOY = RunKind("toy", ToyConfig, toy_run, total_steps=lambda cfg: cfg.n)


def test_default_root_follows_overtrain_home(home):
    assert Store().root == home / "runs"


def test_execute_writes_config_manifest_and_metrics(home):
    store = Store()
    seen = []
    cfg = ToyConfig(n=3, device="cuda:0")
    outcome = store.execute(TOY, cfg, on_progress=lambda done, total: seen.append((done, total)))

    run_id = config_hash(cfg)
    assert (outcome.run_id, outcome.kind, outcome.skipped, outcome.status) == (
        run_id,
        "toy",
        False,
        "success",
    )
    run_dir = home / "runs" / "toy" / run_id
    assert outcome.dir == run_dir == store.run_dir("toy", run_id)
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == {
        "n": 3,
        "fail": False,
        "crash_after": None,
        "device": "cuda:0",
    }
    m = store.manifest("toy", run_id)
    assert m["status"] == "success" and m["run_id"] == run_id and m["kind"] == "toy"
    assert m["attempts"] == 1 and m["error"] is None and m["parents"] == []
    assert m["device"] == "cuda:0"
    assert m["created_at"] == m["started_at"] <= m["finished_at"]
    assert m["wall_s"] >= 0
    assert set(m["versions"]) == {"python", "torch", "transformers", "peft", "overtrain", "numpy"}
    assert m["git"] is None or set(m["git"]) == {"commit", "dirty"}
    assert m["info"] == {"starts": [0]}
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_success_is_written_last(home, monkeypatch):
    """Every manifest write before the last one says running; the last says success."""
    from overtrain.runs import store as store_mod

    statuses = []
    real = store_mod.atomic_write_json

    def spy(path, obj):
        if Path(path).name == "manifest.json":
            statuses.append(obj["status"])
            # when success lands, the records are already complete on disk
            if obj["status"] == "success":
                assert len(read_jsonl(Path(path).parent / "metrics.jsonl")) == 2
        real(path, obj)

    monkeypatch.setattr(store_mod, "atomic_write_json", spy)
    Store().execute(TOY, ToyConfig(n=2))
    assert statuses[-1] == "success" and set(statuses[:-1]) == {"running"}


def test_rerun_of_success_touches_nothing(home):
    store = Store()
    first = store.execute(TOY, ToyConfig(n=2))
    before = {p: p.stat().st_mtime_ns for p in first.dir.rglob("*")}
    again = store.execute(TOY, ToyConfig(n=2))
    assert again.skipped and again.run_id == first.run_id and again.wall_s is None
    assert {p: p.stat().st_mtime_ns for p in first.dir.rglob("*")} == before


def test_execute_accepts_kind_name_and_mapping(home, monkeypatch):
    from overtrain.registry import Registry

    registry = Registry("run kind")
    registry.register("toy", TOY)
    monkeypatch.setattr("overtrain.registry.RUN_KINDS", registry)
    outcome = Store().execute("toy", {"n": 2})
    assert outcome.run_id == config_hash(ToyConfig(n=2))


def test_failure_is_recorded_and_reraised(home):
    store = Store()
    cfg = ToyConfig(n=2, fail=True)
    with pytest.raises(ValueError, match="toy failure"):
        store.execute(TOY, cfg)
    m = store.manifest("toy", config_hash(cfg))
    assert m["status"] == "failed"
    assert m["error"] == "ValueError: toy failure with a second line"
    assert m["failed_at"] and m["finished_at"] is None
    trace = store.run_dir("toy", config_hash(cfg)) / "traceback.txt"
    assert "toy_run" in trace.read_text()


def test_rerun_after_failure_resumes_and_matches_uninterrupted(home, tmp_path):
    store = Store()
    with pytest.raises(RuntimeError, match="after step 3"):
        store.execute(TOY, ToyConfig(n=5, crash_after=3))
    run_id = config_hash(ToyConfig(n=5))
    metrics = store.run_dir("toy", run_id) / "metrics.jsonl"
    # step 3 was logged but never checkpointed: the resume must drop it and log it again
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3]

    outcome = store.execute(TOY, ToyConfig(n=5))
    assert not outcome.skipped and outcome.run_id == run_id
    m = store.manifest("toy", run_id)
    assert m["status"] == "success" and m["attempts"] == 2 and m["error"] is None
    assert m["info"]["starts"] == [0, 2]  # second attempt resumed from the step-2 checkpoint
    assert "failed_at" not in m
    assert not (store.run_dir("toy", run_id) / "traceback.txt").exists()

    clean = Store(tmp_path / "clean").execute(TOY, ToyConfig(n=5))
    assert metrics.read_bytes() == (clean.dir / "metrics.jsonl").read_bytes()


def test_created_at_kept_across_attempts(home):
    store = Store()
    with pytest.raises(RuntimeError):
        store.execute(TOY, ToyConfig(n=3, crash_after=1))
    first = store.manifest("toy", config_hash(ToyConfig(n=3)))
    time.sleep(0.002)  # timestamps have millisecond resolution
    store.execute(TOY, ToyConfig(n=3))
    second = store.manifest("toy", config_hash(ToyConfig(n=3)))
    assert second["created_at"] == first["created_at"] < second["started_at"]


def test_parents_from_kind_or_argument(home):
    kind = RunKind("child", ToyConfig, toy_run, parents=lambda cfg: [("toy", "abc123")])
    store = Store()
    out = store.execute(kind, ToyConfig(n=1))
    assert store.manifest("child", out.run_id)["parents"] == ["toy/abc123"]
    out = store.execute(kind, ToyConfig(n=2), parents=["toy/def456", ("toy", "0a1b")])
    assert store.manifest("child", out.run_id)["parents"] == ["toy/def456", "toy/0a1b"]


def test_wrong_config_type_is_rejected(home):
    class Other(BaseConfig):
        n: int = 1

    with pytest.raises(TypeError, match="ToyConfig"):
        Store().execute(TOY, Other())


# --- the Run handle ------------------------------------------------------------------------------------


def _handle_kind(body):
    return RunKind("handle", ToyConfig, lambda cfg, run: body(run))


def test_log_nan_and_odd_values_as_valid_json(home):
    def body(run):
        run.log_metrics({"step": 1, "train/loss": float("nan"), "val/loss": float("inf"), "path": Path("/x")})
        run.log_probe({"probe": "noise", "sigma": 0.1, "draws": [1.0, float("-inf")]})
        run.log_eval({"task": "copy", "acc": 1.0})

    out = Store().execute(_handle_kind(body), ToyConfig())
    lines = (out.dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "train/loss": None, "val/loss": None, "path": "/x"}
    assert read_jsonl(out.dir / "probes.jsonl") == [{"probe": "noise", "sigma": 0.1, "draws": [1.0, None]}]
    assert read_jsonl(out.dir / "evals.jsonl") == [{"task": "copy", "acc": 1.0}]


def test_line_count_and_truncate(home):
    seen = {}

    def body(run):
        assert run.line_count("metrics") == 0
        run.truncate("metrics", 0)  # no file yet: nothing to do
        for i in range(5):
            run.log_metrics({"step": i})
        seen["count"] = run.line_count("metrics.jsonl")
        run.truncate("metrics", 2)
        seen["after"] = run.line_count("metrics")
        run.log_metrics({"step": 99})  # appending after a truncate reopens the file
        with open(run.dir / "metrics.jsonl", "a") as f:
            f.write('{"step": 10')  # a crash mid-line
        seen["partial"] = run.line_count("metrics")
        run.truncate("metrics", 100)  # more than exist: keeps complete lines, drops the partial one
        with pytest.raises(ValueError):
            run.truncate("metrics", -1)
        with pytest.raises(ValueError, match="unknown record file"):
            run.line_count("losses")

    out = Store().execute(_handle_kind(body), ToyConfig())
    assert seen == {"count": 5, "after": 2, "partial": 3}
    assert [r["step"] for r in read_jsonl(out.dir / "metrics.jsonl")] == [0, 1, 99]
    assert (out.dir / "metrics.jsonl").read_text().endswith("}\n")


def test_set_info_merges_and_ckpt_dir(home):
    def body(run):
        run.set_info(n_params=10)
        run.set_info(device="cpu")
        assert run.ckpt_dir("step_00000010") == run.dir / "ckpt" / "step_00000010"
        assert run.store.manifest(run.kind, run.run_id)["info"] == {"n_params": 10, "device": "cpu"}
        assert run.config.n == 4

    out = Store().execute(_handle_kind(body), ToyConfig())
    assert Store().manifest("handle", out.run_id)["info"] == {"n_params": 10, "device": "cpu"}


def test_read_jsonl_tolerates_partial_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": 2}')  # complete record, newline lost
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.warns(UserWarning, match="line 2"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# --- listing and finding -------------------------------------------------------------------------------


def test_iter_runs_and_find(home):
    store = Store()
    a = store.execute(TOY, ToyConfig(n=1))
    b = store.execute(TOY, ToyConfig(n=2))
    (home / "runs" / "toy" / "no_manifest").mkdir()
    (home / "runs" / "toy" / ".tmp-junk").mkdir()
    runs = list(store.iter_runs())
    assert sorted(r["run_id"] for r in runs) == sorted([a.run_id, b.run_id])
    assert all(Path(r["dir"]) == store.run_dir("toy", r["run_id"]) for r in runs)

    assert store.find(a.run_id[:6]) == ("toy", a.run_id)
    assert store.find(f"toy/{b.run_id}") == ("toy", b.run_id)
    with pytest.raises(UserError, match="no run matches"):
        store.find("zzzz")
    with pytest.raises(UserError, match="no run matches"):
        store.find("no_manifest")
    for fake in ("abc111", "abc222"):
        (home / "runs" / "other" / fake).mkdir(parents=True)
        (home / "runs" / "other" / fake / "manifest.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(UserError, match="ambiguous: other/abc111, other/abc222"):
        store.find("abc")
    assert store.find("abc2") == ("other", "abc222")
    with pytest.raises(UserError, match="empty"):
        store.find("toy/")


def test_empty_store_lists_nothing(tmp_path):
    assert list(Store(tmp_path / "nowhere").iter_runs()) == []


# --- the lock ------------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from overtrain.config import BaseConfig
    from overtrain.runs.kinds import RunKind
    from overtrain.runs.store import Store

    class ToyConfig(BaseConfig):
        n: int = 7

    flags = Path(sys.argv[2])

    def hold(cfg, run):
        (flags / "started").touch()
        deadline = time.monotonic() + 60
        while not (flags / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    Store(sys.argv[1]).execute(RunKind("locky", ToyConfig, hold), ToyConfig())
    """
)


def test_second_writer_gets_run_busy(tmp_path):
    class LockyConfig(BaseConfig):
        n: int = 7

    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    flags = tmp_path / "flags"
    flags.mkdir()
    root = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, str(script), str(root), str(flags)])
    try:
        deadline = time.monotonic() + 60
        while not (flags / "started").exists():
            assert holder.poll() is None, "the lock-holding process died"
            assert time.monotonic() < deadline, "the lock-holding process never started its run"
            time.sleep(0.02)
        kind = RunKind("locky", LockyConfig, lambda cfg, run: None)
        store = Store(root)
        run_id = config_hash(LockyConfig())
        with pytest.raises(RunBusy, match=f"run locky/{run_id} is being written by another process"):
            store.execute(kind, LockyConfig())
        assert store.manifest("locky", run_id)["status"] == "running"  # untouched by the loser
    finally:
        (flags / "release").touch()
        assert holder.wait(timeout=60) == 0
    assert store.manifest("locky", run_id)["status"] == "success"
    assert store.execute(kind, LockyConfig()).skipped


def test_read_jsonl_rejects_two_objects_on_one_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}, {"a": 2}\n{"a": 3}\n')
    with pytest.warns(UserWarning, match="line 1"):
        assert read_jsonl(path) == [{"a": 3}]


def test_a_waiting_writer_skips_the_run_the_holder_finished(tmp_path):
    """``wait=True`` (what sweep executors pass): block on the lock, then find the run done, and skip it."""
    import threading

    class LockyConfig(BaseConfig):
        n: int = 7

    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    flags = tmp_path / "flags"
    flags.mkdir()
    root = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, str(script), str(root), str(flags)])
    ran, outcome = [], []
    try:
        deadline = time.monotonic() + 60
        while not (flags / "started").exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holding process never started"
            time.sleep(0.02)
        kind = RunKind("locky", LockyConfig, lambda cfg, run: ran.append(1))
        store = Store(root)
        waiter = threading.Thread(
            target=lambda: outcome.append(store.execute(kind, LockyConfig(), wait=True))
        )
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not outcome  # waiting on the holder, not failing
    finally:
        (flags / "release").touch()
        assert holder.wait(timeout=60) == 0
    waiter.join(timeout=60)
    assert outcome and outcome[0].skipped and not ran
