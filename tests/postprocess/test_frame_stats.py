"""Frame image statistics: one value per feature inside the scan area, all NaN for a blank frame."""

from __future__ import annotations

import numpy as np

from pleura.postprocess.frame_stats import FEATURES, frame_statistics


def test_frame_statistics_shape_and_blank_frame() -> None:
    assert np.isnan(frame_statistics(np.zeros((64, 64), np.uint8))).all()
    rng = np.random.default_rng(0)
    s = frame_statistics(rng.integers(1, 255, (64, 64)).astype(np.uint8))
    assert s.shape == (len(FEATURES),) and np.isfinite(s).all()
