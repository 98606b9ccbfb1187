"""Two-layer ReLU sweeps on digits (overtrain.studies.mlp_double_descent): exactness of the batching, the
hand-written gradients, label noise, a tiny sweep that interpolates, the findings on handmade multi-seed
curves, their decision rules (a planted effect passes, a planted null fails, fpr ≤ 5% at the simulated
noise) and the config.

Everything is tiny (n ≤ 200, ≤ 300 steps); the default preset is measured in docs/double_descent.md, not
here.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from overtrain.analysis.calibration import no_peak, no_rise, planted_peak, planted_rise
from overtrain.analysis.claims import MAX_FPR
from overtrain.config import build_config, validate
from overtrain.data.regression import DigitsConfig
from overtrain.errors import ConfigError
from overtrain.studies.mlp_double_descent.analysis import (
    claims,
    epochwise_claims,
    max_rise,
    modelwise_claims,
    sweep_claims,
)
from overtrain.studies.mlp_double_descent.calibrate import (
    PAPER_FALL,
    PAPER_PEAK,
    PAPER_RISE,
    absence_calibration,
    absence_rule,
    fall_calibration,
    fall_rule,
    held_out_drop,
    held_out_max_rise,
    located_peak_rule,
    no_fall,
    peak_calibration,
    planted_fall,
    planted_step,
    rise_calibration,
    rise_rule,
)
from overtrain.studies.mlp_double_descent.config import (
    MLPDoubleDescentConfig,
    MLPEpochwiseConfig,
    MLPSweepConfig,
)
from overtrain.studies.mlp_double_descent.engine import METRICS, MLPSweepResult, compute, run_mlp_sweep
from overtrain.studies.mlp_double_descent.network import (
    Backprop,
    BatchedMLP,
    init_mlp,
    n_params,
    per_model_loss,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and tests may run beside other jobs on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_DATA = {"n_train": 100, "n_test": 100, "label_noise": 0.2, "seed": 3}


def tiny(**overrides) -> MLPSweepConfig:
    base = {
        "data": TINY_DATA,
        "widths": [3, 7, 12],
        "seeds": [0, 2],
        "steps": 30,
        "eval_every": 10,
        "dtype": "float64",
    }
    return MLPSweepConfig.model_validate({**base, **overrides})


# --- batching is exact --------------------------------------------------------------------------------


def reference_fit(
    block: dict[str, torch.Tensor], x: np.ndarray, labels: np.ndarray, loss: str, lr: float, steps: int
) -> tuple[torch.nn.Sequential, list[float]]:
    """One network alone, the textbook way: nn.Linear layers, autograd, torch's loss, torch.optim.Adam."""
    h, d = block["w1"].shape
    net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, 10)).double()
    with torch.no_grad():
        net[0].weight.copy_(block["w1"])
        net[0].bias.copy_(block["b1"])
        net[2].weight.copy_(block["w2"])
        net[2].bias.copy_(block["b2"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xs, ys = torch.from_numpy(x), torch.from_numpy(labels)
    losses = []
    for _ in range(steps):
        out = net(xs)
        if loss == "ce":
            value = torch.nn.functional.cross_entropy(out, ys)
        else:
            value = torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(ys, 10).double())
        losses.append(float(value.detach()))
        opt.zero_grad()
        value.backward()
        opt.step()
    return net, losses


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_batched_training_equals_training_each_network_alone(loss):
    """Training all (seed, width) networks as one concatenated model (sum of losses, one Adam) gives each
    network exactly the weights it gets when trained alone with nn.Linear + autograd + Adam."""
    cfg = tiny(loss=loss, lr=1e-2)
    data = cfg.data.build()
    model = init_mlp(cfg.seeds, cfg.widths, data.d, data.classes, dtype=torch.float64)
    backprop = Backprop(model, torch.from_numpy(data.X), torch.from_numpy(data.labels), loss)
    opt = torch.optim.Adam(model.params, lr=cfg.lr)
    with torch.no_grad():
        for _ in range(cfg.steps):
            backprop()
            opt.step()
    for s, seed in enumerate(cfg.seeds):
        for m, width in enumerate(cfg.widths):
            start = init_mlp([seed], [width], data.d, data.classes, dtype=torch.float64).block(0, 0)
            net, _ = reference_fit(start, data.X, data.labels, loss, cfg.lr, cfg.steps)
            got = model.block(s, m)
            want = {"w1": net[0].weight, "b1": net[0].bias, "w2": net[2].weight, "b2": net[2].bias}
            for name, value in want.items():
                assert float((got[name] - value.detach()).abs().max()) < 1e-10, (seed, width, name)


def test_sweep_measurements_do_not_depend_on_the_other_widths():
    """A width's whole trajectory is the same in a sweep and alone (its init has its own stream)."""
    both = run_mlp_sweep(tiny())
    alone = run_mlp_sweep(tiny(widths=[7], seeds=[2]))
    for name in METRICS:
        np.testing.assert_allclose(getattr(both, name)[1, 1], getattr(alone, name)[0, 0], rtol=0, atol=1e-10)


def test_reference_losses_match_the_sweep_records():
    """The sweep's recorded train loss at step 10 is the reference network's loss after 10 steps."""
    cfg = tiny(loss="ce", widths=[12], seeds=[0], steps=10, eval_every=10)
    data = cfg.data.build()
    res = run_mlp_sweep(cfg)
    start = init_mlp([0], [12], data.d, data.classes, dtype=torch.float64).block(0, 0)
    net, losses = reference_fit(start, data.X, data.labels, "ce", cfg.lr, 11)
    assert res.train_loss[0, 0, 0] == pytest.approx(losses[0], abs=1e-10)
    assert res.train_loss[0, 0, 1] == pytest.approx(losses[10], abs=1e-10)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_hand_written_gradients_match_autograd(loss):
    data = DigitsConfig(**TINY_DATA).build()
    model = init_mlp([0, 1], [2, 5, 9], data.d, data.classes, init_scale=2.0, dtype=torch.float64)
    x, y = torch.from_numpy(data.X), torch.from_numpy(data.labels)
    Backprop(model, x, y, loss)()
    params = [p.detach().clone().requires_grad_() for p in model.params]
    per_model_loss(BatchedMLP(model.widths, *params).logits(x.T), y, loss).sum().backward()
    for mine, ref in zip(model.params, params):
        assert float(ref.grad.abs().max()) > 1e-4  # the comparison is not vacuous
        torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-12)


