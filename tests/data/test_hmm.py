"""HMM languages: sampling, exact likelihood against brute force, loss floor, determinism, config errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from overtrain.config import validate
from overtrain.data.base import TokenSource
from overtrain.data.hmm import HMMConfig, alias_table
from overtrain.errors import ConfigError, DataError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

CHI2_P = 1e-6
"""Chi-square tests reject at this p-value: a correct sampler fails about once in a million runs."""


def dense_hmm(src):
    """The HMM as dense (start, A, E) over all M*K states: block-diagonal A."""
    M, K = src.cfg.topics, src.cfg.states
    A = np.zeros((M * K, M * K))
    for m in range(M):
        A[m * K : (m + 1) * K, m * K : (m + 1) * K] = src.transitions[m]
    return src.start, A, src.emissions


def brute_force_joint(src, T):
    """p(x) for every sequence x in V^T, by summing over every hidden path: array of shape (V,)*T."""
    start, A, E = dense_hmm(src)
    S, V = E.shape
    paths = np.array(list(itertools.product(range(S), repeat=T)))  # (S^T, T)
    path_p = start[paths[:, 0]] * np.prod(A[paths[:, :-1], paths[:, 1:]], axis=1)  # (S^T,)
    seqs = np.array(list(itertools.product(range(V), repeat=T)))  # (V^T, T)
    # emission probability of each sequence along each path: (V^T, S^T)
    emit = np.prod(E[paths[None, :, :], seqs[:, None, :]], axis=2)
    return (emit @ path_p).reshape((V,) * T)


@pytest.fixture(scope="module")
def tiny():
    return HMMConfig(
        states=2, vocab_size=3, transition_alpha=1.0, emission_alpha=1.0, floor_sequences=4000
    ).build()


@pytest.fixture(scope="module")
def tiny_topics():
    cfg = HMMConfig(
        states=2, vocab_size=3, transition_alpha=0.5, emission_alpha=0.5, topics=2, topic_zipf=1.0
    )
    return cfg.build()


def test_registered_and_protocol():
    assert DATASETS.get("hmm") is HMMConfig
    src = HMMConfig(states=4, vocab_size=8).build()
    assert isinstance(src, TokenSource)
    assert src.vocab_size == 8


def test_parameters_are_distributions(tiny_topics):
    src = tiny_topics
    np.testing.assert_allclose(src.transitions.sum(axis=2), 1.0, atol=1e-12)
    np.testing.assert_allclose(src.emissions.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(src.topic_weights, [2 / 3, 1 / 3], atol=1e-12)
    # each topic block of `start` is the topic weight times that topic's stationary distribution
    for m in range(2):
        block = src.start[2 * m : 2 * m + 2]
        assert block.sum() == pytest.approx(src.topic_weights[m], abs=1e-12)
        np.testing.assert_allclose(block @ src.transitions[m], block, atol=1e-12)


def test_forward_matches_brute_force_paths(tiny, tiny_topics):
    T = 5
    for src in (tiny, tiny_topics):
        joint = brute_force_joint(src, T)
        assert joint.sum() == pytest.approx(1.0, abs=1e-12)
        x = np.array([[2, 0, 1, 1, 0], [0, 0, 0, 2, 1]])
        lp = src.log_prob(x)
        assert lp.shape == (2, T)
        for row, seq in zip(lp, x):
            assert abs(row.sum() - np.log(joint[tuple(seq)])) < 1e-10
            # each conditional against the ratio of brute-force prefix marginals
            for t in range(T):
                prefix = joint[tuple(seq[: t + 1])].sum() if t + 1 < T else joint[tuple(seq)]
                before = joint[tuple(seq[:t])].sum() if t else 1.0
                assert abs(row[t] - np.log(prefix / before)) < 1e-10
        # a 1-D sequence gives a 1-D answer
        np.testing.assert_allclose(src.log_prob(x[0]), lp[0])


def test_loss_floor_matches_exact_enumeration(tiny):
    """Exact expected mean CE over positions 1..T-1 by enumerating all 3^5 sequences."""
    T = 5
    joint = brute_force_joint(tiny, T)
    exact = 0.0
    for seq in itertools.product(range(3), repeat=T):
        p = joint[seq]
        ce = 0.0
        for t in range(1, T):
            num = joint[seq[: t + 1]].sum() if t + 1 < T else p
            ce -= np.log(num / joint[seq[:t]].sum())
        exact += p * ce / (T - 1)
    floor, se = tiny.loss_floor(T), tiny.loss_floor_stderr(T)
    assert 0 < se < 0.02
    assert abs(floor - exact) < 4 * se, (floor, exact, se)


def test_iid_special_case_floor_is_emission_entropy():
    """With one hidden state tokens are iid, so the floor and the entropy rate are H(E[0])."""
    src = HMMConfig(states=1, vocab_size=6, emission_alpha=0.5, floor_sequences=2000).build()
    p = src.emissions[0]
    entropy = float(-(p * np.log(p)).sum())
    assert abs(src.loss_floor(8) - entropy) < 4 * src.loss_floor_stderr(8)
    assert abs(src.entropy_rate(16) - entropy) < 4 * src.entropy_rate_stderr(16)


def test_floor_above_entropy_rate_and_below_log_v():
    src = HMMConfig(states=8, vocab_size=16, floor_sequences=512).build()
    short, rate = src.loss_floor(4), src.entropy_rate(256)
    se = src.loss_floor_stderr(4) + src.entropy_rate_stderr(256)
    assert rate - 4 * se < src.loss_floor(64) < short + 4 * se
    assert short < np.log(16)
    assert src.loss_floor(4) == short  # cached, identical
    with pytest.raises(DataError, match="seq_len >= 2"):
        src.loss_floor(1)


@pytest.mark.parametrize("topics", [1, 3])
def test_token_marginal_matches_stationary_emissions(topics):
    """Tokens at one fixed position are iid across sequences with law start @ E: a chi-square test."""
    src = HMMConfig(states=4, vocab_size=8, topics=topics, emission_alpha=0.5).build()
    expected = src.token_marginal()
    assert expected.sum() == pytest.approx(1.0)
    x = src.sample(numpy_rng("test-marginal", topics), 20_000, 12)
    for position in (0, 11):  # the start and a position reached through 11 transitions
        counts = np.bincount(x[:, position], minlength=8)
        keep = expected > 1e-9  # a token of (numerically) zero probability must simply never appear
        assert counts[~keep].sum() == 0
        chi2 = (((counts - 20_000 * expected) ** 2) / (20_000 * expected))[keep].sum()
        assert chi2 < stats.chi2.ppf(1 - CHI2_P, keep.sum() - 1), (position, chi2)


def test_topic_sampling_stays_in_topic(tiny_topics):
    src = tiny_topics
    x = src.sample(numpy_rng("topic"), 20_000, 3, topic=1)
    # topic 1's own stationary token marginal
    pi = src.start[2:] / src.start[2:].sum()
    expected = pi @ src.emissions[2:]
    counts = np.bincount(x[:, 2], minlength=3)
    chi2 = ((counts - 20_000 * expected) ** 2 / (20_000 * expected)).sum()
    assert chi2 < stats.chi2.ppf(1 - CHI2_P, 2)
    with pytest.raises(DataError, match="topic"):
        src.sample(numpy_rng("topic"), 2, 3, topic=2)


def test_alias_tables_are_exact():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(40, 0.05), size=200)
    p[0] = 0.0
    p[0, 7] = 1.0  # a degenerate row
    p[1] = 1 / 40  # a uniform row
    keep, alias = alias_table(p)
    implied = keep.copy()
    np.add.at(implied, (np.repeat(np.arange(200), 40), alias.ravel()), (1 - keep).ravel())
    np.testing.assert_allclose(implied / 40, p, atol=1e-13)


def test_batches_deterministic_and_splits_differ():
    cfg = HMMConfig(states=8, vocab_size=16)
    a, b = cfg.build(), cfg.build()
    x = a.batch("train", 3, 4, 32)
    assert x.dtype == torch.int64 and x.shape == (4, 32)
    assert int(x.min()) >= 0 and int(x.max()) < 16
    assert torch.equal(x, b.batch("train", 3, 4, 32))
    assert not torch.equal(x, a.batch("train", 4, 4, 32))
    assert not torch.equal(x, a.batch("val", 3, 4, 32))
    with pytest.raises(DataError, match="split"):
        a.batch("test", 0, 4, 32)


def test_seed_changes_language_and_topic_zero_is_shared():
    one = HMMConfig(states=4, vocab_size=8).build()
    other = HMMConfig(states=4, vocab_size=8, seed=1).build()
    mixture = HMMConfig(states=4, vocab_size=8, topics=5).build()
    assert not np.allclose(one.transitions, other.transitions)
    np.testing.assert_array_equal(one.transitions[0], mixture.transitions[0])
    np.testing.assert_array_equal(one.emissions, mixture.emissions[:4])


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    src = HMMConfig(states=2, vocab_size=5).build()
    row = src.batch("val", 0, 1, 6)[0].tolist()
    tok = src.tokenizer()
    text = tok.decode(row)
    assert text == " ".join(f"t{i}" for i in row)
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == row


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"states": -1}, "states"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"transition_alpha": 0}, "transition_alpha"),
        ({"colour": 3}, "colour"),
    ],
)
def test_bad_config_is_one_line_config_error(data, field):
    with pytest.raises(ConfigError) as info:
        validate(HMMConfig, data)
    message = str(info.value)
    assert field in message and "\n" not in message
