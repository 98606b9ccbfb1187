"""The store's snapshot for queries, and a cache of the ``runs`` table keyed by each run's file stamps.

Building ``runs`` over 10,000 run directories spends most of its second parsing 10,000 ``config.yaml``
and ``manifest.json`` files that have not changed since the last query (bench/query_scale.py). A run's
row depends on those two files only, so the rows are kept in ``<store>/.cache/runs-table.arrow`` next to
a stamp of both files (inode, size, mtime in ns): a later query re-reads only the runs whose stamp
changed, and drops the rows of runs that are gone. The store writes every manifest and config by
rename, which gives a new inode and mtime, so a changed file cannot keep its stamp. A cache that
cannot be read (missing, another schema, damaged) is rebuilt; one that cannot be written (a read-only
store) is skipped: the cache only ever saves time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from overtrain.core.atomic import atomic_write_bytes
from overtrain.runs.manifest import read_manifest

CACHE_NAME = "runs-table.arrow"
STAMP = "__stamp"


@dataclass(frozen=True)
class RunFiles:
    """One run directory with a manifest, as a query sees it: where it is and a stamp of its row's files."""

    kind: str
    run_id: str
    dir: str
    stamp: str

    def ref(self) -> dict[str, str]:
        """What the record tables need of a run: ``kind``, ``run_id``, ``dir``."""
        return {"kind": self.kind, "run_id": self.run_id, "dir": self.dir}


def _stamp(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def snapshot(store) -> list[RunFiles]:
    """Every run directory of `store` with a ``manifest.json``, sorted by kind then run id (one ``stat``
    of the manifest and one of the config each; nothing is parsed)."""
    out = []
    for kind_dir in _subdirs(str(store.root)):
        kind = os.path.basename(kind_dir)
        for run_dir in _subdirs(kind_dir):
            manifest = _stamp(os.path.join(run_dir, "manifest.json"))
            if manifest is not None:
                config = _stamp(os.path.join(run_dir, "config.yaml")) or "-"
                out.append(RunFiles(kind, os.path.basename(run_dir), run_dir, f"{manifest}|{config}"))
    return out


def _subdirs(path: str) -> list[str]:
    """Sub-directories of `path` not starting with a dot, sorted by name (`Store._run_dirs`'s rule, with
    ``scandir``'s entry types instead of a ``stat`` each: 10,000 runs list in a tenth of the time)."""
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(path, name) for name in sorted(names)]


def cached_runs_table(
    store, runs: list[RunFiles], build: Callable[[list[dict[str, Any]]], pa.Table], schema: pa.Schema
) -> pa.Table:
    """The ``runs`` table of `runs`, reusing cached rows whose stamps still match.

    Args:
        store: the store (its root holds the cache).
        runs: the snapshot (`snapshot`), in the order the table's rows take.
        build: ``build(manifests) -> table`` for runs without a valid cached row (manifests as
            `Store.iter_runs` yields them: the manifest plus ``kind``, ``run_id``, ``dir``).
        schema: the table's schema (a cache of another schema is ignored).
    """
    path = Path(store.root) / ".cache" / CACHE_NAME
    cached = _read(path, schema)
    where: dict[tuple[str, str], int] = {}
    if cached is not None:
        dirs, stamps = cached.column("dir").to_pylist(), cached.column(STAMP).to_pylist()
        where = {(d, s): i for i, (d, s) in enumerate(zip(dirs, stamps, strict=True))}
    reuse, stale = [], []
    for position, run in enumerate(runs):
        row = where.get((run.dir, run.stamp))
        if row is None:
            stale.append((position, run))
        else:
            reuse.append((position, row))
    parsed, stale_stamps, parsed_positions = [], [], []
    for position, run in stale:
        manifest = read_manifest(Path(run.dir) / "manifest.json")
        if manifest is not None:  # unreadable: not a run (as `Store.iter_runs` treats it)
            parsed.append({**manifest, **run.ref()})
            stale_stamps.append(run.stamp)
            parsed_positions.append(position)
    fresh = build(parsed).append_column(STAMP, pa.array(stale_stamps, pa.string()))
    if cached is None:
        table = fresh
    else:
        kept = cached.take(pa.array([row for _, row in reuse], pa.int64()))
        table = pa.concat_tables([kept, fresh])
        # back to snapshot order: reused rows first held positions `reuse`, fresh ones the rest
        positions = [p for p, _ in reuse] + parsed_positions
        order = sorted(range(len(positions)), key=positions.__getitem__)
        table = table.take(pa.array(order, pa.int64()))
    if parsed or cached is None or len(reuse) != cached.num_rows:
        _write(path, table)
    return table.drop_columns([STAMP])


def _read(path: Path, schema: pa.Schema) -> pa.Table | None:
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
    expected = schema.append(pa.field(STAMP, pa.string()))
    return table if table.schema.equals(expected) else None


def _write(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
    except OSError:  # a read-only store: queries still work, uncached
        pass
