"""The head-tuning study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.head_tuning.analysis import claims
from overtrain.studies.head_tuning.config import HeadTuningConfig
from overtrain.studies.head_tuning.engine import compute
from overtrain.studies.head_tuning.report import report

STUDY = register(
    SingleRunStudy(
        name="head_tuning",
        config_cls=HeadTuningConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=(
            "overtrain.studies.head_tuning.analysis",
            "overtrain.studies.head_tuning.calibrate",
        ),
    )
)
