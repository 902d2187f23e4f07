"""Temperature scaling and ECE on cases small enough to reason about."""

from __future__ import annotations

import numpy as np
import pytest

from pleura.postprocess.calibration import expected_calibration_error, fit_temperature, scale_probabilities


def test_scaled_probabilities_sum_to_one_and_keep_the_decision() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    for t in (0.3, 1.0, 4.0):
        q = scale_probabilities(prob, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
        assert (q.argmax(1) == prob.argmax(1)).all()
    np.testing.assert_allclose(scale_probabilities(prob, 1.0), prob, atol=1e-9)


def test_fit_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 2
    y = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in logits])  # calibrated at T = 1
    over = np.exp(logits * 3) / np.exp(logits * 3).sum(1, keepdims=True)  # an over-confident model (T = 1/3)
    t = fit_temperature(over, y)
    assert 2.6 < t < 3.4
    assert expected_calibration_error(scale_probabilities(over, t), y) < expected_calibration_error(over, y) / 3


def test_ece_by_hand_and_bad_input() -> None:
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])  # bin 0.9: accuracy 0.5 vs 0.9; bin 0.6: accuracy 1.0 vs 0.6
    assert expected_calibration_error(prob, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(prob, np.array([0, 2, 0, 0]))
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0)) == 1.0
