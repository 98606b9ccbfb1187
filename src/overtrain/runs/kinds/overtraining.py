"""The ``overtraining`` run kind: the study's analysis, run after every run of the study."""

from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.studies.overtraining import OvertrainingConfig, plan, run_analysis


def _parents(cfg: OvertrainingConfig) -> list[tuple[str, str]]:
    return [(item.kind, item.run_id) for item in plan(cfg).items if item.kind != "overtraining"]


RUN_KINDS.register(
    "overtraining",
    RunKind(name="overtraining", config_cls=OvertrainingConfig, run=run_analysis, parents=_parents,
            help="the overtraining study's analysis: T*, Spearman(T, Δ), claims (after all its runs)"),
)