def test_per_model_loss_is_torch_loss():
    logits = torch.randn(2, 3, 10, 7, dtype=torch.float64)  # [M, S, k, n]
    labels = torch.randint(0, 10, (7,))
    ce, mse = per_model_loss(logits, labels, "ce"), per_model_loss(logits, labels, "mse")
    for m in range(2):
        for s in range(3):
            out = logits[m, s].T  # [n, k]
            assert float(ce[m, s]) == pytest.approx(float(torch.nn.functional.cross_entropy(out, labels)))
            target = torch.nn.functional.one_hot(labels, 10).double()
            assert float(mse[m, s]) == pytest.approx(float(torch.nn.functional.mse_loss(out, target)))


def test_float32_starts_from_the_rounded_float64_init():
    a = init_mlp([4], [5], 64, 10, dtype=torch.float64)
    b = init_mlp([4], [5], 64, 10, dtype=torch.float32)
    for p, q in zip(a.params, b.params):
        assert q.dtype == torch.float32
        torch.testing.assert_close(p.float(), q, rtol=0, atol=0)


def test_init_is_the_default_linear_init_times_init_scale():
    model = init_mlp([0], [400], 64, 10, init_scale=2.0, dtype=torch.float64)
    block = model.block(0, 0)
    assert float(block["w1"].abs().max()) <= 2.0 / 8 and float(block["w1"].abs().max()) > 0.24
    assert float(block["w2"].abs().max()) <= 2.0 / 20 and float(block["w2"].abs().max()) > 0.095
    assert abs(float(block["w1"].mean())) < 0.01  # centred


# --- label noise and a tiny sweep -------------------------------------------------------------------


