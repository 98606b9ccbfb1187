"""Synthetic languages from hidden Markov models, with an exactly computable loss floor.

A language is an HMM with ``K`` hidden states and ``V`` tokens:

    s_0 ~ pi,   s_t | s_{t-1} ~ A[s_{t-1}, :],   x_t | s_t ~ E[s_t, :],

with every row of the transition matrix ``A`` drawn from ``Dirichlet(transition_alpha * 1_K)`` and every
row of the emission matrix ``E`` from ``Dirichlet(emission_alpha * 1_V)``; small concentrations make
rows peaked, so the language has learnable structure. Sequences start from the stationary distribution
``pi`` (``pi A = pi``), so every position has the same token marginal ``pi E``.

*Topics*: a mixture of ``M`` independent HMMs, each sequence drawn
from one of them with Zipf frequencies ``w_m ∝ (m + 1)^(-topic_zipf)``, so rare topics are learned late.
It is implemented as one HMM with ``M·K`` states, block-diagonal transitions (a sequence never leaves its
topic) and start distribution ``(w_1 pi_1, ..., w_M pi_M)``; sampling and the forward algorithm need no
special case. Topic ``m`` of a language is the same HMM whatever ``topics`` is, for a fixed seed.

Loss floor: the Bayes-optimal next-token cross-entropy, in nats/token, of a model that knows the HMM,

    floor(T) = 1/(T-1) · sum_{t=1}^{T-1} E[-log p(x_t | x_<t)],

estimated by Monte Carlo over sampled sequences with each ``p(x_t | x_<t)`` computed exactly by the
scaled forward algorithm (float64). As ``t`` grows, ``E[-log p(x_t | x_<t)]`` falls to the entropy rate
of the process, so ``floor(T)`` lies above the entropy rate and approaches it for long contexts.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from overtrain.data.base import SPLITS, DataConfig
from overtrain.data.tokenizer import id_tokenizer
from overtrain.errors import DataError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast


@DATASETS.register("hmm")
class HMMConfig(DataConfig):
    """A synthetic HMM language (optionally a Zipf mixture of topic HMMs) with a known loss floor."""

    name: Literal["hmm"] = "hmm"
    """Registered dataset name."""

    seed: int = Field(0, ge=0)
    """Which language: the HMM parameters are drawn from this seed. Two configs that share
    ``vocab_size`` but differ in ``seed`` are two languages over one vocabulary (pre-training vs
    fine-tuning task)."""

    states: int = Field(32, ge=1)
    """Hidden states K of each topic's HMM."""

    vocab_size: int = Field(128, ge=2)
    """Tokens V; ids are ``0..V-1``."""

    transition_alpha: float = Field(0.1, gt=0)
    """Dirichlet concentration of each transition row (smaller = more deterministic transitions)."""

    emission_alpha: float = Field(0.05, gt=0)
    """Dirichlet concentration of each emission row (smaller = each state emits fewer tokens)."""

    topics: int = Field(1, ge=1)
    """Number M of independent topic HMMs mixed; each sequence comes from one topic."""

    topic_zipf: float = Field(1.2, ge=0)
    """Zipf exponent s of the topic frequencies ``w_m ∝ (m+1)^-s`` (0 = equally frequent topics)."""

    floor_sequences: int = Field(1024, ge=2)
    """Monte-Carlo sequences for the loss-floor and entropy-rate estimates (their standard error
    shrinks as ``1/sqrt(floor_sequences)``)."""

    def build(self) -> HMMSource:
        return HMMSource(self)


