"""The ``pretrain`` run kind: one model trained to a list of token budgets."""

from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.training.pretrain import run_pretrain, total_steps
from overtrain.training.pretrain_config import PretrainConfig

RUN_KINDS.register(
    "pretrain",
    RunKind(
        name="pretrain",
        config_cls=PretrainConfig,
        run=run_pretrain,
        total_steps=total_steps,
        help="pre-train one model to a list of token budgets (WSD branches or cosine runs)",
        data_parallel=True,
    ),
)
