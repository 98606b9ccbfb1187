"""The sample-wise linear-regression study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.samplewise_linear.analysis import claims
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig
from overtrain.studies.samplewise_linear.engine import compute
from overtrain.studies.samplewise_linear.report import report

STUDY = register(
    SingleRunStudy(
        name="samplewise_linear",
        config_cls=SamplewiseLinearConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=(
            "overtrain.studies.samplewise_linear.analysis",
            "overtrain.studies.samplewise_linear.calibrate",
        ),
    )
)
