"""Switching a `transformers` model's attention kernel for the duration of a probe.

The fused ``sdpa`` kernels neither return attention weights (the induction probe needs them) nor have a
double backward (the curvature probe needs one); ``eager`` (matmul + softmax) does both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, the `transformers` model in `model` (PEFT-wrapped or not) uses eager attention,
    which has a double backward; its previous implementation is restored on exit."""
    hf = _hf_model(model)
    previous = hf.config._attn_implementation if hf is not None else "eager"
    if previous == "eager":
        yield
        return
    _set_attention(hf, "eager")
    try:
        yield
    finally:
        _set_attention(hf, previous)


def _hf_model(model: nn.Module) -> nn.Module | None:
    """The outermost `transformers` model in `model` (a PEFT wrapper only forwards to it), else the first
    module with a ``config._attn_implementation``, else None (nothing to switch)."""
    from transformers import PreTrainedModel

    modules = list(model.modules())
    found = next((m for m in modules if isinstance(m, PreTrainedModel)), None)
    if found is None:
        found = next(
            (m for m in modules if hasattr(getattr(m, "config", None), "_attn_implementation")), None
        )
    return found


def _set_attention(hf: nn.Module, implementation: str) -> None:
    if hasattr(hf, "set_attn_implementation"):  # transformers >= 4.48: also updates sub-configs
        hf.set_attn_implementation(implementation)
    else:
        hf.config._attn_implementation = implementation
