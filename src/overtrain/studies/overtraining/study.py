"""The overtraining study put together and registered (with the ``linear_theory`` run kind)."""

from overtrain.studies.base import Study, register
from overtrain.studies.overtraining.analysis import analyse
from overtrain.studies.overtraining.config import PRESETS, OvertrainingConfig
from overtrain.studies.overtraining.plan import work
from overtrain.studies.overtraining.report import report
from overtrain.studies.overtraining.theory_run import LINEAR_THEORY

STUDY = register(
    Study(
        name="overtraining",
        config_cls=OvertrainingConfig,
        work=work,
        analyse=analyse,
        report=report,
        presets=PRESETS,
        analysis_modules=(
            "overtrain.studies.overtraining.analysis",
            "overtrain.studies.overtraining.calibrate",
            "overtrain.studies.overtraining.advice",
            "overtrain.studies.overtraining.early_warning",
            "overtrain.analysis.forecast",
        ),
    ),
    LINEAR_THEORY,
)
