"""The open run handle a run kind writes through: record files, checkpoint paths, the manifest's ``info``
and progress reports (`Run`); and what `Store.execute` returns (`RunOutcome`).

A record is one JSON line appended with a single ``write`` and flushed at once, so a crash leaves at most
one partial last line (`overtrain.runs.jsonl.read_jsonl` skips it); `Store.execute` fsyncs the files
before it marks the run a success.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from overtrain.config import BaseConfig
from overtrain.core.atomic import (
    atomic_write_bytes,
    dumps_json,
    fault_point,
)
from overtrain.runs.jsonl import JSONL_FILES, complete_lines_end, read_jsonl
from overtrain.runs.sinks import MetricsMirror, open_mirror

if TYPE_CHECKING:
    from overtrain.runs.store import Store


ProgressCallback = Callable[[int, "int | None"], None]
"""``on_progress(completed, total)``: units of work done so far (steps) and the total if known."""


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
        self._mirror: MetricsMirror | None = None  # opened with the first metrics record

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
        if path.name == "metrics.jsonl":  # live mirrors (TensorBoard, wandb) when the environment asks
            if self._mirror is None:
                self._mirror = open_mirror(self.kind, self.run_id, self.config)
            self._mirror.add(record)

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one metrics record (``step``, ``tokens_seen``, ``split/name`` keys) to metrics.jsonl.

        NaN and infinite values are written as ``null``. The line is flushed to the OS at once (not
        fsynced: `sync` does that, and `Store.execute` calls it before marking the run a success). The
        record is also mirrored to TensorBoard / wandb when the environment asks (`overtrain.runs.sinks`).
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
            if self._mirror is not None:
                self._mirror.close()
                self._mirror = None

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
        end, _ = complete_lines_end(data, n_lines)
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
