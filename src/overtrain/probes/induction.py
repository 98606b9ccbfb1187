"""Induction heads and in-context copying on [random block; same block] sequences (Olsson et al. 2022;
Hernandez et al. 2022; docs/repeated_data.md).

Sequences. A block of L tokens drawn uniformly (with replacement) from ``0..V-1`` followed by the same
block: ``x = [b_0 .. b_{L-1}, b_0 .. b_{L-1}]``, T = 2L tokens. The tokens come from the probe's own
stream, seeded by ``overtrain.seed.torch_generator(seed, "induction", V, L)`` and independent of any
data source: only the vocabulary size V is taken from the source (`InductionProbe.batches`), which in
this project is the model's (presets take their vocabulary from the data). Every sequence is the same
for every checkpoint probed with the same seed.

Prefix-matching score of head (l, h). At query position ``L + j`` (token ``b_j``) an induction head
attends to the position right after the earlier occurrence of ``b_j``, that is ``j + 1`` (the token it
should copy next). With ``A[l, n, h]`` the attention pattern of sequence n (rows = queries):

    score(l, h) = mean_{n, j = 0..L-2} A[l, n, h, L + j, j + 1]

``j = L - 1`` is left out: its target, position L, is already in the second copy. A head with uniform
causal attention puts ``1/(i + 1)`` on any earlier position of query i, so it scores
``(H_{2L} - H_{L+1}) / (L - 1) ≈ ln 2 / (L - 1)`` (harmonic numbers H). Heads above 0.3–0.5 are called
induction-like by convention. Tokens repeated inside a block (probability about ``(L-1)/(2V)`` per
position) have several earlier occurrences, which caps a perfect induction head slightly below 1 there.

Copying loss. Mean next-token cross-entropy (nats/token) on the second copy, targets at positions
``L .. 2L-1`` (as in `overtrain.data.copy`), against the first copy, targets ``1 .. L-1`` (unpredictable:
about ln V for a model that does not copy). ``copying_gain = first − second``: what the context is worth.

Attention weights need ``output_attentions=True``, which only the ``eager`` attention kernel provides;
the probe switches the model to eager for its forward passes and restores the previous kernel after
(also on an exception). Memory: one batch keeps ``layers · batch_size · heads · (2L)²`` attention
floats, which is why the default block is at most `MAX_DEFAULT_BLOCK_LEN` tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from overtrain.config import BaseConfig, InIdWhenSet, NotInId
from overtrain.core.evaluate import autocast_context
from overtrain.errors import ConfigError
from overtrain.models.attention import eager_attention
from overtrain.registry import PROBES
from overtrain.seed import torch_generator

MAX_DEFAULT_BLOCK_LEN = 64
"""Longest block the probe picks by itself (``block_len: null``); longer blocks cost memory as (2L)²."""


class InductionConfig(BaseConfig):
    """Prefix-matching (induction) score per head and copying loss on repeated random blocks."""

    block_len: int | None = Field(None, ge=2)
    """Block length L (sequences have 2L tokens). None: half the probe run's sequence length (the
    parent's training length, so 2L stays within the trained context), at most 64."""

    sequences: int = Field(64, ge=1)
    """Number of [block; block] sequences the scores and losses average over."""

    batch_size: int = NotInId(16, ge=1)
    """Sequences per forward pass; one pass keeps layers × batch_size × heads × (2L)² attention
    weights. Does not change which sequences are drawn."""

    seed: int = Field(0, ge=0)
    """Seed of the random blocks: the same seed gives the same sequences for every checkpoint."""

    ablate_top: int | None = InIdWhenSet(ge=1)
    """Also measure the copying loss with the k heads of highest prefix-matching score ablated (their
    output zeroed before the attention's output projection): how much of the copying those heads carry,
    a causal measure where the score only correlates (Olsson et al. 2022). None: no ablation."""


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InductionResult:
    """What the induction probe measured.

    Attributes:
        prefix_matching: score of every head, ``prefix_matching[layer][head]`` (0..1).
        first_copy_loss: mean loss on the first copy (targets ``1..L-1``), nats/token.
        second_copy_loss: mean loss on the second copy (targets ``L..2L-1``), nats/token.
        block_len: L.
        sequences: number of sequences averaged over.
        ablated_heads: the ``(layer, head)`` pairs ablated (highest score first), or None.
        ablated_second_copy_loss: the second-copy loss with those heads' outputs zeroed, nats/token.
    """

    prefix_matching: tuple[tuple[float, ...], ...]
    first_copy_loss: float
    second_copy_loss: float
    block_len: int
    sequences: int
    ablated_heads: tuple[tuple[int, int], ...] | None = None
    ablated_second_copy_loss: float | None = None

    @property
    def ablation_effect(self) -> float | None:
        """``ablated_second_copy_loss − second_copy_loss`` (nats/token): the copying the ablated heads
        carry; 0 when they do none of it. None without an ablation."""
        if self.ablated_second_copy_loss is None:
            return None
        return self.ablated_second_copy_loss - self.second_copy_loss

    @property
    def copying_gain(self) -> float:
        """``first_copy_loss − second_copy_loss``: nats/token the repeated context saves."""
        return self.first_copy_loss - self.second_copy_loss

    @property
    def layer_max(self) -> tuple[float, ...]:
        """Highest prefix-matching score in each layer."""
        return tuple(max(heads) for heads in self.prefix_matching)

    @property
    def best_head(self) -> tuple[int, int]:
        """``(layer, head)`` of the highest score (the first one on a tie)."""
        flat = [
            (s, layer, head) for layer, hs in enumerate(self.prefix_matching) for head, s in enumerate(hs)
        ]
        best = max(flat, key=lambda t: t[0])
        return best[1], best[2]

    @property
    def max_prefix_matching(self) -> float:
        """Highest prefix-matching score over every head."""
        layer, head = self.best_head
        return self.prefix_matching[layer][head]

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """Long-format rows for ``probes.jsonl``, one per head: ``probe`` (``induction``), ``layer``,
        ``head``, ``prefix_matching``, then `extra`."""
        return [
            {"probe": "induction", "layer": layer, "head": head, "prefix_matching": score, **extra}
            for layer, heads in enumerate(self.prefix_matching)
            for head, score in enumerate(heads)
        ]

    def summary_rows(self, **extra: Any) -> list[dict[str, Any]]:
        """The model row, then one row per layer.

        Every row: ``probe``, ``scope`` (``model`` | ``layer``), ``layer``, ``head`` (where the highest
        score of the scope is), ``max_prefix_matching``. The model row adds ``first_copy_loss``,
        ``second_copy_loss``, ``copying_gain``, ``block_len`` and ``sequences``. Then `extra`.
        """
        layer, head = self.best_head
        out = [
            {
                "probe": "induction",
                "scope": "model",
                "layer": layer,
                "head": head,
                "max_prefix_matching": self.max_prefix_matching,
                "first_copy_loss": self.first_copy_loss,
                "second_copy_loss": self.second_copy_loss,
                "copying_gain": self.copying_gain,
                "block_len": self.block_len,
                "sequences": self.sequences,
                **(
                    {
                        "ablated_heads": [list(h) for h in self.ablated_heads],
                        "ablated_second_copy_loss": self.ablated_second_copy_loss,
                        "ablation_effect": self.ablation_effect,
                    }
                    if self.ablated_heads is not None
                    else {}
                ),
                **extra,
            }
        ]
        for layer, heads in enumerate(self.prefix_matching):
            best = max(range(len(heads)), key=heads.__getitem__)
            out.append(
                {
                    "probe": "induction",
                    "scope": "layer",
                    "layer": layer,
                    "head": best,
                    "max_prefix_matching": heads[best],
                    **extra,
                }
            )
        return out


