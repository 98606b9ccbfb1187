"""The random-features study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.random_features.analysis import claims
from overtrain.studies.random_features.config import RandomFeaturesConfig
from overtrain.studies.random_features.engine import compute
from overtrain.studies.random_features.report import report

STUDY = register(
    SingleRunStudy(
        name="random_features",
        config_cls=RandomFeaturesConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=(
            "overtrain.studies.random_features.analysis",
            "overtrain.studies.random_features.calibrate",
        ),
    )
)
