"""SQL over the run store: DuckDB tables ``runs``, ``metrics``, ``probes`` and ``evals``.

The tables are built in Python from the run directories (manifest, config.yaml and the JSONL record
files) into Arrow tables and materialised in an in-memory DuckDB database, so every figure and every
``overtrain query`` reads the same, current numbers. A `Reader` builds a table the first time one of its
queries names it, so a question about ``runs`` never reads a metrics file (bench/query_scale.py: 1.0 s
over 10,000 runs). Reading a JSONL file tolerates a half-written last line (see
`overtrain.runs.jsonl.read_jsonl`).

Tables:
    runs: one row per run with a manifest: run_id, kind, status, attempts, created_at, started_at,
        finished_at (UTC timestamps), wall_s (seconds), parents (VARCHAR[] of ``kind/run_id``),
        git_commit, git_dirty, device, host, error, dir, config (JSON text of config.yaml), info
        (JSON text).
    metrics: long format, one row per (record, numeric key): run_id, kind, step, tokens_seen, name
        (``val/loss``), value (DOUBLE; NULL where the run logged NaN/inf), tags (JSON text of the
        record's non-numeric keys, e.g. ``{"branch": "main"}``). Nested dicts are flattened with ``/``.
    probes, evals: wide, one row per record: run_id, kind, then the union of the records' keys
        (nested dicts flattened with ``/``; a key missing from a record is NULL).

Example:
    >>> query("select name, min(value) from metrics where name = 'val/loss' group by all")
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from overtrain.errors import UserError
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.store import Store
from overtrain.runs.table_cache import RunFiles, cached_runs_table, snapshot

if TYPE_CHECKING:
    import duckdb

TABLES = ("runs", "metrics", "probes", "evals")
"""The tables `connect` creates."""

FORMATS = ("table", "json", "csv")
"""Output formats of `format_table`."""

_TIMESTAMP = pa.timestamp("us", tz="UTC")

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int64()),
        ("created_at", _TIMESTAMP),
        ("started_at", _TIMESTAMP),
        ("finished_at", _TIMESTAMP),
        ("wall_s", pa.float64()),
        ("parents", pa.list_(pa.string())),
        ("git_commit", pa.string()),
        ("git_dirty", pa.bool_()),
        ("device", pa.string()),
        ("host", pa.string()),
        ("error", pa.string()),
        ("dir", pa.string()),
        ("config", pa.string()),
        ("info", pa.string()),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("step", pa.int64()),
        ("tokens_seen", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("tags", pa.string()),
    ]
)

# config.yaml is written by `dump_yaml` (plain safe_dump), so the fast C loader reads it exactly; the
# project's own loader exists for hand-written ``2e6`` and is ~10x slower over thousands of runs.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- building the tables -------------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _read_config_json(run_dir: Path) -> str | None:
    try:
        data = yaml.load((run_dir / "config.yaml").read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return None
    return json.dumps(data, default=str)


def _runs_table(manifests: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in RUNS_SCHEMA.names}
    for m in manifests:
        git = m.get("git") if isinstance(m.get("git"), dict) else {}
        wall = m.get("wall_s")
        parents = m.get("parents")
        row = {
            "run_id": m["run_id"],
            "kind": m["kind"],
            "status": m.get("status"),
            "attempts": m.get("attempts") if isinstance(m.get("attempts"), int) else None,
            "created_at": _timestamp(m.get("created_at")),
            "started_at": _timestamp(m.get("started_at")),
            "finished_at": _timestamp(m.get("finished_at")),
            "wall_s": float(wall) if isinstance(wall, (int, float)) else None,
            "parents": [str(p) for p in parents] if isinstance(parents, list) else [],
            "git_commit": git.get("commit"),
            "git_dirty": git.get("dirty") if isinstance(git.get("dirty"), bool) else None,
            "device": m.get("device"),
            "host": m.get("host"),
            "error": m.get("error"),
            "dir": m["dir"],
            "config": _read_config_json(Path(m["dir"])),
            "info": json.dumps(m.get("info") or {}, default=str),
        }
        for name, value in row.items():
            cols[name].append(value)
    return pa.table(cols, schema=RUNS_SCHEMA)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"loss": 1}}`` -> ``{"train/loss": 1}`` (the ``split/name`` convention)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _is_metric(value: Any) -> bool:
    # None is a metric: `Run.log_metrics` writes NaN/inf as null, and a diverged loss must stay visible
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _metrics_table(manifests: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in METRICS_SCHEMA.names}
    run_ids, kinds, steps, tokens = cols["run_id"], cols["kind"], cols["step"], cols["tokens_seen"]
    names, values, tags_col = cols["name"], cols["value"], cols["tags"]
    tag_texts: dict[Any, str] = {}  # records of a run mostly share their tags: serialise each set once
    for m in manifests:
        for record in read_jsonl(Path(m["dir"]) / "metrics.jsonl"):
            flat = _flatten(record)
            step = _as_int(flat.pop("step", None))
            seen = _as_int(flat.pop("tokens_seen", None))
            numeric: list[tuple[str, Any]] = []
            tags: dict[str, Any] = {}
            for key, value in flat.items():
                if _is_metric(value):
                    numeric.append((key, value))
                else:
                    tags[key] = value
            tags_text = _tags_text(tags, tag_texts)
            n = len(numeric)
            run_ids.extend([m["run_id"]] * n)
            kinds.extend([m["kind"]] * n)
            steps.extend([step] * n)
            tokens.extend([seen] * n)
            tags_col.extend([tags_text] * n)
            for key, value in numeric:
                names.append(key)
                values.append(None if value is None else float(value))
    return pa.table(cols, schema=METRICS_SCHEMA)


def _tags_text(tags: dict[str, Any], memo: dict[Any, str]) -> str:
    if not tags:
        return "{}"
    try:
        key = tuple(sorted(tags.items()))
        hash(key)
    except TypeError:  # a list-valued tag: not hashable, serialise directly
        return json.dumps(tags, sort_keys=True)
    text = memo.get(key)
    if text is None:
        text = memo[key] = json.dumps(tags, sort_keys=True)
    return text


def _arrow_column(values: list[Any]) -> pa.Array:
    """Values of one wide column as Arrow, falling back to JSON text when the types do not agree."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values],
            pa.string(),
        )
    if pa.types.is_null(array.type):
        # a column that is NULL everywhere in this store: numeric is the likely meaning (NaN metric)
        return array.cast(pa.float64())
    return array


