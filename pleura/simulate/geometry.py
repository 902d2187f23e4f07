"""Probe geometry: the beam grid the simulator works in, and scan conversion to a square image.

The simulator draws everything on a *beam grid* of ``n_samples`` depth samples by ``n_lines`` scan
lines, as a scanner does before scan conversion. A linear probe's lines are parallel, so the grid maps
to a rectangle; a curvilinear probe's lines fan out from a virtual apex, so the grid is polar and scan
conversion resamples it onto a Cartesian image, leaving the pixels outside the sector black.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pleura.labels import Probe

MIN_LABEL_DEPTH_MM = 10.0  # thin structures (the pleural line) are never shallower than this


@dataclass(frozen=True)
class ProbeGeometry:
    """Field of view of one probe setting and its beam grid.

    Args:
        probe: the ``Probe`` (or its name, as ``Probe.parse`` reads it).
        size: side of the square output image in pixels.
        depth_mm: imaging depth from the skin along a scan line.
        width_mm: aperture width of a linear probe (unused for curvilinear).
        radius_mm: radius of curvature of a curvilinear probe (unused for linear).
        sector_deg: field of view of a curvilinear probe in degrees (unused for linear).
        axial_oversample: beam depth samples per output pixel row (RF needs more than the display).
    """

    probe: Probe
    size: int
    depth_mm: float
    width_mm: float = 40.0
    radius_mm: float = 50.0
    sector_deg: float = 70.0
    axial_oversample: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe", Probe.parse(self.probe))  # frozen; raises for an unknown probe

    @classmethod
    def from_row(cls, row: Mapping[str, object], size: int) -> ProbeGeometry:
        """Rebuild the geometry of a simulated frame from its manifest row (for ``densify``)."""
        probe = Probe.parse(str(row["probe"]))
        if probe is Probe.LINEAR:
            return cls(probe, size, float(row["depth_mm"]), width_mm=float(row["width_mm"]))  # type: ignore[arg-type]
        return cls(
            probe,
            size,
            float(row["depth_mm"]),  # type: ignore[arg-type]
            radius_mm=float(row["radius_mm"]),  # type: ignore[arg-type]
            sector_deg=float(row["sector_deg"]),  # type: ignore[arg-type]
        )

    @property
    def n_samples(self) -> int:
        """Depth samples per scan line."""
        return self.size * self.axial_oversample

    @property
    def dz_mm(self) -> float:
        """Depth step of the beam grid in mm."""
        return self.depth_mm / self.n_samples

    @cached_property
    def pixel_mm(self) -> tuple[float, float]:
        """Output pixel size ``(row, col)`` in mm; square for curvilinear, field/size for linear."""
        if self.probe is Probe.LINEAR:
            return (self.depth_mm / self.size, self.width_mm / self.size)
        half = math.radians(self.sector_deg) / 2
        r_max = self.radius_mm + self.depth_mm
        width = 2 * r_max * math.sin(half)
        height = r_max - self.radius_mm * math.cos(half)
        p = max(width, height) / self.size
        return (p, p)

    @cached_property
    def n_lines(self) -> int:
        """Scan lines. Curvilinear: each line's wedge is at least 1.5 pixels wide from ``MIN_LABEL_DEPTH_MM``
        down, so a band of labels 1.5 pixels thick on any line holds a pixel centre (a circle of 1.5
        pixels always does). That keeps the pleural line visible on every line after scan conversion,
        which is what makes ``labels.densify`` exact."""
        if self.probe is Probe.LINEAR:
            return self.size
        arc = math.radians(self.sector_deg) * (self.radius_mm + MIN_LABEL_DEPTH_MM)
        return int(np.clip(arc / (1.5 * self.pixel_mm[1]), 16, self.size))

    @property
    def min_label_mm(self) -> float:
        """Thinnest radial label band that every scan line still shows after scan conversion."""
        return 1.5 * max(self.pixel_mm)

    def lateral_mm(self, depth_mm: float) -> float:
        """Width of the field at ``depth_mm`` below the skin (arc length for curvilinear)."""
        if self.probe is Probe.LINEAR:
            return self.width_mm
        return math.radians(self.sector_deg) * (self.radius_mm + depth_mm)

    @cached_property
    def _beam_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional beam ``(row, col)`` of every output pixel, and the inside-scan mask."""
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
        if self.probe is Probe.LINEAR:
            rows = yy * self.axial_oversample - 0.5
            cols = xx * (self.n_lines / s) - 0.5
            inside = np.ones((s, s), dtype=bool)
            return rows, cols, inside
        p = self.pixel_mm[0]
        half = math.radians(self.sector_deg) / 2
        top = self.radius_mm * math.cos(half)
        x = (xx - s / 2) * p
        y = top + yy * p
        r = np.hypot(x, y)
        theta = np.arctan2(x, y)
        rows = (r - self.radius_mm) / self.dz_mm - 0.5
        cols = (theta + half) / (2 * half) * self.n_lines - 0.5
        inside = (r >= self.radius_mm) & (r <= self.radius_mm + self.depth_mm) & (np.abs(theta) <= half)
        return rows, cols, inside

    @cached_property
    def inside(self) -> np.ndarray:
        """``(size, size)`` bool: pixels inside the scanned field."""
        return self._beam_coords[2]

    def beam_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Nearest beam ``(row, col)`` of every output pixel, ``-1`` outside the scan.

        This is the map scan conversion uses for labels, and what ``labels.densify`` needs to know
        which pixels lie below the pleural line along their scan line.
        """
        return self._nearest

    @cached_property
    def _nearest(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols, inside = self._beam_coords
        r = np.clip(np.floor(rows + 0.5), 0, self.n_samples - 1).astype(np.int32)
        c = np.clip(np.floor(cols + 0.5), 0, self.n_lines - 1).astype(np.int32)
        r[~inside] = -1
        c[~inside] = -1
        return r, c

    def scan_convert_labels(self, beam_labels: np.ndarray, outside: int = 0) -> np.ndarray:
        """Nearest-neighbour scan conversion of a ``(n_samples, n_lines)`` label map."""
        r, c = self._nearest
        out = beam_labels[np.maximum(r, 0), np.maximum(c, 0)]
        out[r < 0] = outside
        return out

    @cached_property
    def _bilinear(self) -> tuple[np.ndarray, ...]:
        """Flat gather indices and weights of bilinear interpolation, computed once per geometry."""
        rows, cols, inside = self._beam_coords
        r = np.clip(rows, 0, self.n_samples - 1)
        c = np.clip(cols, 0, self.n_lines - 1)
        r0 = np.minimum(np.floor(r).astype(np.int64), self.n_samples - 2)
        c0 = np.minimum(np.floor(c).astype(np.int64), max(self.n_lines - 2, 0))
        fr = (r - r0).astype(np.float32)
        fc = (c - c0).astype(np.float32)
        i00 = (r0 * self.n_lines + c0).ravel()
        weights = [((1 - fr) * (1 - fc)), ((1 - fr) * fc), (fr * (1 - fc)), (fr * fc)]
        weights = [(w * inside).ravel() for w in weights]
        offsets = [0, 1, self.n_lines, self.n_lines + 1]
        return (i00, *offsets, *weights)

    def scan_convert_image(self, beam_image: np.ndarray) -> np.ndarray:
        """Bilinear scan conversion of a ``(n_samples, n_lines)`` float image; outside is 0."""
        i00, *rest = self._bilinear
        offsets, weights = rest[:4], rest[4:]
        flat = beam_image.ravel()
        out = sum(w * flat[i00 + o] for o, w in zip(offsets, weights, strict=True))
        return out.reshape(self.size, self.size)
