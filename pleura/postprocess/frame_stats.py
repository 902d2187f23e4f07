"""Image statistics of one frame inside its scan area: intensity distribution, speckle size and contrast,
texture, the intensity profile with depth and the shape of the scan area.

The out-of-distribution detector (``pleura.postprocess.ood``) scores frames on them at inference time, and the
sim-to-real measurement (``pleura.evaluate.domain_gap``) compares real and simulated frames with them.
"""

from __future__ import annotations

import numpy as np

FEATURES = (
    "mean", "std", "p10", "p50", "p90", "skewness", "kurtosis", "dark_fraction", "speckle_snr",
    "grad_x", "grad_y", "acf_x1", "acf_x3", "acf_y1", "acf_y3", "depth_q1", "depth_q2", "depth_q3", "depth_q4",
    "area_fraction", "top_width_ratio",
)  # fmt: skip


def _acf(v: np.ndarray, axis: int, lag: int, support: np.ndarray) -> float:
    """Normalised autocorrelation of the centred image at ``lag`` pixels along ``axis`` (speckle size)."""
    a = np.moveaxis(v, axis, 0)
    s = np.moveaxis(support, axis, 0)
    both = s[lag:] & s[:-lag]
    if both.sum() < 16:
        return float("nan")
    x, y = a[lag:][both], a[:-lag][both]
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def frame_statistics(image: np.ndarray) -> np.ndarray:
    """The ``FEATURES`` of one (H, W) uint8 frame, computed inside its scan area (the non-zero pixels)."""
    img = image.astype(np.float32) / 255.0
    support = image > 0
    if support.sum() < 64:
        return np.full(len(FEATURES), np.nan, dtype=np.float32)
    v = img[support]
    mean, std = float(v.mean()), float(v.std())
    z = (v - mean) / std if std > 0 else np.zeros_like(v)
    h, w = img.shape
    b = max(4, h // 32)  # speckle-size blocks
    blocks = img[: h // b * b, : w // b * b].reshape(h // b, b, w // b, b)
    inside = support[: h // b * b, : w // b * b].reshape(h // b, b, w // b, b).all(axis=(1, 3))
    bm, bs = blocks.mean(axis=(1, 3))[inside], blocks.std(axis=(1, 3))[inside]
    ok = bs > 1e-3
    rows = np.flatnonzero(support.any(axis=1))
    top, bottom = rows[0], rows[-1] + 1
    quarters = np.array_split(np.arange(top, bottom), 4)
    depth = [float(img[q][support[q]].mean()) / max(mean, 1e-6) if support[q].any() else np.nan for q in quarters]
    widths = support.sum(axis=1)[top:bottom]
    n = max(1, len(widths) // 10)
    gx = np.abs(np.diff(img, axis=1))[support[:, 1:] & support[:, :-1]]
    gy = np.abs(np.diff(img, axis=0))[support[1:] & support[:-1]]
    values = [
        mean, std, *np.percentile(v, [10, 50, 90]).tolist(), float((z**3).mean()), float((z**4).mean()),
        float((v < 0.05).mean()), float(np.mean(bm[ok] / bs[ok])) if ok.any() else np.nan,
        float(gx.mean()) / max(mean, 1e-6), float(gy.mean()) / max(mean, 1e-6),
        _acf(img, 1, 1, support), _acf(img, 1, 3, support), _acf(img, 0, 1, support), _acf(img, 0, 3, support),
        *depth, float(support.mean()), float(widths[:n].mean() / max(widths[-n:].mean(), 1)),
    ]  # fmt: skip
    return np.asarray(values, dtype=np.float32)