def _wide_table(manifests: list[dict[str, Any]], filename: str) -> pa.Table:
    rows: list[tuple[str, str, dict[str, Any]]] = []
    columns: dict[str, str] = {}  # lower-cased name -> column name (DuckDB names are case-insensitive)
    reserved = {"run_id", "kind"}
    for m in manifests:
        for record in read_jsonl(Path(m["dir"]) / filename):
            flat = {k: v for k, v in _flatten(record).items() if k.lower() not in reserved}
            rows.append((m["run_id"], m["kind"], flat))
            for key in flat:
                columns.setdefault(key.lower(), key)
    names = list(dict.fromkeys(columns.values()))
    arrays: dict[str, pa.Array] = {
        "run_id": pa.array([r[0] for r in rows], pa.string()),
        "kind": pa.array([r[1] for r in rows], pa.string()),
    }
    for name in names:
        # a key spelled differently in another record ("Loss" vs "loss") lands in the same column
        lower = name.lower()
        values = []
        for _, _, flat in rows:
            value = flat.get(name)
            if value is None and name not in flat:
                value = next((v for k, v in flat.items() if k.lower() == lower), None)
            values.append(value)
        arrays[name] = _arrow_column(values)
    return pa.table(arrays)


def build_tables(
    store: Store | None = None, tables: Iterable[str] = TABLES, manifests: list[dict[str, Any]] | None = None
) -> dict[str, pa.Table]:
    """The tables as Arrow tables (what `connect` loads into DuckDB).

    Args:
        store: the run store; default ``Store()``.
        tables: which of `TABLES` to build (each reads every run's files once).
        manifests: the runs to read (default: every run of `store` now).

    Returns:
        ``{"runs": ..., "metrics": ..., "probes": ..., "evals": ...}`` (those asked for).
    """
    store = store or Store()
    if manifests is None:
        return _build(store, tables, snapshot(store))
    builders = {
        "runs": lambda: _runs_table(manifests),
        "metrics": lambda: _metrics_table(manifests),
        "probes": lambda: _wide_table(manifests, "probes.jsonl"),
        "evals": lambda: _wide_table(manifests, "evals.jsonl"),
    }
    return {name: builders[name]() for name in tables}


