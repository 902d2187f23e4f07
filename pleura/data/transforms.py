"""Small composable augmentations that respect ultrasound geometry.

Every transform is a class whose ``__call__(image, mask, rng)`` takes a float32 ``(H, W)`` image in
[0, 1], an optional integer ``(H, W)`` mask (or ``None``) and an explicit ``np.random.Generator``, and
returns the new ``(image, mask)``. Randomness comes only from ``rng``, so a dataset that seeds it per
item gets reproducible augmentation whatever the number of DataLoader workers.

Geometry rules:

* The probe is at the top of the image: depth grows downwards and the skin, pleural line and the
  A-line reverberations below it have a fixed top-to-bottom order. A vertical flip would put
  reverberation artefacts above the pleura, which no probe can produce, so there is deliberately no
  vertical flip, and zooming keeps the top-centre (the probe face) fixed.
* A horizontal flip is a probe turned by 180 degrees about its axis: still a valid scan.
* Pixels outside the scan sector are exactly 0; intensity transforms (gain, gamma, speckle) keep them 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

from pleura.labels import get_schema

Mask = np.ndarray | None


class Transform(Protocol):
    """Anything called as ``transform(image, mask, rng) -> (image, mask)``."""

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]: ...


def _check_range(name: str, low: float, high: float, floor: float = 0.0) -> None:
    if not floor <= low <= high:
        raise ValueError(f"{name} should satisfy {floor} <= low <= high, got ({low}, {high})")


class Compose:
    """Apply transforms in order.

    Example:
        >>> aug = Compose([RandomHorizontalFlip(), RandomGain(3.0)])
        >>> image, mask = aug(image, mask, np.random.default_rng(0))  # doctest: +SKIP
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


class RandomGain:
    """Multiply the image by a gain drawn uniformly from ``[-max_db, max_db]`` dB, then clip to [0, 1]."""

    def __init__(self, max_db: float = 3.0) -> None:
        if max_db < 0:
            raise ValueError(f"max_db should be >= 0, got {max_db}")
        self.max_db = max_db

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        gain = 10.0 ** (rng.uniform(-self.max_db, self.max_db) / 20.0)
        return np.clip(image * np.float32(gain), 0.0, 1.0), mask


class RandomGamma:
    """Raise the image to a power drawn log-uniformly from ``gamma``; 0 and 1 are fixed points."""

    def __init__(self, gamma: tuple[float, float] = (0.8, 1.25)) -> None:
        _check_range("gamma", *gamma)
        if gamma[0] == 0:
            raise ValueError(f"gamma should be > 0 (0 would turn the outside-scan zeros into ones), got {gamma}")
        self.gamma = gamma

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        g = np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1])))
        return np.power(image, np.float32(g)), mask


class SpeckleNoise:
    """Multiplicative Rayleigh speckle: ``image * (1 + s * (r / E[r] - 1))``, ``r ~ Rayleigh``.

    Args:
        max_strength: ``s`` is drawn uniformly from ``[0, max_strength]``; at ``s = 1`` the noise is fully
            developed speckle (std about 0.52 of the intensity).
    """

    def __init__(self, max_strength: float = 0.2) -> None:
        if not 0 <= max_strength <= 1:
            raise ValueError(f"max_strength should be in [0, 1], got {max_strength}")
        self.max_strength = max_strength

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        s = rng.uniform(0.0, self.max_strength)
        r = rng.rayleigh(1.0, size=image.shape) / np.sqrt(np.pi / 2)  # mean 1
        noise = (1.0 + s * (r - 1.0)).astype(np.float32)  # >= 0 since s <= 1
        return np.clip(image * noise, 0.0, 1.0), mask


class RandomScaleCrop:
    """Zoom by a factor in ``[1 - max_zoom, 1 + max_zoom]`` about the top-centre, keeping the size.

    The top-centre pixel (the probe face) stays put, so the skin stays at the top; zooming in crops the
    bottom and sides, zooming out pads them with ``image_fill`` / ``mask_fill``. Bilinear for the image,
    nearest for the mask.

    Args:
        max_zoom: largest relative change of scale, e.g. 0.1 for +-10%.
        mask_fill: class index for padded mask pixels, e.g. the schema's ``outside_scan`` index.
        image_fill: value for padded image pixels (0 is outside the scan).
    """

    def __init__(self, max_zoom: float = 0.1, mask_fill: int = 0, image_fill: float = 0.0) -> None:
        if not 0 <= max_zoom < 1:
            raise ValueError(f"max_zoom should be in [0, 1), got {max_zoom}")
        self.max_zoom = max_zoom
        self.mask_fill = mask_fill
        self.image_fill = image_fill

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        scale = rng.uniform(1.0 - self.max_zoom, 1.0 + self.max_zoom)
        h, w = image.shape
        cx = (w - 1) / 2.0
        rows = np.arange(h, dtype=np.float64) / scale  # output row r samples input row r / scale
        cols = cx + (np.arange(w, dtype=np.float64) - cx) / scale
        coords = np.stack(np.meshgrid(rows, cols, indexing="ij"))  # (2, H, W)
        out = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=self.image_fill)
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        if mask is not None:
            mask = ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=self.mask_fill)
        return out, mask


class RandomHorizontalFlip:
    """Flip image and mask left-right together with probability ``p`` (a probe turned by 180 degrees)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p should be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        if rng.random() >= self.p:
            return image, mask
        return image[:, ::-1].copy(), None if mask is None else mask[:, ::-1].copy()


class RandomBlur:
    """Gaussian blur with a standard deviation drawn uniformly from ``[0, max_sigma]`` pixels (a coarser speckle, a
    lower-frequency probe); pixels outside the scan (0) stay 0."""

    def __init__(self, max_sigma: float = 1.5) -> None:
        if max_sigma < 0:
            raise ValueError(f"max_sigma should be >= 0, got {max_sigma}")
        self.max_sigma = max_sigma

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> tuple[np.ndarray, Mask]:
        sigma = rng.uniform(0.0, self.max_sigma)
        out = ndimage.gaussian_filter(image, sigma).astype(np.float32)
        return np.where(image > 0, out, np.float32(0.0)), mask


def strong_augmentation() -> Compose:
    """Intensity-only, strong: gain +-6 dB, gamma 0.6-1.6, blur up to 1.5 px, speckle up to 0.5. No geometry, so a
    teacher's mask of the plain frame is the answer for this view (``train-seg --adapt-data``)."""
    return Compose([RandomGain(6.0), RandomGamma((0.6, 1.6)), RandomBlur(1.5), SpeckleNoise(0.5)])


def default_augmentation(schema: str | None = "dense") -> Compose:
    """Flip, zoom by up to 10%, gain +-3 dB, gamma 0.8-1.25 and light speckle.

    Args:
        schema: the mask schema, used to pad zoomed-out masks with its ``outside_scan`` class (0 where
            the schema has none); ``None`` for images without masks.
    """
    fill = 0
    if schema is not None:
        s = get_schema(schema)
        fill = s.index("outside_scan") if "outside_scan" in s.names else 0
    return Compose(
        [
            RandomHorizontalFlip(0.5),
            RandomScaleCrop(0.1, mask_fill=fill),
            RandomGain(3.0),
            RandomGamma((0.8, 1.25)),
            SpeckleNoise(0.2),
        ]
    )
