"""What a study is: a config, the runs it expands into, an analysis run that decides its claims, and a
report section that reads what the analysis stored.

Every study is one folder, ``overtrain/studies/<name>/``, whose ``__init__`` builds one `Study` and
calls `register`. Two shapes share this class:

- **multi-run** (overtraining, repeated data, hyperfitting): `work` expands into pre-training,
  fine-tuning, probe and other runs; the analysis run depends on all of them and reads them from the
  store.
- **single-run** (`SingleRunStudy`: the double-descent lab, LoRA double descent): one run of the
  study's own kind computes every curve in one batched process; the analysis run reads its rows.

Either way the analysis is a run kind of its own (`analysis_kind`), content-addressed by the study
config *and* the digest of the code that decides the verdicts (`analysis_modules`): editing a claim makes
a new analysis run, and never re-runs the training. ``--redo-analysis`` redoes it on request.

Adding a study: a folder with ``config.py`` (the config class), the engine or plan, ``analysis.py``
(claims), ``report.py`` and an ``__init__`` that registers the `Study`, plus
``configs/<name>/default.yaml``. The CLI command, ``overtrain ls studies`` and ``overtrain report
--study`` come from the registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overtrain.analysis.claims import guard, headline
from overtrain.config import BaseConfig, build_config, validate
from overtrain.errors import UserError
from overtrain.executors.local import PlanResult, run_plan
from overtrain.paths import configs_dir
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.report.html import Section, Table
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds import RunKind, code_digest
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.query import Reader
from overtrain.runs.run import Run
from overtrain.runs.store import Store

SHARED_ANALYSIS = "overtrain.analysis"
"""The statistics every study's verdicts go through: part of every analysis version."""