def _build(store: Store, tables: Iterable[str], runs: list[RunFiles]) -> dict[str, pa.Table]:
    refs = [run.ref() for run in runs]
    builders = {
        "runs": lambda: cached_runs_table(store, runs, _runs_table, RUNS_SCHEMA),
        "metrics": lambda: _metrics_table(refs),
        "probes": lambda: _wide_table(refs, "probes.jsonl"),
        "evals": lambda: _wide_table(refs, "evals.jsonl"),
    }
    return {name: builders[name]() for name in tables}


def _load(con, name: str, table: pa.Table) -> None:
    view = f"__arrow_{name}"
    con.register(view, table)
    # materialise so the connection owns its data and types, independent of the Arrow buffers
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM {view}")
    con.unregister(view)


def connect(store: Store | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding the tables ``runs``, ``metrics``, ``probes``, ``evals``.

    The tables are a snapshot of the store at call time; connect again to see newer runs.

    Args:
        store: the run store; default ``Store()`` (``$OVERTRAIN_HOME/runs``).

    Returns:
        The connection; query it with ``con.sql(sql).to_arrow_table()``.
    """
    import duckdb

    con = duckdb.connect(":memory:")
    for name, table in build_tables(store).items():
        _load(con, name, table)
    return con


def query(sql: str, store: Store | None = None, params: Sequence[Any] | None = None) -> pa.Table:
    """Run one SQL statement over the store's tables (one snapshot, one connection; for several queries
    over one snapshot use a `Reader`).

    Args:
        sql: a DuckDB SQL query over ``runs``, ``metrics``, ``probes``, ``evals``; values go in `params`
            as ``?`` placeholders, never into the text.
        store: the run store; default ``Store()``.
        params: values of the ``?`` placeholders.

    Returns:
        The result as an Arrow table (a statement such as CREATE gives DuckDB's status table).

    Raises:
        UserError: the SQL does not parse or does not bind (message: DuckDB's first line).
    """
    with Reader(store) as reader:
        return reader.query(sql, params)


class Reader:
    """The read layer: one DuckDB connection over one snapshot of the store — the runs present when it
    opens, each table built from their files when a query first names it — shared by every query of a
    report (or of one command), with the lookups reports make.

    Example:
        >>> with Reader() as r:
        ...     run = r.latest("overtraining")
        ...     claims = r.evals(run["run_id"], record="claim")
    """

    def __init__(self, store: Store | None = None) -> None:
        import duckdb

        self.store = store or Store()
        # the snapshot is the set of runs now; each table is built from their files the first time a
        # query names it (a query over `runs` alone never reads a metrics file)
        self._runs = snapshot(self.store)
        self.con = duckdb.connect(":memory:")
        self._built: set[str] = set()
        self._columns: dict[str, set[str]] = {}

    def _ensure(self, sql: str) -> None:
        """Build the tables `sql` names that are not built yet (all of them when it names none, e.g.
        ``show tables``)."""
        named = [t for t in TABLES if re.search(rf"\b{t}\b", sql, re.IGNORECASE)]
        wanted = [t for t in named or TABLES if t not in self._built]
        for name, table in _build(self.store, wanted, self._runs).items():
            _load(self.con, name, table)
            self._built.add(name)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """`sql` with ``?`` placeholders bound to `params`, as an Arrow table (errors: `UserError`)."""
        import duckdb

        self._ensure(sql)
        try:
            relation = self.con.sql(sql, params=list(params)) if params else self.con.sql(sql)
            return relation.to_arrow_table() if relation is not None else pa.table({})
        except duckdb.Error as exc:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise UserError(f"query failed: {first}") from None

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """`query` as a list of dicts."""
        return self.query(sql, params).to_pylist()

    def columns(self, table: str) -> set[str]:
        """The column names of `table` (the wide tables' columns depend on what the runs logged)."""
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")
        if table not in self._columns:
            self._columns[table] = set(self.query(f"select * from {table} limit 0").column_names)
        return self._columns[table]

    def latest(self, kind: str) -> dict[str, Any] | None:
        """The newest successful run of `kind` (its ``runs`` row, config as JSON text), or None."""
        rows = self.rows(
            "select * from runs where kind = ? and status = 'success' "
            "order by finished_at desc, run_id limit 1",
            [kind],
        )
        return rows[0] if rows else None

    def runs(self, kind: str | None = None, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """``runs`` rows of `kind` and/or with ids in `run_ids`, ordered by kind and id."""
        where, params = _where(kind=kind, run_ids=run_ids)
        return self.rows(f"select * from runs{where} order by kind, run_id", params)

    def evals(self, run_ids: str | Iterable[str], record: str | None = None) -> list[dict[str, Any]]:
        """``evals`` rows of one run or several (in the order logged), optionally of one ``record``."""
        if record is not None and "record" not in self.columns("evals"):
            return []
        where, params = _where(run_ids=[run_ids] if isinstance(run_ids, str) else run_ids, record=record)
        return self.rows(f"select * from evals{where}", params)

    def probes(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        """``probes`` rows of the runs `run_ids`."""
        where, params = _where(run_ids=run_ids)
        return self.rows(f"select * from probes{where}", params)

    def metrics(self, run_ids: Iterable[str], names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """``metrics`` rows of the runs `run_ids`, optionally only the metrics `names`, by run and step."""
        where, params = _where(run_ids=run_ids, names=names)
        return self.rows(f"select * from metrics{where} order by run_id, step", params)


def _where(
    *,
    kind: str | None = None,
    run_ids: Iterable[str] | None = None,
    record: str | None = None,
    names: Iterable[str] | None = None,
) -> tuple[str, list[Any]]:
    """A parameterised WHERE clause over the given filters (None: no filter)."""
    terms, params = [], []
    if kind is not None:
        terms.append("kind = ?")
        params.append(kind)
    if run_ids is not None:
        terms.append("list_contains(?, run_id)")
        params.append(list(run_ids))
    if record is not None:
        terms.append("record = ?")
        params.append(record)
    if names is not None:
        terms.append("list_contains(?, name)")
        params.append(list(names))
    return (" where " + " and ".join(terms) if terms else ""), params


# --- formatting ----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A cell as JSON-compatible data (timestamps ISO 8601, NaN/inf null, decimals float)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell_text(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""  # a blank reads as "no value" at a glance; NULL in every other cell is noise
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def format_table(table: pa.Table, fmt: str = "table") -> str:
    """Render a query result as text.

    Args:
        table: the result (e.g. from `query`).
        fmt: ``table`` (aligned columns, floats to 6 significant digits, NULL left blank),
            ``json`` (a list of row objects, one per line; NaN/inf as null) or ``csv`` (header row,
            NULL as an empty field, lists and structs as JSON).

    Returns:
        The text, ending with a newline.

    Raises:
        UserError: an unknown format.
    """
    rows = table.to_pylist()
    if fmt == "json":
        if not rows:
            return "[]\n"
        body = ",\n".join(json.dumps(_plain(row), ensure_ascii=False, default=str) for row in rows)
        return f"[\n{body}\n]\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow(_csv_cell(v) for v in row.values())
        return out.getvalue()
    if fmt == "table":
        return _render_rich(table.column_names, ([_cell_text(v) for v in row.values()] for row in rows))
    raise UserError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")


def _csv_cell(value: Any) -> Any:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def _render_rich(columns: list[str], rows: Iterable[list[str]]) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(Text(name), no_wrap=True, overflow="fold")
    for row in rows:
        # Text, not str: cell contents (configs, errors) may contain [brackets] rich would read as markup
        table.add_row(*(Text(cell) for cell in row))
    widths = [len(name) for name in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    # as wide as the content, so a pipe or a file gets whole rows instead of wrapped ones
    width = max(40, sum(widths) + 3 * len(widths) + 2)
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    # rich pads every cell to its column width; trailing blanks only get in the way of diff and grep
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
    if not rows:
        text += "(0 rows)\n"
    return text
