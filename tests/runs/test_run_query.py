"""The DuckDB query layer: table shapes, tolerance of damaged files, output formats, SQL errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from overtrain.config import BaseConfig, Count
from overtrain.errors import UserError
from overtrain.runs.kinds import RunKind
from overtrain.runs.query import TABLES, connect, format_table, query
from overtrain.runs.store import Store


class QConfig(BaseConfig):
    n: Count = 2
    """Metric records."""
    fail: bool = False
    """Raise after logging."""


def q_run(cfg: QConfig, run) -> None:
    for step in range(1, cfg.n + 1):
        run.log_metrics(
            {
                "step": step,
                "tokens_seen": 100 * step,
                "train/loss": 1.0 / step,
                "val": {"loss": 2.0 / step},  # nested: flattened to val/loss
                "diverged": float("nan"),  # written as null, kept as a NULL value
                "branch": "main",
                "is_final": step == cfg.n,  # bools are tags, not values
            }
        )
    run.log_probe({"probe": "noise", "sigma": 0.01, "loss": 1.5})
    run.log_probe({"probe": "sharpness", "top_eig": 3.0})
    run.log_eval({"task": "copy", "acc": 0.5, "n": cfg.n})
    run.set_info(n_params=1234)
    if cfg.fail:
        raise RuntimeError("[bad] thing")


Q = RunKind("q", QConfig, q_run)


@pytest.fixture
def store(home):
    store = Store()
    store.execute(Q, QConfig(n=2))
    with pytest.raises(RuntimeError):
        store.execute(Q, QConfig(n=3, fail=True))
    return store


def test_runs_table(store):
    rows = query("select * from runs order by attempts, config", store).to_pylist()
    assert len(rows) == 2
    by_status = {r["status"]: r for r in rows}
    ok, bad = by_status["success"], by_status["failed"]
    assert ok["kind"] == "q" and ok["attempts"] == 1 and ok["parents"] == []
    assert ok["finished_at"] >= ok["started_at"] and bad["finished_at"] is None
    assert bad["error"] == "RuntimeError: [bad] thing"
    assert json.loads(ok["config"]) == {"n": 2, "fail": False}
    assert json.loads(ok["info"]) == {"n_params": 1234}
    assert ok["dir"] == str(store.run_dir("q", ok["run_id"]))
    # config is JSON text that DuckDB's JSON functions read
    n = query("select config->>'$.n' as n from runs where status = 'success'", store).column("n").to_pylist()
    assert n == ["2"]


def test_metrics_long_format(store):
    con = connect(store)
    types = dict(con.sql("select column_name, column_type from (describe metrics)").fetchall())
    assert types == {
        "run_id": "VARCHAR",
        "kind": "VARCHAR",
        "step": "BIGINT",
        "tokens_seen": "BIGINT",
        "name": "VARCHAR",
        "value": "DOUBLE",
        "tags": "VARCHAR",
    }
    rows = con.sql(
        "select m.step, m.tokens_seen, m.name, m.value, m.tags from metrics m join runs r using (run_id) "
        "where r.status = 'success' order by step, name"
    ).fetchall()
    assert [r[:4] for r in rows] == [
        (1, 100, "diverged", None),
        (1, 100, "train/loss", 1.0),
        (1, 100, "val/loss", 2.0),
        (2, 200, "diverged", None),
        (2, 200, "train/loss", 0.5),
        (2, 200, "val/loss", 1.0),
    ]
    assert json.loads(rows[0][4]) == {"branch": "main", "is_final": False}
    assert json.loads(rows[-1][4]) == {"branch": "main", "is_final": True}
    # the failed run's records are there too
    assert con.sql("select count(*) from metrics").fetchall() == [(6 + 9,)]


def test_partial_last_line_is_skipped(store):
    run_id = query("select run_id from runs where status = 'success'", store).column("run_id")[0].as_py()
    with open(store.run_dir("q", run_id) / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "tokens_seen": 300, "train/lo')
    with open(store.run_dir("q", run_id) / "probes.jsonl", "a") as f:
        f.write('{"probe": "noi')
    assert query(f"select max(step) from metrics where run_id = '{run_id}'", store).to_pylist() == [
        {"max(step)": 2}
    ]
    assert query(f"select count(*) as n from probes where run_id = '{run_id}'", store).to_pylist() == [
        {"n": 2}
    ]


def test_probes_and_evals_are_wide(store):
    rows = query("select * from probes order by run_id, probe", store).to_pylist()
    assert list(rows[0]) == ["run_id", "kind", "probe", "sigma", "loss", "top_eig"]
    noise = [r for r in rows if r["probe"] == "noise"]
    sharp = [r for r in rows if r["probe"] == "sharpness"]
    assert len(noise) == len(sharp) == 2
    assert noise[0]["sigma"] == 0.01 and noise[0]["top_eig"] is None
    assert sharp[0]["top_eig"] == 3.0 and sharp[0]["sigma"] is None
    evals = query("select kind, task, acc, n from evals order by n", store).to_pylist()
    assert evals == [
        {"kind": "q", "task": "copy", "acc": 0.5, "n": 2},
        {"kind": "q", "task": "copy", "acc": 0.5, "n": 3},
    ]


def test_mixed_types_fall_back_to_text(home):
    def body(cfg, run):
        run.log_probe({"x": 1, "y": "a"})
        run.log_probe({"x": "one", "Y": "b"})  # case variant of y shares its column

    Store().execute(RunKind("mix", QConfig, body), QConfig())
    rows = query("select x, y from probes", Store()).to_pylist()
    assert rows == [{"x": "1", "y": "a"}, {"x": "one", "y": "b"}]


def test_empty_store_has_every_table(home):
    con = connect(Store())
    for table in TABLES:
        assert con.sql(f"select count(*) from {table}").fetchall() == [(0,)]
        columns = [c[0] for c in con.sql(f"describe {table}").fetchall()]
        assert columns[:2] == ["run_id", "kind"]


def test_format_json_csv_table(store):
    table = query(
        "select kind, status, attempts, wall_s is not null as timed, 1.0/3 as third, "
        "cast(null as double) as nothing, parents, started_at from runs order by status desc",
        store,
    )
    rows = json.loads(format_table(table, "json"))
    assert [(r["kind"], r["status"], r["timed"], r["nothing"], r["parents"]) for r in rows] == [
        ("q", "success", True, None, []),
        ("q", "failed", True, None, []),
    ]
    assert rows[0]["started_at"].endswith("+00:00")  # timestamps as ISO 8601, UTC

    parsed = list(csv.reader(io.StringIO(format_table(table, "csv"))))
    assert parsed[0] == ["kind", "status", "attempts", "timed", "third", "nothing", "parents", "started_at"]
    assert parsed[1][:7] == ["q", "success", "1", "true", str(1.0 / 3), "", "[]"]

    text = format_table(table, "table")
    lines = text.splitlines()
    assert lines[0].split() == [
        "kind",
        "status",
        "attempts",
        "timed",
        "third",
        "nothing",
        "parents",
        "started_at",
    ]
    assert lines[2].split()[:5] == ["q", "success", "1", "true", "0.333333"]
    assert "NULL" not in text  # a missing value is a blank cell
    assert all(line == line.rstrip() for line in lines)

    empty = query("select * from runs where false", store)
    assert format_table(empty, "json") == "[]\n"
    assert format_table(empty, "table").endswith("(0 rows)\n")
    assert format_table(empty, "csv").startswith("run_id,kind,status")
    with pytest.raises(UserError, match="unknown format"):
        format_table(table, "xml")


def test_table_format_keeps_brackets_literal(store):
    text = format_table(query("select error from runs where error is not null", store), "table")
    assert "RuntimeError: [bad] thing" in text


@pytest.mark.parametrize(
    "sql, message",
    [("selec 1", "Parser Error"), ("select * from nope", "nope"), ("select nope from runs", "nope")],
)
def test_bad_sql_is_a_one_line_user_error(store, sql, message):
    with pytest.raises(UserError, match=message) as info:
        query(sql, store)
    assert "\n" not in str(info.value)


def test_statement_without_rows(home):
    assert query("create table t (a int)", Store()).num_rows <= 1
    assert query("select * from runs", Store()).num_rows == 0


def _runs_rows(store):
    return query("select * exclude (dir) from runs order by run_id", store).to_pylist()


def test_cached_runs_rows_follow_every_change_to_the_store(store):
    """The ``runs`` rows kept in ``.cache`` are reused only while a run's manifest and config are
    unchanged: a rerun that succeeds, a new run and a deleted run all show at the next query."""
    from overtrain.runs.query import _runs_table
    from overtrain.runs.table_cache import CACHE_NAME

    cache = store.root / ".cache" / CACHE_NAME
    first = _runs_rows(store)
    assert cache.is_file()
    assert _runs_rows(store) == first  # served from the cache
    # the uncached build agrees
    uncached = _runs_table(list(store.iter_runs()))
    assert sorted(r["run_id"] for r in uncached.to_pylist()) == [r["run_id"] for r in first]

    failed_id = next(r["run_id"] for r in first if r["status"] == "failed")
    store.execute(Q, QConfig(n=5))  # a new run
    failed_cfg = QConfig(n=3, fail=True)
    # the failed run is redone and now succeeds: its manifest (and attempts) change
    Q_ok = RunKind("q", QConfig, lambda cfg, run: q_run(cfg.model_copy(update={"fail": False}), run))
    store.execute(Q_ok, failed_cfg)
    rows = {r["run_id"]: r for r in _runs_rows(store)}
    assert len(rows) == 3
    assert rows[failed_id]["status"] == "success" and rows[failed_id]["attempts"] == 2

    import shutil

    shutil.rmtree(store.run_dir("q", failed_id))
    assert failed_id not in {r["run_id"] for r in _runs_rows(store)}


def test_a_damaged_cache_is_rebuilt(store):
    from overtrain.runs.table_cache import CACHE_NAME

    first = _runs_rows(store)
    cache = store.root / ".cache" / CACHE_NAME
    cache.write_bytes(b"not arrow")
    assert _runs_rows(store) == first
    assert cache.read_bytes()[:6] == b"ARROW1"
