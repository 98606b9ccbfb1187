"""The batched two-layer network of the MLP double-descent study: every (seed, width) model of a sweep
as one set of tensors, and its hand-written gradient.

**Batching.** All widths and all seeds of a sweep are trained at once as one model. The hidden units of
every width are concatenated into one hidden layer of ``ΣH`` units (``W1`` is ``[S, ΣH, d]`` over S seeds),
and the readout is block-structured: width m's logits use only its own ``H_m`` hidden units
(``W2`` is ``[S, k, ΣH]``, split into per-width blocks ``[S, k, H_m]`` and applied by one ``torch.bmm``
per width). The objective is the *sum* of the per-(seed, width) losses. Each parameter belongs to exactly
one model, so its gradient is the gradient of that model's own loss, and Adam is elementwise (its moment
estimates and its update of a parameter depend only on that parameter's gradients and the shared step
count): training the concatenated model is *exactly* training every (seed, width) separately with Adam
(tests/studies/test_mlp_double_descent.py checks it in float64). Each model's initialisation is drawn
from its own ``(seed, width)`` stream, so a width starts from the same weights whatever else is in the
sweep.
The gradients are written by hand into preallocated buffers (`Backprop`: autograd allocates fresh
[S, ΣH, n] activations every step). The cost of a step is the first layer's two GEMMs, proportional to
S·ΣH whatever the batching (the speed-ups measured against autograd and per-width loops:
docs/double_descent.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from overtrain.seed import torch_generator


def n_params(width: int, d: int = 64, k: int = 10) -> int:
    """Parameters of a d -> width -> k network with biases: (d + 1)·width + (width + 1)·k."""
    return (d + 1) * width + (width + 1) * k


@dataclass
class BatchedMLP:
    """Every (seed, width) network of a sweep as one set of tensors (see the module docstring).

    Shapes use S seeds, M widths, ΣH = sum of the widths, d inputs, k classes, n examples.

    Attributes:
        widths: [M] hidden widths; width m owns hidden units ``offsets[m]:offsets[m+1]``.
        w1: [S, ΣH, d] first-layer weights (row j: hidden unit j's input weights).
        b1: [S, ΣH, 1] first-layer biases.
        w2: [S, k, ΣH] readout weights; width m's block is ``w2[:, :, offsets[m]:offsets[m+1]]``.
        b2: [M, S, k, 1] readout biases.
    """

    widths: list[int]
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.widths).tolist()]

    def logits(self, xt: torch.Tensor) -> torch.Tensor:
        """[M, S, k, n] logits of every model on inputs ``xt`` ([d, n], examples in columns).

        Plain torch ops (autograd works through them: the reference for `Backprop`). Examples sit in the
        last axis so the softmax over the k = 10 classes reduces a short strided axis (on CPU faster than
        over a contiguous last axis of size 10; timing: docs/double_descent.md).
        """
        S = self.w1.shape[0]
        hidden = torch.relu(torch.baddbmm(self.b1, self.w1, xt.expand(S, -1, -1)))  # [S, ΣH, n]
        blocks = zip(hidden.split(self.widths, dim=1), self.w2.split(self.widths, dim=2))
        return torch.stack([torch.bmm(w, h) for h, w in blocks]) + self.b2

    def block(self, seed_index: int, width_index: int) -> dict[str, torch.Tensor]:
        """One network's weights as ``nn.Linear``-shaped tensors: w1 [H, d], b1 [H], w2 [k, H], b2 [k]."""
        a, b = self.offsets[width_index], self.offsets[width_index + 1]
        s = seed_index
        return {
            "w1": self.w1[s, a:b].detach().clone(),
            "b1": self.b1[s, a:b, 0].detach().clone(),
            "w2": self.w2[s, :, a:b].detach().clone(),
            "b2": self.b2[width_index, s, :, 0].detach().clone(),
        }


def init_mlp(
    seeds: Sequence[int],
    widths: Sequence[int],
    d: int,
    k: int,
    init_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> BatchedMLP:
    """PyTorch's default ``nn.Linear`` init times `init_scale`, from a stream of its own per (seed, width).

    Each weight and bias of a layer with fan-in f is U(-a, a) with a = init_scale/√f (f = d for the
    hidden layer, f = H for the readout). Drawn in float64 and cast, so float32 and float64 runs start
    from the same (rounded) weights.
    """
    S, M, total = len(seeds), len(widths), int(sum(widths))
    w1 = torch.empty(S, total, d, dtype=torch.float64)
    b1 = torch.empty(S, total, 1, dtype=torch.float64)
    w2 = torch.empty(S, k, total, dtype=torch.float64)
    b2 = torch.empty(M, S, k, 1, dtype=torch.float64)
    offsets = [0, *np.cumsum(widths).tolist()]
    for s, seed in enumerate(seeds):
        for m, width in enumerate(widths):
            g = torch_generator("mlp-init", seed, width)
            a, b = offsets[m], offsets[m + 1]
            hidden_bound, readout_bound = init_scale / math.sqrt(d), init_scale / math.sqrt(width)
            w1[s, a:b] = _uniform(g, hidden_bound, width, d)
            b1[s, a:b, 0] = _uniform(g, hidden_bound, width)
            w2[s, :, a:b] = _uniform(g, readout_bound, k, width)
            b2[m, s, :, 0] = _uniform(g, readout_bound, k)
    return BatchedMLP(list(widths), *(t.to(dtype) for t in (w1, b1, w2, b2)))


def _uniform(g: torch.Generator, bound: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def per_model_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """[M, S] mean loss of each model: cross-entropy (nats) or squared error against one-hot targets.

    Args:
        logits: [M, S, k, n].
        labels: [n] integer classes.
        kind: ``"ce"`` (mean over examples of logsumexp − true logit) or ``"mse"`` (mean over examples and
            classes of (f_c(x) − 1[c = y])²).
    """
    M, S, k, n = logits.shape
    if kind == "ce":
        true = logits.gather(2, labels.view(1, 1, 1, n).expand(M, S, 1, n)).squeeze(2)
        return (logits.logsumexp(2) - true).mean(-1)
    target = torch.nn.functional.one_hot(labels, k).T.to(logits.dtype)  # [k, n]
    return (logits - target).square().mean(dim=(2, 3))


class Backprop:
    """The gradient of Σ_{seed, width} loss(seed, width) on one fixed training set, by hand.

    Written out (instead of autograd) to reuse preallocated [S, ΣH, n] buffers: on CPU the allocation
    and page faults of fresh activations cost as much as the arithmetic. Per model, with Z = W1 X + b1,
    A = relu(Z), F = W2 A + b2 and G = ∂loss/∂F:

        G = (softmax(F) − Y)/n            (ce)        G = 2 (F − Y)/(n k)       (mse)
        ∂b2 = Σ_i G,  ∂W2 = G Aᵀ,  ∂A = W2ᵀ G,  ∂Z = ∂A ⊙ 1[A > 0],  ∂b1 = Σ_i ∂Z,  ∂W1 = ∂Z Xᵀ

    (Y the one-hot targets, examples in columns). The gradients are written into ``p.grad`` of every
    parameter of the model, ready for ``optimizer.step()``. tests/studies/test_mlp_double_descent.py
    checks them against autograd through `BatchedMLP.logits`.
    """

    def __init__(self, model: BatchedMLP, x: torch.Tensor, labels: torch.Tensor, kind: str):
        S, total, d = model.w1.shape
        k, n, M = model.w2.shape[1], x.shape[0], len(model.widths)
        self.model, self.kind = model, kind
        self.x = x.contiguous()  # [n, d]
        self.xt = self.x.T  # [d, n]: a view, addmm reads it transposed
        self.onehot = torch.nn.functional.one_hot(labels, k).T.to(x.dtype).contiguous()  # [k, n]
        self.hidden = x.new_empty(S, total, n)
        self.ghidden = x.new_empty(S, total, n)
        self.logits = x.new_empty(M, S, k, n)
        for p in model.params:
            p.grad = torch.zeros_like(p)

    def __call__(self) -> None:
        m = self.model
        S, total, d = m.w1.shape
        n = self.x.shape[0]
        k = m.w2.shape[1]
        # forward: all seeds' hidden layers in one GEMM (the data are shared across seeds)
        torch.addmm(
            m.b1.view(S * total, 1), m.w1.view(S * total, d), self.xt, out=self.hidden.view(S * total, n)
        ).relu_()
        blocks = list(zip(self.model.offsets, self.model.offsets[1:]))
        for j, (a, b) in enumerate(blocks):
            torch.bmm(m.w2[:, :, a:b], self.hidden[:, a:b], out=self.logits[j])
        self.logits.add_(m.b2)
        # G = ∂loss/∂F, in place of the logits
        if self.kind == "ce":
            g = torch.softmax(self.logits, dim=2).sub_(self.onehot).div_(n)
        else:
            g = self.logits.sub_(self.onehot).mul_(2.0 / (n * k))
        gw1, gb1, gw2, gb2 = (p.grad for p in m.params)
        torch.sum(g, dim=-1, keepdim=True, out=gb2)
        for j, (a, b) in enumerate(blocks):
            torch.bmm(m.w2[:, :, a:b].transpose(1, 2), g[j], out=self.ghidden[:, a:b])
            gw2[:, :, a:b] = torch.bmm(g[j], self.hidden[:, a:b].transpose(1, 2))
        # relu': ∂Z = ∂A where A > 0 (autograd's convention at 0 too), in place
        torch.ops.aten.threshold_backward.grad_input(self.ghidden, self.hidden, 0, grad_input=self.ghidden)
        torch.sum(self.ghidden, dim=-1, keepdim=True, out=gb1)
        torch.mm(self.ghidden.view(S * total, n), self.x, out=gw1.view(S * total, d))
