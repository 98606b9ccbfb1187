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

The run handle a kind writes through is `overtrain.runs.run.Run`; the record files are read by
`overtrain.runs.jsonl.read_jsonl`; what the manifest records (provenance, hashes) is
`overtrain.runs.manifest`; a multi-process launch goes through `overtrain.runs.replicated`.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from overtrain import distributed, paths, registry
from overtrain.config import BaseConfig, dump_yaml, to_plain, validate
from overtrain.core.atomic import (
    TMP_PREFIX,
    atomic_write_json,
    atomic_write_text,
    fault_point,
    verify_hashes,
)
from overtrain.errors import RunBusy, UserError
from overtrain.runs.kinds import RunKind
from overtrain.runs.manifest import (
    git_info,
    now_iso,
    one_line_error,
    output_hashes,
    package_versions,
    parent_ref,
    read_manifest,
)
from overtrain.runs.replicated import execute_replicated
from overtrain.runs.run import ProgressCallback, Run, RunOutcome


class DamagedRunWarning(UserWarning):
    """A finished run whose files no longer match the hashes in its manifest; it is being redone."""


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
        return read_manifest(self.run_dir(kind, run_id) / "manifest.json")

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
            manifest = read_manifest(run_dir / "manifest.json")
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
        if (
            not redo
            and done is not None
            and done.get("status") == "success"
            and not self._damage(run_dir, done)
        ):
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
        run = self._begin(kind, cfg, run_id, previous, on_progress, parents)
        t0 = time.perf_counter()
        try:
            kind.run(cfg, run)
            run.close()
        except BaseException as exc:
            self._mark_failed(run, exc, time.perf_counter() - t0)
            raise
        return self._mark_success(run, time.perf_counter() - t0)

    def _begin(
        self,
        kind: RunKind,
        cfg: BaseConfig,
        run_id: str,
        previous: dict[str, Any] | None,
        on_progress: ProgressCallback | None,
        parents: Sequence[str | tuple[str, str]] | None,
    ) -> Run:
        """Write ``config.yaml`` and the ``running`` manifest (the caller holds the run's lock); the open handle."""
        run_dir = self.run_dir(kind.name, run_id)
        previous = previous or {}
        if parents is None:
            parents = kind.parents(cfg)
        started_at = now_iso()
        manifest: dict[str, Any] = {
            "run_id": run_id,
            "kind": kind.name,
            "status": "running",
            "parents": [parent_ref(p) for p in parents],
            "attempts": int(previous.get("attempts") or 0) + 1,
            "created_at": previous.get("created_at") or started_at,
            "started_at": started_at,
            "finished_at": None,
            "wall_s": None,
            "git": git_info(),
            "versions": package_versions(),
            # the device it resolved to ("auto" -> cpu here): config.yaml keeps the setting
            "device": distributed.device_name(str(getattr(cfg, "device", None) or "cpu")),
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
        return Run(self, kind.name, run_id, cfg, manifest, on_progress)

    def _mark_failed(self, run: Run, exc: BaseException, wall_s: float) -> None:
        """Close the run's files and write its ``failed`` manifest with the one-line error and traceback.txt."""
        try:
            run.close()
        finally:
            run._manifest.update(
                status="failed", error=one_line_error(exc), failed_at=now_iso(), wall_s=wall_s
            )
            trace = "".join(traceback.format_exception(exc))
            atomic_write_text(run.dir / "traceback.txt", trace)
            self._write_manifest(run.kind, run.run_id, run._manifest)

    def _mark_success(self, run: Run, wall_s: float) -> RunOutcome:
        """Hash the run's files and write its ``success`` manifest, last (the files are closed and synced)."""
        fault_point("store.before_success")
        outputs = output_hashes(run.dir)  # what a later skip checks the files against
        run._manifest.update(status="success", finished_at=now_iso(), wall_s=wall_s, outputs=outputs)
        self._write_manifest(run.kind, run.run_id, run._manifest)
        return RunOutcome(run.kind, run.run_id, run.dir, "success", skipped=False, wall_s=wall_s)

    # --- groups -------------------------------------------------------------------------------------

    def execute_group(
        self,
        kind: str | RunKind,
        cfgs: Sequence[BaseConfig | Mapping[str, Any]],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[RunOutcome | BaseException]:
        """Run several configs of `kind` as one computation (``kind.run_group``), each recorded as its own run.

        Every member gets exactly what `execute` gives a run: its lock, ``config.yaml``, a ``running`` then
        ``success`` or ``failed`` manifest, its own record files. Members already a success are skipped;
        a member another process is writing is left out (its entry is a `RunBusy`: run it alone with
        ``wait=True``). A member's failure (``run_group`` returns its exception) marks that member failed
        only. An exception out of ``run_group`` itself fails every member still running and is re-raised.

        Returns:
            Per config, in order: its `RunOutcome`, or the exception it failed with (or `RunBusy`).
        """
        kind_obj = _resolve_kind(kind)
        if kind_obj.run_group is None:
            raise UserError(f"run kind {kind_obj.name!r} has no grouped execution")
        cfgs = [_coerce_config(kind_obj, c) for c in cfgs]
        results: list[RunOutcome | BaseException | None] = [None] * len(cfgs)
        locks: list[FileLock] = []
        members: list[tuple[int, Run]] = []
        try:
            for i, cfg in enumerate(cfgs):
                run_id = kind_obj.run_id(cfg)
                run_dir = self.run_dir(kind_obj.name, run_id)
                done = self.manifest(kind_obj.name, run_id)
                if done is not None and done.get("status") == "success" and not self._damage(run_dir, done):
                    results[i] = RunOutcome(kind_obj.name, run_id, run_dir, "success", skipped=True)
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                lock = FileLock(str(run_dir / ".lock"), timeout=0)
                try:
                    lock.acquire()
                except Timeout:
                    results[i] = RunBusy(f"run {kind_obj.name}/{run_id} is being written by another process")
                    continue
                locks.append(lock)
                previous = self.manifest(kind_obj.name, run_id)
                if previous is not None and previous.get("status") == "success":
                    damage = self._damage(run_dir, previous)
                    if not damage:
                        results[i] = RunOutcome(kind_obj.name, run_id, run_dir, "success", skipped=True)
                        continue
                    reason = "; ".join(damage[:3])
                    message = f"run {kind_obj.name}/{run_id} is damaged ({reason}); redoing it from scratch"
                    warnings.warn(DamagedRunWarning(message), stacklevel=2)
                    _discard_outputs(run_dir)
                    previous = {**previous, "redo_reason": reason}
                _remove_temporaries(run_dir)
                members.append((i, self._begin(kind_obj, cfg, run_id, previous, None, None)))
            if members:
                self._run_members(kind_obj, members, results, on_progress)
        finally:
            for lock in locks:
                lock.release()
        return results  # type: ignore[return-value]

    def _run_members(self, kind: RunKind, members, results, on_progress) -> None:
        t0 = time.perf_counter()
        runs = [run for _, run in members]
        try:
            errors = kind.run_group([run.config for run in runs], runs, on_progress)
        except BaseException as exc:
            wall = time.perf_counter() - t0
            for i, run in members:
                self._mark_failed(run, exc, wall)
                results[i] = exc
            raise
        wall = time.perf_counter() - t0
        for (i, run), error in zip(members, errors, strict=True):
            # the group's wall time, shared: members ran as one computation
            run.set_info(group_size=len(members))
            if error is None:
                try:
                    run.close()
                    results[i] = self._mark_success(run, wall)
                except BaseException as exc:  # noqa: BLE001 - a member's own write failed
                    self._mark_failed(run, exc, wall)
                    results[i] = exc
            else:
                self._mark_failed(run, error, wall)
                results[i] = error


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


def _resolve_kind(kind: str | RunKind) -> RunKind:
    if isinstance(kind, RunKind):
        return kind
    return registry.RUN_KINDS.get(kind)  # looked up at call time: tests swap the registry


def _coerce_config(kind: RunKind, cfg: BaseConfig | Mapping[str, Any]) -> BaseConfig:
    if isinstance(cfg, kind.config_cls):
        return cfg
    if isinstance(cfg, Mapping):
        return validate(kind.config_cls, cfg, f"{kind.name} config")
    raise TypeError(f"run kind {kind.name!r} takes a {kind.config_cls.__name__}, got {type(cfg).__name__}")
