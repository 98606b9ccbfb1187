"""Sharpness: curvature of the held-out loss over a subset of the parameters.

**The loss.** For held-out batches with N predicted tokens,
``L(θ) = (1/N) Σ_t −log p_θ(x_{t+1} | x_≤t)``, the mean next-token cross-entropy in nats/token (the
convention of `overtrain.training.loop.evaluate_loss` and the noise probe; each batch weighs by its
predicted tokens). θ_S is the selected subset of the parameters (a filter: all trainable parameters by
default, a regex such as ``lora_`` or ``layers\\.0\\.``), n scalars in all; everything below is over θ_S
with the other parameters fixed. ``g = ∇_S L`` and ``H = ∇²_S L`` (n × n, symmetric).

**Quantities and units** (parameter units are those of the weights themselves):

- Hessian-vector product (Pearlmutter 1994): ``Hv = ∇_S (gᵀv)``, by double backward, batch by batch
  (``Hv = Σ_b (N_b/N) H_b v``, so one batch's graph is alive at a time). About the cost of two
  forward+backward passes per batch.
- Eigenvalues ``λ_1 ≥ … ≥ λ_n`` of H, in nats/token per unit parameter²: along a unit eigenvector u,
  ``L(θ + εu) ≈ L(θ) + ε gᵀu + ½ ε² λ``. ``λ_max = λ_1`` is the largest *algebraic* eigenvalue; away
  from a minimum H has negative eigenvalues too. Two methods:
  *Lanczos* — m steps from a seeded Gaussian start with full reorthogonalisation (twice, so the basis
  stays orthogonal to working precision and no ghost copies of λ_1 appear); the Ritz values are the
  eigenvalues of the m × m tridiagonal T (``torch.linalg.eigh`` in float64), and ``β_m |s_{m,i}|``
  (the last component of T's eigenvector times the next off-diagonal) is the residual ``‖Hy − θy‖`` of
  each Ritz pair, reported with it. On breakdown (β ≈ 0: an invariant subspace, e.g. H = 0) it restarts from a new
  random vector orthogonal to the basis. *Power iteration* — with projection deflation (each iterate is
  kept orthogonal to the eigenvectors already found). Plain power iteration finds the eigenvalue of
  largest *magnitude*; to return the top-k in algebraic order it runs on ``H + cI`` with c the spectral
  radius estimated by a first, unshifted run (``‖Hv‖`` of its last unit iterate), which makes the
  operator positive semi-definite with the same eigenvectors (the first run's pair is kept as λ_1 when
  it is ≥ 0 and its residual is small). The residual ``‖Hv − λv‖`` of the last iterate is reported.
  Lanczos is the default: it needs far fewer products for the same accuracy.
- Hutchinson trace: ``tr(H_S) = E[zᵀHz]`` for Rademacher z (entries ±1): unbiased, with variance
  ``2 Σ_{i≠j} H_ij²``. The estimate is the mean of n samples, its standard error the sample sd / √n. Units
  as the eigenvalues (it is their sum).
- ε-ball (SAM) sharpness, nats/token: ``S(ρ) = max_{‖δ‖₂ ≤ ρ} L(θ + δ) − L(θ)`` with δ on θ_S only. One
  step of ascent (Foret et al. 2021) takes ``δ = ρ g/‖g‖``, so ``S ≈ ρ‖g‖ + ½ρ² ĝᵀHĝ`` for small ρ: at a
  point that is not a minimum the first-order term dominates, so compare checkpoints at equal ρ and read
  `grad_norm` beside it. With ``ascent_steps = K > 1`` it is projected normalised gradient ascent
  (``δ ← Proj_ρ(δ + (2ρ/K) ĝ(θ+δ))``, which for K = 1 is the one-step δ) and the value is the largest loss
  over the iterates: each is a feasible δ, so every one is a lower bound of the maximum. ρ is an L2
  radius in parameter units, or — ``rho_scale = "relative"`` — a fraction of ``‖θ_S‖₂``, which makes
  checkpoints with different weight norms comparable (weight norms grow in training and normalisation
  layers make the loss scale-invariant in them, so absolute curvature is not comparable across
  checkpoints by itself; Dinh et al. 2017). The estimate may be negative when ρ is far beyond the region
  the gradient describes (the true maximum is ≥ 0: δ = 0 is feasible). Weights are restored bit for bit
  (`overtrain.core.perturb.perturbed`).

**Why eager attention.** The fused scaled-dot-product-attention kernels behind the ``sdpa`` default
have no double backward (on CPU: "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented"; the CUDA flash / memory-efficient kernels have none either), so an HVP through
them fails. For the duration of a call the model is switched to ``attn_implementation="eager"`` (plain
matmul + softmax, twice differentiable) and switched back afterwards; dropout is off (``eval()``) so the
loss is a fixed function, and only θ_S requires grad, so the backward passes skip the other weights'
gradients. The training flag, the ``requires_grad`` flags and ``.grad`` are left as they were.

**Cost.** Eigenvalues: ``iterations`` HVPs (Lanczos) or up to ``(top_k + 1) × iterations`` (power);
trace: ``hutchinson_samples`` HVPs; SAM: per ρ, ``ascent_steps`` gradients and one forward. An HVP costs
about two forward+backward passes over the batches.

**Precision.** Curvature is computed in the weights' dtype, which must be float32 or float64: bfloat16
rounds each product to ~3 significant digits, which swamps all but the largest eigenvalues and makes
Lanczos vectors lose orthogonality. The registered probe refuses bf16 autocast with a `ConfigError`.
Note that `transformers` computes RMSNorm and the attention softmax in float32 even in a float64 model,
so a float64 model's curvature is exact only to float32 rounding (relative ~1e-6 on HVPs, measured in
tests/probes/test_sharpness.py).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from overtrain.config import BaseConfig
from overtrain.core import perturb
from overtrain.core.perturb import NameRegex, ParamFilter, ParamSpec, perturbed, select_parameters
from overtrain.errors import ConfigError
from overtrain.models.attention import eager_attention
from overtrain.registry import PROBES
from overtrain.seed import torch_generator

MatVec = Callable[[torch.Tensor], torch.Tensor]
"""A symmetric linear operator on flat vectors (here: v ↦ Hv)."""


def trainable(name: str, param: torch.Tensor) -> bool:
    """The default selection: every parameter that requires grad (the LoRA factors of a PEFT model)."""
    return param.requires_grad


# --- config -------------------------------------------------------------------------------------------


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
        keep = perturb.param_filter("matrices" if self.params == "matrices" else "all", self.include, self.exclude)
        if self.params == "trainable":
            return lambda name, p: p.requires_grad and keep(name, p)
        return keep


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenEstimate:
    """Top Hessian eigenvalues, largest first, nats/token per unit parameter².

    Attributes:
        values: λ_1 ≥ λ_2 ≥ … (at most k; fewer when n < k).
        residuals: per value, ``‖Hy − λy‖`` of its (Ritz) vector: the eigenvalue is within this of a
            true eigenvalue of H.
        method: ``lanczos`` or ``power``.
        matvecs: Hessian-vector products spent.
    """

    values: tuple[float, ...]
    residuals: tuple[float, ...]
    method: str
    matvecs: int


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr(H_S), nats/token per unit parameter².

    Attributes:
        mean: the estimate (mean of the samples zᵀHz).
        se: sample sd / √samples (NaN for one sample).
        samples: number of Rademacher samples.
        values: each sample's zᵀHz.
    """

    mean: float
    se: float
    samples: int
    values: tuple[float, ...]


