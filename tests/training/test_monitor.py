"""The early-warning monitor: its decision rule on known curves, its hook in pre-training, and resume."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from overtrain.config import config_hash, validate
from overtrain.errors import ConfigError, DataError
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.store import Store
from overtrain.training.monitor import Monitor, MonitorConfig, _ols_slope
from overtrain.training.pretrain import _Job
from overtrain.training.pretrain_config import PretrainConfig


def _feed(monitor, tokens, loss, delta):
    return [monitor.update(int(t), float(a), float(b)) for t, a, b in zip(tokens, loss, delta)]


def test_check_steps_are_log_spaced():
    steps = MonitorConfig(start_step=16, per_doubling=2).check_steps(130)
    assert steps == [16, 23, 32, 45, 64, 91, 128]


def test_slope_and_its_standard_error_match_least_squares():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 12)
    y = 0.3 * x + rng.normal(0, 0.1, x.size)
    slope, se = _ols_slope(x, y)
    A = np.stack([x, np.ones_like(x)], 1)
    coef, res, *_ = np.linalg.lstsq(A, y, rcond=None)
    cov = res[0] / (x.size - 2) * np.linalg.inv(A.T @ A)
    assert slope == pytest.approx(coef[0]) and se == pytest.approx(math.sqrt(cov[0, 0]))


def test_warns_after_the_minimum_of_a_u_and_predicts_it():
    """P = L + Δ with L falling and Δ rising in log2 tokens: P has its minimum at 2^14 tokens."""
    x = np.arange(8, 22, 0.5)
    loss = 4.0 - 0.05 * x
    delta = 0.05 * x + 0.02 * (x - 14) ** 2 - 0.05 * 14
    checks = _feed(Monitor(MonitorConfig()), 2**x, loss, delta)
    fired = [c for c in checks if c.warning]
    assert len(fired) == 1  # it warns once
    x_fire = math.log2(fired[0].tokens)
    assert 14 < x_fire <= 17.5  # after the minimum, within three doublings of it
    assert math.log2(fired[0].predicted_min) == pytest.approx(14, abs=0.01)
    assert fired[0].delta_slope > 0 > fired[0].loss_slope


def test_never_warns_while_the_perturbed_loss_falls_even_when_sensitivity_rises():
    x = np.arange(8, 22, 0.5)
    rng = np.random.default_rng(1)
    loss = 4.0 - 0.1 * x + rng.normal(0, 0.005, x.size)
    delta = 0.05 * x  # rises, but slower than the loss falls
    assert not any(c.warning or c.rising for c in _feed(Monitor(MonitorConfig()), 2**x, loss, delta))


def test_flat_noise_rarely_fires():
    """Pure noise around a flat curve, 28 checks per run: the defaults (95% one-sided, patience 3) keep
    false alarms rare. Measured 6/200 runs (3%); 10/200 allows for a different BLAS's rounding."""
    fired = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        x = np.arange(8, 22, 0.5)
        detector = Monitor(
            MonitorConfig(forecast=False)
        )  # the slope rule alone: this is its false-alarm rate
        checks = _feed(detector, 2**x, 4 + rng.normal(0, 0.01, x.size), np.zeros(x.size))
        fired += any(c.warning for c in checks)
        assert all(math.isnan(c.forecast_p) for c in checks)
    assert fired <= 10


def test_monitor_is_off_by_default_and_absent_from_the_run_id(tiny_pretrain):
    cfg = validate(PretrainConfig, tiny_pretrain)
    assert cfg.monitor is None
    on = validate(PretrainConfig, {**tiny_pretrain, "monitor": {"start_step": 2}})
    assert config_hash(on) != config_hash(cfg)
    assert "monitor" not in __import__("overtrain.config", fromlist=["identity"]).identity(cfg)
    with pytest.raises(ConfigError, match="monitor.window"):
        validate(PretrainConfig, {**tiny_pretrain, "monitor": {"window": 2}})


def test_weight_average_is_the_power_weighted_mean_with_the_stated_mean_age():
    """After T steps the average is Σ_t (t^e − (t−1)^e)/T^e · θ_t, e = 1/average − 1 (the product of the
    β's telescopes), and the weights' mean age is `average`·T up to O(1/T)."""
    import torch

    from overtrain.training.monitor import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    avg = WeightAverage(model, 0.05)
    thetas = np.random.default_rng(0).normal(size=400)
    for s, theta in enumerate(thetas):
        with torch.no_grad():
            model.weight.fill_(float(theta))
        avg.update(s)
    e, n = 1 / 0.05 - 1, thetas.size
    t = np.arange(1, n + 1, dtype=float)
    w = (t**e - (t - 1) ** e) / n**e
    assert float(avg.module.weight) == pytest.approx(float(w @ thetas), rel=1e-5)
    assert float(w @ (n - t)) / n == pytest.approx(0.05, abs=2 / n)
    assert model.weight.requires_grad and not avg.module.weight.requires_grad


@pytest.fixture
def monitored(tiny_pretrain):
    cfg = copy.deepcopy(tiny_pretrain)
    cfg["train"]["tokens"] = [2560, 10240]  # 40 steps
    cfg["monitor"] = {"start_step": 2, "per_doubling": 2, "window": 3, "batch_size": 4, "draws": 2}
    return cfg


