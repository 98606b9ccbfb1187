"""The lora-dd study: engine, claims and report put together and registered."""

from overtrain.studies.base import SingleRunStudy, register
from overtrain.studies.lora_dd.analysis import claims
from overtrain.studies.lora_dd.config import LoraDDConfig
from overtrain.studies.lora_dd.engine import compute
from overtrain.studies.lora_dd.report import report

STUDY = register(
    SingleRunStudy(
        name="lora_dd",
        config_cls=LoraDDConfig,
        compute=compute,
        claims=claims,
        report=report,
        analysis_modules=("overtrain.studies.lora_dd.analysis",),
    )
)
