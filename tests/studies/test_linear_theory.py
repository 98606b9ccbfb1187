"""The two-layer linear theory model: the checks of docs/theory.md, a plain numpy reference,
and the run kind's records.

The two shipped configs run once each per module (~3 s each on one core); everything else is tiny.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from overtrain.analysis.inflection import inflection_point
from overtrain.analysis.stats import spearman
from overtrain.config import build_config
from overtrain.errors import ConfigError
from overtrain.studies.overtraining.theory import LinearTheoryConfig, make_problem
from overtrain.studies.overtraining.theory_run import LinearTheoryResult, run_linear_theory

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "linear_theory"


@pytest.fixture(scope="module")
def default() -> LinearTheoryResult:
    cfg = build_config(LinearTheoryConfig, CONFIGS / "default.yaml")
    assert cfg.spectrum_exponent == 1.5 and cfg.seeds == [1, 2, 3]
    return run_linear_theory(cfg)


@pytest.fixture(scope="module")
def control() -> LinearTheoryResult:
    cfg = build_config(LinearTheoryConfig, CONFIGS / "negative-control.yaml")
    assert cfg.spectrum_exponent == 1.0
    return run_linear_theory(cfg)


def rise(curve: np.ndarray) -> float:
    """Last value over the minimum, minus one."""
    return float(curve[-1] / curve.min() - 1)


def interior(curve: np.ndarray) -> bool:
    return 0 < int(np.argmin(curve)) < curve.size - 1


# --- check 1: sensitivity rises ---------------------------------------------------------------------


def test_check1_delta_trends_up(default):
    """Spearman(T, Δ) >= 0.8 and Δ(last) >= 1.5 Δ(first) per seed at γ = 0.01 (docs/theory.md, check 1).

    Measured: Δ 0.0118 / 0.0125 / 0.0129 -> 0.0275 / 0.0280 / 0.0280 (ratio 2.34 / 2.24 / 2.16; an earlier pilot:
    0.011 -> 0.028, ratio 2.3-2.5), Spearman 0.999 for every seed (Δ is flat once the base loss is ~0, so
    the last ranks are near-ties decided by rounding: exact monotonicity is not required).
    """
    delta = default.curve("delta", gamma=0.01)
    for s, seed in enumerate(default.seeds):
        rho = spearman(default.steps, delta[s])
        assert rho >= 0.8, (seed, rho)
        assert delta[s, -1] >= 1.5 * delta[s, 0], (seed, delta[s, 0], delta[s, -1])
        assert (
            0.009 < delta[s, 0] < 0.015 and 0.024 < delta[s, -1] < 0.032
        )  # the magnitudes of our earlier numpy pilot
    assert (default.delta_se > 0).all()


def test_delta_matches_its_exact_expectation(default):
    """For any weights, E_ε[Δ] = ½γ²d(‖W1‖² + ‖W2‖²) + ½γ⁴d³ exactly (the terms linear in the residual
    W2W1 − M and the odd terms in ε average to zero). So Δ is a read-out of the weight norm, which keeps
    growing as small directions are learned. Asserted at every (seed, checkpoint, γ): the 20-draw mean is
    within 4 standard errors of it (measured: at most 1.2 SE, 4.8% relative)."""
    d = 40
    for g, gamma in enumerate(default.gammas):
        expected = 0.5 * gamma**2 * d * default.weight_norm_sq + 0.5 * gamma**4 * d**3
        z = np.abs(default.delta[:, :, g] - expected) / default.delta_se[:, :, g]
        assert z.max() < 4, (gamma, z.max())


# --- check 2: the U after fine-tuning ---------------------------------------------------------------


def test_check2_post_finetune_pretrain_loss_is_u_shaped(default):
    """docs/theory.md check 2: argmin_T of the post-fine-tuning pre-training loss is strictly interior and
    the last checkpoint is >= 5% above the minimum.

    Measured per seed (argmin step, rise at T = 1e5): seed 1 562, +51%; seed 2 3162, +2.0%; seed 3
    1778, +7.1% (an earlier numpy pilot: +7/+28/+60% on its own seeds). The rise varies a lot with the random
    fine-tuning feature: over seeds 1..30, 27 pass the 5% threshold (rise 1.5%..90%, median ~18%), so the
    5% claim is asserted on the seed-mean curve (the statistic the study reports: +11.7%, T* = 1778),
    and per seed we assert the U itself (interior minimum, higher at the end).
    """
    loss = default.curve("pretrain_loss")
    for s, seed in enumerate(default.seeds):
        assert interior(loss[s]), (seed, loss[s])
        assert rise(loss[s]) > 0.01, (seed, rise(loss[s]))
    inf = inflection_point(default.steps, loss, n_boot=2000, seed=0)
    assert inf.is_u(min_rise=0.05), inf
    assert 300 <= inf.t_star <= 3200  # the pilot's minimum at T ~ 1k-3k
    # the base model keeps improving all along: the U is not a worse base model
    assert (np.diff(default.base_loss, axis=1) <= 1e-12).all()


def test_perturbed_loss_is_u_shaped(default):
    """As in the pilot (docs/theory.md): the perturbed loss at γ = 0.03 has its minimum near T ~ 1k-2k, then rises ~5-15%.
    Measured: argmin 1778 for every seed, rise +5.8 / +6.1 / +6.0% (4.6-7.2% over seeds 1..30)."""
    loss = default.curve("perturbed_loss", gamma=0.03)
    for s, seed in enumerate(default.seeds):
        assert interior(loss[s]) and 1000 <= default.steps[np.argmin(loss[s])] <= 3200, seed
        assert rise(loss[s]) >= 0.03, (seed, rise(loss[s]))


# --- check 3: negative control ----------------------------------------------------------------------


def test_check3_negative_control_has_no_u(control, default):
    """With s_i = 3/i every direction is learned by ~3k steps and the weights then stop moving, so nothing
    rises late. Asserted: per seed, the last post-fine-tuning value is within 5% of the minimum (check 2's
    threshold fails) — measured +0.005% / +0.002% / +1.4% — and the seed-mean curve is within 1% (measured
    +0.006%); the perturbed loss at γ = 0.03 ends within 2% of its minimum (measured +0.5 / +0.7 / +0.6%,
    against +6% with the slow spectrum)."""
    loss = control.curve("pretrain_loss")
    for s, seed in enumerate(control.seeds):
        assert rise(loss[s]) < 0.05, (seed, rise(loss[s]))
        assert rise(control.curve("perturbed_loss", gamma=0.03)[s]) < 0.02, seed
    assert not inflection_point(control.steps, loss, n_boot=200).is_u(min_rise=0.01)
    # why: the weights have converged by 10k steps under s ∝ 1/i, not under s ∝ i^-1.5
    late = control.steps >= 10_000
    assert np.ptp(control.weight_norm_sq[:, late], axis=1).max() < 1e-9
    assert np.ptp(default.weight_norm_sq[:, default.steps >= 10_000], axis=1).min() > 1e-4


# --- the numbers are the plain algorithm ------------------------------------------------------------


def naive(cfg: LinearTheoryConfig, seed: int) -> dict[str, np.ndarray]:
    """The experiment for one seed as the textbook numpy loop (no batching, no in-place kernels)."""
    p = make_problem(cfg, seed)
    M, Mft, W1, W2 = p.target, p.ft_target, p.w1.copy(), p.w2.copy()

    def L(a, b, m):
        return 0.5 * np.sum((b @ a - m) ** 2)

    out = {k: [] for k in ("base", "pert", "ftpre", "task")}
    t = 0
    for step in cfg.checkpoint_steps():
        while t < step:
            R = W2 @ W1 - M
            W1, W2 = W1 - cfg.lr * W2.T @ R, W2 - cfg.lr * R @ W1.T
            t += 1
        out["base"].append(L(W1, W2, M))
        out["pert"].append(
            [[L(W1 + g * e1, W2 + g * e2, M) for e1, e2 in zip(p.noise1, p.noise2)] for g in cfg.gammas]
        )
        A, B = W1.copy(), W2.copy()
        for _ in range(cfg.ft_steps):
            R = B @ A - Mft
            A, B = A - cfg.ft_lr * B.T @ R, B - cfg.ft_lr * R @ A.T
        out["ftpre"].append(L(A, B, M))
        out["task"].append(L(A, B, Mft))
    return {k: np.array(v) for k, v in out.items()}


def test_batched_run_equals_naive_numpy_loop():
    cfg = LinearTheoryConfig(
        dim=8,
        init_std=0.1,
        checkpoints=[1, 2, 5, 17, 40],
        draws=3,
        ft_steps=7,
        gammas=[0.01, 0.3],
        seeds=[4, 9],
    )
    res = run_linear_theory(cfg)
    for s, seed in enumerate(cfg.seeds):
        ref = naive(cfg, seed)
        np.testing.assert_allclose(res.base_loss[s], ref["base"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.draw_losses[s], ref["pert"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.pretrain_loss[s], ref["ftpre"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.task_loss[s], ref["task"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            res.delta[s], (ref["pert"] - ref["base"][:, None, None]).mean(-1), rtol=0, atol=1e-10
        )
    assert abs(res.base_loss[0, -1] - res.base_loss[0, 0]) > 0.1  # the loop really moved


def test_measurements_act_on_copies():
    """Perturbing and fine-tuning at 5 checkpoints leaves the trajectory bit-identical to a run that
    only stops at the last one; a seed's numbers do not depend on the other seeds in the batch."""
    kw = dict(dim=10, init_std=0.05, draws=4, ft_steps=20, gammas=[0.1])
    many = run_linear_theory(LinearTheoryConfig(checkpoints=[3, 10, 30, 60, 100], seeds=[1, 2], **kw))
    last = run_linear_theory(LinearTheoryConfig(checkpoints=[100], seeds=[1, 2], **kw))
    for name in ("base_loss", "weight_norm_sq", "pretrain_loss", "task_loss"):
        assert np.array_equal(getattr(many, name)[:, -1:], getattr(last, name)), name
    assert np.array_equal(many.draw_losses[:, -1:], last.draw_losses)
    alone = run_linear_theory(LinearTheoryConfig(checkpoints=[3, 10, 30, 60, 100], seeds=[2], **kw))
    np.testing.assert_allclose(alone.draw_losses[0], many.draw_losses[1], rtol=1e-12)
    np.testing.assert_allclose(alone.pretrain_loss[0], many.pretrain_loss[1], rtol=1e-12)


