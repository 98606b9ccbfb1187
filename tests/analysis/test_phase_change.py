"""Phase-change step and mean score of a score-vs-step curve, against closed forms."""

from __future__ import annotations

import pytest

from overtrain.analysis.phase_change import mean_score, phase_change_step


def test_the_crossing_is_interpolated_between_checkpoints():
    # 0.1 at step 250, 0.5 at step 500: 0.3 is reached half-way, at step 375
    assert phase_change_step([250, 500, 750], [0.1, 0.5, 0.7]) == pytest.approx(375.0)
    assert phase_change_step([750, 250, 500], [0.7, 0.1, 0.5]) == pytest.approx(375.0)  # any order


def test_a_head_that_never_forms_has_no_phase_change_and_one_formed_from_the_start_the_first_step():
    assert phase_change_step([250, 500], [0.02, 0.05]) is None
    assert phase_change_step([250, 500], [0.4, 0.6]) == 250.0
    assert phase_change_step([250, 500], [0.2, 0.6], threshold=0.6) == 500.0


def test_mean_score_is_the_area_over_the_span():
    # a ramp from 0 to 1 over [0, 1000]: mean 0.5; the same ramp delayed by 500 steps (0 until 500,
    # then to 1 at 1000): area 250 over 1000 steps = 0.25
    assert mean_score([0, 1000], [0.0, 1.0]) == pytest.approx(0.5)
    assert mean_score([0, 500, 1000], [0.0, 0.0, 1.0]) == pytest.approx(0.25)
    # from step 0 with a score of 0 assumed before the first checkpoint at 500
    assert mean_score([500, 1000], [0.0, 1.0], start=0) == pytest.approx(0.25)
    assert mean_score([500], [0.7]) == 0.7


def test_a_later_head_with_the_same_final_score_has_a_smaller_mean_and_a_later_phase_change():
    steps = [250, 500, 750, 1000, 1250, 1500]
    early = [0.05, 0.6, 0.7, 0.72, 0.73, 0.74]
    late = [0.05, 0.06, 0.1, 0.6, 0.72, 0.74]
    assert phase_change_step(steps, late) > phase_change_step(steps, early)
    assert mean_score(steps, late) < mean_score(steps, early)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="as many"):
        phase_change_step([1, 2], [0.1])
    with pytest.raises(ValueError, match="distinct"):
        mean_score([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        mean_score([1, 2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="after the first"):
        mean_score([1, 2], [0.1, 0.2], start=5)
