"""Sharpness: curvature of the held-out loss over a subset of the parameters (the registered probe).

The probe measures, over θ_S (the selected parameters; a filter: all trainable parameters by default, a
regex such as ``lora_`` or ``layers\\.0\\.``), with the loss and the quantities defined in
`overtrain.probes.hessian` and the estimators in `overtrain.probes.spectrum`:

- the top-k eigenvalues of the Hessian ``H = ∇²_S L`` (Lanczos by default, or power iteration), in
  nats/token per unit parameter², each with the residual of its Ritz pair;
- the Hutchinson trace ``tr(H_S)`` with its standard error, same units;
- the ε-ball (SAM) sharpness ``S(ρ) = max_{‖δ‖₂ ≤ ρ} L(θ + δ) − L(θ)`` (Foret et al. 2021), nats/token,
  with ρ in parameter units or (``rho_scale = "relative"``) a fraction of ``‖θ_S‖₂`` (Dinh et al. 2017:
  absolute curvature is not comparable across checkpoints whose weight norms differ);
- beside them L(θ), ``‖∇_S L‖₂`` and ``‖θ_S‖₂``.

**Cost.** Eigenvalues: ``iterations`` HVPs (Lanczos) or up to ``(top_k + 1) × iterations`` (power);
trace: ``hutchinson_samples`` HVPs; SAM: per ρ, ``ascent_steps`` gradients and one forward. An HVP costs
about two forward+backward passes over the batches.

**Precision.** Curvature is computed in the weights' dtype, which must be float32 or float64: bfloat16
rounds each product to ~3 significant digits, which swamps all but the largest eigenvalues and makes
Lanczos vectors lose orthogonality. The probe refuses bf16 autocast with a `ConfigError`, and measures a
model stored in float16/bfloat16 on a float32 copy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from overtrain.config import BaseConfig
from overtrain.core import perturb
from overtrain.core.perturb import NameRegex, ParamFilter
from overtrain.errors import ConfigError
from overtrain.probes.hessian import (
    Objective,
    SamPoint,
    curvature_mode,
    l2_norm,
    sam_point,
    select,
    top_eigen,
    trace_estimate,
)
from overtrain.probes.spectrum import EigenEstimate, TraceEstimate
from overtrain.registry import PROBES


class SharpnessConfig(BaseConfig):
    """Curvature of the held-out loss over a parameter subset: top Hessian eigenvalues, trace, ε-ball sharpness."""

    params: Literal["trainable", "all", "matrices"] = "trainable"
    """Which tensors form θ_S: ``trainable`` (requires_grad; on a PEFT model the LoRA factors), ``all``
    (frozen ones too), or ``matrices`` (every tensor with dim ≥ 2), then narrowed by include/exclude."""

    include: NameRegex = None
    """Regex on parameter names (``re.search``): only matching tensors are in θ_S, e.g. ``lora_`` or
    ``layers\\.0\\.``."""

    exclude: NameRegex = None
    """Regex on parameter names: matching tensors are left out of θ_S, e.g. ``embed|lm_head``."""

    top_k: int = Field(3, ge=0)
    """How many of the largest (algebraic) Hessian eigenvalues to report; 0 skips them."""

    method: Literal["lanczos", "power"] = "lanczos"
    """Eigenvalue method: ``lanczos`` (one Krylov run gives all top-k) or ``power`` (power iteration
    with deflation, one run per eigenvalue plus one for the spectral scale)."""

    iterations: int = Field(20, ge=1)
    """Lanczos: Krylov steps m (Hessian-vector products; capped at n). It keeps the m basis vectors:
    4·m·n bytes in float32, 5.6 GB at m = 20 for a 70M-parameter θ_S (narrow θ_S or lower m for big
    models). Power: the most iterations per eigenvalue."""

    tol: float = Field(1e-4, gt=0)
    """Power iteration only: an eigenvalue is done when its Rayleigh quotient moves by less than
    tol × the spectral radius between iterations."""

    hutchinson_samples: int = Field(16, ge=0)
    """Rademacher samples of the Hutchinson trace estimate (each one Hessian-vector product); 0 skips
    it, 1 gives no standard error."""

    rho: list[float] = [0.01, 0.05]
    """ε-ball radii ρ of the SAM sharpness (L2 norm over θ_S; see rho_scale); empty skips it; ρ = 0
    gives 0 exactly."""

    rho_scale: Literal["absolute", "relative"] = "absolute"
    """``absolute``: ρ is in parameter units. ``relative``: the radius is ρ·‖θ_S‖₂, comparable across
    checkpoints whose weight norms differ."""

    ascent_steps: int = Field(1, ge=1)
    """Gradient-ascent steps for the SAM maximisation: 1 is SAM's one-step δ = ρ g/‖g‖; K > 1 is
    projected normalised ascent with step 2ρ/K, keeping the best iterate."""

    eval_batches: int = Field(2, ge=1)
    """Held-out batches the loss is measured on (used by `SharpnessProbe.batches`)."""

    batch_size: int = Field(32, ge=1)
    """Sequences per held-out batch (used by `SharpnessProbe.batches`)."""

    split: str = "val"
    """Data split the held-out batches come from."""

    seed: int = Field(0, ge=0)
    """Seed of the random start vectors (Lanczos, power) and Rademacher samples: the same seed gives
    the same vectors for every checkpoint."""

    @field_validator("rho")
    @classmethod
    def _rho(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(r) or r < 0 for r in value):
            raise ValueError("every rho must be a finite number >= 0")
        if len(set(value)) != len(value):
            raise ValueError("rho values must be distinct")
        return value

    @model_validator(mode="after")
    def _enough_iterations(self) -> SharpnessConfig:
        if self.method == "lanczos" and self.iterations < self.top_k:
            raise ValueError(f"lanczos needs iterations >= top_k ({self.iterations} < {self.top_k})")
        return self

    def param_filter(self) -> ParamFilter:
        """The parameter filter these settings describe."""
        keep = perturb.param_filter(
            "matrices" if self.params == "matrices" else "all", self.include, self.exclude
        )
        if self.params == "trainable":
            return lambda name, p: p.requires_grad and keep(name, p)
        return keep


@dataclass(frozen=True)
class SharpnessResult:
    """What the sharpness probe measured (module docstring: definitions and units).

    Attributes:
        base_loss: L(θ), nats/token.
        tokens: predicted tokens the loss averages over.
        n_params: scalars in θ_S.
        tensors: names of the tensors in θ_S.
        grad_norm: ‖∇_S L‖₂ at θ.
        param_norm: ‖θ_S‖₂.
        eigen: the top eigenvalues (None when top_k = 0).
        trace: the Hutchinson trace (None when hutchinson_samples = 0).
        sam: one `SamPoint` per ρ, in config order.
        rho_scale: ``absolute`` or ``relative``.
        dtype: the dtype curvature was computed in (``float32`` or ``float64``).
        note: why the probe worked on a float32 copy of the model, else empty.
    """

    base_loss: float
    tokens: int
    n_params: int
    tensors: tuple[str, ...]
    grad_norm: float
    param_norm: float
    eigen: EigenEstimate | None
    trace: TraceEstimate | None
    sam: tuple[SamPoint, ...]
    rho_scale: str = "absolute"
    dtype: str = "float32"
    note: str = ""

    @property
    def lambda_max(self) -> float | None:
        return self.eigen.values[0] if self.eigen and self.eigen.values else None

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """Long-format rows for ``probes.jsonl``, one per quantity; every row has ``probe``
        (``sharpness``), ``quantity``, ``value``, ``base_loss``, then `extra`:

        - ``eigenvalue``: ``index`` (0 = λ_max), ``value``, ``residual``, ``method``;
        - ``trace``: ``value`` (mean), ``se``, ``samples``;
        - ``sam``: ``rho``, ``rho_scale``, ``radius``, ``value`` (S), ``loss`` (L(θ+δ)), ``ascent_steps``.
        """
        head = {"probe": "sharpness"}
        tail = {"base_loss": self.base_loss, **extra}
        rows = []
        if self.eigen is not None:
            for i, (lam, res) in enumerate(zip(self.eigen.values, self.eigen.residuals)):
                rows.append(
                    {
                        **head,
                        "quantity": "eigenvalue",
                        "index": i,
                        "value": lam,
                        "residual": res,
                        "method": self.eigen.method,
                        **tail,
                    }
                )
        if self.trace is not None:
            rows.append(
                {
                    **head,
                    "quantity": "trace",
                    "value": self.trace.mean,
                    "se": self.trace.se,
                    "samples": self.trace.samples,
                    **tail,
                }
            )
        for p in self.sam:
            rows.append(
                {
                    **head,
                    "quantity": "sam",
                    "rho": p.rho,
                    "rho_scale": self.rho_scale,
                    "radius": p.radius,
                    "value": p.value,
                    "loss": p.loss,
                    "ascent_steps": p.ascent_steps,
                    **tail,
                }
            )
        return rows

    def summary_rows(self, **extra: Any) -> list[dict[str, Any]]:
        """One row for ``evals.jsonl``: ``base_loss``, ``tokens``, ``n_params_selected``, ``grad_norm``,
        ``param_norm``, ``method``, ``lambda_max``, ``trace``, ``trace_se``, ``trace_samples``,
        ``rho_scale``, ``dtype`` (of the computation), and ``sam/<ρ>`` (S at each ρ, e.g. ``sam/0.05``);
        absent quantities are None."""
        row: dict[str, Any] = {
            "probe": "sharpness",
            "base_loss": self.base_loss,
            "tokens": self.tokens,
            "n_params_selected": self.n_params,
            "grad_norm": self.grad_norm,
            "param_norm": self.param_norm,
            "method": self.eigen.method if self.eigen else None,
            "lambda_max": self.lambda_max,
            "trace": self.trace.mean if self.trace else None,
            "trace_se": self.trace.se if self.trace else None,
            "trace_samples": self.trace.samples if self.trace else 0,
            "rho_scale": self.rho_scale,
            "dtype": self.dtype,
        }
        for p in self.sam:
            row[f"sam/{p.rho:g}"] = p.value
        return [{**row, **extra}]


def sharpness(
    model: nn.Module, batches: Sequence[torch.Tensor], cfg: SharpnessConfig | None = None
) -> SharpnessResult:
    """Every quantity of `cfg` on `batches` in one pass over a prepared model (module docstring)."""
    cfg = cfg or SharpnessConfig()
    selected = select(model, cfg.param_filter())
    with curvature_mode(model, selected):
        obj = Objective(model, batches, selected)
        base, grad = obj.loss_and_grad()
        param_norm = l2_norm(selected.values())
        eigen = (
            top_eigen(obj, cfg.top_k, cfg.method, cfg.iterations, cfg.tol, cfg.seed) if cfg.top_k else None
        )
        trace = trace_estimate(obj, cfg.hutchinson_samples, cfg.seed) if cfg.hutchinson_samples else None
        norm = param_norm if cfg.rho_scale == "relative" else 1.0
        sam = tuple(sam_point(obj, base, grad, r, r * norm, cfg.ascent_steps) for r in cfg.rho)
    return SharpnessResult(
        base,
        obj.tokens,
        obj.n,
        tuple(obj.names),
        float(grad.double().norm()),
        param_norm,
        eigen,
        trace,
        sam,
        cfg.rho_scale,
        str(obj.dtype).removeprefix("torch."),
    )


@PROBES.register("sharpness")
class SharpnessProbe:
    """Loss curvature over a parameter subset: top Hessian eigenvalues, Hutchinson trace, SAM ε-ball sharpness."""

    name = "sharpness"
    config_cls = SharpnessConfig
    float32_only = True
    """Run kinds pass no bf16 autocast to this probe (curvature in bf16 is rounding noise)."""

    def __init__(self, cfg: SharpnessConfig | None = None) -> None:
        self.cfg = cfg or SharpnessConfig()

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
        init_state: Any = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> SharpnessResult:
        """`sharpness` with this probe's config. `init_state` is unused (curvature needs no init scale).
        bf16 autocast is refused (module docstring, "Precision"); a model stored in float16/bfloat16 (the
        published Pythia checkpoints are float16) is measured on a float32 copy, noted in the result."""
        if autocast_dtype not in (None, torch.float32, torch.float64):
            raise ConfigError(
                f"the sharpness probe computes curvature in float32, not under {autocast_dtype} autocast: "
                "run it with dtype=float32"
            )
        low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)})
        if not low:
            return sharpness(model, batches, self.cfg)
        note = f"weights in {', '.join(low)}: curvature measured on a float32 copy"
        warnings.warn(f"sharpness probe: {note}", stacklevel=2)
        result = sharpness(copy.deepcopy(model).float(), batches, self.cfg)
        return dataclasses.replace(result, note=note)
