"""Out-of-distribution flag: is this frame lung ultrasound like the frames the model was trained on?

Two Mahalanobis distances from the training frames, each with its own threshold:

- image: the frame's image statistics (``IMAGE_FEATURES``): those of ``pleura.postprocess.frame_stats``
  (intensity, speckle, texture, depth profile, scan-area shape) plus texture statistics made for this check
  (local contrast, flat and repeated pixels, spectrum, local binary patterns: what tells a speckled B-mode
  image from a photograph, a chart or a screenshot);
- network: the classifier head's pooled features (the input of its last linear layer, from the same forward
  pass as the diagnosis), so that the network's own view of the frame counts too.

A frame's score is the larger of the two distances, each divided by its threshold; it is flagged above 1
(either part beyond its threshold), and always when it has no scan area (blank, uniform: score ``inf``).
Each threshold is a quantile of distances of real frames held out from the fit by patient (cross-fitted:
every group of training patients is scored by statistics fitted without it), times a margin. Covariances are
shrunk towards the identity (on standardised features). Every number is plain JSON in the model file, and
``from_dict`` checks each one: a damaged or forged detector is refused with the field named.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pleura.labels import StrEnum
from pleura.postprocess.frame_stats import FEATURES, frame_statistics

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # version 1: the image statistics of ``FEATURES`` only, no network part
MAX_THRESHOLD = 1e6  # a threshold above this would flag nothing: refused as a forged or broken file
MAX_ABS_VALUE = 1e12  # bound on every stored mean, scale and precision entry
MIN_SCALE = 0.1  # floor of a feature's scale, relative to the median scale (real models: the least is ~0.3)
NETWORK_FRAMES_PER_FEATURE = 2  # the network part is fitted only from this many frames per pooled feature
MAX_DIM = 4096  # most features a part may have (the head's pooled features are 2 * head_width)
LBP_RADII = (1, 2)  # local binary patterns at these distances (pixels of the model-size frame)
LBP_LEVEL = 2.0  # grey levels a neighbour must exceed the centre by to count as brighter (flat stays flat)
TEXTURE_FEATURES: tuple[str, ...] = (
    "contrast_p10", "contrast_p50", "contrast_p90", "flat_fraction", "equal_neighbours",
    "spectrum_high", "spectrum_mid", "log_laplace_kurtosis",
    *(f"lbp{r}_{k}" for r in LBP_RADII for k in range(9)),
)  # fmt: skip
IMAGE_FEATURES: tuple[str, ...] = FEATURES + TEXTURE_FEATURES
NETWORK_FEATURES = "pooled"  # the name recorded for the network part's input


class OODPolicy(StrEnum):
    """What a file whose every frame is out of distribution gets: ``withhold`` no diagnosis (the default: it may not
    be lung ultrasound at all), or ``warn`` the diagnosis of all its frames, marked as out of distribution (for
    lung ultrasound from a scanner or site unlike the training frames, where the detector flags every frame)."""

    WITHHOLD = "withhold"
    WARN = "warn"

    @classmethod
    def parse(cls, value: str | OODPolicy) -> OODPolicy:
        """The policy called ``value``; ``ValueError`` naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown OOD policy {value!r}; choose one of: {', '.join(cls)}") from None


def _lbp_histogram(img: np.ndarray, inner: np.ndarray, r: int) -> np.ndarray:
    """Uniform, rotation-invariant local binary patterns at radius ``r`` (8 neighbours on the axes and
    diagonals): the share of inner pixels with 0..8 brighter neighbours in one arc (non-uniform: the rest)."""
    h, w = img.shape
    centre = img[r : h - r, r : w - r]
    offsets = ((0, r), (-r, r), (-r, 0), (-r, -r), (0, -r), (r, -r), (r, 0), (r, r))  # in circular order
    bits = np.stack([img[r + dy : h - r + dy, r + dx : w - r + dx] >= centre + LBP_LEVEL for dy, dx in offsets])
    transitions = (bits != np.roll(bits, 1, axis=0)).sum(axis=0)
    code = np.where(transitions <= 2, bits.sum(axis=0), 9)
    m = inner[r : h - r, r : w - r]
    if not m.any():
        return np.full(9, np.nan)
    return (np.bincount(code[m], minlength=10) / m.sum())[:9]


