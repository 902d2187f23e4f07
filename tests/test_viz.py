"""Overlays and annotated panels: small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pleura.labels import SPARSE
from pleura.viz import annotated_panel, heat, overlay


def test_overlay_tints_labelled_pixels_only() -> None:
    image = np.full((1, 2), 100, np.uint8)
    mask = np.array([[0, 2]], np.uint8)  # background (untinted), b_line (255, 40, 40)
    out = overlay(image, mask, SPARSE, alpha=0.5)
    assert out.tolist() == [[[100, 100, 100], [177, 70, 70]]]  # 0.5 * 100 + 0.5 * (255, 40, 40)


def test_overlay_shape_mismatch_says_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2\) differs from mask shape \(1, 2\)"):
        overlay(np.zeros((2, 2), np.uint8), np.zeros((1, 2), np.uint8), SPARSE)


def test_heat_and_panel_shapes() -> None:
    image = np.full((8, 6), 50, np.uint8)
    cam = np.zeros((8, 6))
    assert (heat(image, cam) == 50).all()  # a zero map leaves the frame grey
    panel = annotated_panel(image, np.zeros((8, 6), np.uint8), "sparse", "title", cam)
    assert panel.shape == (8 + 18, 3 * 6, 3) and panel.dtype == np.uint8
