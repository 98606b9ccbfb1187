"""Metrics of generated text and of next-token distributions (Carlsson et al. 2025; docs/hyperfit.md).

Everything works on token ids (the model's own tokenizer, as the official hyperfitting code does), so a
metric never depends on how ids are decoded. Definitions:

- `ttr`: type-token ratio of the last `window` tokens of one continuation, #unique / #tokens (the official
  code's window is 96 generated tokens; a shorter continuation uses all of its tokens).
- `distinct_n`: corpus-level distinct-n (Li et al. 2016): #unique n-grams / #n-grams over all continuations.
- `bleu`: sentence BLEU with uniform weights over 1..max_n-grams, clipped counts against the maximum count
  in any reference, the brevity penalty against the closest reference length, and Chen & Cherry's smoothing
  method 1 (a zero n-gram match count becomes 0.1): what nltk's ``sentence_bleu(refs, hyp,
  smoothing_function=SmoothingFunction().method1)`` computes, as Texygen's Self-BLEU does. A hypothesis with
  no unigram match scores 0.
- `self_bleu`: the mean over continuations of the BLEU of each against all the others (lower = more diverse).
- `longest_copy`: the longest contiguous span of a continuation that also occurs in the training set;
  `overlap_share` is the share of continuations whose longest copy is at least `length` tokens.
- `copied_mask`: which positions of a continuation lie inside a span of at least `min_len` ids that occurs
  in the training set; `novel_ttr`: #distinct ids at the positions of the last `window` that are *not*
  copied / #positions of that window (recitation scores low instead of vanishing from the metric).
- `words`: the words of a decoded text (lower-cased runs of letters and digits, inner apostrophes kept),
  the unit in which `WordCopyIndex` counts copies of the training set (the paper's "> 10 words").
- `next_token_stats`: per sequence, the mean next-token cross-entropy (nats), entropy −Σ p log p and top-1
  probability of softmax(logits / τ).
- `match_temperature`: the τ at which a model's mean next-token entropy equals a target (entropy is
  increasing in τ, so bisection on log τ finds it).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from overtrain.analysis.stats import bootstrap_ci

Tokens = Sequence[int]


def ttr(tokens: Tokens, window: int | None = 96) -> float:
    """Type-token ratio of the last `window` tokens (all of them when `window` is None); NaN when empty."""
    tail = list(tokens)[-window:] if window else list(tokens)
    return len(set(tail)) / len(tail) if tail else math.nan


def ngrams(tokens: Tokens, n: int) -> list[tuple[int, ...]]:
    """The n-grams of `tokens` in order (none when it is shorter than `n`)."""
    seq = tuple(tokens)
    return [seq[i : i + n] for i in range(len(seq) - n + 1)]


def distinct_n(sequences: Sequence[Tokens], n: int) -> float:
    """#unique n-grams / #n-grams over all `sequences` (corpus level); NaN when there is no n-gram."""
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def _closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    # nltk: the reference length nearest the hypothesis length, the shorter one on a tie
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def _bleu_from_counts(matches: list[int], totals: list[int], hyp_len: int, ref_len: int) -> float:
    """BLEU from clipped match counts and n-gram totals per order (uniform weights, smoothing method 1)."""
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = 0.0
    for m, t in zip(matches, totals):
        log_p += math.log((m if m > 0 else 0.1) / max(1, t))
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p / len(matches))


def bleu(hypothesis: Tokens, references: Sequence[Tokens], max_n: int = 4) -> float:
    """Sentence BLEU of `hypothesis` against `references` (definition in the module docstring)."""
    if not references:
        raise ValueError("bleu needs at least one reference")
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hyp = Counter(ngrams(hypothesis, n))
        best: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, n)).items():
                best[gram] = max(best[gram], count)
        matches.append(sum(min(c, best[g]) for g, c in hyp.items()))
        totals.append(sum(hyp.values()))
    hyp_len = len(hypothesis)
    ref_len = _closest_ref_length(hyp_len, [len(r) for r in references])
    return _bleu_from_counts(matches, totals, hyp_len, ref_len)


