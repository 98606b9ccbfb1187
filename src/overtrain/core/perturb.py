"""Perturb-and-restore: add noise to selected parameters in place, then put them back bit-exactly.

Shared by the noise-sensitivity probe (`overtrain.probes.noise`) and by weight-perturbation training
methods (LoRA-GGPO, Flat-LoRA, SAM): each needs the model at θ + ε for a while and at θ afterwards.

**Restoring.** ``(θ + ε) − ε`` is not ``θ`` in floating point (each operation rounds), so `perturbed`
saves the original values and copies them back. Parameters are changed in place (``add_``/``copy_``),
never replaced, so optimizers, tied weights and anything else holding a parameter see the same tensor
throughout. Any change made to a perturbed parameter inside the block (an optimizer step) is discarded
on exit; buffers are never touched.

**Which tensors** (`select_parameters`). A filter sees ``(name, parameter)`` for every parameter of the
module, each shared tensor once under the first name ``named_parameters()`` gives it (a tied input
embedding / LM head is perturbed once). The default of the noise laws is `is_matrix`: every parameter
with ``dim() >= 2`` — attention and MLP projections, the input embedding and the LM head — and no norm
weights or biases (the noise on the weights of Springer et al. 2025 §3; docs/overtraining.md, "The
quantities"). `param_filter` adds a regex on the name (only LoRA factors: ``include="lora_"``; one layer:
``include=r"layers\\.3\\."``).

**Noise laws** (the Gaussian perturbation of Springer et al. 2025 §3). Per selected tensor ``t`` the
noise is ``ε_t ~ N(0, s_t² I)`` with ``s_t = γ · scale_t``:

- `init_scale` (canonical; Springer et al. 2025 §3): ``scale_t = σ_init(t)``, the standard deviation of
  the tensor's entries at initialisation, so the absolute noise is the same for every checkpoint of a
  run. σ_init is measured from an initialisation state dict (a run's ``ckpt/step_00000000``); without
  one, ``config.initializer_range`` is used for matrices — the std of the ``N(0, initializer_range²)``
  init that `transformers` gives every Linear and Embedding weight of Llama, OLMo-2 and GPT-NeoX.
  Norm weights and biases start constant (1 or 0), so their measured σ_init is 0 and they get no noise
  under this law even when the filter selects them; without an init state their σ_init is unknown and
  selecting them is an error.
- `relative` (non-canonical, scale-invariant): ``scale_t = std(θ_t)``, the current std of the tensor's
  entries. Invariant to the weight-norm growth that normalisation layers allow, which the absolute law
  is not (docs/overtraining.md, "Presets": without weight decay the weight norms keep growing and
  init-scale sensitivity falls).

Stds are population stds (``correction=0``) computed in float64.

**Sampling.** ``ε`` is ``scale_t · z`` with ``z`` standard normal, float32, drawn on the CPU from a
`torch.Generator` seeded by ``(seed, draw, tensor name)``: draw ``k`` of a tensor is the same whatever
the number of draws, the other tensors selected, γ, the law, or the device the model lives on. Sharing
``z`` across γ, laws and checkpoints (common random numbers) makes differences between those cells
depend on the weights, not on fresh noise.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Literal, Union

import torch
from pydantic import AfterValidator
from torch import nn

from overtrain.core.weights import load_weights
from overtrain.seed import derive_seed


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return value


NameRegex = Annotated[Union[str, None], AfterValidator(_check_regex)]
"""A config field holding an optional regex on parameter names (checked when the config is read)."""

ParamFilter = Callable[[str, torch.Tensor], bool]
"""A predicate on ``(name, parameter)``: True selects the parameter."""

ParamSpec = Union[ParamFilter, str, "re.Pattern[str]", None]
"""A filter, a regex searched in the parameter name, or None for every parameter."""

NoiseSource = Union[Mapping[str, torch.Tensor], Callable[[str, nn.Parameter], "torch.Tensor | None"]]
"""Noise to add: ``{name: tensor}``, or a function ``(name, parameter) -> tensor | None`` (None: skip)."""

InitState = Union[Mapping[str, torch.Tensor], nn.Module, str, Path]
"""An initialisation: a state dict, a model holding the initial weights, or a checkpoint directory."""

# Prefixes and infixes PEFT adds to a wrapped model's parameter names; stripped to find a name in a
# state dict saved from the plain model (e.g. the pre-training run's step_00000000).
_PEFT_PREFIX = "base_model.model."
_PEFT_INFIX = ".base_layer."


# --- which parameters ---------------------------------------------------------------------------------


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """The default selection: every parameter with at least two dimensions (embeddings included)."""
    return param.dim() >= 2


def param_filter(
    which: Literal["matrices", "all"] = "matrices", include: str | None = None, exclude: str | None = None
) -> ParamFilter:
    """A filter from its parts: ``which`` tensors, whose name matches `include` and not `exclude`.

    Args:
        which: ``"matrices"`` (``dim() >= 2``) or ``"all"`` (norm weights and biases too).
        include: regex searched in the name (``re.search``); None keeps every name.
        exclude: regex searched in the name; a match drops the parameter.
    """
    if which not in ("matrices", "all"):
        raise ValueError(f"which must be 'matrices' or 'all', got {which!r}")
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None

    def keep(name: str, param: torch.Tensor) -> bool:
        if which == "matrices" and param.dim() < 2:
            return False
        if inc is not None and not inc.search(name):
            return False
        return exc is None or not exc.search(name)

    return keep


def as_filter(params: ParamSpec) -> ParamFilter:
    """Turn a `ParamSpec` into a predicate (a string is a regex searched in the name)."""
    if params is None:
        return lambda name, param: True
    if isinstance(params, (str, re.Pattern)):
        pattern = re.compile(params)
        return lambda name, param: pattern.search(name) is not None
    if callable(params):
        return params
    raise TypeError(f"params must be a predicate, a regex or None, not {type(params).__name__}")


def select_parameters(model: nn.Module, params: ParamSpec = is_matrix) -> dict[str, nn.Parameter]:
    """The parameters of `model` that the filter keeps, by name, in `named_parameters` order.

    A tensor shared by several modules (tied embeddings) appears once, under its first name.
    """
    keep = as_filter(params)
    return {name: p for name, p in model.named_parameters() if keep(name, p)}


# --- perturb and restore ------------------------------------------------------------------------------


@contextlib.contextmanager
def perturbed(
    model: nn.Module, noise: NoiseSource, *, params: ParamSpec = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Add `noise` to parameters of `model` in place for the duration of the block; restore them on exit.

    ``θ_t ← θ_t + noise[t]`` (in the parameter's dtype) for every selected parameter ``t`` that the
    noise covers; on exit — normal or by an exception, including one raised while the noise is being
    applied — every touched parameter gets its saved original values back, bit for bit.

    Args:
        model: any `torch.nn.Module` (a `transformers` model, a PEFT-wrapped one, ...).
        noise: ``{name: tensor}`` with tensors of the parameters' shapes (any dtype/device), or a function
            ``(name, parameter) -> tensor | None`` called for every selected parameter (None: leave it).
            A mapping may name a parameter by any of its tied aliases.
        params: restricts which parameters are perturbed (`ParamSpec`); None: every parameter the noise
            covers. Mapping entries for parameters the filter excludes are ignored.

    Yields:
        The noise added, ``{name: tensor}`` as given (before the cast to the parameter's dtype).

    Raises:
        KeyError: a mapping names no parameter of `model`.
        ValueError: a noise tensor's shape differs from its parameter's, or two names of one mapping are
            the same (tied) tensor.
    """
    keep = as_filter(params)
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    applied: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, param, eps in _noise_items(model, noise, keep):
                if eps.shape != param.shape:
                    raise ValueError(
                        f"noise for {name} has shape {tuple(eps.shape)}, parameter {tuple(param.shape)}"
                    )
                saved.append((param, param.detach().clone()))  # before the first write to it
                param.add_(eps.to(device=param.device, dtype=param.dtype))
                applied[name] = eps
        yield applied
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)


