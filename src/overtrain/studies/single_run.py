"""Studies whose whole computation is one run: closed-form and small-network sweeps (seconds to a minute).

The double-descent studies fit thousands of small models in one process, batched, so splitting them
into one run per model would cost more in bookkeeping than in compute. Such a study is one run of a kind
named after the study; the run writes the study's curves (``record = 'curve'`` and friends) and its
claims (``record = 'claim'``) into ``evals.jsonl``, and its report section reads them back. The run is
content-addressed like every other: a rerun of the same config is skipped; a failed run is redone
whole.

Adding such a study: a module in `overtrain.studies` that builds a `SingleRunStudy` and calls
`register` (which registers the study and its run kind), plus ``configs/<name>/default.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overtrain.config import BaseConfig, build_config, config_hash, validate
from overtrain.errors import UserError
from overtrain.paths import repo_root
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.runs.kinds import RunKind
from overtrain.runs.plan import Plan, PlanItem


@dataclass(frozen=True)
class SingleRunStudy:
    """A study computed by one run.

    Attributes:
        name: study and run-kind name (``random_features``); the CLI command uses dashes.
        config_cls: the study's config class.
        compute: ``compute(cfg, progress) -> (rows, info)``: every evals row (claims included) and the
            manifest info; `progress` is ``progress(done, total)``.
        report: ``report(store, cfg, rows, run_id) -> list[Section]`` from the stored rows.
        presets: preset names, each ``configs/<name>/<preset>.yaml``; the first is the default.
        help: one line for ``overtrain ls``.
    """

    name: str
    config_cls: type[BaseConfig]
    compute: Callable[[Any, Callable[[int, int], None]], tuple[list[dict[str, Any]], dict[str, Any]]]
    report_fn: Callable[..., list]
    presets: tuple[str, ...]
    help: str

    def load_config(self, config: str | Path | None = None, preset: str | None = None, overrides=()) -> BaseConfig:
        """A preset (default: the first) or a config file, then ``key=value`` overrides."""
        if config is None:
            preset = preset or self.presets[0]
            if preset not in self.presets:
                raise UserError(f"unknown preset {preset!r} of {self.name}; choose from: {', '.join(self.presets)}")
            config = (repo_root() or Path.cwd()) / "configs" / self.name / f"{preset}.yaml"
            if not config.is_file():  # installed without the repo: the preset is the config's defaults
                config = None
        return build_config(self.config_cls, config, overrides)

    def plan(self, cfg: BaseConfig) -> Plan:
        return Plan([PlanItem(self.name, cfg, config_hash(cfg), [], self.name)])

    def run(self, cfg: BaseConfig, store=None, *, workers: int = 1, progress: bool = True):
        """Execute (or skip, if already done) the study's run. Returns ``(PlanResult, run_id)``."""
        from overtrain.executors.local import run_plan
        from overtrain.runs.store import Store

        store = store or Store()
        return run_plan(self.plan(cfg), store, workers=1, progress=progress), config_hash(cfg)

    def execute(self, cfg: BaseConfig, run) -> None:
        """The run kind's body: compute, then write every row (a retried run starts over)."""
        run.truncate("evals", 0)
        rows, info = self.compute(cfg, run.progress)
        for row in rows:
            run.log_eval(row)
        claims = [r for r in rows if r.get("record") == "claim"]
        run.set_info(**info, claims_passed=sum(c["verdict"] == "PASS" for c in claims), claims_total=len(claims))

    def report(self, store) -> list:
        from overtrain.runs.query import query

        runs = query(f"select run_id, config from runs where kind = '{self.name}' and status = 'success' "
                     "order by finished_at desc", store).to_pylist()
        if not runs:
            return []
        run_id = runs[0]["run_id"]
        cfg = validate(self.config_cls, json.loads(runs[0]["config"]))
        rows = query(f"select * from evals where run_id = '{run_id}'", store).to_pylist()
        return self.report_fn(store, cfg, rows, run_id)


def register(study: SingleRunStudy) -> SingleRunStudy:
    STUDIES.register(study.name, study, help=study.help)
    RUN_KINDS.register(study.name, RunKind(name=study.name, config_cls=study.config_cls, run=study.execute,
                                           help=study.help))
    return study


def claims_table(rows: list[dict[str, Any]], caption: str):
    """The report table of a run's claim rows, and a sentence counting the passes."""
    from overtrain.report.html import Table

    claims = [r for r in rows if r.get("record") == "claim"]
    table = Table([{"claim": c["claim"], "verdict": c["verdict"], "statistic": c["statistic"], "value": c["value"],
                    "CI low": c.get("ci_low"), "CI high": c.get("ci_high"), "threshold": c["threshold"],
                    "detail": c.get("detail") or ""} for c in claims], caption)
    passed = sum(c["verdict"] == "PASS" for c in claims)
    return table, f"{passed} of {len(claims)} claims pass."
