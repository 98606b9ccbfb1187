"""The run store: one content-addressed directory per run, written so that a crash never lies.

Layout (see docs/design.md, "Run directory contract")::

    <root>/<kind>/<run_id>/
        config.yaml      resolved config (every field, identity or not)
        manifest.json    status running|success|failed, parents, provenance, timings, error, info
        metrics.jsonl    one JSON object per record: step, tokens_seen, split/name keys
        probes.jsonl     probe results, one object per (probe, setting, draw)
        evals.jsonl      evaluation results
        ckpt/<name>/     checkpoints (written with `atomic_dir` by the run kind)
        .lock            held (flock) by the one process writing the run

The run id is ``kind.run_id(cfg)`` (`config_hash`, with the code version of kinds that have one), so executing the same config twice is the same run: a run whose
manifest says ``success`` is skipped, anything else is redone, and the kind's run function resumes
from its newest complete checkpoint. ``success`` is written last, after every file is on disk.

The ``success`` manifest lists the sha256 of every file of the run (``outputs``). Before a finished run
is skipped its files are checked against that list; a run whose files are missing, truncated or altered
is reported (`DamagedRunWarning`) and redone from scratch, never used as it is.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from overtrain import distributed, paths
from overtrain.config import BaseConfig, dump_yaml, to_plain
from overtrain.core.atomic import (
    CHECKSUMS,
    TMP_PREFIX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    dumps_json,
    fault_point,
    read_checksums,
    sha256_file,
    tree_files,
    verify_hashes,
)
from overtrain.errors import RunBusy, UserError
from overtrain.runs.kinds import RunKind

STATUSES = ("running", "success", "failed")
"""Values of a manifest's ``status``."""

JSONL_FILES = ("metrics", "probes", "evals")
"""The append-only record files of a run (``<name>.jsonl``)."""

ProgressCallback = Callable[[int, "int | None"], None]
"""``on_progress(completed, total)``: units of work done so far (steps) and the total if known."""

NOT_OUTPUTS = ("manifest.json", "traceback.txt")
"""Files of a run directory that its ``outputs`` hashes leave out (besides dot-names such as ``.lock``)."""


class DamagedRunWarning(UserWarning):
    """A finished run whose files no longer match the hashes in its manifest; it is being redone."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (``2026-05-09T07:35:25.123+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def one_line_error(exc: BaseException) -> str:
    """``"<ExcType>: <message>"`` on one line (newlines and runs of spaces collapsed)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- JSONL ---------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a missing file is empty.

    A crash can leave the last line half-written: an unterminated last line that does not parse is
    skipped silently. A bad line elsewhere (or a non-object) is skipped with a warning, so that one
    damaged file never hides every other run from a query.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        One dict per complete line, in file order.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # split leaves "" after a final newline; anything else in the last slot is an unterminated line
    tail = lines.pop()
    if not tail.strip():
        # fast path for the intact file: one json.loads over all lines is ~3x faster than one per line
        filled = [line for line in lines if line.strip()]
        try:
            whole = json.loads(b"[" + b",".join(filled) + b"]")
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            # one object per line, or the slow path finds and reports the odd line
            if len(whole) == len(filled) and all(isinstance(r, dict) for r in whole):
                return whole
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = _parse_line(raw)
        if record is None:
            warnings.warn(f"{path}: line {number} is not a JSON object; skipped", stacklevel=2)
        else:
            records.append(record)
    if tail.strip():
        record = _parse_line(tail)
        if record is not None:  # a complete record whose newline never made it
            records.append(record)
    return records


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _complete_lines_end(data: bytes, n_lines: int | None = None) -> tuple[int, int]:
    """(byte offset just past the last kept complete line, number of complete lines kept)."""
    end, count = 0, 0
    while n_lines is None or count < n_lines:
        newline = data.find(b"\n", end)
        if newline < 0:
            break
        end, count = newline + 1, count + 1
    return end, count


