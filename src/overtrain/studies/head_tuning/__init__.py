"""Head tuning on HMM representations (Luo et al. 2024): the risk of a linear head fitted by minimum-norm
least squares on the first p features of a linear-Gaussian HMM's representation.

One run computes every trial's risk curve at every SNR multiplier (`engine`); the analysis run decides the
claims from its rows (`analysis`); the report plots them (`report`). Config and presets: `config`,
``configs/head_tuning/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("head_tuning", "head_tuning_analysis"),
    help="Head tuning on HMM representations (Luo et al. 2024): risk vs head width p, peak at p = n, degenerate first descent.",
)