@dataclass(frozen=True)
class SamPoint:
    """ε-ball sharpness at one radius.

    Attributes:
        rho: the configured ρ.
        radius: the L2 radius used, in parameter units (ρ, or ρ·‖θ_S‖ when relative).
        loss: L(θ + δ), nats/token.
        value: S = L(θ + δ) − L(θ), nats/token.
        ascent_steps: gradient-ascent steps taken.
    """

    rho: float
    radius: float
    loss: float
    value: float
    ascent_steps: int


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
                rows.append({**head, "quantity": "eigenvalue", "index": i, "value": lam, "residual": res,
                             "method": self.eigen.method, **tail})
        if self.trace is not None:
            rows.append({**head, "quantity": "trace", "value": self.trace.mean, "se": self.trace.se,
                         "samples": self.trace.samples, **tail})
        for p in self.sam:
            rows.append({**head, "quantity": "sam", "rho": p.rho, "rho_scale": self.rho_scale,
                         "radius": p.radius, "value": p.value, "loss": p.loss,
                         "ascent_steps": p.ascent_steps, **tail})
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


# --- the loss over θ_S --------------------------------------------------------------------------------


def select(model: nn.Module, params: ParamSpec = trainable) -> dict[str, nn.Parameter]:
    """θ_S: the parameters the filter keeps (`ParamSpec`; default: those that require grad), checked
    for a single device and a dtype curvature can be computed in."""
    selected = select_parameters(model, trainable if params is None else params)
    if not selected:
        raise ValueError("the parameter filter selects no tensor of the model")
    if len({p.device for p in selected.values()}) > 1:
        raise ValueError("the selected parameters live on more than one device")
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)})
    if low:
        raise ValueError(
            f"curvature needs float32 or float64 weights, the model has {', '.join(low)}: load it in float32"
        )
    return selected