def test_label_noise_rate_and_clean_error_at_interpolation():
    """With 20% label noise ~20% of labels change; a network that fits every noisy label is wrong on
    exactly the corrupted examples (its clean train error equals the noise rate) and memorised them all;
    a 1-unit network cannot interpolate 10 classes."""
    cfg = MLPSweepConfig(
        data=DigitsConfig(n_train=200, n_test=100, label_noise=0.2, seed=1),
        widths=[1, 128],
        seeds=[0],
        steps=300,
        eval_every=100,
        lr=1e-2,
        loss="ce",
    )
    res = run_mlp_sweep(cfg)
    assert res.label_noise == pytest.approx(0.2, abs=0.06)  # 200 Bernoulli(0.2): sd 0.028
    assert res.steps.tolist() == [0, 100, 200, 300]
    wide, narrow = 1, 0
    assert res.train_error[0, wide, -1] == 0.0
    assert res.train_error_clean[0, wide, -1] == pytest.approx(res.label_noise, abs=1e-12)
    assert res.memorised[0, wide, -1] == 1.0
    assert res.train_error[0, narrow, -1] > 0.3
    assert res.interpolating()[:, -1].tolist() == [False, True]
    assert res.n_params.tolist() == [n_params(1), n_params(128)] == [85, 9610]
    assert res.wall_s is not None and res.wall_s > 0
    # the default squared loss interpolates too, by its own criterion (train MSE ≤ 1% of 1/k)
    mse = run_mlp_sweep(cfg.model_copy(update={"loss": "mse", "widths": [1, 256]}))
    assert mse.interpolating()[:, -1].tolist() == [False, True]
    assert mse.train_error[0, 1, -1] == 0.0


def test_without_label_noise_nothing_is_memorised():
    cfg = tiny(data={**TINY_DATA, "label_noise": 0.0}, steps=10, eval_every=5)
    res = run_mlp_sweep(cfg)
    assert res.label_noise == 0.0
    assert np.isnan(res.memorised).all()
    np.testing.assert_array_equal(res.train_error, res.train_error_clean)
    early = modelwise_claims(res)[2]
    assert early.verdict == "N/A" and "label noise" in early.detail


def test_progress_reports_every_measurement():
    seen = []
    run_mlp_sweep(tiny(steps=25, eval_every=10), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 25), (10, 25), (20, 25), (25, 25)]


def test_rows_round_trip():
    res = run_mlp_sweep(tiny(steps=10, eval_every=5))
    rows = res.rows()
    assert len(rows) == 2 * 3 * 3
    assert set(rows[0]) == {"seed", "width", "n_params", "step", "loss_kind", *METRICS}
    back = MLPSweepResult.from_rows(
        rows, study="modelwise", n_train=100, classes=10, label_noise=res.label_noise
    )
    for name in METRICS:
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.n_params.tolist() == res.n_params.tolist()
    assert [c.row() for c in sweep_claims(back)] == [c.row() for c in sweep_claims(res)]
    with pytest.raises(ValueError):
        MLPSweepResult.from_rows([{"record": "claim"}])


def test_study_claims_are_decided_from_the_stored_rows():
    """The study's run stores each part's curve rows and one sweep row; the analysis rebuilds the sweeps
    from them (as read back from JSON) and decides the same claims as the in-memory sweeps."""
    parts = {
        "modelwise": {
            "data": TINY_DATA,
            "widths": [3, 7, 12],
            "seeds": [2, 0],
            "steps": 30,
            "eval_every": 10,
        },
        "epochwise": {"data": TINY_DATA, "widths": [12], "steps": 30, "eval_every": 10},
    }
    cfg = MLPDoubleDescentConfig.model_validate(parts)
    rows, info = compute(cfg)
    assert set(info) == {"wall_s", "modelwise_wall_s", "epochwise_wall_s"}
    sweeps = [r for r in rows if r["record"] == "sweep"]
    assert [r["study"] for r in sweeps] == ["modelwise", "epochwise"] and sweeps[0]["n_train"] == 100
    stored = [json.loads(json.dumps(r)) for r in rows]
    want = sweep_claims(run_mlp_sweep(cfg.modelwise)) + sweep_claims(run_mlp_sweep(cfg.epochwise))
    assert [c.row() for c in claims(cfg, stored)] == [c.row() for c in want]


# --- claim logic on handmade curves -------------------------------------------------------------------