def test_problem_is_what_it_claims():
    cfg = LinearTheoryConfig(dim=12, ft_rank=2, draws=5)
    p = make_problem(cfg, 3)
    np.testing.assert_allclose(np.linalg.svd(p.target, compute_uv=False), cfg.spectrum(), rtol=1e-12)
    feature = p.ft_target - p.target  # U V^T with orthonormal columns: two unit singular values
    np.testing.assert_allclose(np.linalg.svd(feature, compute_uv=False)[:3], [1, 1, 0], atol=1e-12)
    assert p.noise1.shape == (5, 12, 12) and abs(p.w1.std() - cfg.init_std) < 0.3 * cfg.init_std
    # named streams: more draws keep the target, the initialisation and the first draws
    q = make_problem(cfg.model_copy(update={"draws": 8}), 3)
    assert np.array_equal(p.target, q.target) and np.array_equal(p.w2, q.w2)
    assert np.array_equal(p.noise2, q.noise2[:5])


# --- config -----------------------------------------------------------------------------------------


def test_config_grid_and_validation():
    assert LinearTheoryConfig().checkpoint_steps() == [
        100,
        178,
        316,
        562,
        1000,
        1778,
        3162,
        5623,
        10000,
        17783,
        31623,
        56234,
        100000,
    ]
    assert LinearTheoryConfig(max_steps="1k", n_checkpoints=3).checkpoint_steps() == [100, 316, 1000]
    assert LinearTheoryConfig(checkpoints=["10k", 100]).checkpoint_steps() == [100, 10000]
    bad = [
        ["checkpoints=[100]", "max_steps=1000"],  # both ways of giving the grid
        ["lr=0.4"],  # lr * s_1 = 1.2: GD diverges
        ["ft_rank=41"],
        ["gammas=[]"],
        ["seeds=[1, 1]"],
        ["min_steps=1000", "max_steps=100"],
        ["draws=0"],
    ]
    for overrides in bad:
        with pytest.raises(ConfigError):
            build_config(LinearTheoryConfig, overrides=overrides)