@contextlib.contextmanager
def _curvature_mode(model: nn.Module, selected: Mapping[str, nn.Parameter]) -> Iterator[None]:
    """eval(), eager attention, and requires_grad on θ_S only (so backward skips the other weights'
    gradients); every flag is put back on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in selected.values():
            p.requires_grad_(True)
        model.eval()
        with eager_attention(model):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


class _Objective:
    """L(θ_S) on fixed batches with its gradient and Hessian-vector products, on flat vectors of θ_S
    (the selected tensors concatenated in order). Use inside `_curvature_mode`."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], selected: Mapping[str, nn.Parameter]):
        self.model = model
        self.names = list(selected)
        self.params = list(selected.values())
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype
        self.n = sum(p.numel() for p in self.params)
        self.batches = [x.to(self.device) for x in batches]
        if not self.batches:
            raise ValueError("no evaluation batches")
        self.tokens = sum(x[:, 1:].numel() for x in self.batches)
        if self.tokens == 0:
            raise ValueError("the evaluation batches predict no token: sequences need at least 2 tokens")

    def _batch_loss(self, x: torch.Tensor) -> torch.Tensor:
        """This batch's share of L: its summed next-token cross-entropy over all N tokens."""
        logits = self.model(input_ids=x, use_cache=False).logits[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        return ce / self.tokens

    def flat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-tensor values (None: zeros, a tensor the loss does not depend on)."""
        return torch.cat([
            (t if t is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
            for t, p in zip(tensors, self.params)
        ])

    def unflat(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view_as(p) for c, p in zip(v.split([p.numel() for p in self.params]), self.params)]

    def loss(self) -> float:
        with torch.no_grad():
            return float(sum(self._batch_loss(x).double() for x in self.batches))

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        total, grad = 0.0, torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x in self.batches:
            loss = self._batch_loss(x)
            grad += self.flat(_grad(loss, self.params))
            total += float(loss.detach().double())
        return total, grad

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hv by double backward, one batch's graph at a time."""
        vs = self.unflat(v.to(self.dtype))
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for x in self.batches:
            grads = _grad(self._batch_loss(x), self.params, create_graph=True)
            dot = _sum((g * u).sum() for g, u in zip(grads, vs) if g is not None)
            out += self.flat(_grad(dot, self.params))
        return out


def _grad(output: torch.Tensor | None, inputs: list[nn.Parameter], create_graph: bool = False):
    """d output / d inputs, None for an input the output does not depend on (and for all of them when
    nothing in θ_S reaches the output, which autograd would refuse)."""
    if output is None or not output.requires_grad:
        return [None] * len(inputs)
    return torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True)


def _sum(values: Iterator[torch.Tensor]) -> torch.Tensor | None:
    """Sum of tensors; None for none (unlike `sum`, whose 0 start hides "nothing depends on θ_S")."""
    total = None
    for v in values:
        total = v if total is None else total + v
    return total


# --- linear algebra on a matvec ----------------------------------------------------------------------