def handmade(
    test: list[list[float]] | np.ndarray,
    train: list[list[float]] | np.ndarray,
    widths: list[int] | None = None,
    steps: list[int] | None = None,
    seeds: int = 6,
    noise: float = 0.004,
    **kw,
) -> MLPSweepResult:
    """A result of `seeds` seeds from [M, C] test- and train-error curves: each seed's test error is the
    curve plus N(0, noise²) (a fixed generator, so deterministic); the train error is the same for every
    seed (losses follow it)."""
    test, train = np.asarray(test, dtype=float), np.asarray(train, dtype=float)
    M, C = test.shape
    widths = widths or [2 * (i + 1) for i in range(M)]
    steps = steps or [100 * i for i in range(C)]
    memorised = np.clip(1 - train / 0.2, 0, 1)
    tests = test[None] + np.random.default_rng(7).normal(0, noise, (seeds, M, C))
    same = np.broadcast_to(train, (seeds, M, C)).copy()
    return MLPSweepResult(
        kw.pop("study", "modelwise"),
        np.arange(seeds),
        np.array(widths),
        np.array([n_params(w) for w in widths]),
        np.array(steps),
        train_loss=same * 0.1,
        train_error=same,
        train_error_clean=same.copy(),
        memorised=np.broadcast_to(memorised, (seeds, M, C)).copy(),
        test_loss=tests.copy(),
        test_error=tests,
        label_noise=0.2,
        **{"loss": "ce", **kw},
    )


def calibrated_ok(c) -> bool:
    """The finding carries a measured fpr ≤ 5% and a power, and says so in its detail."""
    return (
        c.type == "finding"
        and c.fpr is not None
        and c.fpr <= 0.05
        and c.power is not None
        and "fpr" in c.detail
    )


def test_max_rise():
    assert max_rise([5, 4, 3, 2]) == (0.0, 0, 0)
    rise, i, j = max_rise([5, 3, 4, 1, 6, 2])
    assert (rise, i, j) == (5.0, 3, 4)
    assert max_rise([1, 2, 2]) == (1.0, 0, 1)  # ties keep the earliest peak
    assert max_rise([]) == (0.0, 0, 0)


WIDTHS = [2, 4, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128]
# per width: test error at steps 0, 100 and 200; at 200 a double descent (classical minimum 25% at H=8, peak
# 40% at H=20, 15% at H=128), at 100 falling with width (nothing memorised yet)
PEAKED = [
    [0.9, 0.60, 0.50],
    [0.9, 0.40, 0.30],
    [0.9, 0.30, 0.25],
    [0.9, 0.25, 0.26],
    [0.9, 0.20, 0.30],
    [0.9, 0.15, 0.40],
    [0.9, 0.12, 0.35],
    [0.9, 0.11, 0.30],
    [0.9, 0.10, 0.26],
    [0.9, 0.10, 0.22],
    [0.9, 0.10, 0.18],
    [0.9, 0.10, 0.15],
]
# train error on the noisy labels: 0 from H=20 on at step 200 (the threshold), memorised ≤ 45% at step 100
TRAIN = [
    [0.9, 0.60, 0.50],
    [0.9, 0.50, 0.30],
    [0.9, 0.40, 0.10],
    [0.9, 0.35, 0.05],
    [0.9, 0.30, 0.02],
    [0.9, 0.20, 0.00],
    [0.9, 0.15, 0.00],
    [0.9, 0.13, 0.00],
    [0.9, 0.12, 0.00],
    [0.9, 0.11, 0.00],
    [0.9, 0.11, 0.00],
    [0.9, 0.11, 0.00],
]


def with_last(values: list[float]) -> list[list[float]]:
    """PEAKED with its last-step curve replaced by `values`."""
    return [[*row[:2], v] for row, v in zip(PEAKED, values)]


