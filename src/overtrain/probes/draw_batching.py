"""Losses of a model's noisy copies: the perturb-and-restore loop, and draw batching (many noisy models in
one forward pass). Used by the noise probe (`overtrain.probes.noise`) and the early-warning monitor.

**Vectorised evaluation (draw batching).** Many noisy models share one forward pass: the input batch is
repeated once per noisy model along the batch dimension, and, for the duration of the pass, every
`nn.Linear` / `nn.Embedding` whose weight (or bias) is perturbed computes each block of rows with its own
noisy copy (``torch.bmm`` on weights stacked ``(k, out, in)``; an embedding lookup in a ``(k·V, d)`` table
with row offsets). Everything else — attention, norms, RoPE — is per sequence already, so the model's
own code runs unchanged on ``k × B`` sequences. This covers the matrices of every `transformers`
Llama / OLMo-2 / GPT-NeoX model and PEFT-LoRA layers (their factors are `nn.Linear`), with ``sdpa`` or
eager attention. Before use it is checked against per-draw forwards on one sequence with strong noise;
if the check fails, or a selected tensor lives in another kind of module (a norm weight), ``vectorize=
"auto"`` falls back to the perturb-and-restore loop and says why in the result.

Why not ``torch.func.functional_call`` + ``vmap``: torch has no vmap batching rule for the CPU
flash-attention kernel (``_scaled_dot_product_flash_attention_for_cpu``), so vmap runs attention draw by
draw (bench/sensitivity.py keeps it as a column; its numbers are there).

How many noisy models per forward (``tokens_per_forward``): on a CPU a forward is bound by memory
traffic, and it is fastest at a moderate number of tokens per pass (`CPU_TOKENS_PER_FORWARD`, measured in
bench/sensitivity.py): larger passes fall out of cache and get *slower* per token. So on a CPU draw
batching pays when the evaluation batch is small (the early-warning monitor's few short sequences), and
at ``B × T = 256 × 64`` the probe evaluates one noisy model per pass — which is then the
perturb-and-restore loop. On a GPU, where a small model's forward is bound by kernel launches, larger
passes are the point (the ``auto`` budget is `GPU_TOKENS_PER_FORWARD` tokens there, capped by the logits'
memory).

Precision: the vectorised losses equal the loop's to float rounding (``bmm`` vs ``mm``; per-token sums in
float64): relative difference ≤ 1e-5 in float32, checked in tests/probes/test_noise.py (the measured
difference is in docs/probes.md).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from overtrain.core.evaluate import autocast_context, evaluate_loss
from overtrain.core.perturb import (
    perturbed,
    sample_noise,
    standard_normal,
)
from overtrain.seed import derive_seed

CPU_TOKENS_PER_FORWARD = 16384
"""Tokens per forward on a CPU: the measured sweet spot of llama-nano/micro (bench/sensitivity.py)."""


GPU_TOKENS_PER_FORWARD = 1 << 18
"""Upper bound of tokens per forward on an accelerator (further capped by the logits' memory)."""


STACK_BYTES = 2 << 30
"""At most this many bytes of stacked noisy weights per forward (k copies of the selected tensors)."""


@dataclass(frozen=True)
class Perturbation:
    """One noisy model: ``θ_t + stds[t] · z_{draw,t}`` for each tensor ``t`` in `stds` (`overtrain.core.perturb`)."""

    draw: int
    stds: Mapping[str, float]

    @property
    def is_zero(self) -> bool:
        return all(s == 0 for s in self.stds.values())


@dataclass(frozen=True)
class PerturbedLosses:
    """Losses of a model and of its noisy copies on the same batches, nats/token.

    Attributes:
        base_loss: loss of the unperturbed model.
        losses: loss of each `Perturbation`, in order (``base_loss`` for all-zero ones).
        tokens: predicted tokens averaged over.
        method: ``draw-batched`` or ``loop``.
        draws_per_forward: noisy models per forward pass.
        note: why draw batching was not used, if it was asked for with ``auto``.
    """

    base_loss: float
    losses: list[float]
    tokens: int
    method: str
    draws_per_forward: int
    note: str = ""


def perturbed_losses(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    perturbations: Sequence[Perturbation],
    *,
    seed: int,
    vectorize: bool | Literal["auto"] = "auto",
    tokens_per_forward: int | Literal["auto"] = "auto",
    autocast_dtype: torch.dtype | None = None,
) -> PerturbedLosses:
    """Mean next-token cross-entropy (nats/token) of `model` and of each noisy copy on `batches`.

    The model is left exactly as it was (parameters bit-identical, training flag restored).

    Args:
        model: a causal LM called as ``model(input_ids=x, use_cache=False).logits``.
        batches: int64 token batches ``(B, T)``; every token after the first of a row is predicted.
        perturbations: the noisy models; each names the same tensors.
        seed: the noise stream (`overtrain.core.perturb.standard_normal`).
        vectorize: ``auto`` | True | False (see `NoiseSensitivityConfig.vectorize`).
        tokens_per_forward: token budget of a draw-batched forward, or ``auto``.
        autocast_dtype: evaluate under autocast to this dtype (None: the parameters' dtype).

    Raises:
        ValueError: draw batching was required (``vectorize=True``) and does not apply or fails its check.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("no evaluation batches")
    device = next(model.parameters()).device
    names = list(perturbations[0].stds) if perturbations else []
    if any(list(p.stds) != names for p in perturbations):
        raise ValueError("every perturbation must name the same tensors in the same order")
    aliases = dict(model.named_parameters(remove_duplicate=False))
    params = {name: aliases[name] for name in names}
    tokens = sum(x[:, 1:].numel() for x in batches)
    if tokens == 0:
        raise ValueError("the evaluation batches predict no token: sequences need at least 2 tokens")
    was_training = model.training
    model.eval()
    try:
        base = evaluate_loss(model, batches, autocast_dtype=autocast_dtype, device=device)
        todo = [i for i, p in enumerate(perturbations) if not p.is_zero]
        work = [perturbations[i] for i in todo]
        per_forward = _draws_per_forward(model, batches, params, len(work), tokens_per_forward, device)
        method, note = "loop", ""
        if vectorize is not False and work and per_forward > 1:
            note = _draw_batching_problem(model, batches[0], params, seed, autocast_dtype, device)
            if note and vectorize is True:
                raise ValueError(f"draw batching does not apply: {note}")
            if note:
                warnings.warn(f"noise probe: using the perturb-and-restore loop: {note}", stacklevel=2)
            else:
                method = "draw-batched"
        elif vectorize is True and work:
            note = f"one noisy model per forward (budget {tokens_per_forward} tokens, batch {batches[0].numel()})"
        if method == "draw-batched":
            values = _draw_batched(
                model, batches, params, work, seed, per_forward, autocast_dtype, device, tokens
            )
        else:
            values = _loop(model, batches, params, work, seed, autocast_dtype, device)
            per_forward = 1
    finally:
        model.train(was_training)
    losses = [base] * len(perturbations)
    for i, value in zip(todo, values):
        losses[i] = value
    return PerturbedLosses(base, losses, tokens, method, per_forward, note)


def _loop(model, batches, params, work, seed, autocast_dtype, device) -> list[float]:
    """The reference: for each noisy model, perturb in place, evaluate, restore."""
    out = []
    for p in work:
        noise = sample_noise(params, p.stds, seed=seed, draw=p.draw)
        with perturbed(model, noise):
            out.append(evaluate_loss(model, batches, autocast_dtype=autocast_dtype, device=device))
    return out


def _draw_batched(
    model, batches, params, work, seed, per_forward, autocast_dtype, device, tokens
) -> list[float]:
    """Losses of `work`, `per_forward` noisy models per forward pass."""
    out: list[float] = []
    z_cache: dict[tuple[int, str], torch.Tensor] = {}
    for start in range(0, len(work), per_forward):
        chunk = work[start : start + per_forward]
        stacked = _stack(params, chunk, seed, z_cache)
        z_cache = {key: z for key, z in z_cache.items() if key[0] == chunk[-1].draw}  # draws come in order
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=device)
        with torch.no_grad(), _draw_batching(model, stacked, len(chunk)):
            for x in batches:
                sums += _ce_sums(model, x.to(device), len(chunk), autocast_dtype, device)
        out.extend((sums / tokens).tolist())
    return out


def _stack(params, chunk, seed, z_cache) -> dict[int, torch.Tensor]:
    """``{id(parameter): (k, *shape)}``: θ + noise of each noisy model, in the parameter's dtype.

    The noise is `sample_noise`'s, bit for bit, and it is added in the parameter's dtype as `perturbed`
    adds it, so the loop and draw batching evaluate identical weights.
    """
    stacked = {}
    for name, param in params.items():
        rows = []
        for p in chunk:
            key = (p.draw, name)
            if key not in z_cache:
                z_cache[key] = standard_normal(name, param.shape, seed=seed, draw=p.draw)
            eps = z_cache[key].mul(float(p.stds[name]))
            rows.append(param.detach() + eps.to(device=param.device, dtype=param.dtype))
        stacked[id(param)] = torch.stack(rows)
    return stacked


def _ce_sums(model, x, k, autocast_dtype, device) -> torch.Tensor:
    """Per noisy model, the summed next-token cross-entropy of batch `x` (float64, shape ``(k,)``)."""
    xr = x.repeat(k, 1)  # (k·B, T): noisy model j sees rows j·B .. (j+1)·B − 1
    with autocast_context(device, autocast_dtype):
        logits = model(input_ids=xr, use_cache=False).logits[:, :-1].float()  # (k·B, T−1, V)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), xr[:, 1:].reshape(-1), reduction="none")
    return ce.view(k, -1).sum(1, dtype=torch.float64)


def _draws_per_forward(model, batches, params, n_work, tokens_per_forward, device) -> int:
    """How many noisy models one forward holds: the token budget over the largest batch, capped by the
    memory of the stacked weights."""
    if n_work <= 1:
        return 1
    if tokens_per_forward == "auto":
        if device.type == "cpu":
            budget = CPU_TOKENS_PER_FORWARD
        else:  # logits (float32 copy, per-token losses): ~12 bytes per vocabulary entry per token, ≤ 1 GiB
            vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
            budget = max(1, min(GPU_TOKENS_PER_FORWARD, (1 << 30) // (12 * vocab)))
    else:
        budget = int(tokens_per_forward)
    per_batch = max(x.numel() for x in batches)
    param_bytes = sum(p.numel() * p.element_size() for p in params.values()) or 1
    return max(1, min(n_work, budget // per_batch, STACK_BYTES // param_bytes))


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``{id(parameter): [(module, "weight"|"bias")]}`` for the parameters draw batching can stack."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            out.setdefault(id(module.weight), []).append((module, "weight"))
            if module.bias is not None:
                out.setdefault(id(module.bias), []).append((module, "bias"))
        elif isinstance(module, nn.Embedding) and module.max_norm is None:
            out.setdefault(id(module.weight), []).append((module, "weight"))
    return out


@contextlib.contextmanager
def _draw_batching(model: nn.Module, stacked: Mapping[int, torch.Tensor], k: int) -> Iterator[None]:
    """Within the block, every Linear/Embedding with a stacked weight or bias runs `k` noisy copies, one
    per block of rows of its input (the instance's ``forward`` is replaced, then restored)."""
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = stacked.get(id(module.weight))
                b = stacked.get(id(module.bias)) if module.bias is not None else None
                if w is None and b is None:
                    continue
                forward = functools.partial(_grouped_linear, module, k, w, b)
            elif isinstance(module, nn.Embedding) and id(module.weight) in stacked:
                forward = functools.partial(_grouped_embedding, k, stacked[id(module.weight)])
            else:
                continue
            # keep an instance-level forward someone else installed (accelerate hooks) to put it back
            patched.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _grouped_linear(module: nn.Linear, k: int, weight, bias, x: torch.Tensor) -> torch.Tensor:
    """``y[j] = x[j] W_jᵀ + b_j`` for row block j of the input ``(k·B, ..., in)``."""
    if x.shape[0] % k:
        raise RuntimeError(f"draw batching: a Linear input has {x.shape[0]} rows, not a multiple of {k}")
    xg = x.reshape(k, -1, x.shape[-1])  # (k, B·..., in)
    if weight is None:
        y = F.linear(xg, module.weight)  # shared weight, noisy bias
    elif bias is None and module.bias is not None:
        y = torch.bmm(xg, weight.transpose(1, 2)) + module.bias
    else:
        y = torch.bmm(xg, weight.transpose(1, 2))  # (k, B·..., out)
    if bias is not None:
        y = y + bias.unsqueeze(1)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _grouped_embedding(k: int, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Row block j of ``ids`` looks up table j: one lookup in the ``(k·V, d)`` stack with offsets j·V."""
    if ids.shape[0] % k:
        raise RuntimeError(
            f"draw batching: an Embedding input has {ids.shape[0]} rows, not a multiple of {k}"
        )
    vocab, dim = weight.shape[1], weight.shape[2]
    offsets = torch.arange(k, device=ids.device).mul_(vocab).unsqueeze(1)  # (k, 1)
    flat = ids.reshape(k, -1) + offsets
    return F.embedding(flat, weight.reshape(k * vocab, dim)).reshape(*ids.shape, dim)


def _draw_batching_problem(model, x, params, seed, autocast_dtype, device) -> str:
    """Why draw batching cannot be used for `params` on `model` (empty string: it can).

    Checks that every selected tensor is a Linear/Embedding weight or a Linear bias, then compares a
    draw-batched forward of two noisy models on one sequence with their per-model forwards. The noise
    of the check is strong (std 0.5·std(θ_t), or 0.1 for a constant tensor), so a draw-batched forward
    that mixed up rows or missed a tensor would differ by far more than rounding.
    """
    owners = _owners(model)
    for name, p in params.items():
        if id(p) not in owners:
            return f"{name} is not a Linear or Embedding weight/bias"
    stds = {}
    for name, p in params.items():
        s = float(p.detach().double().std(correction=0)) if p.numel() > 1 else 0.0
        stds[name] = 0.5 * s if s > 0 else 0.1
    check_seed = derive_seed(seed, "draw-batching-check")
    work = [Perturbation(0, stds), Perturbation(1, stds)]
    one = x[:1].to(device)
    try:
        expected = _loop(model, [one], params, work, check_seed, autocast_dtype, device)
        got = _draw_batched(
            model, [one], params, work, check_seed, 2, autocast_dtype, device, one[:, 1:].numel()
        )
    except Exception as exc:  # any failure means "not for this model": fall back, reporting it
        return f"the draw-batched forward failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    low = autocast_dtype not in (None, torch.float32) or any(
        p.dtype in (torch.float16, torch.bfloat16) for p in params.values()
    )
    rtol = 3e-2 if low else 1e-4
    for a, b in zip(expected, got):
        if not abs(a - b) <= rtol * max(1.0, abs(a)):
            return f"the draw-batched forward disagrees with per-model forwards ({b:.6g} vs {a:.6g})"
    return ""
