"""Out-of-distribution flag: is this frame lung ultrasound like the frames the model was trained on?

A frame is summarised by the image statistics of ``pleura.evaluate.domain_gap`` (intensity, speckle,
texture, depth profile, scan-area shape), and scored by its Mahalanobis distance from the training frames'
statistics. The flag is raised above the ``quantile`` of the training frames' own distances (times a
margin), and always for a frame with no scan area (blank, uniform). Cheap, needs no extra model, and
every number it stores is plain JSON in the model file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from pleura.evaluate.domain_gap import FEATURES, frame_statistics


@dataclass
class OODDetector:
    """Mahalanobis distance of a frame's statistics from the training frames'."""

    mean: list[float]  # mean statistics of the training frames
    precision: list[list[float]]  # inverse of their (shrunk) covariance
    scale: list[float]  # per-statistic standard deviation, to standardise before the distance
    threshold: float  # distance above which a frame is flagged
    features: tuple[str, ...] = FEATURES

    @staticmethod
    def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, scale and precision of standardised statistics; the covariance is shrunk towards the
        identity, more when there are few frames per statistic (a plain inverse would overfit)."""
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        shrink = float(np.clip(x.shape[1] / len(x), 0.1, 0.9))
        cov = (1 - shrink) * np.cov(z, rowvar=False) + shrink * np.eye(z.shape[1])
        return mean, scale, np.linalg.inv(cov)

    @staticmethod
    def _distance(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, precision: np.ndarray) -> np.ndarray:
        z = (x - mean) / scale
        return np.sqrt(np.einsum("ij,jk,ik->i", z, precision, z))

    @classmethod
    def fit(cls, frames: Iterable[np.ndarray], quantile: float = 0.99, margin: float = 1.5) -> OODDetector:
        """Fit on training frames ((H, W) uint8, as the model sees them); needs at least 10 with a scan area.

        The threshold is set on held-out distances (each half of the frames scored against the other half),
        since distances of the frames the statistics were fitted on are biased low.
        """
        x = np.stack([frame_statistics(f) for f in frames]).astype(np.float64)
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 10:
            raise ValueError(f"the OOD detector needs at least 10 frames with a scan area, got {len(x)}")
        order = np.random.default_rng(0).permutation(len(x))
        a, b = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
        held_out = np.concatenate([cls._distance(b, *cls._moments(a)), cls._distance(a, *cls._moments(b))])
        mean, scale, precision = cls._moments(x)
        threshold = float(np.quantile(held_out, quantile) * margin)
        return cls(mean.tolist(), precision.tolist(), scale.tolist(), threshold)

    def score(self, frame: np.ndarray) -> float:
        """Distance of one frame from the training frames; ``inf`` for a frame without a scan area."""
        s = frame_statistics(frame).astype(np.float64)
        if not np.isfinite(s).all():
            return float("inf")
        return float(
            self._distance(s[None], np.asarray(self.mean), np.asarray(self.scale), np.asarray(self.precision))[0]
        )

    def flag(self, frame: np.ndarray) -> tuple[bool, float]:
        """``(is out of distribution, distance)``."""
        d = self.score(frame)
        return d > self.threshold, d

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, d: dict) -> OODDetector:
        if tuple(d.get("features", ())) != FEATURES:
            raise ValueError("the model's OOD statistics were computed with other features; re-export the model")
        return cls(d["mean"], d["precision"], d["scale"], float(d["threshold"]), tuple(d["features"]))