# --- provenance ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any] | None:
    """``{commit, dirty}`` of the source checkout this package runs from, or None (no git, no repo).

    Cached per process: a sweep of thousands of runs should not fork git thousands of times.
    ``dirty`` counts modified tracked files only (as ``git describe --dirty`` does).
    """
    root = paths.repo_root()
    if root is None:
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit.stdout.strip(), "dirty": dirty}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Versions of python and the packages that decide a run's numbers (missing ones are None)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "overtrain", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# --- the run handle ------------------------------------------------------------------------------------


class Run:
    """The open run directory handed to ``kind.run(cfg, run)``.

    Attributes:
        kind: the run kind's name.
        run_id: the run id (`config_hash` of the config).
        dir: the run directory.
        config: the validated config.
        store: the `Store` the run belongs to.
        writes: False for the handle of a rank other than 0 in a multi-process launch, which writes nothing
            (`overtrain.runs.replicated.ReplicaRun`): a kind skips its own checkpoint writes then.
    """

    writes = True

    def __init__(
        self,
        store: Store,
        kind: str,
        run_id: str,
        config: BaseConfig,
        manifest: dict[str, Any],
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.run_id = run_id
        self.config = config
        self.dir = store.run_dir(kind, run_id)
        self._manifest = manifest
        self._on_progress = on_progress
        self._files: dict[str, IO[str]] = {}

    # records ---------------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        if stem not in JSONL_FILES:
            raise ValueError(f"unknown record file {name!r}; choose from {', '.join(JSONL_FILES)}")
        return self.dir / f"{stem}.jsonl"

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        if not isinstance(record, Mapping):
            raise TypeError(f"a {name} record must be a mapping, got {type(record).__name__}")
        path = self._path(name)
        f = self._files.get(path.name)
        if f is None:
            f = self._files[path.name] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        # one write call per line, then flush: a crash leaves at most one partial *last* line
        line = dumps_json(dict(record)) + "\n"

        def half_a_line(f: IO[str] = f) -> None:
            f.write(line[: len(line) // 2])
            f.flush()

        fault_point("jsonl.partial_line", half_a_line)
        f.write(line)
        f.flush()

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one metrics record (``step``, ``tokens_seen``, ``split/name`` keys) to metrics.jsonl.

        NaN and infinite values are written as ``null``. The line is flushed to the OS at once (not
        fsynced: `sync` does that, and `Store.execute` calls it before marking the run a success).
        """
        self._append("metrics", record)

    def log_probe(self, record: Mapping[str, Any]) -> None:
        """Append one probe record to probes.jsonl (same rules as `log_metrics`)."""
        self._append("probes", record)

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """Append one evaluation record to evals.jsonl (same rules as `log_metrics`)."""
        self._append("evals", record)

    def sync(self) -> None:
        """Flush and fsync every record file this handle has written to."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """Sync and close the record files (a later log call reopens them)."""
        try:
            self.sync()
        finally:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def line_count(self, name: str) -> int:
        """Number of complete (newline-terminated) lines in ``<name>.jsonl``; 0 when it does not exist.

        Args:
            name: ``metrics``, ``probes`` or ``evals`` (with or without ``.jsonl``).
        """
        path = self._path(name)
        if path.name in self._files:
            self._files[path.name].flush()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        return data.count(b"\n")

    def records(self, name: str) -> list[dict[str, Any]]:
        """The records logged so far to ``<name>.jsonl`` (complete lines only)."""
        path = self._path(name)
        if path.name in self._files:
            self._files[path.name].flush()
        return read_jsonl(path)

    def truncate(self, name: str, n_lines: int) -> None:
        """Keep only the first `n_lines` complete lines of ``<name>.jsonl`` (atomically).

        A resumed run calls this with the line count saved in its checkpoint, so records logged after
        that checkpoint (and any partial last line) are dropped and logged again: the resumed run's
        file equals an uninterrupted run's. Asking for more lines than exist keeps every complete line.

        Args:
            name: ``metrics``, ``probes`` or ``evals`` (with or without ``.jsonl``).
            n_lines: number of leading lines to keep (>= 0).
        """
        if n_lines < 0:
            raise ValueError(f"n_lines must be >= 0, got {n_lines}")
        path = self._path(name)
        f = self._files.pop(path.name, None)
        if f is not None:
            f.close()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        end, _ = _complete_lines_end(data, n_lines)
        if end != len(data):
            atomic_write_bytes(path, data[:end])

    # checkpoints, info, progress -------------------------------------------------------------------

    def ckpt_dir(self, name: str) -> Path:
        """Path of checkpoint `name` (``dir/ckpt/<name>``); not created (write it with `atomic_dir`)."""
        return self.dir / "ckpt" / name

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the manifest's free-form ``info`` dict."""
        return dict(self._manifest.get("info") or {})

    def set_info(self, **kv: Any) -> None:
        """Merge `kv` into the manifest's ``info`` and rewrite the manifest atomically."""
        info = dict(self._manifest.get("info") or {})
        info.update(kv)
        self._manifest["info"] = info
        self.store._write_manifest(self.kind, self.run_id, self._manifest)

    def progress(self, completed: int, total: int | None = None) -> None:
        """Report `completed` units of work (steps) out of `total` to the executor's progress display."""
        if self._on_progress is not None:
            self._on_progress(completed, total)


@dataclass(frozen=True)
class RunOutcome:
    """What `Store.execute` did.

    Attributes:
        kind: the run kind's name.
        run_id: the run id.
        dir: the run directory.
        status: the manifest status after the call (``success``).
        skipped: True when the run was already a success and nothing was touched.
        wall_s: wall time of this attempt in seconds (None when skipped).
    """

    kind: str
    run_id: str
    dir: Path
    status: str
    skipped: bool
    wall_s: float | None = None


# --- the store -----------------------------------------------------------------------------------------


class Store:
    """The run directories under `root` (default: `paths.runs_root()` at construction).

    Args:
        root: the runs root; ``<root>/<kind>/<run_id>/`` is one run.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.runs_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def run_dir(self, kind: str, run_id: str) -> Path:
        """``<root>/<kind>/<run_id>`` (not created)."""
        return self.root / kind / run_id

    def manifest(self, kind: str, run_id: str) -> dict[str, Any] | None:
        """The run's manifest, or None when the run has none (never started) or it cannot be read."""
        return _read_manifest(self.run_dir(kind, run_id) / "manifest.json")

    def status(self, kind: str, run_id: str) -> str | None:
        """The run's status (``running``/``success``/``failed``), or None when it has no manifest."""
        manifest = self.manifest(kind, run_id)
        return None if manifest is None else manifest.get("status")

    def _run_dirs(self) -> Iterator[tuple[str, str, Path]]:
        if not self.root.is_dir():
            return
        for kind_dir in sorted(self.root.iterdir()):
            if kind_dir.name.startswith(".") or not kind_dir.is_dir():
                continue
            for run_dir in sorted(kind_dir.iterdir()):
                if not run_dir.name.startswith(".") and run_dir.is_dir():
                    yield kind_dir.name, run_dir.name, run_dir

    def iter_runs(self) -> Iterator[dict[str, Any]]:
        """Manifests of every run, sorted by kind then run id; dirs without a manifest are skipped.

        Each yielded dict is the manifest plus ``dir`` (the run directory as a string); ``kind`` and
        ``run_id`` are taken from the directory names, which are what the store addresses by.
        """
        for kind, run_id, run_dir in self._run_dirs():
            manifest = _read_manifest(run_dir / "manifest.json")
            if manifest is not None:
                yield {**manifest, "kind": kind, "run_id": run_id, "dir": str(run_dir)}

    def find(self, prefix: str) -> tuple[str, str]:
        """The (kind, run_id) of the one run whose id starts with `prefix` (``kind/prefix`` also works).

        Raises:
            UserError: no run matches, or more than one does.
        """
        prefix = prefix.strip()
        want_kind, _, id_prefix = prefix.rpartition("/")
        if not id_prefix:
            raise UserError("empty run id")
        matches = [
            (kind, run_id)
            for kind, run_id, run_dir in self._run_dirs()
            if run_id.startswith(id_prefix)
            and (not want_kind or kind == want_kind)
            and (run_dir / "manifest.json").is_file()
        ]
        if not matches:
            raise UserError(f"no run matches {prefix!r} in {self.root}")
        if len(matches) > 1:
            shown = ", ".join(f"{k}/{r}" for k, r in matches[:5])
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise UserError(f"run id {prefix!r} is ambiguous: {shown}{more}; give more characters")
        return matches[0]

    def _write_manifest(self, kind: str, run_id: str, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir(kind, run_id) / "manifest.json", manifest)

    def execute(
        self,
        kind: str | RunKind,
        cfg: BaseConfig | Mapping[str, Any],
        *,
        on_progress: ProgressCallback | None = None,
        parents: Sequence[str | tuple[str, str]] | None = None,
        wait: bool = False,
        redo: bool = False,
    ) -> RunOutcome:
        """Run `cfg` as a run of `kind` in its run directory, unless it already succeeded.

        Steps: skip if the manifest says ``success`` and every file still matches its hash (a damaged
        finished run is redone from scratch, with a `DamagedRunWarning`); take the run's lock; write
        ``config.yaml`` and a ``running`` manifest; call ``kind.run(cfg, run)``; on success fsync the
        record files and write the ``success`` manifest last. On any exception the manifest becomes
        ``failed`` with a one-line ``error`` (the traceback goes to ``traceback.txt``) and the exception
        is re-raised.

        Args:
            kind: a `RunKind` or the name of one in `RUN_KINDS`.
            cfg: the run's config (a mapping is validated into ``kind.config_cls``).
            on_progress: ``on_progress(completed, total)``, called by `Run.progress`.
            parents: upstream runs as ``"kind/run_id"`` or ``(kind, run_id)``; default
                ``kind.parents(cfg)``.
            wait: when another process holds the run's lock, wait for it to let go (then skip the run if
                that process finished it, or resume it) instead of raising `RunBusy`. Executors of
                sweeps pass True, so two sweeps sharing runs neither fail nor run anything twice.
            redo: run it again from scratch even if it succeeded (its files are deleted first; the
                manifest records ``redo_reason: requested``).

        Returns:
            A `RunOutcome`; ``skipped`` is True when the run was already a success.

        Under a multi-process launch (``accelerate launch``, ``torchrun``) every process executes the run
        and only rank 0 writes (`overtrain.runs.replicated`).

        Raises:
            RunBusy: another process holds the run's lock (and `wait` is False).
        """
        kind_obj = _resolve_kind(kind)
        cfg = _coerce_config(kind_obj, cfg)
        if distributed.launched():
            from overtrain.runs.replicated import execute_replicated

            return execute_replicated(self, kind_obj, cfg, on_progress, parents)
        return self._execute_here(kind_obj, cfg, on_progress, parents, wait=wait, redo=redo)

    def _execute_here(
        self,
        kind_obj: RunKind,
        cfg: BaseConfig,
        on_progress: ProgressCallback | None,
        parents: Sequence[str | tuple[str, str]] | None,
        *,
        wait: bool = False,
        redo: bool = False,
    ) -> RunOutcome:
        """`execute` in this one process."""
        run_id = kind_obj.run_id(cfg)
        run_dir = self.run_dir(kind_obj.name, run_id)

        done = self.manifest(kind_obj.name, run_id)
        if not redo and done is not None and done.get("status") == "success" and not self._damage(run_dir, done):
            return RunOutcome(kind_obj.name, run_id, run_dir, "success", skipped=True)

        run_dir.mkdir(parents=True, exist_ok=True)
        # timeout=0 by default: a second writer must fail fast (RunBusy), not queue behind a run of hours
        lock = FileLock(str(run_dir / ".lock"), timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except Timeout:
            raise RunBusy(f"run {kind_obj.name}/{run_id} is being written by another process") from None
        try:
            # another process may have finished the run between our first look and the lock
            previous = self.manifest(kind_obj.name, run_id)
            if redo and previous is not None:
                _discard_outputs(run_dir)
                previous = {**previous, "redo_reason": "requested"}
            elif previous is not None and previous.get("status") == "success":
                damage = self._damage(run_dir, previous)
                if not damage:
                    return RunOutcome(kind_obj.name, run_id, run_dir, "success", skipped=True)
                reason = "; ".join(damage[:3]) + (f"; and {len(damage) - 3} more" if len(damage) > 3 else "")
                message = f"run {kind_obj.name}/{run_id} is damaged ({reason}); redoing it from scratch"
                warnings.warn(DamagedRunWarning(message), stacklevel=3)
                _discard_outputs(run_dir)
                previous = {**previous, "redo_reason": reason}
            _remove_temporaries(run_dir)
            return self._execute_locked(kind_obj, cfg, run_id, previous, on_progress, parents)
        finally:
            lock.release()

    def _damage(self, run_dir: Path, manifest: dict[str, Any]) -> list[str]:
        """Problems of a finished run's files against the ``outputs`` hashes of its manifest (none
        recorded, as in runs finished before hashes were kept: nothing to check)."""
        outputs = manifest.get("outputs")
        if not isinstance(outputs, dict):
            return []
        return verify_hashes(run_dir, {str(k): str(v) for k, v in outputs.items()})

    def verify(self, kind: str, run_id: str) -> list[str]:
        """What is wrong with a run's files: ``"<path>: missing"`` / ``"<path>: sha256 mismatch"`` against
        the hashes its ``success`` manifest recorded; ``["no manifest"]`` or ``["status is failed"]`` for
        a run that never finished; empty for an intact finished run (or one finished before hashes)."""
        manifest = self.manifest(kind, run_id)
        if manifest is None:
            return ["no manifest"]
        if manifest.get("status") != "success":
            return [f"status is {manifest.get('status')}"]
        return self._damage(self.run_dir(kind, run_id), manifest)

    def _execute_locked(
        self,
        kind: RunKind,
        cfg: BaseConfig,
        run_id: str,
        previous: dict[str, Any] | None,
        on_progress: ProgressCallback | None,
        parents: Sequence[str | tuple[str, str]] | None,
    ) -> RunOutcome:
        run_dir = self.run_dir(kind.name, run_id)
        previous = previous or {}
        if parents is None:
            parents = kind.parents(cfg)
        started_at = now_iso()
        manifest: dict[str, Any] = {
            "run_id": run_id,
            "kind": kind.name,
            "status": "running",
            "parents": [_parent_ref(p) for p in parents],
            "attempts": int(previous.get("attempts") or 0) + 1,
            "created_at": previous.get("created_at") or started_at,
            "started_at": started_at,
            "finished_at": None,
            "wall_s": None,
            "git": git_info(),
            "versions": package_versions(),
            "device": str(getattr(cfg, "device", None) or "cpu"),
            "host": socket.gethostname(),
            "error": None,
            # info survives a retry: a run may record facts (e.g. n_params) once, early
            "info": dict(previous.get("info") or {}),
        }
        if kind.version is not None:
            manifest["version"] = kind.version()  # the code version that entered the run id
        if previous.get("redo_reason"):
            manifest["redo_reason"] = previous["redo_reason"]  # why a finished run is being redone
        atomic_write_text(run_dir / "config.yaml", dump_yaml(to_plain(cfg)))
        self._write_manifest(kind.name, run_id, manifest)
        stale_traceback = run_dir / "traceback.txt"
        if stale_traceback.exists():
            stale_traceback.unlink()

        run = Run(self, kind.name, run_id, cfg, manifest, on_progress)
        t0 = time.perf_counter()
        try:
            kind.run(cfg, run)
            run.close()
        except BaseException as exc:
            try:
                run.close()
            finally:
                manifest.update(
                    status="failed",
                    error=one_line_error(exc),
                    failed_at=now_iso(),
                    wall_s=time.perf_counter() - t0,
                )
                atomic_write_text(run_dir / "traceback.txt", traceback.format_exc())
                self._write_manifest(kind.name, run_id, manifest)
            raise
        fault_point("store.before_success")
        outputs = _output_hashes(run_dir)  # what a later skip checks the files against
        manifest.update(status="success", finished_at=now_iso(), wall_s=time.perf_counter() - t0,
                        outputs=outputs)
        self._write_manifest(kind.name, run_id, manifest)
        return RunOutcome(kind.name, run_id, run_dir, "success", skipped=False, wall_s=manifest["wall_s"])


def _output_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of a finished run (`tree_files`, less `NOT_OUTPUTS`). A checkpoint directory's
    files take the hashes its ``checksums.json`` recorded as it was written (re-reading gigabytes of
    weights would only repeat them); every other file, the sidecar included, is read and hashed."""
    outputs: dict[str, str] = {}
    sidecars: dict[str, dict[str, str]] = {}
    for rel in tree_files(run_dir):
        if rel in NOT_OUTPUTS:
            continue
        parent, _, name = rel.rpartition("/")
        if parent and name != CHECKSUMS:
            if parent not in sidecars:
                try:
                    sidecars[parent] = read_checksums(run_dir / parent) or {}
                except ValueError:
                    sidecars[parent] = {}
            if name in sidecars[parent]:
                outputs[rel] = sidecars[parent][name]
                continue
        outputs[rel] = sha256_file(run_dir / rel)
    return outputs


def _discard_outputs(run_dir: Path) -> None:
    """Delete everything of a damaged finished run but its lock and manifest (both rewritten next)."""
    for entry in run_dir.iterdir():
        if entry.name in (".lock", "manifest.json"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_temporaries(run_dir: Path) -> None:
    """Delete the ``.tmp-*`` files and dirs a killed writer left in the run dir (we hold its lock, so
    nobody is writing them)."""
    for dirpath, dirnames, filenames in os.walk(run_dir):
        for name in [*dirnames, *filenames]:
            if name.startswith(TMP_PREFIX):
                path = Path(dirpath) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # written atomically, so this is outside damage: treat the run as never finished (it is redone)
        warnings.warn(f"unreadable manifest {path}; treating the run as not started", stacklevel=3)
        return None
    return value if isinstance(value, dict) else None


def _resolve_kind(kind: str | RunKind) -> RunKind:
    if isinstance(kind, RunKind):
        return kind
    from overtrain.registry import RUN_KINDS

    return RUN_KINDS.get(kind)


def _coerce_config(kind: RunKind, cfg: BaseConfig | Mapping[str, Any]) -> BaseConfig:
    if isinstance(cfg, kind.config_cls):
        return cfg
    if isinstance(cfg, Mapping):
        from overtrain.config import validate

        return validate(kind.config_cls, cfg, f"{kind.name} config")
    raise TypeError(
        f"run kind {kind.name!r} takes a {kind.config_cls.__name__}, got {type(cfg).__name__}"
    )


def _parent_ref(parent: str | tuple[str, str]) -> str:
    if isinstance(parent, str):
        if "/" not in parent:
            raise ValueError(f"parent {parent!r} must be 'kind/run_id'")
        return parent
    kind, run_id = parent
    return f"{kind}/{run_id}"