def lanczos(
    matvec: MatVec, n: int, k: int, *, iterations: int, generator: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Top-k eigenvalues (algebraic) of a symmetric operator by m-step Lanczos with full
    reorthogonalisation; see the module docstring.

    Args:
        matvec: v ↦ Av for flat vectors of length n.
        n: dimension.
        k: eigenvalues wanted (fewer if n < k).
        iterations: Krylov steps m (capped at n; m = n gives the whole spectrum, to rounding).
        generator: CPU generator of the start (and restart) vectors.
        dtype, device: of the Krylov vectors.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    m = min(iterations, n)
    eps = torch.finfo(dtype).eps
    basis = torch.zeros(m, n, dtype=dtype, device=device)
    alphas, betas = [], []
    q = _unit(torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype))
    beta, scale = 0.0, 0.0
    for j in range(m):
        basis[j] = q
        w = matvec(q)
        alphas.append(float(torch.dot(q, w)))
        w = _orthogonalise(w, basis[: j + 1])  # replaces the three-term subtraction, and keeps Q orthogonal
        beta = float(w.norm())
        scale = max(scale, abs(alphas[-1]), beta)
        if j == m - 1:
            break
        if beta <= 10 * eps * scale:  # invariant subspace: its Ritz values are exact; restart elsewhere
            w = _orthogonalise(torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype),
                               basis[: j + 1])
            betas.append(0.0)
        else:
            betas.append(beta)
        q = _unit(w)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    order = torch.argsort(theta, descending=True)[: min(k, m)]
    residuals = (beta * s[-1, order].abs()).tolist()  # ‖Ay − θy‖ = β_m |e_mᵀ s| for Ritz pair (θ, y)
    return EigenEstimate(tuple(theta[order].tolist()), tuple(residuals), "lanczos", m)


