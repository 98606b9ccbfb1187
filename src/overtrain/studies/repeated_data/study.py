"""The repeated-data study put together and registered: its runs (`plan`), the analysis run that decides
the claims (`analysis`, with the scaling law of `effective_size`) and the report section (`report`)."""

from overtrain.studies.base import Study, register
from overtrain.studies.repeated_data.analysis import analyse
from overtrain.studies.repeated_data.config import PRESETS, RepeatedDataConfig
from overtrain.studies.repeated_data.plan import work
from overtrain.studies.repeated_data.report import report

STUDY = register(
    Study(
        name="repeated_data",
        config_cls=RepeatedDataConfig,
        work=work,
        analyse=analyse,
        report=report,
        presets=PRESETS,
        analysis_modules=(
            "overtrain.studies.repeated_data.analysis",
            "overtrain.studies.repeated_data.findings",
            "overtrain.studies.repeated_data.calibrate",
            "overtrain.studies.repeated_data.effective_size",
        ),
    )
)
