"""The ``linear_theory`` run kind: the paper's two-layer linear model, all seeds in one run (seconds).

Records (see `overtrain.models.linear.LinearTheoryResult.rows`):

- ``evals.jsonl``, long rows told apart by ``metric``:
  ``perturbation`` — one per (seed, step, gamma): base_loss, perturbed_loss, delta, delta_se, draws,
  weight_norm_sq; ``finetune`` — one per (seed, step): lr and steps of fine-tuning, base_pretrain_loss,
  pretrain_loss (after fine-tuning), task_loss, forgetting. ``step`` is the pre-training step count T.
- ``probes.jsonl``: one row per (seed, step, gamma, draw) with the perturbed loss (probe
  ``gaussian_perturbation``), for bootstrap CIs over draws.
- manifest ``info``: wall_s, n_params (W1 and W2), checkpoints.

The run is seconds long, so it has no resume state: a retried run truncates its records and starts over.

Example query: ``select step, avg(delta) from evals where kind = 'linear_theory' and metric =
'perturbation' and gamma = 0.01 group by step order by step``.
"""

from __future__ import annotations

from overtrain.models.linear import LinearTheoryConfig, run_linear_theory
from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds import RunKind


def run(cfg: LinearTheoryConfig, run) -> None:
    """Execute the theory model and write its records into the open run `run`."""
    # a failed earlier attempt may have written some rows; the run is cheap, so redo it from scratch
    for name in ("evals", "probes"):
        run.truncate(name, 0)
    result = run_linear_theory(cfg, progress=run.progress)
    for row in result.rows():
        run.log_eval(row)
    for row in result.draw_rows():
        run.log_probe(row)
    run.set_info(
        wall_s=result.wall_s,
        n_params=2 * cfg.dim * cfg.dim,
        checkpoints=[int(s) for s in result.steps],
    )


def total_steps(cfg: LinearTheoryConfig) -> int:
    """Pre-training steps of the longest checkpoint (progress bar total)."""
    return cfg.checkpoint_steps()[-1]


RUN_KINDS.register(
    "linear_theory",
    RunKind(
        name="linear_theory",
        config_cls=LinearTheoryConfig,
        run=run,
        total_steps=total_steps,
        help="two-layer linear theory model: sensitivity and forgetting vs pre-training steps (seconds)",
    ),
)
