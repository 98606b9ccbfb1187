"""Generation metrics against hand-computed values, temperature matching, and the citation blocker (it never
lets a training (k+1)-gram through and leaves every other score untouched)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from overtrain.analysis import generation as gm
from overtrain.studies.hyperfit.blocker import CitationBlocker


def test_ttr_over_the_last_window():
    assert gm.ttr([1, 2, 2, 3], window=None) == 3 / 4
    assert gm.ttr([1, 2, 2, 3], window=3) == 2 / 3  # [2, 2, 3]
    assert gm.ttr([1, 2, 2, 3], window=2) == 1.0  # [2, 3]
    assert gm.ttr([5, 5], window=96) == 1 / 2  # shorter than the window: all tokens
    assert math.isnan(gm.ttr([], window=4))


def test_distinct_n_is_corpus_level():
    seqs = [[1, 2, 1, 2], [1, 2, 3]]
    assert gm.distinct_n(seqs, 1) == 3 / 7  # 7 tokens, types {1, 2, 3}
    assert gm.distinct_n(seqs, 2) == 3 / 5  # (1,2) (2,1) (1,2) | (1,2) (2,3)
    assert math.isnan(gm.distinct_n([[1]], 2))


def test_bleu_by_hand():
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> 0.1 (smoothing method 1); equal lengths: no brevity penalty
    assert gm.bleu([1, 2, 3, 4], [[1, 2, 3, 5]]) == pytest.approx((0.75 * 2 / 3 * 0.5 * 0.1) ** 0.25)
    # brevity penalty exp(1 - 4/2); p3 and p4 have no n-grams: 0.1 / max(1, 0)
    assert gm.bleu([1, 2], [[1, 2, 3, 4]]) == pytest.approx(math.exp(1 - 2) * (1 * 1 * 0.1 * 0.1) ** 0.25)
    # clipping: four 7s against a reference with two
    assert gm.bleu([7, 7, 7, 7], [[7, 7]]) == pytest.approx((2 / 4 * 1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25)
    # the closest reference length decides the penalty; no unigram in common scores 0
    assert gm.bleu([1, 2], [[1, 2, 9, 9, 9], [1, 2, 9]]) == pytest.approx(math.exp(1 - 3 / 2) * 0.01**0.25)
    assert gm.bleu([1, 2], [[3, 4]]) == 0.0


def test_self_bleu_by_hand_and_against_the_pairwise_definition():
    a, b, c = [1, 2, 3, 4], [1, 2, 3, 5], [6, 7, 8, 9]
    one = (0.75 * 2 / 3 * 0.5 * 0.1) ** 0.25  # a against {b, c} and b against {a, c}; c matches nothing
    assert gm.self_bleu([a, b, c]) == pytest.approx(2 * one / 3)
    assert gm.self_bleu([a, a]) == pytest.approx(1.0)
    rng = random.Random(0)
    for _ in range(30):
        docs = [[rng.randrange(4) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(2, 6))]
        pairwise = np.mean([gm.bleu(d, docs[:i] + docs[i + 1 :]) for i, d in enumerate(docs)])
        assert gm.self_bleu(docs) == pytest.approx(pairwise, abs=1e-12)


def test_bleu_matches_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    smooth = nltk_bleu.SmoothingFunction().method1
    rng = random.Random(1)
    for _ in range(100):
        docs = [[rng.randrange(6) for _ in range(rng.randint(1, 15))] for _ in range(rng.randint(2, 5))]
        want = nltk_bleu.sentence_bleu(docs[1:], docs[0], smoothing_function=smooth)
        assert gm.bleu(docs[0], docs[1:]) == pytest.approx(want, abs=1e-12)


def test_longest_copy_and_overlap_share():
    train = [[0, 1, 2, 3], [3, 4, 9, 9]]
    assert gm.longest_copy([1, 2, 3, 4, 9], train) == 3  # 1 2 3 | 3 4 9: no span crosses two sequences
    assert gm.longest_copy([5, 6], train) == 0
    assert gm.longest_copy([9, 9, 9], train) == 2
    index = gm.CopyIndex(train)
    assert gm.overlap_share([[1, 2, 3, 4, 9], [5, 5], [4, 9, 9]], index, 3) == pytest.approx(2 / 3)


def test_copied_mask_and_novel_ttr_by_hand():
    index = gm.CopyIndex([[1, 2, 3, 4, 5], [7, 8]])
    seq = [9, 1, 2, 3, 4, 6, 7, 8, 9]  # copies [1, 2, 3, 4] (4 ids) and [7, 8] (2 ids)
    assert list(index.match_lengths(seq)) == [0, 1, 2, 3, 4, 0, 1, 2, 0]
    assert list(gm.copied_mask(seq, index, 3)) == [False, True, True, True, True, False, False, False, False]
    assert list(gm.copied_mask(seq, index, 2)) == [0, 1, 1, 1, 1, 0, 1, 1, 0]
    # min_len 3: kept positions 9, 6, 7, 8, 9 -> types {9, 6, 7, 8} over the 9 positions
    assert gm.novel_ttr(seq, index, 3, window=None) == 4 / 9
    # window of the last 4 (6, 7, 8, 9), min_len 2: only 6 and 9 are kept -> 2 / 4
    assert gm.novel_ttr(seq, index, 2, window=4) == 2 / 4
    assert gm.novel_ttr([1, 2, 3], index, 3, window=None) == 0.0  # all recitation
    assert gm.novel_ttr([6, 6, 9], index, 3, window=None) == gm.ttr([6, 6, 9], None)  # no copy: the TTR
    assert math.isnan(gm.novel_ttr([], index, 3))


def test_words_and_word_copies_by_hand():
    assert gm.words("O'er the King's men.\n\n[Exeunt.] HAMLET_2") == [
        "o'er",
        "the",
        "king's",
        "men",
        "exeunt",
        "hamlet",
        "2",
    ]
    index = gm.WordCopyIndex(["To be, or not to be: that is the question.", "Exit GHOST."])
    # punctuation, case and line breaks do not matter; "be that is the" continues the copy
    assert index.longest_copy("TO BE\nor not to be -- that is the answer") == 9
    assert index.longest_copy("ghost exit") == 1  # the order matters
    assert index.longest_copy("unknown words only") == 0
    assert index.longest_copy("") == 0


def test_next_token_stats_by_hand():
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])  # p = (1/4, 3/4), then (1/2, 1/2)
    stats = gm.next_token_stats(logits, torch.tensor([[0, 1]]))
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert stats["entropy"][0] == pytest.approx((h1 + math.log(2)) / 2)
    assert stats["top1"][0] == pytest.approx((0.75 + 0.5) / 2)
    assert stats["nll"][0] == pytest.approx((math.log(4) + math.log(2)) / 2)
    cold = gm.next_token_stats(logits[:, :1], torch.tensor([[1]]), temperature=0.5)  # p = (1/10, 9/10)
    assert cold["top1"][0] == pytest.approx(0.9) and cold["nll"][0] == pytest.approx(-math.log(0.9))


def test_match_temperature_finds_the_entropy():
    logits = torch.randn(500, 50, generator=torch.Generator().manual_seed(0)) * 3
    target = 0.5 * gm.mean_entropy(logits, 1.0)
    tau, h, inside = gm.match_temperature(logits, target)
    assert inside and abs(h - target) < 1e-4 and tau < 1
    assert gm.mean_entropy(logits, tau) == pytest.approx(h)
    tau_lo, _, inside = gm.match_temperature(logits, 0.0)
    assert not inside and tau_lo == 0.05


def test_paired_difference_and_ratio():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5])
    est = gm.paired_difference(a, b, n_boot=200)
    assert (est.value, est.low, est.high) == pytest.approx((0.5, 0.5, 0.5))
    assert gm.paired_ratio(a, b, n_boot=200).value == pytest.approx(2 / 1.5)


# --- the citation blocker ---------------------------------------------------------------------------------


def test_blocker_bans_exactly_the_training_continuations():
    blocker = CitationBlocker([[1, 2, 3, 4], [1, 2, 5]], k=2)
    assert blocker.banned == {(1, 2): [3, 5], (2, 3): [4]}
    scores = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[0, 1, 2], [7, 2, 3], [0, 0, 0]])
    out = blocker(ids, scores)
    assert torch.isinf(out[0, [3, 5]]).all() and torch.isinf(out[1, 4])
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[0, [3, 5]] = keep[1, 4] = False
    assert torch.equal(out[keep], scores[keep])  # every other score untouched, bit for bit
    assert torch.equal(blocker(ids[:, :1], scores), scores)  # fewer than k tokens: nothing to check
    assert blocker.blocked == 3


def _tiny_lm(vocab: int = 12):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked predictions: greedy text repeats itself, so it can be copied
    return model


def test_blocked_generation_never_emits_a_training_ngram():
    from overtrain.probes.generation import SamplingConfig, generate

    model = _tiny_lm()
    prompts = torch.randint(0, 12, (6, 4), generator=torch.Generator().manual_seed(1))
    free = generate(model, prompts, 20)
    train = free.tolist()  # the model's own continuations: unblocked greedy copies them entirely
    k = 3
    grams = {tuple(s[i : i + k + 1]) for s in train for i in range(len(s) - k)}
    for sampling in (None, SamplingConfig(temperature=1.0, top_p=1.0, top_k=0)):
        blocker = CitationBlocker(train, k)
        out = generate(model, prompts, 20, sampling=sampling, processors=[blocker], seed=(0,))
        full = torch.cat([prompts, out], 1).tolist()
        for row in full:
            assert not any(tuple(row[j - k : j + 1]) in grams for j in range(prompts.shape[1], len(row)))
        assert gm.overlap_share(out.tolist(), train, k + 1) == 0.0
    assert gm.overlap_share(free.tolist(), train, k + 1) == 1.0
    # greedy with the blocker equals greedy without it up to the first banned step of each row
    blocked = generate(model, prompts, 20, processors=[CitationBlocker(train, k)])
    for p, f, b in zip(prompts.tolist(), free.tolist(), blocked.tolist()):
        first = next(i for i, (x, y) in enumerate(zip(f, b)) if x != y)
        row, j = p + f, len(p) + first
        assert tuple(row[j - k : j + 1]) in grams  # the first change is a banned choice of free greedy


def test_generate_matches_transformers_and_the_blocker_plugs_into_it():
    from transformers import LogitsProcessorList

    from overtrain.probes.generation import generate

    model = _tiny_lm()
    prompts = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(2))
    train = generate(model, prompts, 12).tolist()
    ours = generate(model, prompts, 12, processors=[CitationBlocker(train, 2)])
    theirs = model.generate(
        prompts,
        max_new_tokens=12,
        do_sample=False,
        logits_processor=LogitsProcessorList([CitationBlocker(train, 2)]),
    )
    assert torch.equal(ours, theirs[:, prompts.shape[1] :]) and not torch.equal(ours, torch.tensor(train))
