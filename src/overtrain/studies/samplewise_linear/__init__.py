"""Sample-wise double descent of isotropic linear regression (Nakkiran et al. 2020 §6): with d fixed,
the min-norm estimate's test risk peaks at n = d, so more data hurts just below it.

One run computes every trial's risk curve (`engine`); the analysis run decides the claims from its rows
(`analysis`); the report plots them beside the closed form (`report`). Config and presets: `config`,
``configs/samplewise_linear/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("samplewise_linear", "samplewise_linear_analysis"),
    help="Sample-wise double descent of linear regression: more data hurts near n = d.",
)
