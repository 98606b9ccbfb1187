"""Citation blocking (Carlsson et al. 2025): forbid emitting any n-gram of a training set longer than k.

`CitationBlocker` implements the `transformers` logits-processor protocol (``processor(input_ids, scores) ->
scores``; it is not a subclass, so that importing this package does not import ``transformers``): pass it to
``model.generate(logits_processor=LogitsProcessorList([blocker]))`` or to
`overtrain.probes.generation.generate`. At every step it looks at the last `k` tokens of
each row (prompt included) and sets the score of every token that would complete a (k+1)-gram of the
training set to −inf. Every n-gram longer than k contains a (k+1)-gram, so no training span of more than k
tokens can end in a generated token; every other token keeps its score, bit for bit. Greedy or sampled
decoding alike.

A row for which every token of the vocabulary would be banned (impossible unless the training set holds
every continuation of its last k tokens) is left untouched rather than emitting NaNs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class CitationBlocker:
    """Ban every token that would complete a (k+1)-gram of `sequences`.

    Args:
        sequences: the training set, as sequences of token ids.
        k: the longest training span allowed in the output (the paper's threshold, reported as 5 tokens).

    Attributes:
        banned: ``{k-gram: [next tokens that complete a training (k+1)-gram]}``.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        table: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            seq = [int(t) for t in seq]
            for i in range(len(seq) - k):
                table.setdefault(tuple(seq[i : i + k]), set()).add(seq[i + k])
        self.banned = {key: sorted(value) for key, value in table.items()}
        self.blocked = 0
        """Token bans applied so far (rows × banned tokens with a finite score), for reporting."""

    def banned_next(self, context: Sequence[int]) -> list[int]:
        """The tokens banned after `context` (its last k tokens decide)."""
        if len(context) < self.k:
            return []
        return self.banned.get(tuple(int(t) for t in context[-self.k :]), [])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.k:
            return scores
        scores = scores.clone()
        for row, key in enumerate(input_ids[:, -self.k :].tolist()):
            banned = self.banned.get(tuple(key))
            if not banned or len(banned) >= scores.shape[1]:
                continue
            idx = torch.tensor(banned, device=scores.device)
            self.blocked += int(torch.isfinite(scores[row, idx]).sum())
            scores[row, idx] = -float("inf")
        return scores