def texture_statistics(image: np.ndarray) -> np.ndarray:
    """The ``TEXTURE_FEATURES`` of one (H, W) uint8 frame, inside its scan area (non-zero pixels, eroded).

    Speckle makes a B-mode image rough everywhere at a few pixels' scale: local contrast is high in bright
    tissue, flat or repeated pixels are rare and the spectrum has mid and high frequencies; a photograph,
    chart or screenshot has flat regions, exact repeats and sharp edges instead.
    """
    support = image > 0
    if support.sum() < 64:
        return np.full(len(TEXTURE_FEATURES), np.nan)
    a = image.astype(np.float32)
    inner = ndimage.binary_erosion(support, iterations=3)
    if inner.sum() < 64:
        inner = support
    mean = ndimage.uniform_filter(a, 3)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(a * a, 3) - mean * mean, 0))
    bright = inner & (mean > 20)
    contrast = (std / np.maximum(mean, 1.0))[bright] if bright.sum() >= 16 else np.zeros(1)
    flat = float((std[inner] < 1.0).mean())
    pairs = inner[:, 1:] & inner[:, :-1]
    equal = float((a[:, 1:] == a[:, :-1])[pairs].mean()) if pairs.any() else 0.0
    h, w = a.shape
    power = np.abs(np.fft.fft2((a - a[support].mean()) * support)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx)  # cycles per pixel, 0 .. 0.71
    total = float(power[radius > 1 / 64].sum()) + 1e-9
    high = float(power[radius > 1 / 8].sum()) / total
    mid = float(power[(radius > 1 / 32) & (radius <= 1 / 8)].sum()) / total
    lap = ndimage.laplace(a)[inner]
    kurtosis = float(((lap - lap.mean()) ** 4).mean() / (lap.var() ** 2 + 1e-12)) if lap.size else 1.0
    values = [
        *np.percentile(contrast, [10, 50, 90]).tolist(), flat, equal, high, mid, math.log(max(kurtosis, 1e-6)),
        *np.concatenate([_lbp_histogram(a, inner, r) for r in LBP_RADII]).tolist(),
    ]  # fmt: skip
    return np.asarray(values, dtype=np.float64)


def image_statistics(image: np.ndarray) -> np.ndarray:
    """The ``IMAGE_FEATURES`` of one (H, W) uint8 frame: ``frame_statistics`` then ``texture_statistics``."""
    return np.concatenate([frame_statistics(image).astype(np.float64), texture_statistics(image)])