def _noise_items(model: nn.Module, noise: NoiseSource, keep: ParamFilter):
    """``(name, parameter, noise)`` for each parameter to perturb, each tensor at most once."""
    if isinstance(noise, Mapping):
        aliases = dict(model.named_parameters(remove_duplicate=False))
        seen: dict[int, str] = {}
        for name, eps in noise.items():
            if name not in aliases:
                raise KeyError(f"noise for {name!r}, which is not a parameter of {type(model).__name__}")
            param = aliases[name]
            if id(param) in seen:
                raise ValueError(f"noise for {name} and {seen[id(param)]}, which are one (tied) tensor")
            seen[id(param)] = name
            if keep(name, param):
                yield name, param, eps
    elif callable(noise):
        for name, param in model.named_parameters():
            if keep(name, param):
                eps = noise(name, param)
                if eps is not None:
                    yield name, param, eps
    else:
        raise TypeError(f"noise must be a mapping or a function, not {type(noise).__name__}")


# --- sampling -----------------------------------------------------------------------------------------


def standard_normal(name: str, shape: torch.Size | tuple[int, ...], *, seed: int, draw: int) -> torch.Tensor:
    """``z ~ N(0, I)`` of `shape` for tensor `name` in draw `draw`: float32, CPU, a pure function of its
    arguments (seeded by ``(seed, draw, name)``)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "gaussian-noise", draw, name))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def sample_noise(
    params: Mapping[str, torch.Tensor], stds: Mapping[str, float], *, seed: int, draw: int
) -> dict[str, torch.Tensor]:
    """Draw `draw` of Gaussian noise: ``{t: stds[t] · z_t}`` for every ``t`` in `stds` (float32, CPU).

    Args:
        params: the parameters by name (for their shapes); every key of `stds` must be here.
        stds: per-tensor standard deviation s_t (from a noise law); a tensor with s_t = 0 gets zeros.
        seed: the noise stream (the probe's seed).
        draw: the draw index k; draw k is the same whatever other draws, tensors or stds are used.
    """
    return {
        name: standard_normal(name, params[name].shape, seed=seed, draw=draw).mul_(float(std))
        for name, std in stds.items()
    }


# --- noise laws ---------------------------------------------------------------------------------------


def init_scale(
    model: nn.Module,
    gamma: float = 1.0,
    *,
    init_state: InitState | None = None,
    params: ParamSpec = is_matrix,
) -> dict[str, float]:
    """Canonical law: per-tensor noise std ``s_t = γ · σ_init(t)`` (absolute: the same at every checkpoint).

    Args:
        model: the model to be perturbed (its parameter names and shapes).
        gamma: the noise scale γ ≥ 0.
        init_state: the initialisation (`InitState`); σ_init(t) = std of its entries of tensor ``t``.
            None: ``model.config.initializer_range`` for every matrix.
        params: which tensors (`ParamSpec`); default every matrix.

    Returns:
        ``{name: s_t}`` for every selected tensor.

    Raises:
        ValueError: a selected tensor is missing from `init_state` or has another shape there; or, without
            `init_state`, the model has no ``config.initializer_range``, or a selected tensor is not a
            plain matrix (a norm weight, a bias, a LoRA factor) whose init std the config does not give.
    """
    _check_gamma(gamma)
    selected = select_parameters(model, params)
    if init_state is None:
        sigma = getattr(getattr(model, "config", None), "initializer_range", None)
        if sigma is None:
            raise ValueError("init_scale noise needs init_state: the model has no config.initializer_range")
        for name, p in selected.items():
            if p.dim() < 2 or "lora_" in name:
                raise ValueError(
                    f"init std of {name} is not given by config.initializer_range (only plain matrices are "
                    "initialised N(0, initializer_range²)): pass init_state, e.g. the run's step_00000000"
                )
        return {name: gamma * float(sigma) for name in selected}
    state = _as_state(init_state)
    out = {}
    for name, p in selected.items():
        init = _lookup(state, name)
        if init is None:
            raise ValueError(f"init_state has no tensor for {name}")
        if tuple(init.shape) != tuple(p.shape):
            raise ValueError(
                f"init_state has {name} of shape {tuple(init.shape)}, the model {tuple(p.shape)}"
            )
        out[name] = gamma * _std(init)
    return out


def relative(model: nn.Module, gamma: float = 1.0, *, params: ParamSpec = is_matrix) -> dict[str, float]:
    """Non-canonical, scale-invariant law: per-tensor noise std ``s_t = γ · std(θ_t)`` (current weights).

    Args:
        model: the model to be perturbed.
        gamma: the noise scale γ ≥ 0.
        params: which tensors (`ParamSpec`); default every matrix.

    Returns:
        ``{name: s_t}`` for every selected tensor.
    """
    _check_gamma(gamma)
    return {name: gamma * _std(p) for name, p in select_parameters(model, params).items()}


NOISE_LAWS: dict[str, Callable[..., dict[str, float]]] = {"init_scale": init_scale, "relative": relative}
"""Noise laws by name; each returns per-tensor stds ``{name: γ · scale_t}``."""


def _as_state(init_state: InitState) -> Mapping[str, torch.Tensor]:
    if isinstance(init_state, nn.Module):
        return dict(init_state.named_parameters(remove_duplicate=False))
    if isinstance(init_state, (str, Path)):
        return load_weights(init_state)
    if isinstance(init_state, Mapping):
        return init_state
    raise TypeError(
        f"init_state must be a state dict, a module or a checkpoint path, not {type(init_state).__name__}"
    )


def _lookup(state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """``state[name]``, or the same tensor under the plain-model name of a PEFT-wrapped parameter."""
    if name in state:
        return state[name]
    plain = name.removeprefix(_PEFT_PREFIX).replace(_PEFT_INFIX, ".")
    return state.get(plain)


def _std(t: torch.Tensor) -> float:
    return float(t.detach().to("cpu", torch.float64).std(correction=0)) if t.numel() else 0.0


def _check_gamma(gamma: float) -> None:
    if not gamma >= 0 or gamma == float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