def test_pretraining_logs_a_check_at_each_monitor_step(home, monitored):
    out = Store().execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, monitored))
    rows = [r for r in read_jsonl(out.dir / "metrics.jsonl") if r.get("line") == "monitor"]
    main_end = validate(PretrainConfig, monitored).train.budgets()[-1].branch
    assert [r["step"] for r in rows] == MonitorConfig(start_step=2, per_doubling=2).check_steps(main_end)
    assert all(
        r["monitor/delta"] > 0
        and r["monitor/perturbed"] == pytest.approx(r["monitor/loss"] + r["monitor/delta"])
        for r in rows
    )
    assert "monitor/slope" not in rows[0] and math.isfinite(rows[-1]["monitor/slope"])


TASK = {"name": "hmm", "seed": 5, "states": 4, "vocab_size": 16}


def watching(cfg, draws=None):
    """The monitor on averaged weights, with 5-step fine-tunes at each check."""
    ft = {"data": TASK, "lr": 0.03, "steps": 5, **({"draws": draws} if draws else {})}
    return {**cfg, "monitor": {**cfg["monitor"], "average": 0.05, "finetune": ft}}


def test_the_fine_tuning_monitor_logs_forgetting(home, monitored):
    """With ``finetune`` set every check logs Δ_ft > 0 (a fine-tune on another language raises the
    pre-training loss) next to the noise Δ, and the perturbed loss it watches is L + Δ_ft."""
    out = Store().execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, watching(monitored)))
    rows = [r for r in read_jsonl(out.dir / "metrics.jsonl") if r.get("line") == "monitor"]
    assert rows and all(r["monitor/ft_delta"] > 0 and r["monitor/delta"] > 0 for r in rows)
    bad = watching(monitored)
    bad["monitor"]["finetune"]["data"] = {**TASK, "vocab_size": 64}
    with pytest.raises(DataError, match="vocab_size 64"):
        Store(home / "bad").execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, bad))


@pytest.mark.parametrize("variant", ["noise", "watching"])
def test_resume_replays_the_monitor_state(home, monitored, monkeypatch, variant):
    """A crash after the third resume save and a rerun give the same metrics, bit for bit — with the
    fine-tuning probe (two fine-tunes per check) and the weight average (saved with the resume state)
    too."""
    monitored = watching(monitored, draws=2) if variant == "watching" else monitored
    ref = Store(home / "ref").execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, monitored))
    original = _Job.save_resume
    calls = {"n": 0}

    def crash(self, *args):
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(_Job, "save_resume", crash)
    with pytest.raises(RuntimeError):
        Store(home / "crash").execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, monitored))
    monkeypatch.setattr(_Job, "save_resume", original)
    resumed = Store(home / "crash").execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, monitored))
    assert read_jsonl(resumed.dir / "metrics.jsonl") == read_jsonl(ref.dir / "metrics.jsonl")


def test_the_live_forecast_warns_before_the_minimum_that_the_detector_only_confirms():
    """L = 3 + u^-0.5 and Δ = 0.04·u^0.5 (u = T / 2^8; both rates power laws, the forecaster's model): P has
    its minimum at u* = 25, 2^12.64 tokens. Fed one check at a time, the forecaster warns before it and
    forecasts it within a quarter doubling; the detector warns only after it."""
    x = np.arange(8, 22, 0.5)
    u = 2 ** (x - 8)
    rng = np.random.default_rng(0)
    loss, delta = 3 + u**-0.5 + rng.normal(0, 0.001, x.size), 0.04 * u**0.5
    x_star = 8 + math.log2(25)
    checks = _feed(Monitor(MonitorConfig()), 2**x, loss, delta)
    assert all(math.isnan(c.forecast_p) for c in checks[:4]) and not math.isnan(checks[4].forecast_p)
    warned = [c for c in checks if c.forecast_warning]
    assert len(warned) == 1 and math.log2(warned[0].tokens) < x_star
    assert abs(math.log2(warned[0].forecast) - x_star) < 0.25
    assert "monitor/forecast_p" in warned[0].record()
    detected = next(c for c in checks if c.warning)
    assert math.log2(detected.tokens) > x_star


def test_the_monitor_does_not_change_training(home, monitored):
    """Checks evaluate noisy copies and restore the model bit for bit, and fine-tune copies: the same run
    with and without the monitor (or with it starting elsewhere, or fine-tuning and averaging) trains
    identically — so a monitor setting never changes T*."""
    plain = {k: v for k, v in monitored.items() if k != "monitor"}
    later = {**monitored, "monitor": {**monitored["monitor"], "start_step": 4}}
    runs = [
        Store(home / name).execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, cfg))
        for name, cfg in (("on", monitored), ("off", plain), ("later", later), ("ft", watching(monitored)))
    ]

    # the checkpoints' held-out losses: train/loss is a segment mean, which the checks split differently
    evals = [[(r["checkpoint"], r["loss"]) for r in read_jsonl(out.dir / "evals.jsonl")] for out in runs]
    assert evals[0] == evals[1] == evals[2] == evals[3] and len(evals[0]) >= 2
