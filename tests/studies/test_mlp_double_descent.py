"""Two-layer ReLU sweeps on digits (overtrain.studies.mlp_double_descent): exactness of the batching, the
hand-written gradients, label noise, a tiny sweep that interpolates, the claim logic on handmade curves, and
the config.

Everything is tiny (n ≤ 200, ≤ 300 steps); the default presets are measured in the module's report, not
here. Measured at the defaults (3 seeds, squared loss, 4,000 Adam steps at 1e-3, ~36 s on one core): test
error 26.4% at H=8, 24.0% at H=24 (classical minimum), a peak of 38.2% at H=80 (P = 6,010 ≈ 1.2·n·k),
the first width with train MSE ≤ 0.001 is H=80 (zero train *error* from H=48), then 28.6% at H=128 and
22.4% at H=256; at step 100 the curve over widths is flat (largest rise 0.6 points). Epoch-wise (H=512,
lr 1e-4, 10,000 steps, ~17 s): 8.0% at step 400, 19.4% at step 2,850 once the noise is memorised, 19.3%
at the end (no second descent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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
    **kw,
) -> MLPSweepResult:
    """A one-seed result from [M, C] test- and train-error curves (losses follow the train error)."""
    test, train = np.asarray(test, dtype=float), np.asarray(train, dtype=float)
    M, C = test.shape
    widths = widths or [2 * (i + 1) for i in range(M)]
    steps = steps or [100 * i for i in range(C)]
    memorised = np.clip(1 - train / 0.2, 0, 1)
    return MLPSweepResult(
        kw.pop("study", "modelwise"),
        np.array([0]),
        np.array(widths),
        np.array([n_params(w) for w in widths]),
        np.array(steps),
        train_loss=train[None] * 0.1,
        train_error=train[None],
        train_error_clean=train[None],
        memorised=memorised[None],
        test_loss=test[None],
        test_error=test[None],
        label_noise=0.2,
        **{"loss": "ce", **kw},
    )


def test_max_rise():
    assert max_rise([5, 4, 3, 2]) == (0.0, 0, 0)
    rise, i, j = max_rise([5, 3, 4, 1, 6, 2])
    assert (rise, i, j) == (5.0, 3, 4)
    assert max_rise([1, 2, 2]) == (1.0, 0, 1)  # ties keep the earliest peak
    assert max_rise([]) == (0.0, 0, 0)


WIDTHS = [2, 4, 8, 16, 20, 24, 48, 96]
# a double-descent curve at the last step (peak at H=20), flat-decreasing early (step 100)
PEAKED = [
    [0.9, 0.60, 0.50],
    [0.9, 0.40, 0.30],
    [0.9, 0.30, 0.25],
    [0.9, 0.20, 0.30],
    [0.9, 0.15, 0.40],
    [0.9, 0.12, 0.35],
    [0.9, 0.10, 0.20],
    [0.9, 0.10, 0.15],
]
TRAIN = [
    [0.9, 0.60, 0.50],
    [0.9, 0.50, 0.30],
    [0.9, 0.40, 0.10],
    [0.9, 0.30, 0.02],
    [0.9, 0.20, 0.00],
    [0.9, 0.15, 0.00],
    [0.9, 0.12, 0.00],
    [0.9, 0.11, 0.00],
]


def test_modelwise_claims_pass_on_a_peaked_curve():
    c1, c2, c3 = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS))
    # threshold: first train error 0 at H=20 (P=1510), the peak H=20 too
    assert c1.verdict == "PASS" and c1.value == pytest.approx(1.0)
    assert "H=20" in c1.detail
    assert c2.verdict == "PASS" and c2.value == pytest.approx(25.0)  # 40% -> 15%
    assert c3.verdict == "PASS" and c3.value == pytest.approx(0.0)  # step 100: monotone
    assert "step 100" in c3.detail


def test_modelwise_claims_fail_on_a_monotone_curve():
    monotone = [[0.9, 0.6, 0.5 - 0.05 * i] for i in range(8)]
    c1, c2, c3 = modelwise_claims(handmade(monotone, TRAIN, WIDTHS))
    assert c1.verdict == "FAIL" and "no peak" in c1.detail
    assert c2.verdict == "N/A"
    assert c3.verdict == "PASS"


def test_modelwise_peak_far_from_threshold_fails():
    far = [row[:] for row in PEAKED]
    far[4][2], far[7][2] = 0.2, 0.5  # the largest rise now ends at H=96
    c1, c2, _ = modelwise_claims(handmade(far, TRAIN, WIDTHS))
    assert c1.verdict == "FAIL" and c1.value == pytest.approx(n_params(96) / n_params(20))
    assert c2.verdict == "FAIL" and "largest width" in c2.detail
    # with a wide enough tolerance the same peak passes
    assert modelwise_claims(handmade(far, TRAIN, WIDTHS, peak_tolerance=10))[0].verdict == "PASS"


def test_modelwise_small_peak_and_no_interpolation():
    small = [row[:] for row in PEAKED]
    for i, value in zip(range(3, 8), [0.30, 0.31, 0.30, 0.30, 0.30]):
        small[i][2] = value
    small[2][2] = 0.30
    c1, c2, _ = modelwise_claims(handmade(small, TRAIN, WIDTHS))
    assert c1.verdict == "FAIL" and c1.value == pytest.approx(1.0)  # right place, 1 point: too small
    assert c2.verdict == "FAIL"
    never = np.maximum(np.array(TRAIN), 0.05)
    assert modelwise_claims(handmade(PEAKED, never, WIDTHS))[0].verdict == "N/A"
    # a looser criterion makes H=16 (train error 2%) the threshold: P(20)/P(16) = 1.25 is within 30%
    loose = modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS, interpolation_error=0.02))[0]
    assert loose.verdict == "PASS" and loose.value == pytest.approx(n_params(20) / n_params(16))


def test_modelwise_early_check_fails_when_the_peak_is_already_there():
    early_peak = [row[:] for row in PEAKED]
    early_peak[4][1] = 0.5  # a peak at step 100 although nothing interpolates
    assert modelwise_claims(handmade(early_peak, TRAIN, WIDTHS))[2].verdict == "FAIL"
    assert modelwise_claims(handmade(PEAKED, TRAIN, WIDTHS, early_step=200))[2].verdict == "FAIL"
    assert modelwise_claims(handmade(PEAKED[:2], TRAIN[:2], WIDTHS[:2]))[0].verdict == "N/A"


def test_squared_loss_interpolation_uses_the_training_loss():
    res = handmade(PEAKED, TRAIN, WIDTHS, loss="mse")
    res.train_loss = np.full_like(res.train_loss, 0.05)
    res.train_loss[0, 5:, 2] = 0.0005  # only H >= 24 fit the targets (≤ 0.01/k = 0.001)
    c1 = modelwise_claims(res)[0]
    assert c1.value == pytest.approx(n_params(20) / n_params(24))
    assert "zero train error H=20" in c1.detail


STEPS = [0, 50, 100, 150, 200, 250, 300, 350]
TRAIN_T = [0.9, 0.3, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0]


def test_epochwise_rise_without_second_descent():
    test = [0.9, 0.3, 0.10, 0.12, 0.15, 0.18, 0.18, 0.19]
    c1, c2 = epochwise_claims(handmade([test], [TRAIN_T], [512], STEPS, study="epochwise"))
    assert c1.verdict == "PASS" and c1.value == pytest.approx(9.0)
    assert "first minimum 10.0% at step 100" in c1.detail
    assert c2.verdict == "FAIL" and c2.value == 0.0


def test_epochwise_double_descent_passes_both():
    test = [0.9, 0.3, 0.10, 0.15, 0.18, 0.14, 0.12, 0.11]
    res = handmade([test], [TRAIN_T], [512], STEPS, study="epochwise")
    c1, c2 = sweep_claims(res)
    assert c1.verdict == "PASS" and c2.verdict == "PASS" and c2.value == pytest.approx(7.0)


def test_epochwise_fails_without_a_rise_or_while_train_error_is_flat():
    falling = [0.9, 0.3, 0.2, 0.15, 0.12, 0.11, 0.10, 0.10]
    c1, c2 = epochwise_claims(handmade([falling], [TRAIN_T], [512], STEPS))
    assert c1.verdict == "FAIL" and c2.verdict == "N/A"
    noisy = [0.9, 0.3, 0.10, 0.11, 0.105, 0.10, 0.11, 0.10]  # 1 point of noise is not a rise
    assert epochwise_claims(handmade([noisy], [TRAIN_T], [512], STEPS))[0].verdict == "FAIL"
    flat_train = [0.9, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    test = [0.9, 0.3, 0.10, 0.12, 0.15, 0.18, 0.18, 0.19]
    assert epochwise_claims(handmade([test], [flat_train], [512], STEPS))[0].verdict == "FAIL"


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