def power_iteration(
    matvec: MatVec, n: int, k: int, *, iterations: int, tol: float, generator: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Top-k eigenvalues (algebraic) of a symmetric operator by power iteration with projection
    deflation on the shifted operator ``A + cI``, c the spectral radius estimate (module docstring).

    Args: as `lanczos`; `iterations` is the most per eigenvalue, `tol` the stopping change of the
    Rayleigh quotient relative to the spectral radius.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    k = min(k, n)
    count = [0]

    def counted(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return matvec(v)

    def start() -> torch.Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype)

    dominant = _power(counted, start(), [], 0.0, iterations, tol)
    # ‖Av‖ of the unit iterate rises monotonically to the spectral radius whatever the signs (and is
    # ≥ |vᵀAv|); the top of A + cI is A's algebraic top once c ≥ (|λ_min| − λ_max)/2.
    shift = dominant.norm
    found: list[_PowerRun] = []
    # A converged dominant pair with λ ≥ 0 is the top one. The residual test, not the Rayleigh quotient's
    # standstill, decides: with eigenvalues ±a the quotient stalls anywhere in [−a, a].
    if k and dominant.value >= 0 and dominant.residual <= math.sqrt(tol) * max(shift, abs(dominant.value)):
        found.append(dominant)
    while len(found) < k:
        found.append(_power(counted, start(), [f.vector for f in found], shift, iterations, tol))
    found.sort(key=lambda f: -f.value)  # deflated runs on a PSD operator come out in order, up to ties
    return EigenEstimate(tuple(f.value for f in found), tuple(f.residual for f in found), "power", count[0])


@dataclass(frozen=True)
class _PowerRun:
    value: float  # Rayleigh quotient vᵀAv of the last iterate multiplied
    vector: torch.Tensor  # the next iterate: the best eigenvector estimate
    residual: float  # ‖Av − λv‖ of that last iterate
    norm: float  # ‖(A + shift·I) v‖ on the deflated subspace


def _power(
    matvec: MatVec, v: torch.Tensor, found: list[torch.Tensor], shift: float, iterations: int, tol: float
) -> _PowerRun:
    """Largest eigenvalue of (A + shift·I) on the complement of `found`, minus the shift."""
    basis = torch.stack(found) if found else None
    v = _unit(_orthogonalise(v, basis))
    mu = None
    for _ in range(iterations):
        shifted = matvec(v) + shift * v
        new = float(torch.dot(v, shifted))
        residual = float((shifted - new * v).norm())
        w = _orthogonalise(shifted, basis)
        norm = float(w.norm())
        if norm == 0.0:  # A + shift·I vanishes on this subspace (A = 0 and no shift): v is exact
            return _PowerRun(new - shift, v, residual, 0.0)
        done = mu is not None and abs(new - mu) <= tol * max(abs(new), shift)
        mu, v = new, w / norm
        if done:
            return _PowerRun(mu - shift, v, residual, norm)
    return _PowerRun(mu - shift, v, residual, norm)


def hutchinson(matvec: MatVec, n: int, samples: int, *, generator: torch.Generator,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> TraceEstimate:
    """tr(A) ≈ mean of zᵀAz over Rademacher z; sample i is the same whatever `samples` is."""
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(device, dtype)
        values.append(float(torch.dot(z, matvec(z))))
    mean = math.fsum(values) / samples
    if samples < 2:
        return TraceEstimate(mean, math.nan, samples, tuple(values))
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (samples - 1))
    return TraceEstimate(mean, sd / math.sqrt(samples), samples, tuple(values))


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """w minus its projection on the rows of `basis` (orthonormal), twice: one classical Gram-Schmidt
    pass loses orthogonality in floating point, two are enough (Kahan-Parlett)."""
    if basis is None or basis.numel() == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


# --- plain functions on a model -----------------------------------------------------------------------


def hvp(
    model: nn.Module, batches: Sequence[torch.Tensor], vector_by_name: Mapping[str, torch.Tensor],
    *, params: ParamSpec = None,
) -> dict[str, torch.Tensor]:
    """Hessian-vector product ``Hv`` of the mean next-token loss over the parameters named in
    `vector_by_name` (Pearlmutter; module docstring).

    Args:
        model: a causal LM (`transformers`, optionally PEFT-wrapped), float32/float64; left unchanged.
        batches: int64 token batches ``(B, T)``.
        vector_by_name: ``{parameter name: v}`` with v of the parameter's shape; these tensors are θ_S.
        params: optional filter; it must select exactly the tensors of `vector_by_name`.

    Returns:
        ``{name: (Hv) restricted to that tensor}``, nats/token per unit parameter² × units of v.
    """
    names = list(vector_by_name)
    selected = select(model, params if params is not None else (lambda name, p: name in vector_by_name))
    if sorted(selected) != sorted(names):
        raise ValueError(f"vector names {sorted(names)} differ from the selected tensors {sorted(selected)}")
    with _curvature_mode(model, selected):
        obj = _Objective(model, batches, selected)
        for name, p in selected.items():
            if tuple(vector_by_name[name].shape) != tuple(p.shape):
                raise ValueError(f"vector for {name} has shape {tuple(vector_by_name[name].shape)}, "
                                 f"parameter {tuple(p.shape)}")
        v = obj.flat([vector_by_name[name].to(obj.device) for name in obj.names])
        return dict(zip(obj.names, obj.unflat(obj.hvp(v))))


def hessian_eigenvalues(
    model: nn.Module, batches: Sequence[torch.Tensor], k: int = 1, *, params: ParamSpec = None,
    method: Literal["lanczos", "power"] = "lanczos", iterations: int = 20, tol: float = 1e-4, seed: int = 0,
) -> EigenEstimate:
    """The k largest (algebraic) eigenvalues of H_S, largest first (module docstring).

    Args:
        params: θ_S (`ParamSpec`; default every parameter that requires grad).
        method: ``lanczos`` or ``power``.
        iterations: Lanczos steps, or the most power iterations per eigenvalue.
        tol: power iteration's stopping tolerance.
        seed: start vectors (`overtrain.seed.torch_generator`).
    """
    selected = select(model, params)
    with _curvature_mode(model, selected):
        return _eigen(_Objective(model, batches, selected), k, method, iterations, tol, seed)


def hutchinson_trace(
    model: nn.Module, batches: Sequence[torch.Tensor], samples: int = 16, *, params: ParamSpec = None,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson estimate of tr(H_S) with `samples` Rademacher vectors (mean, standard error, n)."""
    if samples < 1:
        raise ValueError("samples must be >= 1")
    selected = select(model, params)
    with _curvature_mode(model, selected):
        return _trace(_Objective(model, batches, selected), samples, seed)


def sam_sharpness(
    model: nn.Module, batches: Sequence[torch.Tensor], rho: float | Sequence[float], *,
    params: ParamSpec = None, ascent_steps: int = 1, relative: bool = False,
) -> list[SamPoint]:
    """ε-ball sharpness S(ρ) = max_{‖δ‖≤ρ} L(θ+δ) − L(θ), δ on θ_S, by normalised gradient ascent
    (module docstring); the weights are restored bit for bit, also after an exception.

    Args:
        rho: one radius or several (≥ 0).
        params: θ_S (`ParamSpec`; default every parameter that requires grad).
        ascent_steps: 1 for SAM's one-step δ = ρ g/‖g‖; more for projected ascent.
        relative: radius = ρ·‖θ_S‖₂ instead of ρ.
    """
    rhos = [float(rho)] if isinstance(rho, (int, float)) else [float(r) for r in rho]
    if any(not math.isfinite(r) or r < 0 for r in rhos) or ascent_steps < 1:
        raise ValueError("rho must be finite and >= 0, ascent_steps >= 1")
    selected = select(model, params)
    with _curvature_mode(model, selected):
        obj = _Objective(model, batches, selected)
        base, grad = obj.loss_and_grad()
        norm = _norm(selected.values()) if relative else 1.0
        return [_sam(obj, base, grad, r, r * norm, ascent_steps) for r in rhos]


def sharpness(
    model: nn.Module, batches: Sequence[torch.Tensor], cfg: SharpnessConfig | None = None
) -> SharpnessResult:
    """Every quantity of `cfg` on `batches` in one pass over a prepared model (module docstring)."""
    cfg = cfg or SharpnessConfig()
    selected = select(model, cfg.param_filter())
    with _curvature_mode(model, selected):
        obj = _Objective(model, batches, selected)
        base, grad = obj.loss_and_grad()
        param_norm = _norm(selected.values())
        eigen = _eigen(obj, cfg.top_k, cfg.method, cfg.iterations, cfg.tol, cfg.seed) if cfg.top_k else None
        trace = _trace(obj, cfg.hutchinson_samples, cfg.seed) if cfg.hutchinson_samples else None
        norm = param_norm if cfg.rho_scale == "relative" else 1.0
        sam = tuple(_sam(obj, base, grad, r, r * norm, cfg.ascent_steps) for r in cfg.rho)
    return SharpnessResult(base, obj.tokens, obj.n, tuple(obj.names), float(grad.double().norm()),
                           param_norm, eigen, trace, sam, cfg.rho_scale, str(obj.dtype).removeprefix("torch."))


def _eigen(obj: _Objective, k: int, method: str, iterations: int, tol: float, seed: int) -> EigenEstimate:
    gen = torch_generator(seed, "sharpness", method)
    kw = dict(iterations=iterations, generator=gen, dtype=obj.dtype, device=obj.device)
    if method == "lanczos":
        return lanczos(obj.hvp, obj.n, k, **kw)
    if method == "power":
        return power_iteration(obj.hvp, obj.n, k, tol=tol, **kw)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")


def _trace(obj: _Objective, samples: int, seed: int) -> TraceEstimate:
    gen = torch_generator(seed, "sharpness", "hutchinson")
    return hutchinson(obj.hvp, obj.n, samples, generator=gen, dtype=obj.dtype, device=obj.device)


def _sam(obj: _Objective, base: float, grad: torch.Tensor, rho: float, radius: float, steps: int) -> SamPoint:
    """S at one radius: K normalised ascent steps of size 2·radius/K projected on the ball; the best
    loss over the iterates (K = 1: δ = radius·g/‖g‖ exactly)."""
    if radius == 0 or float(grad.norm()) == 0:  # δ = 0 (no ball, or a stationary point of θ_S)
        return SamPoint(rho, radius, base, 0.0, steps)
    delta = torch.zeros_like(grad)
    g, best = grad, -math.inf
    for step in range(steps):
        delta = delta + (2 * radius / steps) * g / g.norm()
        delta = delta * min(1.0, radius / float(delta.norm()))  # projection on the ball
        with perturbed(obj.model, dict(zip(obj.names, obj.unflat(delta)))):
            if step < steps - 1:
                loss, g = obj.loss_and_grad()  # the next direction, and this iterate's loss for free
                if float(g.norm()) == 0:
                    best = max(best, loss)
                    break
            else:
                loss = obj.loss()
        best = max(best, loss)
    return SamPoint(rho, radius, best, best - base, steps)


def _norm(params) -> float:
    return math.sqrt(math.fsum(float(p.detach().double().pow(2).sum()) for p in params))


# --- the probe ----------------------------------------------------------------------------------------


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
            source.batch(self.cfg.split, i, self.cfg.batch_size, seq_len) for i in range(self.cfg.eval_batches)
        ]

    def run(
        self, model: nn.Module, batches: Sequence[torch.Tensor], *, init_state: Any = None,
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