class HMMSource:
    """Indexed batches of an HMM language, and its exact-likelihood loss floor (a `TokenSource`).

    Attributes:
        transitions: ``(M, K, K)`` transition blocks, one per topic (rows sum to 1).
        emissions: ``(M*K, V)`` emission rows of the block-diagonal HMM.
        topic_weights: ``(M,)`` topic frequencies.
        start: ``(M*K,)`` start distribution: each topic's stationary distribution times its weight.
    """

    def __init__(self, cfg: HMMConfig) -> None:
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        M, K, V = cfg.topics, cfg.states, cfg.vocab_size
        # Topics are drawn in order from one stream, so topic m does not depend on how many follow it.
        rng = numpy_rng(cfg.seed, "hmm", "params", K, V, cfg.transition_alpha, cfg.emission_alpha)
        transitions = np.empty((M, K, K))
        emissions = np.empty((M, K, V))
        for m in range(M):
            transitions[m] = _dirichlet_rows(rng, cfg.transition_alpha, K, K)
            emissions[m] = _dirichlet_rows(rng, cfg.emission_alpha, K, V)
        weights = (np.arange(1, M + 1, dtype=np.float64)) ** -cfg.topic_zipf
        self.topic_weights = weights / weights.sum()
        self.transitions = transitions
        self.emissions = emissions.reshape(M * K, V)
        self.start = np.concatenate([w * stationary(a) for w, a in zip(self.topic_weights, transitions)])
        self.start /= self.start.sum()

        # Sampling tables (alias method: O(1) per draw, no search). Transition tables store the *global*
        # next state, so a sequence never leaves its topic's block and needs no block arithmetic.
        self._trans_keep, self._trans_alias = alias_table(transitions.reshape(M * K, K))
        block = (np.arange(M * K) // K * K)[:, None]
        self._trans_self = (block + np.arange(K)).ravel()
        self._trans_alias = (block + self._trans_alias).ravel()
        self._trans_keep = self._trans_keep.ravel()
        self._emit_keep, self._emit_alias = (a.ravel() for a in alias_table(self.emissions))
        self._start_cdf = _closed_cdf(self.start)
        # Per-topic start CDFs (for sampling one topic only), flat with row m shifted by m.
        topic_start = self.start.reshape(M, K) / self.start.reshape(M, K).sum(axis=1, keepdims=True)
        self._topic_start_cdf = _offset_cdf(topic_start)
        self._estimates: dict[tuple[str, int], tuple[float, float]] = {}

    # --- sampling ----------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, n: int, seq_len: int, topic: int | None = None) -> np.ndarray:
        """`n` independent sequences of length `seq_len`, as an int64 array ``(n, seq_len)``.

        Vectorised over sequences with alias tables (Walker/Vose): a uniform ``u`` picks column
        ``k = floor(u·C)`` of the row and keeps it if the fractional part ``u·C - k`` is below the
        column's keep probability, else takes its alias. One step per time position for the states, one
        vectorised draw for all emissions. Uses exactly ``2·n·seq_len`` uniforms from `rng`.

        Args:
            rng: the random stream.
            n: number of sequences.
            seq_len: tokens per sequence.
            topic: draw every sequence from this topic (start from its stationary distribution) instead
                of from the mixture.
        """
        M, K, V = self.cfg.topics, self.cfg.states, self.vocab_size
        u = rng.random((2, n, seq_len))
        if topic is None:
            s = np.searchsorted(self._start_cdf, u[0, :, 0], side="right")
        else:
            if not 0 <= topic < M:
                raise DataError(f"topic must lie in [0, {M}), got {topic}")
            s = np.searchsorted(self._topic_start_cdf, topic + u[0, :, 0], side="right")
        states = np.empty((n, seq_len), dtype=np.int64)
        states[:, 0] = s
        # Column choice and its fractional part for every transition, computed once for all steps.
        scaled = u[0, :, 1:] * K
        column = scaled.astype(np.int64)
        frac = scaled - column
        keep, alias, own = self._trans_keep, self._trans_alias, self._trans_self
        for t in range(1, seq_len):
            flat = s * K + column[:, t - 1]
            s = np.where(frac[:, t - 1] < keep[flat], own[flat], alias[flat])
            states[:, t] = s
        scaled = u[1] * V
        column = scaled.astype(np.int64)
        flat = states * V + column
        return np.where(scaled - column < self._emit_keep[flat], column, self._emit_alias[flat])

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Batch `index` of `split` (``train`` or ``val``): int64 ``(batch_size, seq_len)``.

        Each (split, index, batch_size, seq_len) has its own seed stream, so train and val never share
        sequences except by chance.
        """
        import torch

        check_request(split, index, batch_size, seq_len)
        rng = numpy_rng(self.cfg.seed, "hmm", split, index, batch_size, seq_len)
        return torch.from_numpy(self.sample(rng, batch_size, seq_len))

    # --- exact likelihood ----------------------------------------------------------------------------

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """``log p(x_t | x_<t)`` in nats for every position of every sequence, by the forward algorithm.

        Scaled forward recursion in float64 over a batch of sequences: with the predictive state
        distribution ``q_t(s) = p(s_t = s | x_<t)`` (``q_0 = start``),

            p(x_t | x_<t) = sum_s q_t(s) E[s, x_t],
            q_{t+1} = normalise(q_t * E[:, x_t]) A,

        so nothing underflows however long the sequence. Summing over ``t`` gives ``log p(x)``. The
        topic is unknown to the predictor (it is inferred from the context, as a model must).

        Args:
            tokens: int array ``(n, T)`` (or ``(T,)``) of ids in ``[0, V)``.

        Returns:
            float64 array of the same shape.
        """
        x = np.asarray(tokens, dtype=np.int64)
        squeeze = x.ndim == 1
        x = np.atleast_2d(x)
        if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
            raise DataError(f"token ids must lie in [0, {self.vocab_size}), got {x.min()}..{x.max()}")
        M, K = self.cfg.topics, self.cfg.states
        start = np.broadcast_to(self.start.reshape(M, 1, K), (M, x.shape[0], K))
        out = _forward(x[None], start, self.transitions, self._emissions_by_token, known_topic=False)[0]
        return out[0] if squeeze else out

    @cached_property
    def _emissions_by_token(self) -> np.ndarray:
        """``(M, V, K)``: ``[m, v, k]`` = probability that state k of topic m emits v."""
        M, K = self.cfg.topics, self.cfg.states
        return np.ascontiguousarray(self.emissions.reshape(M, K, self.vocab_size).transpose(0, 2, 1))

    def _estimate(self, kind: str, seq_len: int) -> tuple[float, float]:
        """Monte-Carlo mean and standard error (nats/token) of ``-log p(x_t | x_<t)`` averaged over the
        positions of each sequence (``1..T-1`` for ``floor``, the second half for ``rate``).

        Sequences are iid, so the standard error of the mean of per-sequence averages is
        ``std / sqrt(n)``. ``floor`` samples from the mixture and predicts with the mixture (the topic is
        inferred from context). ``rate`` stratifies by topic: the entropy rate of a mixture of ergodic
        HMMs is ``sum_m w_m h_m`` (the topic costs a bounded number of nats, spread over infinitely many
        tokens), so each topic's ``h_m`` is estimated on its own sequences with its own HMM.
        """
        key = (kind, seq_len)
        if key in self._estimates:
            return self._estimates[key]
        M, K = self.cfg.topics, self.cfg.states
        n = self.cfg.floor_sequences
        rng = numpy_rng(self.cfg.seed, "hmm", kind, seq_len)
        if kind == "floor":
            nll = -self.log_prob(self.sample(rng, n, seq_len))[:, 1:]
            per_seq = nll.mean(axis=1)
            result = (float(per_seq.mean()), float(per_seq.std(ddof=1) / np.sqrt(n)))
        else:
            per_topic = max(-(-n // M), 8)
            x = np.stack([self.sample(rng, per_topic, seq_len, topic=m) for m in range(M)])
            start = np.broadcast_to(self.start.reshape(M, 1, K), (M, per_topic, K))
            start = start / start.sum(axis=2, keepdims=True)
            nll = -_forward(x, start, self.transitions, self._emissions_by_token, known_topic=True)
            per_seq = nll[:, :, seq_len // 2 :].mean(axis=2)  # (M, per_topic)
            h = per_seq.mean(axis=1)
            se = per_seq.std(axis=1, ddof=1) / np.sqrt(per_topic)
            w = self.topic_weights
            result = (float(w @ h), float(np.sqrt((w**2) @ (se**2))))
        self._estimates[key] = result
        return result

    def loss_floor(self, seq_len: int) -> float:
        """Bayes-optimal mean next-token loss (nats/token) over positions ``1..seq_len-1``.

        Monte-Carlo mean over `floor_sequences` sequences of exact forward-algorithm conditionals; its
        standard error is `loss_floor_stderr`. Cached per `seq_len`.
        """
        return self._estimate("floor", _check_floor_len(seq_len))[0]

    def loss_floor_stderr(self, seq_len: int) -> float:
        """Standard error (nats/token) of `loss_floor` at this `seq_len`."""
        return self._estimate("floor", _check_floor_len(seq_len))[1]

    def entropy_rate(self, length: int = 512) -> float:
        """Asymptotic entropy rate (nats/token): mean ``-log p(x_t | x_<t)`` over the second half of
        sequences of `length` tokens.

        ``H(x_t | x_<t)`` decreases in ``t`` towards the entropy rate, so this is an upper estimate that
        is tight once the state posterior has forgotten the start (tens of tokens for K = 32).
        """
        return self._estimate("rate", _check_rate_len(length))[0]

    def entropy_rate_stderr(self, length: int = 512) -> float:
        """Standard error (nats/token) of `entropy_rate` at this `length`."""
        return self._estimate("rate", _check_rate_len(length))[1]

    def token_marginal(self) -> np.ndarray:
        """Stationary token distribution ``start @ E`` (``(V,)``): the marginal of every position."""
        return self.start @ self.emissions

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerFast:
        return id_tokenizer(self.vocab_size)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """Word-level tokenizer over ``t0 .. t{V-1}`` (no special tokens)."""
        return self._tokenizer


# --- helpers --------------------------------------------------------------------------------------------


def check_request(split: str, index: int, batch_size: int, seq_len: int, splits=SPLITS) -> None:
    """Raise `DataError` for a split outside `splits`, a negative index or an empty batch."""
    if split not in splits:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(splits)}")
    if index < 0:
        raise DataError(f"batch index must be >= 0, got {index}")
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")


def _check_floor_len(seq_len: int) -> int:
    if seq_len < 2:
        raise DataError(f"loss_floor needs seq_len >= 2 (a next token to predict), got {seq_len}")
    return seq_len


def _check_rate_len(length: int) -> int:
    if length < 4:
        raise DataError(f"entropy_rate needs length >= 4, got {length}")
    return length


def _forward(
    x: np.ndarray,
    start: np.ndarray,
    transitions: np.ndarray,
    emissions_by_token: np.ndarray,
    *,
    known_topic: bool,
) -> np.ndarray:
    """Scaled forward algorithm over a block-diagonal HMM; returns ``log p(x_t | x_<t)``.

    The state distribution is kept as ``(M, n, K)`` (topic block, sequence, state within the block) so
    the transition step is one batched matmul ``(M, n, K) @ (M, K, K)``: the dense ``(M·K)^2`` matrix is
    never formed.

    Args:
        x: tokens. ``known_topic=False``: ``(1, n, T)``; every sequence spreads over all M blocks and is
            normalised over all of them. ``known_topic=True``: ``(M, n, T)``; group m is topic m's
            sequences, kept (and normalised) inside block m.
        start: ``(M, n, K)`` initial state distribution of every sequence.
        transitions: ``(M, K, K)``.
        emissions_by_token: ``(M, V, K)``.

    Returns:
        ``(G, n, T)`` float64, G = 1 or M.
    """
    G, n, T = x.shape
    M, V, K = emissions_by_token.shape
    out = np.empty((G, n, T))
    pred = start
    if known_topic:
        # Row m*V + v of the flattened table is topic m's likelihood of token v: one gather per step.
        flat_lik = emissions_by_token.reshape(M * V, K)
        rows = x + (np.arange(M) * V)[:, None, None]
    for t in range(T):
        # In-place products and einsum reductions: this loop is memory-bound at (M, n, K).
        if known_topic:
            joint = flat_lik[rows[:, :, t]]  # (M, n, K)
            joint *= pred
            c = np.einsum("mnk->mn", joint)
            out[:, :, t] = np.log(c)
            joint *= (1.0 / c)[:, :, None]
        else:
            joint = np.take(emissions_by_token, x[0, :, t], axis=1)  # (M, n, K)
            joint *= pred
            c = np.einsum("mnk->n", joint)
            out[0, :, t] = np.log(c)
            joint *= (1.0 / c)[None, :, None]
        pred = np.matmul(joint, transitions)
    return out


def _dirichlet_rows(rng: np.random.Generator, alpha: float, rows: int, cols: int) -> np.ndarray:
    p = rng.dirichlet(np.full(cols, alpha), size=rows)
    # numpy's small-alpha sampler is stable, but a row of underflowed zeros would make the HMM
    # undefined; renormalising guards against a sum that drifted from 1.
    sums = p.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(p)) or np.any(sums <= 0):
        raise DataError(f"Dirichlet({alpha}) produced a degenerate row; use a larger concentration")
    return p / sums


def stationary(transition: np.ndarray) -> np.ndarray:
    """A stationary distribution ``pi = pi A`` of a row-stochastic matrix.

    ``uniform @ A^(2^j)`` by repeated squaring converges for any aperiodic chain (Dirichlet rows have
    positive self-loops almost surely) and is stationary even if the chain is reducible; a few plain
    steps then polish the rounding of the squarings.
    """
    power = transition.copy()
    for _ in range(64):
        nxt = power @ power
        nxt /= nxt.sum(axis=1, keepdims=True)
        if np.abs(nxt - power).max() < 1e-15:
            power = nxt
            break
        power = nxt
    pi = power.mean(axis=0)
    for _ in range(4):
        pi = pi @ transition
    return pi / pi.sum()


def _closed_cdf(p: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    return cdf


def _offset_cdf(rows: np.ndarray) -> np.ndarray:
    """Flat sorted table: row r's cumulative sums shifted by r, last entry exactly r + 1."""
    cdf = np.cumsum(rows, axis=1)
    cdf[:, -1] = 1.0
    return (cdf + np.arange(rows.shape[0], dtype=np.float64)[:, None]).ravel()


def alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker alias tables for every row of `p` (``(R, C)``, rows sum to 1), built for all rows at once.

    Sampling column ``k`` uniformly and keeping it with probability ``keep[k]``, else taking
    ``alias[k]``, draws ``j`` with probability ``(keep[j] + sum_{k: alias[k]=j} (1 - keep[k])) / C
    = p[j]``.

    Construction (Vose, in sorted order so it vectorises over rows): scale ``q = C·p`` and sort each row
    ascending. The unfinished columns always form a contiguous sorted range ``[i, j]`` whose ``q`` sums
    to its length, and ``j`` holds the current large column (the only one whose ``q`` has been changed).
    Each step finishes one column: if ``q[j]`` has dropped below 1 it is finished with alias ``j-1`` (the
    largest untouched column, which then is >= 1), else the smallest column ``i`` is finished with alias
    ``j``; the finished column's deficit ``1 - q`` is taken from its alias. The last column keeps 1.

    Returns:
        ``keep`` (float64 ``(R, C)``) and ``alias`` (int64 ``(R, C)``), indexed by original column.
    """
    R, C = p.shape
    order = np.argsort(p, axis=1, kind="stable")
    q = np.take_along_axis(p, order, axis=1) * C
    keep = np.ones((R, C))
    alias = np.tile(np.arange(C), (R, 1))
    rows = np.arange(R)
    i = np.zeros(R, dtype=np.int64)
    j = np.full(R, C - 1, dtype=np.int64)
    for _ in range(C - 1):
        large_done = q[rows, j] < 1.0
        small = np.where(large_done, j, i)
        large = np.where(large_done, j - 1, j)
        keep[rows, small] = q[rows, small]
        alias[rows, small] = large
        q[rows, large] -= 1.0 - q[rows, small]
        i += ~large_done
        j -= large_done
    keep = np.clip(keep, 0.0, 1.0)
    # Back from sorted positions to original columns.
    keep_out = np.empty_like(keep)
    alias_out = np.empty_like(alias)
    np.put_along_axis(keep_out, order, keep, axis=1)
    np.put_along_axis(alias_out, order, np.take_along_axis(order, alias, axis=1), axis=1)
    return keep_out, alias_out