# --- scores -------------------------------------------------------------------------------------------


def prefix_matching_scores(attentions: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Prefix-matching score of every head from attention patterns of [block; block] sequences.

    Args:
        attentions: ``(layers, batch, heads, T, T)`` attention weights (rows are queries, T = 2L), or a
            sequence of per-layer ``(batch, heads, T, T)`` tensors as ``output_attentions`` gives.

    Returns:
        float64 ``(layers, heads)``: the weight on position ``j + 1`` at query ``L + j``, averaged over
        ``j = 0..L-2`` and the batch (definition in the module docstring).
    """
    if not isinstance(attentions, torch.Tensor):
        attentions = torch.stack(list(attentions))
    if attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attentions must be (layers, batch, heads, T, T), got {tuple(attentions.shape)}")
    T = attentions.shape[-1]
    if T % 2 or T < 4:
        raise ValueError(f"[block; block] sequences have an even length T = 2L >= 4, got T = {T}")
    L = T // 2
    j = torch.arange(L - 1, device=attentions.device)
    picked = attentions[..., L + j, j + 1]  # (layers, batch, heads, L-1)
    return picked.double().mean(dim=(1, 3))


def induction_batches(
    vocab_size: int, block_len: int, sequences: int, batch_size: int, seed: int = 0
) -> list[torch.Tensor]:
    """[random block; same block] sequences: int64 batches ``(≤ batch_size, 2·block_len)``.

    The blocks are drawn at once as a ``(sequences, block_len)`` tensor, so the batch size only cuts
    them into forward passes.
    """
    if vocab_size < 1 or block_len < 2 or sequences < 1 or batch_size < 1:
        raise ValueError(
            f"need vocab_size >= 1, block_len >= 2, sequences >= 1, batch_size >= 1 (got {vocab_size}, "
            f"{block_len}, {sequences}, {batch_size})"
        )
    gen = torch_generator(seed, "induction", vocab_size, block_len)
    blocks = torch.randint(0, vocab_size, (sequences, block_len), generator=gen, dtype=torch.long)
    tokens = torch.cat([blocks, blocks], dim=1)
    return list(tokens.split(batch_size))


def _check_batches(batches: Sequence[torch.Tensor], vocab: int | None) -> int:
    """The block length L of `batches`; raises ValueError unless they are [block; block] sequences."""
    if not batches:
        raise ValueError("no sequences to probe")
    lengths = {x.shape[-1] if x.dim() == 2 else -1 for x in batches}
    if len(lengths) != 1 or min(lengths) < 4 or min(lengths) % 2:
        raise ValueError(
            f"induction: batches must be (B, 2L) with one even length 2L >= 4, got lengths {sorted(lengths)}"
        )
    L = lengths.pop() // 2
    for x in batches:
        if not torch.equal(x[:, :L], x[:, L:]):
            raise ValueError("induction: the second half of every sequence must repeat the first")
        if vocab is not None and int(x.max()) >= vocab:
            raise ValueError(
                f"induction: token id {int(x.max())} is outside the model's vocabulary ({vocab})"
            )
    return L


def attention_outputs(model: nn.Module) -> list[nn.Module]:
    """Each layer's attention output projection, in layer order: the module whose input holds the heads'
    outputs side by side (``self_attn.o_proj`` in Llama / OLMo-2, ``attention.dense`` in GPT-NeoX; under
    PEFT the LoRA wrapper of it)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name.endswith(("self_attn.o_proj", "attention.dense"))
    ]
    if not found:
        raise ValueError(f"{type(model).__name__}: no attention output projection found to ablate heads at")
    return [module for _, module in found]


