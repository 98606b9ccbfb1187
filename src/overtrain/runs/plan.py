"""Plans of runs and the declarative sweep files that expand into them.

A sweep file is data, not code::

    kind: pretrain
    base: ../pretrain/hmm-nano.yaml        # or an inline mapping
    axes:                                  # full grid over these
      train.tokens: [1e6, 2e6, 4e6]
      optim.lr: [1e-3, 3e-3]
    zip:                                   # varied together (same length)
      model.preset: [llama-30k, llama-100k]
      train.batch_size: [16, 32]
    seeds: [0, 1, 2]                       # sets `seed`

expands into 3 x 2 x 2 x 3 = 36 validated configs, one `PlanItem` each, addressed by run id, so the same
sweep run twice is the same set of runs (a rerun skips finished runs and resumes the others).
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from overtrain import registry
from overtrain.config import BaseConfig, build_config, identity, load_yaml, validate
from overtrain.errors import ConfigError, UnknownNameError, UserError
from overtrain.runs.store import Store


@dataclass
class PlanItem:
    """One run of a plan.

    Attributes:
        kind: the run kind's name.
        config: the validated config.
        run_id: ``kind.run_id(config)`` (the config's hash, with the kind's code version if it has one).
        deps: run ids that must be a success before this run starts.
        label: short description (a sweep's ``key=value`` combination); `Plan.summary` derives one
            from the fields that vary across the plan when empty.
        redo: run it again from scratch even if it already succeeded (``--redo-analysis``).
    """

    kind: str
    config: BaseConfig
    run_id: str
    deps: list[str] = field(default_factory=list)
    label: str = ""
    redo: bool = False

    @classmethod
    def from_config(cls, kind: Any, config: BaseConfig, label: str = "") -> PlanItem:
        """An item for `config` of `kind` (a `RunKind`), with deps from ``kind.parents(config)``."""
        deps = list(dict.fromkeys(run_id for _kind, run_id in kind.parents(config)))
        return cls(kind.name, config, kind.run_id(config), deps, label)


class Plan:
    """An ordered collection of runs with dependencies between them.

    Args:
        items: the runs; a run id listed twice (same kind) is kept once, the first time.

    Raises:
        UserError: one run id appears with two different kinds.
    """

    def __init__(self, items: Iterable[PlanItem] = ()) -> None:
        self.items: list[PlanItem] = []
        self._by_id: dict[str, PlanItem] = {}
        for item in items:
            self.add(item)

    def add(self, item: PlanItem) -> bool:
        """Add `item` unless its run id is already in the plan; returns whether it was added."""
        seen = self._by_id.get(item.run_id)
        if seen is not None:
            if seen.kind != item.kind:
                raise UserError(
                    f"run id {item.run_id} is both a {seen.kind} and a {item.kind} run in one plan"
                )
            return False
        self.items.append(item)
        self._by_id[item.run_id] = item
        return True

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._by_id

    def get(self, run_id: str) -> PlanItem:
        """The item with this run id (KeyError if absent)."""
        return self._by_id[run_id]

    def order(self, store: Store | None = None) -> list[PlanItem]:
        """The items in dependency order, otherwise in their original order (Kahn's algorithm).

        Args:
            store: where to look for dependencies that are not in the plan (default ``Store()``);
                such a dependency is fine only if that run is already a success there.

        Returns:
            Every item, each after all of its dependencies.

        Raises:
            UserError: a dependency is neither in the plan nor a finished run, or the deps form a cycle.
        """
        external = {dep for item in self.items for dep in item.deps if dep not in self._by_id}
        if external:
            store = store or Store()
            finished = _successful_ids(store, external)
            for item in self.items:
                missing = [d for d in item.deps if d not in self._by_id and d not in finished]
                if missing:
                    raise UserError(
                        f"{item.kind}/{item.run_id} needs run {missing[0]}, which is neither in this plan "
                        f"nor finished in {store.root}"
                    )
        position = {item.run_id: i for i, item in enumerate(self.items)}
        waiting = {
            item.run_id: {d for d in item.deps if d in self._by_id and d != item.run_id}
            for item in self.items
        }
        for item in self.items:
            if item.run_id in item.deps:
                raise UserError(f"dependency cycle: {item.kind}/{item.run_id} depends on itself")
        dependents: dict[str, list[str]] = {rid: [] for rid in waiting}
        for rid, deps in waiting.items():
            for dep in deps:
                dependents[dep].append(rid)
        # ready runs are taken lowest original position first, so an acyclic plan without deps keeps
        # its order exactly and a dependency moves only what it must
        ready = [position[rid] for rid, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        ordered: list[PlanItem] = []
        while ready:
            item = self.items[heapq.heappop(ready)]
            ordered.append(item)
            for child in dependents[item.run_id]:
                waiting[child].discard(item.run_id)
                if not waiting[child]:
                    heapq.heappush(ready, position[child])
        if len(ordered) < len(self.items):
            stuck = [rid for rid, deps in waiting.items() if deps]
            raise UserError(f"dependency cycle among runs: {', '.join(_cycle(stuck, waiting))}")
        return ordered

    def summary(self, store: Store | None = None) -> list[dict[str, str]]:
        """One row per item in plan order: kind, run_id, status (in `store`, or ``new``), description.

        Args:
            store: the run store (default ``Store()``).

        Returns:
            Rows ``{"kind", "run_id", "status", "description"}`` (what ``overtrain sweep --dry-run``
            shows).
        """
        store = store or Store()
        varying = _varying_fields(self.items)
        rows = []
        for item in self.items:
            status = store.status(item.kind, item.run_id) or "new"
            description = item.label or _describe(item, varying.get(item.kind, []))
            if item.deps:
                description = f"{description} (after {', '.join(item.deps)})".strip()
            rows.append(
                {"kind": item.kind, "run_id": item.run_id, "status": status, "description": description}
            )
        return rows


def _successful_ids(store: Store, run_ids: set[str]) -> set[str]:
    out = set()
    if not store.root.is_dir():
        return out
    kinds = [p.name for p in store.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for run_id in run_ids:
        if any(store.status(kind, run_id) == "success" for kind in kinds):
            out.add(run_id)
    return out


def _cycle(stuck: list[str], waiting: dict[str, set[str]]) -> list[str]:
    """Follow unmet deps from the first stuck run until a run repeats: that loop is a cycle."""
    path: list[str] = []
    seen: dict[str, int] = {}
    node = stuck[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(waiting[node])
    return [*path[seen[node] :], node]


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _varying_fields(items: Sequence[PlanItem]) -> dict[str, list[str]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(_flat(identity(item.config)))
    out = {}
    for kind, flats in by_kind.items():
        keys = list(dict.fromkeys(k for f in flats for k in f))
        out[kind] = [
            k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1
        ]
    return out


def _describe(item: PlanItem, keys: list[str], limit: int = 100) -> str:
    flat = _flat(identity(item.config))
    text = " ".join(f"{k}={json.dumps(flat.get(k), default=str)}" for k in keys)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- sweep files ---------------------------------------------------------------------------------------


class SweepConfig(BaseConfig):
    """A sweep file: a base config, the axes to vary, and seeds."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)

    kind: str
    """Run kind every item of the sweep is (``pretrain``, ``finetune``, ...)."""

    base: str | dict[str, Any] = Field(default_factory=dict)
    """The base config: a YAML path relative to the sweep file, or an inline mapping."""

    axes: dict[str, list[Any]] = Field(default_factory=dict)
    """Dotted key -> values; the sweep is the full grid (Cartesian product) over all axes."""

    zip_: dict[str, list[Any]] = Field(default_factory=dict, alias="zip")
    """Dotted key -> values varied together (the i-th values go into one run); equal lengths."""

    seeds: list[int] | None = None
    """Values of the config key ``seed``, crossed with everything else (innermost)."""

    description: str = ""
    """Free text shown in listings."""

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        for key, values in self.axes.items():
            if not values:
                raise ValueError(f"axes.{key} has no values")
        lengths = {key: len(values) for key, values in self.zip_.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ValueError(f"zip lists must have the same length ({shown})")
        if any(n == 0 for n in lengths.values()):
            raise ValueError("zip lists must not be empty")
        both = set(self.axes) & set(self.zip_)
        if both:
            raise ValueError(f"{sorted(both)[0]} is in both axes and zip")
        if self.seeds is not None:
            if not self.seeds:
                raise ValueError("seeds is empty; leave it out to use the base config's seed")
            if "seed" in self.axes or "seed" in self.zip_:
                raise ValueError("seed is set both by seeds and by axes/zip")
        return self

    def combinations(self) -> list[list[tuple[str, Any]]]:
        """Every combination as ``[(dotted_key, value), ...]``: grid x zip x seeds, seeds innermost."""
        grid_keys = list(self.axes)
        grid = itertools.product(*(self.axes[k] for k in grid_keys)) if grid_keys else [()]
        zip_keys = list(self.zip_)
        zipped = list(zip(*(self.zip_[k] for k in zip_keys))) if zip_keys else [()]
        seeds = [[("seed", s)] for s in self.seeds] if self.seeds is not None else [[]]
        return [[*zip(grid_keys, g), *zip(zip_keys, z), *s] for g in grid for z in zipped for s in seeds]


def _override(key: str, value: Any) -> str:
    # JSON is YAML flow syntax, so the value round-trips with its type: "2M" stays a string (for
    # Count), 1e-3 a float, lists and mappings structured
    return f"{key}={json.dumps(value)}"


def load_sweep(path: str | Path, *, kinds: Any = None) -> Plan:
    """Expand a sweep file into a `Plan` of validated, deduplicated runs.

    Args:
        path: the sweep YAML (see the module docstring for its shape).
        kinds: where to look up the run kind (default `RUN_KINDS`; tests pass their own registry).

    Returns:
        The plan: one item per distinct run id, in expansion order, deps from ``kind.parents(cfg)``.

    Raises:
        ConfigError: the sweep file is invalid, or one combination does not validate (the message
            names the file and the combination).
        UnknownNameError: the run kind does not exist.
    """
    path = Path(path)
    sweep = validate(SweepConfig, load_yaml(path), str(path))
    if kinds is None:
        kinds = registry.RUN_KINDS
    try:
        kind = kinds.get(sweep.kind)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{path}: {exc}") from None
    if kind is None:  # a plain Mapping without the name
        raise UnknownNameError(f"{path}: unknown run kind {sweep.kind!r}")

    if isinstance(sweep.base, str):
        try:
            base = load_yaml((path.parent / sweep.base).resolve())
        except ConfigError as exc:
            raise ConfigError(f"{path}: base: {exc}") from None
    else:
        base = sweep.base

    plan = Plan()
    for combo in sweep.combinations():
        overrides = [_override(k, v) for k, v in combo]
        label = " ".join(overrides)
        try:
            cfg = build_config(kind.config_cls, base=base, overrides=overrides)
        except ConfigError as exc:
            where = f" combination {label}:" if label else ""
            # build_config's generic source name says nothing here; the sweep file and combination do
            reason = str(exc).removeprefix("config with overrides: ").removeprefix("config: ")
            raise ConfigError(f"{path}:{where} {reason}") from None
        plan.add(PlanItem.from_config(kind, cfg, label))
    return plan
