"""The theory model's run: every seed and checkpoint in one batched run, its records and the
``linear_theory`` run kind.

Records (see `LinearTheoryResult.rows`):

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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from overtrain.errors import RunFailed
from overtrain.runs.kinds import RunKind
from overtrain.studies.overtraining.theory import (
    DTYPE,
    LinearTheoryConfig,
    gd_,
    loss,
    make_problem,
    perturbed_losses,
)

CURVES = (
    "base_loss",
    "weight_norm_sq",
    "pretrain_loss",
    "task_loss",
    "forgetting",
    "perturbed_loss",
    "delta",
    "delta_se",
)
"""Names `LinearTheoryResult.curve` accepts; the last three are per γ."""


@dataclass
class LinearTheoryResult:
    """Measurements of `run_linear_theory`: arrays indexed [seed, checkpoint(, γ(, draw))].

    Attributes:
        seeds: [S] seeds.
        steps: [C] checkpoint step counts, ascending.
        gammas: [G] perturbation scales.
        base_loss: [S, C] pre-training loss ½‖W2W1 − M‖² at the checkpoint.
        weight_norm_sq: [S, C] ‖W1‖²_F + ‖W2‖²_F at the checkpoint (E[Δ] = ½γ²d times this + ½γ⁴d³).
        perturbed_loss: [S, C, G] mean over draws of the perturbed pre-training loss.
        delta: [S, C, G] Δ = perturbed_loss − base_loss.
        delta_se: [S, C, G] standard error of Δ over draws (NaN with one draw).
        pretrain_loss: [S, C] pre-training loss ½‖W2'W1' − M‖² after fine-tuning (forgetting).
        task_loss: [S, C] fine-tuning loss ½‖W2'W1' − M_ft‖² after fine-tuning.
        draw_losses: [S, C, G, K] every perturbed loss, or None (a result rebuilt without probes).
        ft_steps, ft_lr: the fine-tuning recipe (for the records).
        wall_s: wall time of the run in seconds (None when rebuilt from records).
    """

    seeds: np.ndarray
    steps: np.ndarray
    gammas: np.ndarray
    base_loss: np.ndarray
    weight_norm_sq: np.ndarray
    perturbed_loss: np.ndarray
    delta: np.ndarray
    delta_se: np.ndarray
    pretrain_loss: np.ndarray
    task_loss: np.ndarray
    draw_losses: np.ndarray | None = None
    ft_steps: int | None = None
    ft_lr: float | None = None
    wall_s: float | None = field(default=None, compare=False)

    @property
    def forgetting(self) -> np.ndarray:
        """[S, C] pre-training loss after fine-tuning minus before it."""
        return self.pretrain_loss - self.base_loss

    def gamma_index(self, gamma: float) -> int:
        """Index of `gamma` in `gammas` (matched to a relative 1e-9)."""
        hits = np.flatnonzero(np.isclose(self.gammas, gamma, rtol=1e-9, atol=0))
        if hits.size == 0:
            raise KeyError(f"gamma {gamma} not measured; have {self.gammas.tolist()}")
        return int(hits[0])

    def curve(self, name: str, gamma: float | None = None) -> np.ndarray:
        """A [S, C] curve over checkpoints: one of `CURVES`; `gamma` is required for the per-γ ones."""
        if name not in CURVES:
            raise KeyError(f"unknown curve {name!r}; choose from {', '.join(CURVES)}")
        values = getattr(self, name)
        if values.ndim == 3:
            if gamma is None:
                raise ValueError(f"curve {name!r} is per gamma: pass gamma= one of {self.gammas.tolist()}")
            return values[:, :, self.gamma_index(gamma)]
        if gamma is not None:
            raise ValueError(f"curve {name!r} does not depend on gamma")
        return values

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``: per (seed, step, γ) a ``perturbation`` row, per (seed, step) a
        ``finetune`` row (the ``metric`` column tells them apart).

        ``perturbation``: seed, step, gamma, draws, base_loss, perturbed_loss, delta, delta_se,
        weight_norm_sq. ``finetune`` (keys as in the ``finetune`` run kind): seed, step, lr and steps (of
        fine-tuning), base_pretrain_loss, pretrain_loss (after fine-tuning), task_loss, forgetting.
        """
        out: list[dict[str, Any]] = []
        draws = None if self.draw_losses is None else int(self.draw_losses.shape[-1])
        for s, seed in enumerate(self.seeds.tolist()):
            for c, step in enumerate(self.steps.tolist()):
                for g, gamma in enumerate(self.gammas.tolist()):
                    out.append(
                        {
                            "metric": "perturbation",
                            "seed": seed,
                            "step": step,
                            "gamma": gamma,
                            "draws": draws,
                            "base_loss": float(self.base_loss[s, c]),
                            "perturbed_loss": float(self.perturbed_loss[s, c, g]),
                            "delta": float(self.delta[s, c, g]),
                            "delta_se": _num(self.delta_se[s, c, g]),
                            "weight_norm_sq": float(self.weight_norm_sq[s, c]),
                        }
                    )
                out.append(
                    {
                        "metric": "finetune",
                        "seed": seed,
                        "step": step,
                        "lr": self.ft_lr,
                        "steps": self.ft_steps,
                        "base_pretrain_loss": float(self.base_loss[s, c]),
                        "pretrain_loss": float(self.pretrain_loss[s, c]),
                        "task_loss": float(self.task_loss[s, c]),
                        "forgetting": float(self.pretrain_loss[s, c] - self.base_loss[s, c]),
                    }
                )
        return out

    def draw_rows(self) -> list[dict[str, Any]]:
        """One ``probes.jsonl`` row per (seed, step, γ, draw): probe, seed, step, gamma, draw, loss."""
        if self.draw_losses is None:
            return []
        out = []
        for (s, c, g, k), value in np.ndenumerate(self.draw_losses):
            out.append(
                {
                    "probe": "gaussian_perturbation",
                    "seed": int(self.seeds[s]),
                    "step": int(self.steps[c]),
                    "gamma": float(self.gammas[g]),
                    "draw": k,
                    "loss": float(value),
                }
            )
        return out

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, Any]], draw_rows: Sequence[Mapping[str, Any]] = ()
    ) -> LinearTheoryResult:
        """Rebuild a result from `rows()` (and optionally `draw_rows()`), e.g. read back from a run dir.

        Rows of other kinds or metrics are ignored; a (seed, step[, γ]) cell with no row is NaN.
        """
        pert = [r for r in rows if r.get("metric") == "perturbation"]
        fine = [r for r in rows if r.get("metric") == "finetune"]
        if not pert or not fine:
            raise ValueError("need both perturbation and finetune rows")
        seeds = np.array(sorted({int(r["seed"]) for r in pert}))
        steps = np.array(sorted({int(r["step"]) for r in pert}))
        gammas = np.array(sorted({float(r["gamma"]) for r in pert}))
        si = {v: i for i, v in enumerate(seeds.tolist())}
        ci = {v: i for i, v in enumerate(steps.tolist())}
        gi = {v: i for i, v in enumerate(gammas.tolist())}
        S, C, G = len(seeds), len(steps), len(gammas)
        a = {
            k: np.full((S, C), np.nan) for k in ("base_loss", "weight_norm_sq", "pretrain_loss", "task_loss")
        }
        b = {k: np.full((S, C, G), np.nan) for k in ("perturbed_loss", "delta", "delta_se")}
        for r in pert:
            s, c, g = si[int(r["seed"])], ci[int(r["step"])], gi[float(r["gamma"])]
            a["base_loss"][s, c] = r["base_loss"]
            a["weight_norm_sq"][s, c] = r["weight_norm_sq"]
            for k in b:
                b[k][s, c, g] = np.nan if r.get(k) is None else r[k]
        ft_steps = ft_lr = None
        for r in fine:
            s, c = si[int(r["seed"])], ci[int(r["step"])]
            a["pretrain_loss"][s, c] = r["pretrain_loss"]
            a["task_loss"][s, c] = r["task_loss"]
            ft_steps, ft_lr = r.get("steps"), r.get("lr")
        draws = None
        if draw_rows:
            K = 1 + max(int(r["draw"]) for r in draw_rows)
            draws = np.full((S, C, G, K), np.nan)
            for r in draw_rows:
                draws[si[int(r["seed"])], ci[int(r["step"])], gi[float(r["gamma"])], int(r["draw"])] = r[
                    "loss"
                ]
        return cls(seeds, steps, gammas, **a, **b, draw_losses=draws, ft_steps=ft_steps, ft_lr=ft_lr)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def run_linear_theory(
    cfg: LinearTheoryConfig, progress: Callable[[int, int], None] | None = None
) -> LinearTheoryResult:
    """Pre-train every seed to each checkpoint and measure perturbation and fine-tuning there.

    All seeds advance together (batched GD), all draws of one γ are one batched product, and the
    fine-tuning of all seeds is one batched GD from cloned weights.

    Args:
        cfg: the experiment.
        progress: ``progress(steps_done, total_steps)`` after each checkpoint.

    Returns:
        The measurements (`LinearTheoryResult`), with ``wall_s`` set.

    Raises:
        RunFailed: a loss became non-finite (GD diverged).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: LinearTheoryConfig, progress: Callable[[int, int], None] | None) -> LinearTheoryResult:
    t0 = time.perf_counter()
    steps = cfg.checkpoint_steps()
    problems = [make_problem(cfg, seed) for seed in cfg.seeds]

    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(p, name) for p in problems])).to(DTYPE)

    target, ft_target = stack("target"), stack("ft_target")
    w1, w2 = stack("w1"), stack("w2")
    noise1, noise2 = stack("noise1"), stack("noise2")
    S, C, G, K = len(cfg.seeds), len(steps), len(cfg.gammas), cfg.draws

    base = np.empty((S, C))
    norm_sq = np.empty((S, C))
    draws = np.empty((S, C, G, K))
    ft_pre = np.empty((S, C))
    ft_task = np.empty((S, C))

    done = 0
    with torch.no_grad():
        for c, step in enumerate(steps):
            gd_(w1, w2, target, cfg.lr, step - done)
            done = step
            base[:, c] = loss(w1, w2, target).numpy()
            _check_finite(base[:, c], cfg.seeds, f"pre-training loss at step {step}")
            norm_sq[:, c] = (w1.square().sum(dim=(1, 2)) + w2.square().sum(dim=(1, 2))).numpy()
            draws[:, c] = perturbed_losses(w1, w2, target, noise1, noise2, cfg.gammas).numpy()
            f1, f2 = w1.clone(), w2.clone()
            gd_(f1, f2, ft_target, cfg.ft_lr, cfg.ft_steps)
            ft_pre[:, c] = loss(f1, f2, target).numpy()
            ft_task[:, c] = loss(f1, f2, ft_target).numpy()
            _check_finite(ft_task[:, c], cfg.seeds, f"fine-tuning loss from step {step}")
            if progress is not None:
                progress(step, steps[-1])

    per_draw = draws - base[:, :, None, None]
    delta_se = per_draw.std(axis=-1, ddof=1) / math.sqrt(K) if K > 1 else np.full((S, C, G), np.nan)
    return LinearTheoryResult(
        seeds=np.array(cfg.seeds),
        steps=np.array(steps),
        gammas=np.array(cfg.gammas, dtype=np.float64),
        base_loss=base,
        weight_norm_sq=norm_sq,
        perturbed_loss=draws.mean(axis=-1),
        delta=per_draw.mean(axis=-1),
        delta_se=delta_se,
        pretrain_loss=ft_pre,
        task_loss=ft_task,
        draw_losses=draws,
        ft_steps=cfg.ft_steps,
        ft_lr=cfg.ft_lr,
        wall_s=time.perf_counter() - t0,
    )


def _check_finite(values: np.ndarray, seeds: Sequence[int], what: str) -> None:
    bad = [seed for seed, v in zip(seeds, values) if not math.isfinite(v)]
    if bad:
        raise RunFailed(
            f"{what} is not finite for seed(s) {bad}: gradient descent diverged (lower the step size)"
        )


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


LINEAR_THEORY = RunKind(
    name="linear_theory",
    config_cls=LinearTheoryConfig,
    run=run,
    total_steps=total_steps,
    help="two-layer linear theory model: sensitivity and forgetting vs pre-training steps (seconds)",
)