def test_modelwise_claims_pass_on_a_peaked_curve():
    c1, c2, c3 = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS))
    # threshold: first train error 0 at H=20 (P=1510), the peak H=20 too; excess 0.40 / 0.25 − 1 = 0.6
    assert c1.verdict == "PASS" and c1.value == pytest.approx(0.6, abs=0.05) and c1.ci_low > 0
    assert "peak H=20" in c1.detail and "P(peak)/P(threshold) = 1.00" in c1.detail
    assert c2.verdict == "PASS" and c2.value == pytest.approx(25.0, abs=1)  # 40% -> 15%
    # step 100: the late peak width H=20 (15%) is 15 points below the late minimum width H=8 (30%)
    assert c3.verdict == "PASS" and c3.value == pytest.approx(-15.0, abs=1) and c3.ci_high < 2
    assert "step 100" in c3.detail
    assert all(calibrated_ok(c) for c in (c1, c2, c3))


def test_modelwise_claims_fail_on_a_monotone_curve():
    monotone = with_last([0.5 - 0.03 * i for i in range(12)])
    c1, c2, c3 = modelwise_claims(handmade(monotone, TRAIN, WIDTHS))
    assert c1.verdict == "FAIL" and c1.ci_low < 0
    assert c2.verdict == "FAIL" and c2.value == pytest.approx(0.0)  # no peak: nothing to descend from
    assert c3.verdict == "N/A" and "no peak at the last step" in c3.detail


def test_modelwise_peak_far_from_threshold_fails():
    far = with_last([0.5, 0.3, 0.25, 0.26, 0.27, 0.28, 0.29, 0.30, 0.45, 0.22, 0.18, 0.15])  # peak H=48
    c1, c2, _ = modelwise_claims(handmade(far, TRAIN, WIDTHS))
    assert c1.verdict == "FAIL" and f"P(peak)/P(threshold) = {n_params(48) / n_params(20):.2f}" in c1.detail
    assert c1.ci_low > 0  # a real peak, in the wrong place
    assert c2.verdict == "PASS"
    # with a wide enough tolerance the same rule passes; the verdict then rests on the plain peak rule's fpr
    wide = modelwise_claims(handmade(far, TRAIN, WIDTHS, peak_tolerance=10))[0]
    assert wide.ci_low > 0 and wide.verdict == ("PASS" if wide.fpr <= MAX_FPR else "UNDERPOWERED")


def test_modelwise_peak_within_noise_and_no_interpolation():
    small = with_last([0.5, 0.3, *[0.30] * 3, 0.31, *[0.30] * 6])  # 1 point, seed noise 3 points
    c1, c2, _ = modelwise_claims(handmade(small, TRAIN, WIDTHS, noise=0.03))
    assert c1.verdict == "FAIL" and c2.verdict == "FAIL"
    never = np.maximum(np.array(TRAIN), 0.05)
    assert modelwise_claims(handmade(PEAKED, never, WIDTHS))[0].verdict == "N/A"
    # a looser criterion makes H=16 (train error 2%) the threshold: P(20)/P(16) = 1.25 is within 30%
    loose = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS, interpolation_error=0.02))[0]
    assert loose.verdict == "PASS" and "H=16" in loose.detail


def test_modelwise_early_check_fails_when_the_peak_is_already_there():
    early_peak = [row[:] for row in PEAKED]
    early_peak[5][1] = 0.5  # a peak at step 100 although nothing interpolates
    c3 = modelwise_claims(handmade(early_peak, TRAIN, WIDTHS))[2]
    assert c3.verdict == "FAIL" and c3.value == pytest.approx(20.0, abs=1)
    # at step 200 widths interpolate: the step says nothing about "no interpolation, no peak"
    c3 = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS, early_step=200))[2]
    assert c3.verdict == "N/A" and "interpolates" in c3.detail
    assert modelwise_claims(handmade(PEAKED[:2], TRAIN[:2], WIDTHS[:2]))[0].verdict == "N/A"


def test_squared_loss_interpolation_uses_the_training_loss():
    res = handmade(PEAKED, TRAIN, WIDTHS, loss="mse")
    res.train_loss = np.full_like(res.train_loss, 0.05)
    res.train_loss[:, 6:, 2] = 0.0005  # only H >= 24 fit the targets (≤ 0.01/k = 0.001)
    c1 = modelwise_claims(res)[0]
    assert f"P(peak)/P(threshold) = {n_params(20) / n_params(24):.2f}" in c1.detail
    assert "zero train error H=20" in c1.detail