def _shrunk_moments(x: np.ndarray, shrink: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, scale, precision of standardised ``x`` (N, D) and the shrinkage used: the covariance is pulled
    towards the identity, by default more when there are few frames per feature (a plain inverse overfits).
    A scale is at least ``MIN_SCALE`` of the median one: a feature (nearly) constant in training, such as a
    ReLU channel never active, would otherwise turn the slightest change into a huge distance."""
    std = x.std(axis=0)
    mean, scale = x.mean(axis=0), np.maximum(std, max(MIN_SCALE * float(np.median(std)), 1e-6))
    z = (x - mean) / scale
    s = float(np.clip(x.shape[1] / len(x), 0.1, 0.9)) if shrink is None else float(shrink)
    cov = (1 - s) * np.atleast_2d(np.cov(z, rowvar=False)) + s * np.eye(z.shape[1])
    precision = np.linalg.inv(cov)
    return mean, scale, (precision + precision.T) / 2, s


def _distance(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of the rows of ``x``; ``inf`` for a row with a non-finite value."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    ok = np.isfinite(x).all(axis=1)
    z = (np.where(ok[:, None], x, 0.0) - mean) / scale
    d2 = np.einsum("ij,jk,ik->i", z, precision, z)
    return np.where(ok, np.sqrt(np.maximum(d2, 0.0)), np.inf)


def _held_out_distances(x: np.ndarray, groups: np.ndarray | None, folds: int, shrink: float | None) -> np.ndarray:
    """Distances of every frame of ``x`` from statistics fitted without it: by group (``folds`` parts of the
    groups, each scored by statistics of the others, so no patient scores itself), or, without groups, each
    random half against the other (biased low when frames of one patient are in both halves)."""
    rng = np.random.default_rng(0)
    if groups is not None:
        names = np.unique(groups)
        if len(names) < 2:
            raise ValueError(f"cross-fitting the OOD threshold needs frames of at least 2 groups, got {len(names)}")
        parts = rng.permutation(names)
        k = min(folds, len(names))
        masks = [np.isin(groups, parts[i::k]) for i in range(k)]
    else:
        half = np.isin(np.arange(len(x)), rng.permutation(len(x))[: len(x) // 2])
        masks = [half, ~half]
    held = np.full(len(x), np.nan)
    for m in masks:
        rest = x[~m]
        rest = rest[np.isfinite(rest).all(axis=1)]
        if len(rest) < 2:
            raise ValueError(f"an OOD cross-fit part leaves {len(rest)} frames to fit on; give more frames or groups")
        held[m] = _distance(x[m], *_shrunk_moments(rest, shrink)[:3])
    return held


@dataclass
class MahalanobisPart:
    """One part of the detector: a Mahalanobis distance on some features, and its own threshold."""

    features: tuple[str, ...]  # names of the inputs (``IMAGE_FEATURES``, or ``pooled_0`` ... for the network)
    mean: np.ndarray  # (D,) mean of the fitted frames' features
    scale: np.ndarray  # (D,) their standard deviation: features are standardised before the distance
    precision: np.ndarray  # (D, D) inverse of their shrunk covariance (standardised)
    threshold: float  # distance above which a frame is out of distribution for this part
    shrinkage: float  # weight of the identity in the shrunk covariance, in [0, 1)
    fit_frames: int  # frames the mean and covariance were fitted on
    calib_frames: int  # held-out frames whose distances set the threshold
    quantile: float  # the threshold is this quantile of the held-out frames' distances ...
    margin: float  # ... times this margin

    FIELDS = ("features", "mean", "scale", "precision", "threshold", "shrinkage", "fit_frames", "calib_frames",
              "quantile", "margin")  # fmt: skip

    @classmethod
    def fit(
        cls,
        names: Sequence[str],
        x: np.ndarray,
        *,
        groups: Sequence[str] | None = None,
        calib: np.ndarray | None = None,
        quantile: float = 0.95,
        margin: float = 1.0,
        folds: int = 5,
        shrink: float | None = None,
    ) -> MahalanobisPart:
        """Fit mean and covariance on ``x`` (N, D); the threshold is ``quantile`` of held-out distances times
        ``margin``: of ``calib`` (frames of other patients) if given, else cross-fitted over ``groups`` (one id
        per row of ``x``, e.g. patients) in ``folds`` parts, else each random half scored against the other."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"expected ({len(x)}, {len(names)}) features (one column per name), got {x.shape}")
        if not 0.5 <= quantile <= 1.0 or not 1.0 <= margin <= 10.0:
            raise ValueError(f"quantile should be in [0.5, 1] and margin in [1, 10], got {quantile} and {margin}")
        finite = np.isfinite(x).all(axis=1)
        if finite.sum() < 10:
            raise ValueError(f"an OOD part needs at least 10 frames with finite features to fit, got {finite.sum()}")
        if calib is not None:
            held = _distance(np.asarray(calib, dtype=np.float64), *_shrunk_moments(x[finite], shrink)[:3])
        else:
            if groups is not None and len(groups) != len(x):
                raise ValueError(f"groups should give one id per frame ({len(x)}), got {len(groups)}")
            g = None if groups is None else np.asarray(groups)[finite]
            held = _held_out_distances(x[finite], g, folds, shrink)
        held = held[np.isfinite(held)]
        if len(held) < 10:
            raise ValueError(
                f"the OOD threshold needs at least 10 held-out frames with finite features, got {len(held)}"
            )
        mean, scale, precision, s = _shrunk_moments(x[finite], shrink)
        threshold = float(np.quantile(held, quantile) * margin)
        return cls(tuple(names), mean, scale, precision, threshold, s, int(finite.sum()), len(held), quantile, margin)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Distances of the rows of ``x`` (N, D); ``inf`` where a feature is not finite."""
        return _distance(x, self.mean, self.scale, self.precision)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: lists of floats, numbers, names."""
        return {
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "threshold": float(self.threshold),
            "shrinkage": float(self.shrinkage),
            "fit_frames": int(self.fit_frames),
            "calib_frames": int(self.calib_frames),
            "quantile": float(self.quantile),
            "margin": float(self.margin),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, features: Sequence[str] | None = None) -> MahalanobisPart:
        """Read and check a part's fields (``d`` may hold others; the caller checks the key set); ``features``,
        when given, are the names it must have, in order."""
        names = d["features"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not 1 <= len(names) <= MAX_DIM:
            raise ValueError(
                f"the model's {where}.features should be a list of 1 to {MAX_DIM} names, got {_short(names)}"
            )
        if features is not None and tuple(names) != tuple(features):
            raise ValueError(
                f"the model's {where} was fitted on other features ({len(names)}: {_short(names)}) than this pleura "
                f"computes ({len(features)}: {_short(list(features))}); refit it (pleura.infer.bundle.refit_ood)"
            )
        n = len(names)
        mean = _array(d["mean"], (n,), f"{where}.mean")
        scale = _array(d["scale"], (n,), f"{where}.scale")
        if not (scale > 0).all():
            raise ValueError(f"the model's {where}.scale should be positive standard deviations; refit the detector")
        precision = _array(d["precision"], (n, n), f"{where}.precision")
        peak = float(np.abs(precision).max())
        if not np.allclose(precision, precision.T, rtol=1e-6, atol=1e-9 * peak):
            raise ValueError(f"the model's {where}.precision should be a symmetric matrix; refit the detector")
        if np.linalg.eigvalsh(precision).min() < -1e-8 * peak:
            raise ValueError(f"the model's {where}.precision should be positive semi-definite; refit the detector")
        return cls(
            features=tuple(names),
            mean=mean,
            scale=scale,
            precision=precision,
            threshold=_threshold(d["threshold"], f"{where}.threshold"),
            shrinkage=_number(d["shrinkage"], f"{where}.shrinkage", 0.0, 1.0, high_open=True),
            fit_frames=_count(d["fit_frames"], f"{where}.fit_frames"),
            calib_frames=_count(d["calib_frames"], f"{where}.calib_frames"),
            quantile=_number(d["quantile"], f"{where}.quantile", 0.5, 1.0),
            margin=_number(d["margin"], f"{where}.margin", 1.0, 10.0),
        )


@dataclass
class OODDetector:
    """Flags frames unlike the training frames by their image statistics or the network's pooled features."""

    image: MahalanobisPart  # on ``image_statistics`` of the cleaned frame
    network: MahalanobisPart | None = None  # on the classifier head's pooled features; None: image part only

    @property
    def features(self) -> tuple[str, ...]:
        """The image statistics the detector reads."""
        return self.image.features

    @property
    def threshold(self) -> float:
        """The image part's distance threshold (the combined score is flagged above 1)."""
        return self.image.threshold

    @classmethod
    def fit(
        cls,
        frames: Iterable[np.ndarray],
        features: np.ndarray | None = None,
        *,
        groups: Sequence[str] | None = None,
        calib_frames: Iterable[np.ndarray] | None = None,
        calib_features: np.ndarray | None = None,
        quantile: float = 0.95,
        margin: float = 1.0,
        network_margin: float = 1.5,
        folds: int = 5,
    ) -> OODDetector:
        """Fit on real training frames ((H, W) uint8, cleaned as the predictor cleans them) and, if given, their
        pooled features (N, F) from the model (the network part needs ``NETWORK_FRAMES_PER_FEATURE * F`` frames;
        with fewer, a Mahalanobis distance in F dimensions is noise, and only the image part is fitted).

        Thresholds: ``quantile`` of held-out distances times ``margin``: of ``calib_frames`` /
        ``calib_features`` (other patients' frames) if given, else cross-fitted by ``groups`` (one patient or
        clip id per frame), else halves. The network part's margin is ``network_margin``: the network was
        trained on these patients, so even held-out ones sit closer to its training features than a new
        patient's frames do (image statistics do not depend on training, so they need no such margin).
        """
        frames = list(frames)
        x = np.stack([image_statistics(f) for f in frames])
        calib = None if calib_frames is None else np.stack([image_statistics(f) for f in calib_frames])
        kw = {"groups": groups, "quantile": quantile, "folds": folds}
        image = MahalanobisPart.fit(IMAGE_FEATURES, x, calib=calib, margin=margin, **kw)
        network = None
        if features is not None:
            features = np.asarray(features, dtype=np.float64)
            if features.ndim != 2 or len(features) != len(frames):
                raise ValueError(
                    f"expected ({len(frames)}, F) pooled features, one row per frame; got {features.shape}"
                )
            if len(features) < NETWORK_FRAMES_PER_FEATURE * features.shape[1]:
                log.warning(
                    "OOD detector: %d frames are too few for %d pooled features (%d per feature needed); "
                    "fitting the image part only", len(features), features.shape[1], NETWORK_FRAMES_PER_FEATURE,
                )  # fmt: skip
                return cls(image, None)
            names = [f"{NETWORK_FEATURES}_{i}" for i in range(features.shape[1])]
            network = MahalanobisPart.fit(names, features, calib=calib_features, margin=network_margin, **kw)
        return cls(image, network)

    def scores(self, frames: Sequence[np.ndarray] | np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Each frame's score: the larger of its part distances, each divided by the part's threshold (``inf``
        without a scan area); flagged above 1. Without ``features`` (N, F) only the image part counts."""
        if len(frames) == 0:
            return np.zeros(0)
        statistics = image_statistics if self.image.features == IMAGE_FEATURES else frame_statistics  # v1: FEATURES
        x = np.stack([statistics(f) for f in frames]).astype(np.float64)
        score = self.image.distance(x) / self.image.threshold
        if self.network is not None and features is not None:
            features = np.asarray(features, dtype=np.float64)
            if features.shape != (len(frames), len(self.network.features)):
                raise ValueError(
                    f"the OOD detector's network part takes ({len(frames)}, {len(self.network.features)}) pooled "
                    f"features, got shape {features.shape}; the model file and its detector do not belong together"
                )
            score = np.maximum(score, self.network.distance(features) / self.network.threshold)
        return score

    def flags(
        self, frames: Sequence[np.ndarray] | np.ndarray, features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(out of distribution (N,) bool, score (N,))`` of frames (and their pooled features)."""
        score = self.scores(frames, features)
        return score > 1.0, score

    def flag(self, frame: np.ndarray, features: np.ndarray | None = None) -> tuple[bool, float]:
        """``(is out of distribution, score)`` of one frame (and its (F,) pooled features, if any)."""
        flags, score = self.flags([frame], None if features is None else np.asarray(features).reshape(1, -1))
        return bool(flags[0]), float(score[0])

    def to_dict(self) -> dict[str, Any]:
        """The image part's fields at the top level (as version 1 had them), ``version`` and ``network``."""
        d: dict[str, Any] = {"version": FORMAT_VERSION, **self.image.to_dict()}
        if self.network is not None:
            d["network"] = self.network.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, network_features: int | None = None) -> OODDetector:
        """Read a detector from a model's metadata, checking every field; ``ValueError`` names a bad one.

        Args:
            d: ``to_dict()``'s output, or a version-1 detector (image statistics of ``FEATURES`` only).
            network_features: the model's pooled-feature count (``model.head.num_features``), which the
                network part must have.
        """
        if not isinstance(d, dict):
            raise ValueError(f"the model's ood should be a JSON object, got {type(d).__name__}; refit the detector")
        if "version" not in d:  # version 1 (pleura <= 0.2): the image part of the 21 FEATURES, nothing else
            v1 = _mapping(d, "ood", {"mean", "precision", "scale", "threshold", "features"})
            fit = {"shrinkage": 0.1, "fit_frames": 10, "calib_frames": 10, "quantile": 0.99, "margin": 1.5}
            return cls(MahalanobisPart.from_dict({**v1, **fit}, "ood", FEATURES))
        d = _mapping(d, "ood", {"version", "network", *MahalanobisPart.FIELDS}, optional={"network"})
        if d["version"] != FORMAT_VERSION:
            raise ValueError(
                f"the model's ood.version {_short(d['version'])} is not supported; this pleura reads version "
                f"{FORMAT_VERSION}: refit the detector (pleura.infer.bundle.refit_ood) or use the pleura that wrote it"
            )
        image = MahalanobisPart.from_dict(d, "ood", IMAGE_FEATURES)
        network = None
        if "network" in d:
            where = "ood.network"
            network = MahalanobisPart.from_dict(_mapping(d["network"], where, set(MahalanobisPart.FIELDS)), where)
            if network_features is not None and len(network.features) != network_features:
                raise ValueError(
                    f"the model's ood.network was fitted on {len(network.features)} pooled features, the model has "
                    f"{network_features}; the detector belongs to another model: refit it for this one"
                )
        return cls(image, network)


# ------------------------------------------------------------------------------------------------ checks


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mapping(d: Any, where: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """``d`` if it is a dict with exactly ``keys`` (those in ``optional`` may be missing)."""
    if not isinstance(d, dict):
        raise ValueError(f"the model's {where} should be a JSON object, got {type(d).__name__}; refit the detector")
    missing, unknown = sorted(keys - optional - set(d)), sorted(set(d) - keys)
    if missing or unknown:
        raise ValueError(
            f"the model's {where} has missing fields {missing} and unknown fields {unknown} (expected: "
            f"{', '.join(sorted(keys))}); the file is damaged or forged: re-export the model or refit its detector"
        )
    return d


def _number(value: Any, where: str, low: float, high: float, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(
            f"the model's {where} should be a finite number in [{low:g}, {high:g}{')' if high_open else ']'}, got "
            f"{_short(value)}; the file is damaged or forged: re-export the model or refit its detector"
        )
    return float(value)


def _threshold(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 < value <= MAX_THRESHOLD):
        raise ValueError(
            f"the model's {where} should be a finite number in (0, {MAX_THRESHOLD:g}], got {_short(value)} (a huge "
            "threshold flags nothing); the file is damaged or forged: re-export the model or refit its detector"
        )
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
        raise ValueError(f"the model's {where} should be a positive integer, got {_short(value)}; refit the detector")
    return value


def _array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A float64 array of exactly ``shape`` from nested JSON lists of finite numbers bounded by ``MAX_ABS_VALUE``."""

    def valid(v: Any, dims: tuple[int, ...]) -> bool:
        if not dims:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return isinstance(v, list) and len(v) == dims[0] and all(valid(e, dims[1:]) for e in v)

    if not valid(value, shape):
        raise ValueError(
            f"the model's {where} should be {'x'.join(map(str, shape))} finite numbers (one per feature), got "
            f"{_short(value)}; the file is damaged or forged: re-export the model or refit its detector"
        )
    a = np.asarray(value, dtype=np.float64)
    if np.abs(a).max(initial=0.0) > MAX_ABS_VALUE:
        raise ValueError(f"the model's {where} holds a value beyond {MAX_ABS_VALUE:g}; refit the detector")
    return a