@contextlib.contextmanager
def heads_ablated(model: nn.Module, heads: Sequence[tuple[int, int]]) -> Iterator[None]:
    """Within the block, the outputs of `heads` (``(layer, head)``) are zeroed where they enter their
    layer's output projection (columns ``head·D .. (head+1)·D``, D the head dimension): the zero-ablation
    of Olsson et al. 2022. The hooks go on exit; the weights are never touched."""
    config = _hf_config(model)
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    projections = attention_outputs(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < len(projections) and 0 <= head < n_heads):
            raise ValueError(f"no head {head} in layer {layer} ({len(projections)} layers x {n_heads} heads)")
        by_layer.setdefault(layer, []).append(head)

    def hook_for(columns: list[int]):
        def hook(module, args):
            x = args[0].clone()
            for head in columns:
                x[..., head * head_dim : (head + 1) * head_dim] = 0
            return (x, *args[1:])

        return hook

    handles = [projections[layer].register_forward_pre_hook(hook_for(hs)) for layer, hs in by_layer.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hf_config(model: nn.Module):
    get = getattr(model, "get_base_model", None)
    return (get() if get is not None else model).config


def _copy_losses(model: nn.Module, batches: Sequence[torch.Tensor], L: int, device, autocast_dtype):
    """Summed cross-entropy (nats) on the first and second copies, and the number of sequences."""
    first = second = 0.0
    n = 0
    with torch.no_grad(), autocast_context(device, autocast_dtype):
        for x in batches:
            x = x.to(device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            ce = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, 2L-1)
            first += ce[:, : L - 1].sum(dtype=torch.float64).item()
            second += ce[:, L - 1 :].sum(dtype=torch.float64).item()
            n += x.shape[0]
    return first, second, n


def induction_scores(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
    ablate_top: int | None = None,
) -> InductionResult:
    """Prefix-matching score per head and copying losses of `model` on [block; block] `batches`.

    Args:
        model: a causal LM (`transformers`, optionally PEFT-wrapped) on its device. Its parameters, its
            training flag and its attention kernel are left as they were.
        batches: int64 ``(B, 2L)`` sequences whose second half repeats the first (`induction_batches`).
        autocast_dtype: evaluate under autocast to this dtype (None: the parameters' dtype).
        ablate_top: also measure the second-copy loss with the this many highest-scoring heads ablated
            (`heads_ablated`).

    Returns:
        An `InductionResult`.
    """
    batches = list(batches)
    embeddings = model.get_input_embeddings()
    L = _check_batches(batches, getattr(embeddings, "num_embeddings", None))
    device = next(model.parameters()).device
    scores: torch.Tensor | None = None
    first = second = 0.0
    n = 0
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model), torch.no_grad(), autocast_context(device, autocast_dtype):
            for x in batches:
                x = x.to(device)
                out = model(input_ids=x, use_cache=False, output_attentions=True)
                attentions = out.attentions
                if not attentions or any(a is None for a in attentions):
                    raise ValueError(
                        f"{type(model).__name__} returned no attention weights with eager attention"
                    )
                batch_scores = prefix_matching_scores(attentions) * x.shape[0]
                scores = batch_scores if scores is None else scores + batch_scores
                logits = out.logits[:, :-1].float()
                ce = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, 2L-1)
                first += ce[:, : L - 1].sum(dtype=torch.float64).item()
                second += ce[:, L - 1 :].sum(dtype=torch.float64).item()
                n += x.shape[0]
        assert scores is not None
        per_head = (scores / n).tolist()
        ablated, ablated_loss = None, None
        if ablate_top:
            ranked = sorted(
                ((s, layer, head) for layer, hs in enumerate(per_head) for head, s in enumerate(hs)),
                key=lambda t: (-t[0], t[1], t[2]),
            )
            ablated = tuple((layer, head) for _, layer, head in ranked[:ablate_top])
            with heads_ablated(model, ablated):
                _, ablated_sum, _ = _copy_losses(model, batches, L, device, autocast_dtype)
            ablated_loss = ablated_sum / (n * L)
    finally:
        model.train(was_training)
    return InductionResult(
        prefix_matching=tuple(tuple(layer) for layer in per_head),
        first_copy_loss=first / (n * (L - 1)),
        second_copy_loss=second / (n * L),
        block_len=L,
        sequences=n,
        ablated_heads=ablated,
        ablated_second_copy_loss=ablated_loss,
    )