def self_bleu(sequences: Sequence[Tokens], max_n: int = 4) -> float:
    """Mean BLEU of each sequence against all the others; NaN for fewer than two sequences.

    Exact and linear in the corpus size: the clipping count of an n-gram against "all others" is the
    largest count of that n-gram in any document, or the second largest in the document that holds the
    largest.
    """
    n_docs = len(sequences)
    if n_docs < 2:
        return math.nan
    counts = [[Counter(ngrams(seq, n)) for seq in sequences] for n in range(1, max_n + 1)]
    tops = []  # per order: gram -> (largest count, its document, second largest count)
    for by_doc in counts:
        top: dict[tuple[int, ...], list[int]] = {}
        for doc, counter in enumerate(by_doc):
            for gram, c in counter.items():
                entry = top.get(gram)
                if entry is None:
                    top[gram] = [c, doc, 0]
                elif c > entry[0]:
                    top[gram] = [c, doc, entry[0]]
                elif c > entry[2]:
                    entry[2] = c
        tops.append(top)
    lengths = [len(seq) for seq in sequences]
    scores = []
    for i in range(n_docs):
        matches, totals = [], []
        for by_doc, top in zip(counts, tops):
            m = 0
            for gram, c in by_doc[i].items():
                first, holder, second = top[gram]
                m += min(c, second if holder == i else first)
            matches.append(m)
            totals.append(sum(by_doc[i].values()))
        others = lengths[:i] + lengths[i + 1 :]
        scores.append(_bleu_from_counts(matches, totals, lengths[i], _closest_ref_length(lengths[i], others)))
    return float(np.mean(scores))


class CopyIndex:
    """The training sequences, concatenated with separators, for `longest_copy`."""

    def __init__(self, sequences: Sequence[Tokens]) -> None:
        parts = []
        for seq in sequences:
            parts.extend([np.asarray(seq, dtype=np.int64), np.array([-1], dtype=np.int64)])
        self.tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def longest_copy(self, tokens: Tokens) -> int:
        """Length of the longest contiguous span of `tokens` that occurs in a training sequence."""
        seq = np.asarray(tokens, dtype=np.int64)
        if seq.size == 0 or self.tokens.size == 0:
            return 0
        run = np.zeros(self.tokens.size, dtype=np.int64)  # run[j]: match length ending at training token j
        best = 0
        for t in seq:
            shifted = np.empty_like(run)
            shifted[0] = 0
            shifted[1:] = run[:-1]
            run = np.where(self.tokens == t, shifted + 1, 0)
            best = max(best, int(run.max()))
        return best

    def match_lengths(self, tokens: Tokens) -> np.ndarray:
        """``L[i]``: length of the longest span of `tokens` ending at position i that occurs in a training
        sequence (0 when ``tokens[i]`` is not in the training set); ``max(L)`` is `longest_copy`."""
        seq = np.asarray(tokens, dtype=np.int64)
        out = np.zeros(seq.size, dtype=np.int64)
        if seq.size == 0 or self.tokens.size == 0:
            return out
        run = np.zeros(self.tokens.size, dtype=np.int64)
        for i, t in enumerate(seq):
            shifted = np.empty_like(run)
            shifted[0] = 0
            shifted[1:] = run[:-1]
            run = np.where(self.tokens == t, shifted + 1, 0)
            out[i] = run.max()
        return out


def copied_mask(tokens: Tokens, index: CopyIndex, min_len: int) -> np.ndarray:
    """Boolean mask of the positions of `tokens` inside a span of at least `min_len` ids found in the
    training set. Exact: a copied span [a, b] has ``L[b] ≥ b − a + 1`` (`CopyIndex.match_lengths`), so
    marking ``[i − L[i] + 1, i]`` wherever ``L[i] ≥ min_len`` covers it, and marks nothing else."""
    lengths = index.match_lengths(tokens)
    mask = np.zeros(lengths.size, dtype=bool)
    for i in np.flatnonzero(lengths >= min_len):
        mask[i - lengths[i] + 1 : i + 1] = True
    return mask


def novel_ttr(tokens: Tokens, index: CopyIndex, min_len: int, window: int | None = 96) -> float:
    """TTR with copied spans removed: #distinct ids among the positions of the last `window` (all: None)
    that lie in no copied span of at least `min_len` ids (`copied_mask`, found on the whole sequence),
    divided by the number of positions of the window. Equals `ttr` when nothing is copied and 0 when
    everything is; NaN for an empty sequence."""
    seq = list(tokens)
    if not seq:
        return math.nan
    mask = copied_mask(seq, index, min_len)
    start = max(0, len(seq) - window) if window else 0
    kept = {t for t, m in zip(seq[start:], mask[start:]) if not m}
    return len(kept) / (len(seq) - start)


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """The words of `text`: lower-cased maximal runs of letters and digits, inner apostrophes kept
    (``"O'er the King's men."`` → ``["o'er", "the", "king's", "men"]``); punctuation and line breaks are
    separators, so speaker tags and stage directions count as the words they hold."""
    return _WORD.findall(text.lower())


