"""Plans (dependency order, cycles, missing deps, summaries) and sweep files (expansion, dedup, errors)."""

from __future__ import annotations

import pytest

from overtrain.config import BaseConfig, ConfigError, Count, config_hash
from overtrain.errors import UnknownNameError, UserError
from overtrain.registry import Registry
from overtrain.runs.kinds import RunKind
from overtrain.runs.plan import Plan, PlanItem, SweepConfig, load_sweep
from overtrain.runs.store import Store


class PConfig(BaseConfig):
    n: Count = 1
    """Size."""
    lr: float = 0.1
    """Learning rate."""
    seed: int = 0
    """Seed."""
    tag: str = ""
    """Free text."""


class CConfig(BaseConfig):
    parent_n: Count = 1
    """`n` of the parent run."""
    seed: int = 0
    """Seed."""


def _noop(cfg, run) -> None:
    pass


PARENT = RunKind("parent", PConfig, _noop)
CHILD = RunKind(
    "child", CConfig, _noop, parents=lambda cfg: [("parent", config_hash(PConfig(n=cfg.parent_n)))]
)


@pytest.fixture
def kinds():
    registry = Registry("run kind")
    registry.register("parent", PARENT)
    registry.register("child", CHILD)
    return registry


def _item(run_id, deps=(), kind="parent"):
    return PlanItem(kind, PConfig(), run_id, list(deps))


# --- ordering ------------------------------------------------------------------------------------------


def test_order_is_stable_without_deps(tmp_path):
    plan = Plan([_item("c"), _item("a"), _item("b")])
    assert [i.run_id for i in plan.order(Store(tmp_path))] == ["c", "a", "b"]


def test_order_puts_deps_first_and_moves_only_what_it_must(tmp_path):
    plan = Plan([_item("x"), _item("child", ["p2", "p1"]), _item("y"), _item("p1"), _item("p2", ["p1"])])
    order = [i.run_id for i in plan.order(Store(tmp_path))]
    assert order == ["x", "y", "p1", "p2", "child"]


def test_cycle_is_a_user_error_naming_the_loop(tmp_path):
    plan = Plan([_item("free"), _item("a", ["c"]), _item("b", ["a"]), _item("c", ["b"])])
    with pytest.raises(UserError, match="dependency cycle among runs: a, c, b, a"):
        plan.order(Store(tmp_path))
    with pytest.raises(UserError, match="depends on itself"):
        Plan([_item("s", ["s"])]).order(Store(tmp_path))


def test_missing_dep_is_an_error_unless_finished_in_store(home):
    store = Store()
    plan = Plan([_item("a", [config_hash(PConfig(n=7))])])
    with pytest.raises(UserError, match=f"needs run {config_hash(PConfig(n=7))}"):
        plan.order(store)
    store.execute(PARENT, PConfig(n=7))
    assert [i.run_id for i in plan.order(store)] == ["a"]


def test_duplicates_kept_once_and_kind_clash_rejected():
    plan = Plan([_item("a"), _item("a"), _item("b")])
    assert [i.run_id for i in plan] == ["a", "b"] and len(plan) == 2 and "a" in plan
    with pytest.raises(UserError, match="both a parent and a child"):
        Plan([_item("a"), _item("a", kind="child")])


def test_summary_reports_store_status_and_what_varies(home):
    store = Store()
    items = [PlanItem.from_config(PARENT, PConfig(n=n, lr=0.1)) for n in (1, 2)]
    items.append(PlanItem.from_config(CHILD, CConfig(parent_n=2)))
    store.execute(PARENT, PConfig(n=1))
    rows = Plan(items).summary(store)
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("parent", "success"),
        ("parent", "new"),
        ("child", "new"),
    ]
    assert rows[0]["description"] == "n=1" and rows[1]["description"] == "n=2"
    assert rows[2]["run_id"] == config_hash(CConfig(parent_n=2))
    assert rows[2]["description"] == f"(after {items[1].run_id})"


# --- sweeps --------------------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


def test_sweep_grid_zip_seeds(tmp_path, kinds):
    _write(tmp_path / "base.yaml", "n: 3\ntag: base\n")
    sweep = _write(
        tmp_path / "s.yaml",
        "kind: parent\nbase: base.yaml\n"
        "axes:\n  lr: [0.1, 0.2]\n  n: [1, 2M]\n"
        "zip:\n  tag: [a, b, c]\n"
        "seeds: [0, 1]\n",
    )
    plan = load_sweep(sweep, kinds=kinds)
    assert len(plan) == 2 * 2 * 3 * 2
    combos = {(i.config.lr, i.config.n, i.config.tag, i.config.seed) for i in plan}
    assert len(combos) == 24
    assert (0.2, 2_000_000, "c", 1) in combos
    first = plan.items[0]
    assert first.label == 'lr=0.1 n=1 tag="a" seed=0'
    assert [i.config.seed for i in plan.items[:2]] == [0, 1]  # seeds vary fastest
    assert all(i.run_id == config_hash(i.config) and i.kind == "parent" and i.deps == [] for i in plan)


def test_sweep_inline_base_dedup_and_deps(tmp_path, kinds):
    sweep = _write(
        tmp_path / "s.yaml",
        "kind: child\nbase: {parent_n: 4}\naxes:\n  seed: [0, 0, 1]\n  parent_n: [4, '4']\n",
    )
    plan = load_sweep(sweep, kinds=kinds)
    assert len(plan) == 2  # 6 combinations, 2 distinct configs
    assert all(i.deps == [config_hash(PConfig(n=4))] for i in plan)


def test_sweep_without_axes_is_the_base_config(tmp_path, kinds):
    plan = load_sweep(_write(tmp_path / "s.yaml", "kind: parent\nbase: {n: 5}\n"), kinds=kinds)
    assert [i.config.n for i in plan] == [5] and plan.items[0].label == ""


def test_bad_value_in_one_combination_names_file_and_combination(tmp_path, kinds):
    sweep = _write(tmp_path / "bad.yaml", "kind: parent\naxes:\n  n: [1, 2, -3]\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep, kinds=kinds)
    message = str(info.value)
    assert str(sweep) in message and "n=-3" in message and "greater than 0" in message


@pytest.mark.parametrize(
    "text, match",
    [
        ("kind: parent\nzip:\n  n: [1, 2]\n  lr: [0.1]\n", "same length"),
        ("kind: parent\naxes:\n  n: []\n", "no values"),
        ("kind: parent\naxes:\n  seed: [1]\nseeds: [0]\n", "seed is set both"),
        ("kind: parent\naxes:\n  n: [1]\nzip:\n  n: [2]\n", "both axes and zip"),
        ("kind: parent\naxis:\n  n: [1]\n", "axis: unknown key"),
        ("kind: parent\nbase: nowhere.yaml\n", "base: config file not found"),
    ],
)
def test_invalid_sweep_files(tmp_path, kinds, text, match):
    sweep = _write(tmp_path / "s.yaml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep(sweep, kinds=kinds)
    assert str(sweep) in str(info.value)


def test_unknown_kind_names_the_sweep(tmp_path, kinds):
    sweep = _write(tmp_path / "s.yaml", "kind: parnet\n")
    with pytest.raises(UnknownNameError, match="did you mean 'parent'"):
        load_sweep(sweep, kinds=kinds)


def test_sweep_config_documents_its_fields():
    for name, field in SweepConfig.model_fields.items():
        assert field.description, f"SweepConfig.{name} has no docstring"
