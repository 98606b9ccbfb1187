"""`overtrain ls runs`: the store's runs, filtered, as a table, JSON or CSV."""

from __future__ import annotations

import sys

from overtrain.errors import UserError


def ls_runs(kind: str | None, status: str | None, fmt: str) -> None:
    """The store's runs, oldest first, filtered by kind and status; the table names the store it read."""
    from overtrain.paths import runs_root
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.manifest import STATUSES
    from overtrain.runs.query import format_table, query

    if fmt not in ("table", "json", "csv"):
        raise UserError(f"--format must be table, json or csv, not {fmt!r}")
    if kind is not None:
        RUN_KINDS.get(kind)  # an unknown kind is a one-line error with the names that exist
    if status is not None and status not in STATUSES:
        raise UserError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    where = [c for c, v in (("kind = ?", kind), ("status = ?", status)) if v is not None]
    sql = "select kind, run_id, status, attempts, wall_s, started_at from runs"
    sql += (" where " + " and ".join(where) if where else "") + " order by started_at"
    text = format_table(query(sql, params=[v for v in (kind, status) if v is not None]), fmt)
    if fmt == "table":  # json and csv stay machine-readable
        text = f"store: {runs_root()}\n{text}"
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
