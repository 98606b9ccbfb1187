"""The optimization-and-double-descent study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.dd_optimization.analysis import claims
from overtrain.studies.dd_optimization.config import OptimizationDDConfig
from overtrain.studies.dd_optimization.engine import compute
from overtrain.studies.dd_optimization.report import report

STUDY = register(
    SingleRunStudy(
        name="dd_optimization",
        config_cls=OptimizationDDConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=(
            "overtrain.studies.dd_optimization.analysis",
            "overtrain.studies.dd_optimization.calibrate",
        ),
    )
)
