"""The hyperfitting study put together and registered (with the ``hyperfit_train`` run kind).

The config is resolved before planning (`resolve`: checked, `base_model` absolute and fingerprinted), so
the analysis run's config and id carry the base checkpoint's fingerprint: a changed checkpoint is a new
analysis, not only new hyperfit runs."""

from overtrain.studies.base import Study, register
from overtrain.studies.hyperfit.analysis import analyse
from overtrain.studies.hyperfit.config import PRESETS, HyperfitConfig
from overtrain.studies.hyperfit.plan import resolve, work
from overtrain.studies.hyperfit.report import report
from overtrain.studies.hyperfit.train import HYPERFIT_TRAIN

STUDY = register(
    Study(
        name="hyperfit",
        config_cls=HyperfitConfig,
        work=work,
        analyse=analyse,
        report=report,
        presets=PRESETS,
        resolve=resolve,
        analysis_modules=(
            "overtrain.studies.hyperfit.analysis",
            "overtrain.studies.hyperfit.claims",
            "overtrain.studies.hyperfit.calibrate",
            "overtrain.probes.generation",
        ),
    ),
    HYPERFIT_TRAIN,
)
