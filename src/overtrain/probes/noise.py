"""Noise sensitivity: how much the loss rises when Gaussian noise is added to the weights.

Estimator (Springer et al. 2025 §3). For a model θ, held-out batches with N predicted tokens, a noise
law with per-tensor stds ``s_t = γ · scale_t`` (`overtrain.core.perturb`) and K draws ``ε_1..ε_K``:

    L0      = L(θ)                               mean next-token cross-entropy, nats/token
    L_k     = L(θ + ε_k)                          k = 1..K, ε_k,t ~ N(0, s_t² I)
    Δ(γ)    = mean_k L_k − L0                     nats of mean token loss
    SE      = sd_k(L_k) / √K                      (sample sd, K − 1 degrees of freedom)
    CI      = Δ ± t_{(1+level)/2, K−1} · SE        Student t over the draws

L0 is computed on the same batches, so Δ and its CI describe the noise only: they are conditional on the
evaluation tokens (the data's own sampling error is not in the CI). The same standard-normal draws serve
every γ and both laws (common random numbers), so Δ is a smooth function of γ within one probe, and two
checkpoints probed with the same seed see the same noise directions. γ = 0 is not evaluated: θ + 0 = θ
exactly, so each of its draws has loss L0 and Δ = 0.

The losses of the noisy models come from `overtrain.probes.draw_batching.perturbed_losses`: several
noisy models per forward pass where that pays and applies, else the perturb-and-restore loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from overtrain.config import BaseConfig, NotInId
from overtrain.core.perturb import (
    InitState,
    NameRegex,
    init_scale,
    param_filter,
    relative,
    select_parameters,
)
from overtrain.probes.draw_batching import Perturbation, perturbed_losses
from overtrain.registry import PROBES

Law = Literal["init_scale", "relative"]


class NoiseSensitivityConfig(BaseConfig):
    """Gaussian-perturbation sensitivity Δ(γ) of a model, per noise law and scale."""

    gammas: list[float] = [0.5, 1.0, 2.0, 4.0]
    """Noise scales γ (per-tensor std = γ × the law's scale); γ = 0 is allowed and gives Δ = 0 exactly."""

    law: Literal["init_scale", "relative", "both"] = "both"
    """Noise law: ``init_scale`` (canonical: std = γ·σ_init of the tensor), ``relative`` (non-canonical,
    scale-invariant: std = γ·std of the tensor's current entries), or ``both`` side by side."""

    draws: int = Field(8, ge=1)
    """Noise draws K per (law, γ); the CI needs K ≥ 2. Draw k is the same whatever K is."""

    eval_batches: int = Field(8, ge=1)
    """Held-out batches the losses are measured on (used by `NoiseSensitivityProbe.batches`)."""

    batch_size: int = Field(256, ge=1)
    """Sequences per held-out batch (used by `NoiseSensitivityProbe.batches`)."""

    split: str = "val"
    """Data split the held-out batches come from."""

    seed: int = Field(0, ge=0)
    """Noise stream: the same seed gives the same noise directions for every checkpoint."""

    params: Literal["matrices", "all"] = "matrices"
    """Which tensors get noise: ``matrices`` (dim ≥ 2: projections, embeddings, LM head) or ``all``
    (norm weights and biases too; they start constant, so their init-scale noise is 0)."""

    include: NameRegex = None
    """Regex on parameter names (``re.search``): only matching tensors get noise, e.g. ``lora_``."""

    exclude: NameRegex = None
    """Regex on parameter names: matching tensors get no noise, e.g. ``embed|lm_head``."""

    level: float = Field(0.95, gt=0, lt=1)
    """Coverage of the t confidence interval of Δ over draws."""

    vectorize: bool | Literal["auto"] = NotInId("auto")
    """Draw batching (many noisy models per forward): ``auto`` uses it when it applies and its
    self-check passes, else the perturb-and-restore loop; ``true`` requires it; ``false`` is the loop."""

    tokens_per_forward: int | Literal["auto"] = NotInId("auto")
    """Token budget of one forward pass when draw batching (``auto``: 16384 on CPU, up to 2^18 on GPU)."""

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one gamma")
        if any(not math.isfinite(g) or g < 0 for g in value):
            raise ValueError("every gamma must be a finite number >= 0")
        if len(set(value)) != len(value):
            raise ValueError("gammas must be distinct")
        return value

    @field_validator("tokens_per_forward")
    @classmethod
    def _tokens(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("tokens_per_forward must be >= 1 or 'auto'")
        return value

    @property
    def laws(self) -> tuple[Law, ...]:
        return ("init_scale", "relative") if self.law == "both" else (self.law,)

    def param_filter(self):
        """The parameter filter these settings describe (`overtrain.core.perturb.param_filter`)."""
        return param_filter(self.params, self.include, self.exclude)


@dataclass(frozen=True)
class SensitivityCell:
    """Δ at one (law, γ): the per-draw losses and their summary, all in nats/token.

    Attributes:
        law: noise law name.
        gamma: noise scale γ.
        losses: perturbed loss of each draw k = 0..K−1.
        mean_loss: mean of `losses` (the absolute perturbed loss).
        delta: ``mean_loss − base_loss``.
        stderr: standard error of `delta` over draws (NaN for K = 1).
        ci_low: lower end of the t confidence interval of `delta` (NaN for K = 1).
        ci_high: upper end of it.
    """

    law: str
    gamma: float
    losses: tuple[float, ...]
    mean_loss: float
    delta: float
    stderr: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class NoiseSensitivityResult:
    """What the noise probe measured.

    Attributes:
        base_loss: L0, mean next-token cross-entropy of the unperturbed model, nats/token.
        tokens: predicted tokens the losses average over.
        cells: one `SensitivityCell` per (law, γ), laws outer, γ in config order.
        level: coverage of the CIs.
        method: ``draw-batched`` or ``loop`` (perturb-and-restore, one noisy model per forward).
        draws_per_forward: noisy models per forward pass (1 for ``loop``).
        note: why ``auto`` fell back to the loop, else empty.
        scales: per law, the per-tensor scale at γ = 1 (σ_init or std(θ)), ``{law: {name: scale}}``.
    """

    base_loss: float
    tokens: int
    cells: tuple[SensitivityCell, ...]
    level: float
    method: str
    draws_per_forward: int
    note: str = ""
    scales: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def cell(self, law: str, gamma: float) -> SensitivityCell:
        """The cell of `law` at `gamma` (matched to a relative 1e-9)."""
        for c in self.cells:
            if c.law == law and math.isclose(c.gamma, gamma, rel_tol=1e-9, abs_tol=0.0):
                return c
        have = sorted({(c.law, c.gamma) for c in self.cells})
        raise KeyError(f"no cell for law {law!r} at gamma {gamma}; have {have}")

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """Long-format rows for a run's ``probes.jsonl``: one per (law, γ, draw).

        Keys: ``probe`` (``noise``), ``law``, ``gamma``, ``draw``, ``loss`` (perturbed, nats/token),
        ``base_loss``, ``delta`` (= loss − base_loss), then `extra` (e.g. ``step``, ``tokens_seen``).
        """
        return [
            {
                "probe": "noise",
                "law": c.law,
                "gamma": c.gamma,
                "draw": k,
                "loss": loss,
                "base_loss": self.base_loss,
                "delta": loss - self.base_loss,
                **extra,
            }
            for c in self.cells
            for k, loss in enumerate(c.losses)
        ]

    def summary_rows(self, **extra: Any) -> list[dict[str, Any]]:
        """One row per (law, γ): mean perturbed loss, Δ, its standard error and CI (keys ``ci_low``,
        ``ci_high``, ``level``), and ``draws``."""
        return [
            {
                "probe": "noise",
                "law": c.law,
                "gamma": c.gamma,
                "draws": len(c.losses),
                "base_loss": self.base_loss,
                "mean_loss": c.mean_loss,
                "delta": c.delta,
                "stderr": c.stderr,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "level": self.level,
                **extra,
            }
            for c in self.cells
        ]


def summarize(
    law: str, gamma: float, losses: Sequence[float], base_loss: float, level: float
) -> SensitivityCell:
    """Mean, Δ, standard error and t confidence interval of per-draw losses (see the module docstring)."""
    k = len(losses)
    # Mean as an offset from the first draw: exactly that value when every draw has it (γ = 0 gives
    # Δ = 0 exactly, which fsum(losses) / k does not guarantee).
    mean = losses[0] + math.fsum(x - losses[0] for x in losses) / k
    delta = mean - base_loss
    if k < 2:
        return SensitivityCell(law, gamma, tuple(losses), mean, delta, math.nan, math.nan, math.nan)
    var = math.fsum((x - mean) ** 2 for x in losses) / (k - 1)
    se = math.sqrt(var / k)
    from scipy.stats import t as student_t  # scipy comes with scikit-learn

    half = float(student_t.ppf((1 + level) / 2, k - 1)) * se
    return SensitivityCell(law, gamma, tuple(losses), mean, delta, se, delta - half, delta + half)


def noise_sensitivity(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    cfg: NoiseSensitivityConfig | None = None,
    *,
    init_state: InitState | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> NoiseSensitivityResult:
    """Measure Δ(γ) for each law and γ of `cfg` on `batches` (estimator in the module docstring).

    Args:
        model: a causal LM (`transformers`, optionally PEFT-wrapped) on its device; left unchanged.
        batches: held-out int64 token batches ``(B, T)``.
        cfg: probe settings (defaults if None).
        init_state: the model's initialisation for the ``init_scale`` law (a state dict, a model, or a
            checkpoint directory such as a run's ``ckpt/step_00000000``); None: the config's
            ``initializer_range`` for matrices.
        autocast_dtype: evaluate under autocast to this dtype (None: the parameters' dtype).

    Returns:
        A `NoiseSensitivityResult`; ``rows()`` gives the ``probes.jsonl`` lines.
    """
    cfg = cfg or NoiseSensitivityConfig()
    keep = cfg.param_filter()
    if not select_parameters(model, keep):
        raise ValueError("the parameter filter selects no tensor of the model")
    scales: dict[str, dict[str, float]] = {}
    for law in cfg.laws:
        if law == "init_scale":
            scales[law] = init_scale(model, 1.0, init_state=init_state, params=keep)
        else:
            scales[law] = relative(model, 1.0, params=keep)
    # Draw outer, then law and γ: consecutive noisy models share a standard-normal draw.
    cells = [(law, g) for law in cfg.laws for g in cfg.gammas]
    work = [
        Perturbation(k, {n: g * s for n, s in scales[law].items()})
        for k in range(cfg.draws)
        for law, g in cells
    ]
    res = perturbed_losses(
        model,
        batches,
        work,
        seed=cfg.seed,
        vectorize=cfg.vectorize,
        tokens_per_forward=cfg.tokens_per_forward,
        autocast_dtype=autocast_dtype,
    )
    n = len(cells)
    out = []
    for c, (law, g) in enumerate(cells):
        losses = [res.losses[k * n + c] for k in range(cfg.draws)]
        out.append(summarize(law, g, losses, res.base_loss, cfg.level))
    return NoiseSensitivityResult(
        res.base_loss, res.tokens, tuple(out), cfg.level, res.method, res.draws_per_forward, res.note, scales
    )


@PROBES.register("noise")
class NoiseSensitivityProbe:
    """Gaussian-perturbation sensitivity Δ(γ) = E[L(θ + ε)] − L(θ), nats/token, init-scale and relative noise."""

    name = "noise"
    config_cls = NoiseSensitivityConfig

    def __init__(self, cfg: NoiseSensitivityConfig | None = None) -> None:
        self.cfg = cfg or NoiseSensitivityConfig()

    def batches(self, source, seq_len: int) -> list[torch.Tensor]:
        """The held-out batches of the config from a `TokenSource`: ``eval_batches`` × ``(batch_size, seq_len)``."""
        return [
            source.batch(self.cfg.split, i, self.cfg.batch_size, seq_len)
            for i in range(self.cfg.eval_batches)
        ]

    def run(
        self,
        model: nn.Module,
        batches: Sequence[torch.Tensor],
        *,
        init_state: InitState | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> NoiseSensitivityResult:
        """`noise_sensitivity` with this probe's config."""
        return noise_sensitivity(
            model, batches, self.cfg, init_state=init_state, autocast_dtype=autocast_dtype
        )
