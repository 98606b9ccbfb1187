"""Two-layer networks on digits (Nakkiran et al. 2020; Belkin et al. 2019): width-wise and epoch-wise
double descent with label noise.

One run holds the model-wise sweep (widths 2 … 256, trained to interpolation) and the epoch-wise run (one
wide network, test error every 50 steps), all widths and seeds of a sweep trained at once, exactly as if
separately (`engine`, `network`); the analysis run decides the claims from its rows (`analysis`); the
report plots them (`report`). Config and presets: `config`, ``configs/mlp_double_descent/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("mlp_double_descent", "mlp_double_descent_analysis"),
    help="Two-layer networks on digits (Nakkiran et al. 2020): width-wise and epoch-wise double descent with label noise.",
)
