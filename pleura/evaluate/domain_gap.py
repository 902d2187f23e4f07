"""The sim-to-real gap, measured: how well can a small classifier tell real frames from simulated ones?

Each frame is summarised by image statistics that matter for transfer (intensity distribution, speckle
size and contrast, texture, the intensity profile with depth, the shape of the scan area). A logistic
regression on them, cross-validated by clip, separates real from simulated frames; its ROC AUC is the gap
(0.5: indistinguishable, 1.0: fully separable). Statistics only, so the number is cheap, stable and the
largest differences name what the simulator should change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura.evaluate.classification import binary_roc_auc

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


def _load(root: Path, rows: Sequence[dict[str, str]], limit: int, rng: np.random.Generator) -> tuple:
    """Statistics and clip ids of at most ``limit`` frames drawn at random."""
    pick = rng.choice(len(rows), size=min(limit, len(rows)), replace=False)
    feats = [frame_statistics(np.asarray(Image.open(root / rows[i]["image"]).convert("L"))) for i in pick]
    return np.stack(feats), [rows[i]["clip_id"] for i in pick]


def domain_gap(
    real_root: str | Path,
    real_rows: Sequence[dict[str, str]],
    sim_root: str | Path,
    sim_rows: Sequence[dict[str, str]],
    seed: int = 0,
    max_frames: int = 600,
    folds: int = 5,
) -> dict[str, Any]:
    """ROC AUC of a logistic regression separating real from simulated frames, cross-validated by clip.

    Returns ``auc`` (mean over folds), ``auc_std``, ``mean_d`` (the mean over statistics of the standardised
    difference of means), the frame counts, and ``top``: the five statistics whose real and simulated means
    differ most (in pooled standard deviations), with both means.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    xr, gr = _load(Path(real_root), real_rows, max_frames, rng)
    xs, gs = _load(Path(sim_root), sim_rows, max_frames, rng)
    x = np.concatenate([xr, xs])
    y = np.r_[np.ones(len(xr), int), np.zeros(len(xs), int)]
    groups = np.array([f"real/{g}" for g in gr] + [f"sim/{g}" for g in gs])
    x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    aucs = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(x[train], y[train])
        aucs.append(binary_roc_auc(y[test], clf.predict_proba(x[test])[:, 1]))
    pooled = np.sqrt((np.nanvar(xr, axis=0) + np.nanvar(xs, axis=0)) / 2) + 1e-9
    d = np.abs(np.nanmean(xr, axis=0) - np.nanmean(xs, axis=0)) / pooled
    order = np.argsort(-np.nan_to_num(d))[:5]
    return {
        "auc": float(np.mean(aucs)),
        "mean_d": float(np.nanmean(d)),
        "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
        "folds": len(aucs),
        "real_frames": len(xr),
        "sim_frames": len(xs),
        "features": list(FEATURES),
        "top": {
            FEATURES[i]: {"real": float(np.nanmean(xr[:, i])), "sim": float(np.nanmean(xs[:, i])), "d": float(d[i])}
            for i in order
        },
    }
