"""The held-out loss over a parameter subset θ_S: its gradient, Hessian-vector products, and the curvature
quantities computed from them (top eigenvalues, Hutchinson trace, ε-ball sharpness).

**The loss.** For held-out batches with N predicted tokens,
``L(θ) = (1/N) Σ_t −log p_θ(x_{t+1} | x_≤t)``, the mean next-token cross-entropy in nats/token (the
convention of `overtrain.core.evaluate.evaluate_loss` and the noise probe; each batch weighs by its
predicted tokens). θ_S is the selected subset of the parameters (a `ParamSpec`: all trainable parameters
by default), n scalars in all; everything below is over θ_S with the other parameters fixed.
``g = ∇_S L`` and ``H = ∇²_S L`` (n × n, symmetric). Parameter units are those of the weights themselves.

- Hessian-vector product (Pearlmutter 1994): ``Hv = ∇_S (gᵀv)``, by double backward, batch by batch
  (``Hv = Σ_b (N_b/N) H_b v``, so one batch's graph is alive at a time). About the cost of two
  forward+backward passes per batch.
- Eigenvalues ``λ_1 ≥ … ≥ λ_n`` of H, in nats/token per unit parameter²: along a unit eigenvector u,
  ``L(θ + εu) ≈ L(θ) + ε gᵀu + ½ ε² λ``. ``λ_max = λ_1`` is the largest *algebraic* eigenvalue; away
  from a minimum H has negative eigenvalues too. Estimated by Lanczos or power iteration on v ↦ Hv
  (`overtrain.probes.spectrum`).
- Hutchinson trace ``tr(H_S) = E[zᵀHz]`` for Rademacher z (`overtrain.probes.spectrum.hutchinson`).
  Units as the eigenvalues (it is their sum).
- ε-ball (SAM) sharpness, nats/token: ``S(ρ) = max_{‖δ‖₂ ≤ ρ} L(θ + δ) − L(θ)`` with δ on θ_S only. One
  step of ascent (Foret et al. 2021) takes ``δ = ρ g/‖g‖``, so ``S ≈ ρ‖g‖ + ½ρ² ĝᵀHĝ`` for small ρ: at a
  point that is not a minimum the first-order term dominates, so compare checkpoints at equal ρ and read
  `grad_norm` beside it. With ``ascent_steps = K > 1`` it is projected normalised gradient ascent
  (``δ ← Proj_ρ(δ + (2ρ/K) ĝ(θ+δ))``, which for K = 1 is the one-step δ) and the value is the largest loss
  over the iterates: each is a feasible δ, so every one is a lower bound of the maximum. ρ is an L2
  radius in parameter units, or — relative — a fraction of ``‖θ_S‖₂``, which makes checkpoints with
  different weight norms comparable (weight norms grow in training and normalisation layers make the loss
  scale-invariant in them, so absolute curvature is not comparable across checkpoints by itself; Dinh et
  al. 2017). The estimate may be negative when ρ is far beyond the region the gradient describes (the true
  maximum is ≥ 0: δ = 0 is feasible). Weights are restored bit for bit (`overtrain.core.perturb.perturbed`).

**Why eager attention.** The fused scaled-dot-product-attention kernels behind the ``sdpa`` default
have no double backward (on CPU: "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented"; the CUDA flash / memory-efficient kernels have none either), so an HVP through
them fails. For the duration of a call the model is switched to ``attn_implementation="eager"`` (plain
matmul + softmax, twice differentiable) and switched back afterwards; dropout is off (``eval()``) so the
loss is a fixed function, and only θ_S requires grad, so the backward passes skip the other weights'
gradients. The training flag, the ``requires_grad`` flags and ``.grad`` are left as they were.

**Precision.** Curvature is computed in the weights' dtype, which must be float32 or float64 (`select`
refuses float16/bfloat16 weights). `transformers` computes RMSNorm and the attention softmax in float32
even in a float64 model, so a float64 model's curvature is exact only to float32 rounding (the measured
agreement is in docs/probes.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from overtrain.core.perturb import ParamSpec, perturbed, select_parameters
from overtrain.models.attention import eager_attention
from overtrain.probes.spectrum import EigenEstimate, TraceEstimate, hutchinson, lanczos, power_iteration
from overtrain.seed import torch_generator


def trainable(name: str, param: torch.Tensor) -> bool:
    """The default selection: every parameter that requires grad (the LoRA factors of a PEFT model)."""
    return param.requires_grad


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
def curvature_mode(model: nn.Module, selected: Mapping[str, nn.Parameter]) -> Iterator[None]:
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


class Objective:
    """L(θ_S) on fixed batches with its gradient and Hessian-vector products, on flat vectors of θ_S
    (the selected tensors concatenated in order). Use inside `curvature_mode`."""

    def __init__(
        self, model: nn.Module, batches: Sequence[torch.Tensor], selected: Mapping[str, nn.Parameter]
    ):
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
        return torch.cat(
            [
                (t if t is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
                for t, p in zip(tensors, self.params)
            ]
        )

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


def hvp(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    vector_by_name: Mapping[str, torch.Tensor],
    *,
    params: ParamSpec = None,
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
    with curvature_mode(model, selected):
        obj = Objective(model, batches, selected)
        for name, p in selected.items():
            if tuple(vector_by_name[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"vector for {name} has shape {tuple(vector_by_name[name].shape)}, "
                    f"parameter {tuple(p.shape)}"
                )
        v = obj.flat([vector_by_name[name].to(obj.device) for name in obj.names])
        return dict(zip(obj.names, obj.unflat(obj.hvp(v))))


def hessian_eigenvalues(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    k: int = 1,
    *,
    params: ParamSpec = None,
    method: Literal["lanczos", "power"] = "lanczos",
    iterations: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
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
    with curvature_mode(model, selected):
        return top_eigen(Objective(model, batches, selected), k, method, iterations, tol, seed)


def hutchinson_trace(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    samples: int = 16,
    *,
    params: ParamSpec = None,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson estimate of tr(H_S) with `samples` Rademacher vectors (mean, standard error, n)."""
    if samples < 1:
        raise ValueError("samples must be >= 1")
    selected = select(model, params)
    with curvature_mode(model, selected):
        return trace_estimate(Objective(model, batches, selected), samples, seed)


