"""Open-ended generation as a probe: continuations of fixed held-out prompts and their metrics, and
next-token statistics on validation text (Carlsson et al. 2025; docs/hyperfit.md; metrics in
`overtrain.analysis.generation`).

- Prompts are `prompts` windows of ``prompt_len + new_tokens`` tokens of the *validation* split at
  non-overlapping positions chosen by `seed`; the first ``prompt_len`` tokens are the context, the rest is
  the human continuation (the reference every setting is compared with).
- `generate` decodes with a KV cache, greedy or sampled (temperature, top-k, top-p, in the order
  ``transformers`` applies them), after any logits processors (e.g. the citation blocker). Exactly
  `new_tokens` are generated (no end-of-text stop), so every continuation has the same length. Sampling
  draws from a generator seeded by `seed`: the same call gives the same text.
- `val_stats` runs the model over validation windows and returns per-sequence NLL, entropy and top-1
  probability (`overtrain.analysis.generation.next_token_stats`), optionally keeping the logits of a random
  subset of positions for temperature matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from overtrain.analysis import generation as gm
from overtrain.config import BaseConfig
from overtrain.errors import DataError
from overtrain.seed import numpy_rng, torch_generator


class SamplingConfig(BaseConfig):
    """A sampling decoder (the paper's baseline: top-p 0.9, temperature 0.7, top-k 50)."""

    temperature: float = Field(0.7, gt=0)
    """Softmax temperature."""

    top_p: float = Field(0.9, gt=0, le=1)
    """Nucleus: keep the smallest set of tokens whose probability reaches this (1 = off)."""

    top_k: int = Field(50, ge=0)
    """Keep the k most likely tokens (0 = off)."""


class GenerationEvalConfig(BaseConfig):
    """What every evaluation of a model measures: continuations of held-out prompts and validation text."""

    prompts: int = Field(128, ge=2)
    """Held-out prompts (validation split); the unit of every paired confidence interval."""

    prompt_len: int = Field(32, ge=1)
    """Context tokens per prompt (the official code: 32)."""

    new_tokens: int = Field(96, ge=2)
    """Generated tokens per continuation (the official code generates up to 256 − 32)."""

    ttr_window: int | None = Field(96, ge=1)
    """TTR over the last this many generated tokens (the official code: 96; None: all of them)."""

    distinct: list[int] = [1, 2, 3]
    """Orders n of the corpus-level distinct-n scores."""

    bleu_n: int = Field(4, ge=1)
    """Highest n-gram order of Self-BLEU."""

    overlap_len: int = Field(10, ge=1)
    """A continuation *copies* the training set when it contains a training span of at least this many tokens
    (the paper reports the share with a > 10-token overlap)."""

    block_longer_than: int = Field(5, ge=1)
    """Citation blocking: no training n-gram longer than this may be emitted (the paper: 5 tokens)."""

    val_batches: int = Field(8, ge=1)
    """Validation batches for perplexity, entropy and top-1 probability."""

    val_batch_size: int = Field(32, ge=1)
    """Sequences per validation batch (each is one unit of those CIs)."""

    sampling: SamplingConfig = SamplingConfig()
    """The nucleus-sampling baseline of the base model."""

    samples: int = Field(2, ge=1)
    """Continuations per prompt of the sampled settings (per-prompt metrics average them)."""

    match_positions: int = Field(4096, ge=64)
    """Validation positions whose logits are kept to match the temperature (bisection reads only these)."""

    batch_size: int = Field(128, ge=1)
    """Prompts decoded at once."""

    seed: int = 0
    """Seed of the prompt positions, the validation windows and the sampled decoders."""

    @model_validator(mode="after")
    def _orders(self) -> GenerationEvalConfig:
        if not self.distinct or any(n < 1 for n in self.distinct):
            raise ValueError("distinct: give n-gram orders >= 1")
        return self


# --- data --------------------------------------------------------------------------------------------------


def windows(tokens: np.ndarray, count: int, length: int, seed_parts: tuple) -> np.ndarray:
    """`count` non-overlapping windows of `length` tokens at random aligned slots: int64 ``[count, length]``.

    Slots are a permutation of ``len(tokens) // length`` aligned positions, so the first m windows of a
    larger draw are the windows of a draw of m (hyperfit sets are nested).
    """
    slots = len(tokens) // length
    if slots < count:
        raise DataError(f"the split holds {slots} windows of {length} tokens; {count} were asked for")
    order = numpy_rng(*seed_parts).permutation(slots)[:count]
    starts = order * length
    return np.asarray(tokens[starts[:, None] + np.arange(length)], dtype=np.int64)


def prompts_and_references(source, cfg: GenerationEvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out contexts ``[P, prompt_len]`` and their human continuations ``[P, new_tokens]``."""
    w = windows(source.tokens["val"], cfg.prompts, cfg.prompt_len + cfg.new_tokens, (cfg.seed, "prompts"))
    w = torch.from_numpy(w)
    return w[:, : cfg.prompt_len], w[:, cfg.prompt_len :]


def val_batches(source, cfg: GenerationEvalConfig, seq_len: int) -> list[torch.Tensor]:
    """The validation windows every model is measured on (same for all)."""
    w = torch.from_numpy(
        windows(source.tokens["val"], cfg.val_batches * cfg.val_batch_size, seq_len, (cfg.seed, "val"))
    )
    return list(w.split(cfg.val_batch_size))


# --- decoding -----------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model,
    prompts: torch.Tensor,
    new_tokens: int,
    *,
    sampling: SamplingConfig | None = None,
    processors: Sequence[Any] = (),
    seed: Sequence[Any] = (0,),
    batch_size: int = 128,
) -> torch.Tensor:
    """Continue every prompt by exactly `new_tokens` tokens.

    Args:
        model: a causal LM (``transformers``); evaluated in eval mode with a KV cache.
        prompts: int64 ``[P, L]`` (equal lengths, no padding).
        new_tokens: tokens to generate per prompt.
        sampling: None for greedy; else temperature, top-k and top-p sampling.
        processors: logits processors applied first, ``p(input_ids, scores) -> scores``.
        seed: parts of the sampling seed (`overtrain.seed.torch_generator`).
        batch_size: prompts per decoding batch.

    Returns:
        int64 ``[P, new_tokens]``.
    """
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = []
    if sampling is not None:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1:
            warpers.append(TopPLogitsWarper(sampling.top_p))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch_generator(*seed, "generate")
    out = []
    for chunk in prompts.split(batch_size):
        ids = chunk.to(device)
        step = model(input_ids=ids, use_cache=True)
        for _ in range(new_tokens):
            scores = step.logits[:, -1, :].float()
            for p in (*processors, *warpers):
                scores = p(ids, scores)
            if sampling is None:
                nxt = scores.argmax(-1)
            else:
                probs = torch.softmax(scores, -1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(device)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            step = model(input_ids=nxt[:, None], past_key_values=step.past_key_values, use_cache=True)
        out.append(ids[:, chunk.shape[1] :].cpu())
    model.train(was_training)
    return torch.cat(out)


def continuation_metrics(
    continuations: Sequence[Sequence[int]], cfg: GenerationEvalConfig, copy_index: gm.CopyIndex | None
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-continuation rows (``ttr``, ``longest_copy``) and corpus-level metrics of one setting.

    Corpus metrics: ``ttr`` (mean), ``distinct_<n>``, ``self_bleu``, and with a training set
    ``longest_copy`` (mean) and ``overlap`` (share with a copy of at least `overlap_len` tokens).
    """
    rows = []
    for seq in continuations:
        row = {"ttr": gm.ttr(seq, cfg.ttr_window)}
        if copy_index is not None:
            row["longest_copy"] = copy_index.longest_copy(seq)
        rows.append(row)
    corpus = {"ttr": float(np.mean([r["ttr"] for r in rows]))}
    for n in cfg.distinct:
        corpus[f"distinct_{n}"] = gm.distinct_n(continuations, n)
    corpus["self_bleu"] = gm.self_bleu(continuations, cfg.bleu_n)
    if copy_index is not None:
        copies = np.array([r["longest_copy"] for r in rows])
        corpus["longest_copy"] = float(copies.mean())
        corpus["overlap"] = float((copies >= cfg.overlap_len).mean())
    return rows, corpus


# --- next-token statistics ---------------------------------------------------------------------------


@torch.no_grad()
def val_stats(
    model,
    batches: Sequence[torch.Tensor],
    *,
    temperature: float = 1.0,
    keep_positions: int = 0,
    seed: Sequence[Any] = (0,),
) -> tuple[dict[str, np.ndarray], torch.Tensor | None]:
    """Per-sequence NLL, entropy and top-1 probability of softmax(logits / τ) over validation windows.

    Returns:
        ``({"nll", "entropy", "top1"}: arrays over sequences, kept logits [keep_positions, V] or None)``.
        Kept positions are drawn uniformly (without replacement) by `seed`.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"nll": [], "entropy": [], "top1": []}
    kept, total = [], sum(x.shape[0] * (x.shape[1] - 1) for x in batches)
    chosen = None
    if keep_positions:
        rng = numpy_rng(*seed, "positions")
        chosen = np.sort(rng.choice(total, min(keep_positions, total), replace=False))
    offset = 0
    for x in batches:
        x = x.to(device)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        for key, value in gm.next_token_stats(logits.cpu(), x[:, 1:].cpu(), temperature).items():
            parts[key].append(value)
        if chosen is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            mine = chosen[(chosen >= offset) & (chosen < offset + flat.shape[0])] - offset
            kept.append(flat[torch.from_numpy(mine).to(device)].cpu())
            offset += flat.shape[0]
    model.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}, (torch.cat(kept) if kept else None)


def summarize_val(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """``val/loss`` (mean NLL), ``val/ppl``, ``val/entropy``, ``val/top1`` from `val_stats` arrays."""
    loss = float(stats["nll"].mean())
    return {
        "val/loss": loss,
        "val/ppl": math.exp(loss),
        "val/entropy": float(stats["entropy"].mean()),
        "val/top1": float(stats["top1"].mean()),
    }


@torch.no_grad()
def continuation_nll(
    model, prompts: torch.Tensor, continuations: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Mean NLL (nats/token) of each continuation given its prompt under `model`: ``[P]``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for p, c in zip(prompts.split(batch_size), continuations.split(batch_size)):
        x = torch.cat([p, c], 1).to(device)
        logp = torch.log_softmax(
            model(input_ids=x, use_cache=False).logits[:, p.shape[1] - 1 : -1].float(), -1
        )
        out.append(-logp.gather(-1, x[:, p.shape[1] :, None]).squeeze(-1).mean(1).cpu().double().numpy())
    model.train(was_training)
    return np.concatenate(out)
