"""AdamW and gradient clipping for stacked weights: K independent optimisers in one set of tensor ops.

Each tensor is ``[K, *shape]``, member k's slice being one model's parameter. Per member: its own
learning rate, its own global gradient norm (clipped as ``torch.nn.utils.clip_grad_norm_`` clips one
model), and AdamW's update in the order ``torch.optim.AdamW`` applies it, so a member follows the
trajectory of the same model trained alone to float rounding (`tests/training/test_grouped_optim.py`).
"""

from __future__ import annotations

import torch


def member_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[K]`` -> ``[K, 1, ..., 1]`` broadcastable against `like` (``[K, *shape]``)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_grad_norms_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each member's gradient to global 2-norm `max_norm`; return the norms before clipping, ``[K]``.

    Per member: ``g <- g · min(1, max_norm / (‖g‖ + 1e-6))``, ‖g‖ over every tensor of the member (the
    formula of ``clip_grad_norm_``).
    """
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(member_view(coef, g))
    return norms


class GroupedAdamW:
    """AdamW over stacked tensors with one learning rate per member.

    Args:
        params: the stacked tensors that train (``requires_grad``), each ``[K, *shape]``.
        lr: ``[K]`` peak learning rates; `set_lr` scales them per step (a schedule shared by the members).
        weight_decay: decoupled decay on tensors whose member shape is a matrix (``dim >= 3`` stacked:
            embeddings included), none on norms and biases, as `overtrain.training.loop.build_optimizer`.
        betas, eps: AdamW's.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: torch.Tensor,
        *,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr = lr.to(dtype=params[0].dtype, device=params[0].device).clone()
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    def set_lr(self, lr: torch.Tensor) -> None:
        """This step's learning rates, ``[K]``."""
        self.lr = lr.to(dtype=self.lr.dtype, device=self.lr.device)

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.step_count += 1
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = (1 - beta2**self.step_count) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            lr = member_view(self.lr, p)
            if self.weight_decay and p.dim() >= 3:
                p.mul_(1 - lr * self.weight_decay)
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.sub_((lr / bias1) * m / denom)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