# --- the run kind -----------------------------------------------------------------------------------


def test_run_kind_writes_long_rows_that_rebuild_the_result(tmp_path):
    from overtrain.runs.jsonl import read_jsonl
    from overtrain.runs.query import query
    from overtrain.runs.store import Store

    cfg = LinearTheoryConfig(dim=6, checkpoints=[10, 100, 300], draws=3, gammas=[0.01, 0.1], seeds=[1, 2])
    store = Store(tmp_path / "runs")
    outcome = store.execute("linear_theory", cfg)
    assert outcome.status == "success"
    evals = read_jsonl(outcome.dir / "evals.jsonl")
    probes = read_jsonl(outcome.dir / "probes.jsonl")
    assert len(evals) == 2 * 3 * (2 + 1) and len(probes) == 2 * 3 * 2 * 3
    assert {r["metric"] for r in evals} == {"perturbation", "finetune"}
    info = store.manifest("linear_theory", outcome.run_id)["info"]
    assert info["wall_s"] > 0 and info["checkpoints"] == [10, 100, 300] and info["n_params"] == 72

    rebuilt = LinearTheoryResult.from_rows(evals, probes)
    direct = run_linear_theory(cfg)
    for name in (
        "base_loss",
        "perturbed_loss",
        "delta",
        "delta_se",
        "pretrain_loss",
        "task_loss",
        "weight_norm_sq",
        "draw_losses",
    ):
        np.testing.assert_allclose(getattr(rebuilt, name), getattr(direct, name), rtol=1e-14, err_msg=name)

    table = query(
        "select step, avg(delta) as d from evals where metric = 'perturbation' and gamma = 0.1 "
        "group by step order by step",
        store,
    ).to_pylist()
    assert [r["step"] for r in table] == [10, 100, 300]
    np.testing.assert_allclose([r["d"] for r in table], direct.curve("delta", 0.1).mean(0), rtol=1e-12)
    # rerunning the same config is the same run, already done
    assert store.execute("linear_theory", cfg).skipped
