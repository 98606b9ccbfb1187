"""The role of optimization in double descent (Liu & Flanigan 2023): the model-wise peak appears only
when the optimizer reaches a low enough training loss.

One run trains random-feature readouts at every width by exact GD for T steps (closed form, T = 10² … ∞)
and by torch optimizer settings (`engine`, `training`); the analysis run decides the claims from its rows
(`analysis`); the report plots them (`report`). Config and presets: `config`, ``configs/dd_optimization/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("dd_optimization", "dd_optimization_analysis"),
    help="The role of optimization in double descent (Liu & Flanigan 2023): the peak appears only when the optimizer reaches a low training loss.",
)
