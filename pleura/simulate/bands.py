"""Line labels drawn as bands of a chosen thickness, the way experts draw them (issue 14).

The simulator labels the pleural line and the A-lines as thin as their echo (about 2.8 and 3.9 px at
128 px); the experts of the real cvat-lus clip draw them as bands about 8 and 10.5 px thick. ``thicken_lines``
grows every vertical run of a line class in an output mask, about its centre, to the requested thickness in
pixels of that mask. It only takes pixels of the classes in ``GIVES_WAY`` (soft tissue, fascia, the lung
below the pleura); B-lines, ribs, rib shadows, consolidation, effusion, the other line classes and the
outside of the scan keep their pixels. Runs already as thick or thicker are left as they are.
"""

from __future__ import annotations

import numpy as np

from pleura.labels import ANATOMY

A = {name: i for i, name in enumerate(ANATOMY.names)}
PLEURAL = (A["pleural_line_healthy"], A["pleural_line_unhealthy"])
GIVES_WAY = np.zeros(len(ANATOMY.names), bool)
GIVES_WAY[[A["soft_tissue"], A["fascia"], A["lung_healthy"], A["lung_unhealthy"]]] = True
#: the experts' band thickness on the real cvat-lus clip, pixels of a 128-px frame: pleural line, A-lines
EXPERT_BANDS_128 = (8.0, 10.5)


def expert_bands(size: int) -> tuple[float, float]:
    """The experts' pleural-line and A-line band thickness (:data:`EXPERT_BANDS_128`) scaled to ``size`` px."""
    return EXPERT_BANDS_128[0] * size / 128, EXPERT_BANDS_128[1] * size / 128


def _runs(column: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate(([0], column.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _grow(mask: np.ndarray, cls: int, thickness: float) -> None:
    """Grow each vertical run of ``cls`` in ``mask`` (in place) to ``thickness`` px, about its centre."""
    target = max(1, round(thickness))
    for x in np.flatnonzero((mask == cls).any(axis=0)):
        col = mask[:, x]
        for start, stop in _runs(col == cls):
            missing = target - (stop - start)
            if missing <= 0:
                continue
            top = missing // 2
            lo, hi = max(0, start - top), min(col.size, stop + missing - top)
            seg = col[lo:hi]  # a view: writes go to the mask
            seg[GIVES_WAY[seg]] = cls


def thicken_lines(anatomy: np.ndarray, pleural_px: float | None, a_line_px: float | None = None) -> np.ndarray:
    """A copy of the ``anatomy`` mask with the pleural line grown to ``pleural_px`` px thick per column and
    the A-lines to ``a_line_px`` (``None``: ``pleural_px``). ``pleural_px=None`` returns the mask unchanged."""
    if pleural_px is None:
        return anatomy
    a_line_px = pleural_px if a_line_px is None else a_line_px
    out = anatomy.copy()
    for cls in PLEURAL:
        _grow(out, cls, pleural_px)
    _grow(out, A["a_line"], a_line_px)
    return out
