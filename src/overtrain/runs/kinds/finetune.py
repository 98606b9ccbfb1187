"""The ``finetune`` run kind: one pre-trained checkpoint fine-tuned on a task."""

from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.training.finetune import FinetuneConfig, run_finetune
from overtrain.training.finetune_group import group_key, run_finetune_group
from overtrain.training.parent import parents

RUN_KINDS.register(
    "finetune",
    RunKind(
        name="finetune",
        config_cls=FinetuneConfig,
        run=run_finetune,
        parents=parents,
        total_steps=lambda cfg: cfg.train.steps,
        help="fine-tune one pre-training checkpoint on a task; measures task loss and forgetting",
        data_parallel=True,
        group_key=group_key,
        run_group=run_finetune_group,
    ),
)