def test_fewer_than_four_seeds_are_underpowered():
    """A rule that would pass on 6 seeds gives no PASS on 3 (no bound) nor on 1 (nothing held out)."""
    for seeds in (1, 3):
        found = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS, seeds=seeds))
        found += epochwise_claims(handmade([DOUBLE], [TRAIN_T], [512], STEPS, seeds=seeds, study="epochwise"))
        assert [c.verdict for c in found] == ["UNDERPOWERED"] * 5, seeds
        if seeds == 1:
            assert all(c.value is None for c in found)


STEPS = [0, 50, 100, 150, 200, 250, 300, 350]
TRAIN_T = [0.9, 0.3, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0]
DOUBLE = [0.9, 0.3, 0.10, 0.15, 0.18, 0.14, 0.12, 0.11]


def test_epochwise_rise_without_second_descent():
    test = [0.9, 0.3, 0.10, 0.12, 0.15, 0.18, 0.18, 0.19]
    c1, c2 = epochwise_claims(handmade([test], [TRAIN_T], [512], STEPS, study="epochwise"))
    assert c1.verdict == "PASS" and c1.value == pytest.approx(9.0, abs=1) and c1.ci_low > 2
    assert re.search(r"first minimum (9\.\d|10\.\d)% at step 100 ", c1.detail)
    assert c2.verdict == "FAIL" and c2.value == pytest.approx(0.0)
    assert calibrated_ok(c1) and calibrated_ok(c2)


def test_epochwise_double_descent_passes_both():
    res = handmade([DOUBLE], [TRAIN_T], [512], STEPS, study="epochwise")
    c1, c2 = sweep_claims(res)
    assert c1.verdict == "PASS" and c2.verdict == "PASS" and c2.value == pytest.approx(7.0, abs=1)