def sam_sharpness(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    rho: float | Sequence[float],
    *,
    params: ParamSpec = None,
    ascent_steps: int = 1,
    relative: bool = False,
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
    with curvature_mode(model, selected):
        obj = Objective(model, batches, selected)
        base, grad = obj.loss_and_grad()
        norm = l2_norm(selected.values()) if relative else 1.0
        return [sam_point(obj, base, grad, r, r * norm, ascent_steps) for r in rhos]


def top_eigen(obj: Objective, k: int, method: str, iterations: int, tol: float, seed: int) -> EigenEstimate:
    gen = torch_generator(seed, "sharpness", method)
    kw = dict(iterations=iterations, generator=gen, dtype=obj.dtype, device=obj.device)
    if method == "lanczos":
        return lanczos(obj.hvp, obj.n, k, **kw)
    if method == "power":
        return power_iteration(obj.hvp, obj.n, k, tol=tol, **kw)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")


def trace_estimate(obj: Objective, samples: int, seed: int) -> TraceEstimate:
    gen = torch_generator(seed, "sharpness", "hutchinson")
    return hutchinson(obj.hvp, obj.n, samples, generator=gen, dtype=obj.dtype, device=obj.device)


def sam_point(
    obj: Objective, base: float, grad: torch.Tensor, rho: float, radius: float, steps: int
) -> SamPoint:
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


def l2_norm(params) -> float:
    return math.sqrt(math.fsum(float(p.detach().double().pow(2).sum()) for p in params))