@dataclass(frozen=True, kw_only=True)
class Study:
    """One phenomenon's study.

    Attributes:
        name: the study's name (``random_features``); the CLI command is the name with dashes.
        config_cls: the study's config class.
        work: ``work(cfg) -> [PlanItem]``: every run the analysis reads, in dependency order.
        analyse: ``analyse(cfg, run)``: the analysis run's body; reads the work runs through
            ``run.store``, logs ``evals`` rows (claims: ``record = 'claim'``) and ``run.set_info``.
        report: ``report(reader, cfg, run_id) -> [Section]``: the report section, built only from what
            the stored runs hold (`Reader` lookups), computing nothing new.
        analysis_modules: dotted modules whose source decides the verdicts; their digest (with
            `SHARED_ANALYSIS`) is part of the analysis run's id.
        presets: preset names, each ``configs/<name>/<preset>.yaml``; the first is the default.
        analysis_kind: the analysis run kind's name (default: the study's name).
        parallel: its runs can execute in several processes (``--workers``).
        help: one line for ``overtrain ls studies`` and the command's help (default: what the folder
            announced, `overtrain.studies.announce`).
        resolve: ``resolve(cfg) -> cfg`` applied before planning: facts of the outside world that must
            enter the analysis run's config and id (e.g. the fingerprint of a local checkpoint). None: the
            config as given.
    """

    name: str
    config_cls: type[BaseConfig]
    work: Callable[[Any], list[PlanItem]]
    analyse: Callable[[Any, Run], None]
    report: Callable[[Reader, Any, str], list[Section]]
    analysis_modules: tuple[str, ...]
    presets: tuple[str, ...] = ("default",)
    analysis_kind: str = ""
    parallel: bool = True
    help: str = ""
    resolve: Callable[[Any], Any] | None = None

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def kind(self) -> str:
        """The analysis run kind's name."""
        return self.analysis_kind or self.name

    def version(self) -> str:
        """The digest of the code that decides the verdicts (`analysis_modules` + `SHARED_ANALYSIS`)."""
        return _digest((*self.analysis_modules, SHARED_ANALYSIS))

    def analysis_run_kind(self) -> RunKind:
        return RunKind(
            name=self.kind,
            config_cls=self.config_cls,
            run=self.analyse,
            version=self.version,
            parents=lambda cfg: [(item.kind, item.run_id) for item in self.work(cfg)],
            help=f"the {self.name} study's analysis: claims and what its report shows",
        )

    def load_config(
        self, config: str | Path | None = None, preset: str | None = None, overrides: Sequence[str] = ()
    ) -> BaseConfig:
        """A preset (default: the first) or a config file, then ``key=value`` overrides."""
        if config is None:
            preset = preset or self.presets[0]
            if preset not in self.presets:
                raise UserError(
                    f"unknown preset {preset!r} of {self.name}; choose from: {', '.join(self.presets)}"
                )
            config = configs_dir() / self.name / f"{preset}.yaml"
            if not config.is_file():
                if preset != "default":  # a named preset's values live only in its file
                    raise UserError(f"preset file not found: {config}")
                config = None  # a study without a default.yaml: its config's defaults
        elif preset is not None:
            raise UserError("give --config or --preset, not both")
        return build_config(self.config_cls, config, list(overrides))

    def analysis_id(self, cfg: BaseConfig) -> str:
        return self.analysis_run_kind().run_id(self._resolved(cfg))

    def _resolved(self, cfg: BaseConfig) -> BaseConfig:
        return cfg if self.resolve is None else self.resolve(cfg)

    def plan(self, cfg: BaseConfig, *, redo_analysis: bool = False) -> Plan:
        """Every run of the study, its analysis run last."""
        cfg = self._resolved(cfg)
        items = self.work(cfg)
        kind = self.analysis_run_kind()
        items.append(
            PlanItem(
                kind.name, cfg, kind.run_id(cfg), [i.run_id for i in items], "analysis", redo=redo_analysis
            )
        )
        return Plan(items)

    def run(
        self,
        cfg: BaseConfig,
        store: Store | None = None,
        *,
        workers: int = 1,
        progress: bool = True,
        redo_analysis: bool = False,
    ) -> tuple[PlanResult, str]:
        """Execute the study: every run it needs (finished ones are skipped), then its analysis.

        Returns:
            ``(PlanResult, analysis_run_id)``.
        """
        store = store or Store()
        result = run_plan(
            self.plan(cfg, redo_analysis=redo_analysis),
            store,
            workers=workers if self.parallel else 1,
            progress=progress,
        )
        return result, self.analysis_id(cfg)

    def sections(self, reader: Reader) -> list[Section]:
        """The report section of the newest finished analysis of this study (none: no section)."""
        run = reader.latest(self.kind)
        if run is None:
            return []
        cfg = validate(self.config_cls, json.loads(run["config"]))
        return self.report(reader, cfg, run["run_id"])