@PROBES.register("induction")
class InductionProbe:
    """Induction heads (prefix-matching score per head) and copying loss on [random block; same block]."""

    name = "induction"
    config_cls = InductionConfig

    def __init__(self, cfg: InductionConfig | None = None) -> None:
        self.cfg = cfg or InductionConfig()

    def block_len(self, seq_len: int) -> int:
        """L for a probe run at `seq_len`: the config's, else ``min(seq_len // 2, 64)``."""
        if self.cfg.block_len is not None:
            return self.cfg.block_len
        L = min(seq_len // 2, MAX_DEFAULT_BLOCK_LEN)
        if L < 2:
            raise ConfigError(
                f"induction: seq_len {seq_len} is too short for two blocks of >= 2 tokens; "
                f"set settings.block_len"
            )
        return L

    def batches(self, source, seq_len: int) -> list[torch.Tensor]:
        """The probe's own [block; block] sequences over the source's vocabulary (its tokens are not used)."""
        cfg = self.cfg
        return induction_batches(
            source.vocab_size, self.block_len(seq_len), cfg.sequences, cfg.batch_size, cfg.seed
        )

    def run(
        self,
        model: nn.Module,
        batches: Sequence[torch.Tensor],
        *,
        init_state: Any = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> InductionResult:
        """`induction_scores` on `batches` (`init_state` is not used)."""
        return induction_scores(model, batches, autocast_dtype=autocast_dtype, ablate_top=self.cfg.ablate_top)