class WordCopyIndex:
    """`CopyIndex` over the words (`words`) of the decoded training sequences: copies counted in words."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.vocab: dict[str, int] = {}
        seqs = [[self.vocab.setdefault(w, len(self.vocab)) for w in words(t)] for t in texts]
        self.index = CopyIndex(seqs)

    def ids(self, text: str) -> list[int]:
        # a word absent from the training set gets -2: it matches nothing (separators are -1)
        return [self.vocab.get(w, -2) for w in words(text)]

    def longest_copy(self, text: str) -> int:
        """The longest run of consecutive words of `text` that occurs in one training sequence."""
        return self.index.longest_copy(self.ids(text))


def longest_copy(tokens: Tokens, train: Sequence[Tokens] | CopyIndex) -> int:
    """Longest contiguous span of `tokens` found in any sequence of `train` (no span crosses two)."""
    index = train if isinstance(train, CopyIndex) else CopyIndex(train)
    return index.longest_copy(tokens)


def overlap_share(sequences: Sequence[Tokens], train: Sequence[Tokens] | CopyIndex, length: int) -> float:
    """Share of `sequences` that contain a span of at least `length` tokens of a training sequence."""
    index = train if isinstance(train, CopyIndex) else CopyIndex(train)
    if not sequences:
        return math.nan
    return float(np.mean([index.longest_copy(seq) >= length for seq in sequences]))


# --- next-token distributions -----------------------------------------------------------------------------


def next_token_stats(logits, targets, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Per-sequence means over positions of the next-token NLL, entropy and top-1 probability.

    Args:
        logits: float tensor ``[B, T, V]`` predicting `targets` (already shifted: position t predicts
            ``targets[:, t]``).
        targets: long tensor ``[B, T]``.
        temperature: τ; the distribution is softmax(logits / τ) (the NLL too).

    Returns:
        ``{"nll": [B], "entropy": [B], "top1": [B]}`` in nats and probabilities.
    """
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    top1 = p.max(-1).values
    return {
        "nll": nll.mean(1).double().numpy(),
        "entropy": entropy.mean(1).double().numpy(),
        "top1": top1.mean(1).double().numpy(),
    }


def mean_entropy(logits, temperature: float) -> float:
    """Mean next-token entropy (nats) of softmax(logits / τ) over every row of `logits` ``[..., V]``."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def match_temperature(
    logits, target: float, low: float = 0.05, high: float = 4.0, tol: float = 1e-4, max_iter: int = 60
) -> tuple[float, float, bool]:
    """The temperature τ at which the mean entropy of softmax(logits / τ) equals `target`.

    Entropy is increasing in τ, so bisection on log τ in [low, high] finds it.

    Returns:
        ``(τ, entropy at τ, inside)``; ``inside`` is False when `target` lies outside the entropies at
        `low` and `high` (τ is then the nearer end).
    """
    h_low, h_high = mean_entropy(logits, low), mean_entropy(logits, high)
    if target <= h_low:
        return low, h_low, False
    if target >= h_high:
        return high, h_high, False
    lo, hi = math.log(low), math.log(high)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        h = mean_entropy(logits, math.exp(mid))
        if abs(h - target) < tol:
            return math.exp(mid), h, True
        lo, hi = (mid, hi) if h < target else (lo, mid)
    tau = math.exp((lo + hi) / 2)
    return tau, mean_entropy(logits, tau), True


# --- paired comparisons ------------------------------------------------------------------------------


def paired_difference(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Mean of ``a − b`` over paired units (prompts) with a percentile-bootstrap CI (`analysis.stats`)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return bootstrap_ci(diff, np.mean, n_boot=n_boot, level=level, seed=seed)


def paired_ratio(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """``mean(a) / mean(b)`` over paired units with a bootstrap CI resampling the pairs together."""
    pairs = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)], axis=1)
    return bootstrap_ci(
        pairs, lambda x: x[:, 0].mean() / x[:, 1].mean(), n_boot=n_boot, level=level, seed=seed
    )