@dataclass(frozen=True, kw_only=True)
class SingleRunStudy(Study):
    """A study whose computation is one run of its own kind (named after the study): thousands of small
    models batched in one process cost less than one run directory each.

    Attributes (besides `Study`'s; `work` and `analyse` are derived):
        compute: ``compute(cfg, progress) -> (rows, info)``: every curve row and the manifest info;
            `progress` is ``progress(done, total)``.
        claims: ``claims(cfg, rows) -> [Claim]`` from the compute run's rows (as stored: JSON values).
        report: ``report(reader, cfg, rows, run_id) -> [Section]``: `rows` are the compute run's rows
            followed by the analysis run's claim rows (``evals`` rows: every column, NULL as None).
    """

    compute: Callable[[Any, Callable[[int, int], None]], tuple[list[dict[str, Any]], dict[str, Any]]]
    claims: Callable[[Any, list[dict[str, Any]]], list]
    work: Callable[[Any], list[PlanItem]] | None = None
    analyse: Callable[[Any, Run], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "work", self._work)
        object.__setattr__(self, "analyse", self._analyse)
        if not self.analysis_kind:
            object.__setattr__(self, "analysis_kind", f"{self.name}_analysis")
        object.__setattr__(self, "parallel", False)

    def compute_kind(self) -> RunKind:
        return RunKind(
            name=self.name,
            config_cls=self.config_cls,
            run=self._execute,
            help=f"the {self.name} study's computation (curves)",
        )

    def _work(self, cfg: BaseConfig) -> list[PlanItem]:
        return [PlanItem.from_config(self.compute_kind(), cfg, "compute")]

    def _execute(self, cfg: BaseConfig, run: Run) -> None:
        """The compute run: every curve row (a retried run starts over)."""
        run.truncate("evals", 0)
        rows, info = self.compute(cfg, run.progress)
        for row in rows:
            run.log_eval(row)
        run.set_info(**info)

    def _analyse(self, cfg: BaseConfig, run: Run) -> None:
        # the compute run's own records, exactly as logged (JSON: NaN stays NaN), claims of an older
        # version of this code (which logged them there) left out
        path = run.store.run_dir(self.name, self.compute_kind().run_id(cfg)) / "evals.jsonl"
        rows = [r for r in read_jsonl(path) if r.get("record") != "claim"]
        log_claims(run, self.claims(cfg, rows))

    def sections(self, reader: Reader) -> list[Section]:
        run = reader.latest(self.kind)
        if run is None:
            return []
        cfg = validate(self.config_cls, json.loads(run["config"]))
        rows = [r for r in reader.evals(self.compute_kind().run_id(cfg)) if r.get("record") != "claim"]
        return self.report(reader, cfg, rows + reader.evals(run["run_id"], record="claim"), run["run_id"])


def log_claims(run: Run, claims: list, **info: Any) -> None:
    """Log every claim's row (after `guard`: no uncalibrated finding PASSes) and count the passes into the
    manifest info."""
    guard(claims)
    run.truncate("evals", 0)
    for claim in claims:
        run.log_eval(claim.row())
    findings = [c for c in claims if c.type == "finding"]
    run.set_info(
        **info,
        findings_held=sum(c.verdict == "PASS" for c in findings),
        findings_total=len(findings),
        claims_passed=sum(c.verdict == "PASS" for c in claims),
        claims_total=len(claims),
    )


def register(study: Study, *kinds: RunKind) -> Study:
    """Register `study`, its analysis run kind, its compute kind (single-run) and any other `kinds`."""
    if not study.help:
        object.__setattr__(study, "help", STUDIES.describe(study.name))
    STUDIES.register(study.name, study, help=study.help)
    own = [study.analysis_run_kind(), *([study.compute_kind()] if isinstance(study, SingleRunStudy) else [])]
    for kind in (*own, *kinds):
        RUN_KINDS.register(kind.name, kind, help=kind.help)
    return study


def claims_table(rows: list[dict[str, Any]], caption: str) -> tuple[Table, str]:
    """The report table of claim rows, findings first, and the headline sentence: how many findings hold
    (and how many of those PASSes rest on a measured false-positive rate), how many checks pass."""
    claims = [r for r in rows if r.get("record") == "claim"]
    claims.sort(key=lambda c: (c.get("type") or "finding") != "finding")  # stable: findings, then checks
    table = Table(
        [
            {
                "type": c.get("type") or "finding",
                "claim": c["claim"],
                "verdict": c["verdict"],
                "statistic": c.get("statistic"),
                "value": c.get("value"),
                "CI low": c.get("ci_low"),
                "CI high": c.get("ci_high"),
                "threshold": c.get("threshold"),
                "fpr": c.get("fpr"),
                "power": c.get("power"),
                "detail": c.get("detail") or "",
            }
            for c in claims
        ],
        caption,
        below="detail",
    )
    return table, headline(claims)


_DIGESTS: dict[tuple[str, ...], str] = {}


def _digest(modules: tuple[str, ...]) -> str:
    if modules not in _DIGESTS:
        _DIGESTS[modules] = code_digest(*modules)
    return _DIGESTS[modules]
