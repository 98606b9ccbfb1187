"""Scaling-law fit and inversion against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.studies.repeated_data.effective_size import effective_size, fit_scaling_law

N = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])


def test_offset_form_recovers_a_closed_form_law():
    a, b, c = 40.0, 0.35, 1.7
    fit = fit_scaling_law(N, a * N**-b + c)
    assert fit.form == "offset" and fit.sizes == 6
    np.testing.assert_allclose([fit.a, fit.b, fit.c], [a, b, c], rtol=1e-4)
    assert fit.rmse < 1e-6
    # inversion is the closed form N = (a / (L − c))^(1/b)
    loss = a * 2e5**-b + c
    assert fit.size(loss) == pytest.approx(2e5, rel=1e-4)
    assert fit.size(c - 0.1) == np.inf  # below the irreducible loss: no finite size


def test_power_form_with_three_sizes_is_a_log_log_line():
    a, b = 9.0, 0.08
    n = N[:3]
    fit = fit_scaling_law(np.repeat(n, 2), np.repeat(a * n**-b, 2))  # two seeds per size
    assert fit.form == "power" and fit.c == 0 and fit.points == 6 and fit.sizes == 3
    np.testing.assert_allclose([fit.a, fit.b], [a, b], rtol=1e-10)
    # a model of size 3e4 whose loss is that of a 1e4 model "behaves like one 3x smaller"
    eff = effective_size(fit, 3e4, a * 1e4**-b)
    assert eff.ratio == pytest.approx(1 / 3, rel=1e-9) and not eff.extrapolated
    worse = effective_size(fit, 3e4, a * 1e3**-b)  # beyond the smallest fitted model
    assert worse.ratio == pytest.approx(1 / 30, rel=1e-9) and worse.extrapolated


def test_fit_that_does_not_fall_with_size_is_not_inverted():
    fit = fit_scaling_law([1e4, 1e5], [3.0, 3.2])
    assert fit.b < 0 and not fit.invertible
    assert np.isnan(effective_size(fit, 1e5, 3.1).ratio)


@pytest.mark.parametrize(
    ("n", "loss", "form", "text"),
    [
        ([1e4, 1e4], [3.0, 3.1], "auto", "2 distinct"),
        ([1e4, 1e5, 1e6], [3.0, 2.9, 2.8], "offset", "at least 4"),
        ([1e4, -1e5], [3.0, 2.9], "auto", "positive"),
        ([1e4, 1e5], [3.0], "auto", "equal-length"),
    ],
)
def test_bad_inputs(n, loss, form, text):
    with pytest.raises(ValueError, match=text):
        fit_scaling_law(n, loss, form)


def test_effective_size_below_own_size_iff_loss_above_the_law():
    """Why "behaves like a smaller model" is a check: the fitted law is monotone in N, so N_eff < N_eff(E = 1)
    exactly when the loss is above the E = 1 loss."""
    fit = fit_scaling_law(N[:3], 9.0 * N[:3] ** -0.08)
    base = float(fit.loss(3e4))
    for loss in (base - 0.01, base + 0.01, base + 0.2):
        ratio = effective_size(fit, 3e4, loss).n_eff / float(fit.size(base))
        assert (ratio < 1) == (loss > base)
