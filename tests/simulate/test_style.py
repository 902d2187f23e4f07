"""Simulator output styles: the POCUS style smooths and darkens inside the scan area only."""

from __future__ import annotations

import numpy as np
import pytest

from pleura.simulate import SimulationConfig
from pleura.simulate.style import apply_style
from pleura.simulate.writer import SimulationError, simulate_clip


def test_pocus_style_keeps_the_outside_black_and_smooths_inside() -> None:
    _, frames = simulate_clip(0, 0, "covid", "curvilinear", 128, 1)
    image = next(iter(frames)).image
    styled = apply_style(image, "pocus")
    inside = image > 0
    assert styled.dtype == np.uint8 and styled.shape == image.shape
    assert (styled[~inside] == 0).all() and (styled[inside] > 0).all()
    assert np.median(styled[inside]) < np.median(image[inside])  # gamma > 1 darkens mid-tones
    rough = lambda x: np.abs(np.diff(x.astype(float), axis=1))[inside[:, 1:] & inside[:, :-1]].mean()  # noqa: E731
    assert rough(styled) < 0.7 * rough(image)  # blurred speckle
    assert apply_style(image, "physics") is image


def test_unknown_style_is_refused() -> None:
    with pytest.raises(SimulationError, match="unknown style 'glossy'"):
        SimulationConfig(style="glossy").validate()
