"""The two-layer-network double-descent study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.mlp_double_descent.analysis import claims
from overtrain.studies.mlp_double_descent.config import MLPDoubleDescentConfig
from overtrain.studies.mlp_double_descent.engine import compute
from overtrain.studies.mlp_double_descent.report import report

STUDY = register(
    SingleRunStudy(
        name="mlp_double_descent",
        config_cls=MLPDoubleDescentConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=(
            "overtrain.studies.mlp_double_descent.analysis",
            "overtrain.studies.mlp_double_descent.calibrate",
        ),
    )
)