def test_epochwise_fails_without_a_rise_or_while_train_error_is_flat():
    falling = [0.9, 0.3, 0.2, 0.15, 0.12, 0.11, 0.10, 0.10]
    c1, c2 = epochwise_claims(handmade([falling], [TRAIN_T], [512], STEPS))
    assert c1.verdict == "FAIL" and c2.verdict == "FAIL"
    noisy = [0.9, 0.3, 0.10, 0.11, 0.105, 0.10, 0.11, 0.10]  # 1 point of noise is not a rise
    assert epochwise_claims(handmade([noisy], [TRAIN_T], [512], STEPS))[0].verdict == "FAIL"
    flat_train = [0.9, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    test = [0.9, 0.3, 0.10, 0.12, 0.15, 0.18, 0.18, 0.19]
    c1 = epochwise_claims(handmade([test], [flat_train], [512], STEPS))[0]
    assert c1.verdict == "FAIL" and "train error not falling" in c1.detail


# --- the decision rules: planted effects pass, planted nulls fail ---------------------------------------

GRID = 12
BASE = np.linspace(0.30, 0.20, GRID)  # a falling curve, 30% to 20% error


def draws(mean: np.ndarray, sigma: float = 0.01, seeds: int = 6, seed: int = 0) -> np.ndarray:
    return mean + np.random.default_rng(seed).normal(0, sigma, (seeds, mean.size))


def test_peak_rule_and_its_calibration():
    p = np.array([n_params(4 * (i + 1)) for i in range(GRID)])
    null = no_peak(BASE)
    effect = planted_peak(null, PAPER_PEAK / null[6], 6)  # +5 points at index 6
    rule = located_peak_rule(p, 6, 0.3)
    assert rule(draws(effect)) and not rule(draws(null))
    assert not located_peak_rule(p, 2, 0.3)(draws(effect))  # a real peak far from the threshold
    cal = peak_calibration(draws(effect), p, 6, 0.3)
    assert cal.fpr <= 0.05 and cal.power >= 0.8 and cal.n_groups == 6
    assert cal.sigma == pytest.approx(0.01, rel=0.3)
    assert peak_calibration(draws(effect)[:1], p, 6, 0.3) is None  # one seed: no noise to measure


def test_rise_and_fall_rules_and_their_calibration():
    null = no_rise(BASE)
    rise = planted_rise(null, PAPER_RISE / null[5], 5)  # +5 points from index 5 to the end
    assert rise_rule(0.02)(draws(rise)) and not rise_rule(0.02)(draws(null))
    cal = rise_calibration(draws(rise), 0.02)
    assert cal.fpr <= 0.05 and cal.power >= 0.8
    hump = BASE.copy()
    hump[5:] = BASE[5] + 0.08  # a rise of 8 points that stays
    flat = no_fall(hump, 5)
    fall = planted_fall(flat, PAPER_FALL / flat[5], 5)  # down 5 points by the end
    assert fall_rule(0.02)(draws(fall)) and not fall_rule(0.02)(draws(flat))
    cal = fall_calibration(draws(fall), 0.02)
    assert cal.fpr <= 0.05 and cal.power >= 0.8


def test_absence_rule_and_its_calibration():
    """ "No peak" passes on a falling curve and fails where the peak width stands 2 points (the boundary)
    or more above the valley width; its fpr is measured on that boundary."""
    flat = no_peak(BASE)
    rule = absence_rule(0.02, 2, 6)
    assert rule(draws(flat)) and not rule(draws(planted_step(flat, 0.04, 2, 6)))
    boundary = planted_step(flat, 0.02, 2, 6)
    assert boundary[6] - boundary[2] == pytest.approx(0.02)
    assert np.mean([rule(draws(boundary, seed=s)) for s in range(100)]) <= 0.05
    cal = absence_calibration(draws(flat), 0.02, 2, 6)
    assert cal.fpr <= 0.05 and cal.power >= 0.8


def test_held_out_statistics_do_not_select_on_the_seed_they_measure():
    """On pure noise the held-out rise is centred on 0 (the in-sample largest rise is not)."""
    noise = [draws(np.full(GRID, 0.2), seed=s) for s in range(200)]
    held = np.mean([held_out_max_rise(y).value for y in noise])
    naive = np.mean([max_rise(y.mean(0))[0] for y in noise])
    assert abs(held) < 0.002 < naive
    assert abs(np.mean([held_out_drop(y).value for y in noise])) < 0.002


# --- config -------------------------------------------------------------------------------------------


def test_defaults():
    cfg = MLPSweepConfig()
    assert cfg.study == "modelwise" and cfg.loss == "mse" and cfg.lr == 1e-3 and cfg.steps == 4000
    assert cfg.data.n_train == 500 and cfg.data.label_noise == 0.2
    assert cfg.widths[0] == 2 and cfg.widths[-1] == 256 and len(cfg.eval_steps()) == 81
    ep = MLPEpochwiseConfig()
    assert ep.study == "epochwise" and ep.widths == [512] and ep.steps == 10_000 and ep.lr == 1e-4
    assert isinstance(ep, MLPSweepConfig)
    for name, info in MLPSweepConfig.model_fields.items():
        assert info.description, f"{name} is undocumented"


def test_eval_steps_end_at_the_last_step():
    assert tiny(steps=25, eval_every=10).eval_steps() == [0, 10, 20, 25]
    assert tiny(steps=20, eval_every=10).eval_steps() == [0, 10, 20]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"widths": [4, 2]}, "strictly increasing"),
        ({"widths": []}, "at least one width"),
        ({"widths": [0, 2]}, ">= 1"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"eval_every": 100, "steps": 50}, "exceeds steps"),
        ({"early_step": 15}, "not a measured step"),
        ({"loss": "hinge"}, "loss"),
        ({"lr": 0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"data": {"label_noise": 1.0}}, "label_noise"),
        ({"width": [2]}, "unknown key"),
    ],
)
def test_invalid_configs(override, message):
    base = {"steps": 30, "eval_every": 10}
    with pytest.raises(ConfigError, match=message):
        validate(MLPSweepConfig, {**base, **override})


def test_build_config_with_overrides():
    cfg = build_config(MLPSweepConfig, overrides=["loss=ce", "widths=[8, 16]", "steps=2k", "data.seed=4"])
    assert cfg.loss == "ce" and cfg.widths == [8, 16] and cfg.steps == 2000 and cfg.data.seed == 4
    assert cfg.data.n_train == 500 and cfg.data.label_noise == 0.2  # the rest of data keeps its defaults
