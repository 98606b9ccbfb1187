"""Random-features double descent (Belkin et al. 2019; Nakkiran et al. 2020): model-wise and sample-wise.

One run computes every curve (`engine`); the analysis run decides the claims from its rows (`analysis`);
the report plots them (`report`). Config and presets: `config`, ``configs/random_features/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("random_features", "random_features_analysis"),
    help="Random-features double descent (Belkin et al. 2019, Nakkiran et al. 2020): model-wise and sample-wise "
    "curves, label noise, ridge, GD length.",
)
