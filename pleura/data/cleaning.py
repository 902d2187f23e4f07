"""Clean real ultrasound frames before a model sees them.

Real lung-ultrasound clips carry black borders, text, rulers, depth scales, logos, arrows and colour
overlays around (and sometimes on) the scan area. This module finds the scan area once per clip, tells
a convex (curvilinear) probe's sector from a linear probe's rectangle, zeroes everything outside it,
inpaints markings inside it, and fits the result into the square, top-aligned frame that the simulator
produces (skin line at the top, outside the scan exactly 0).

Typical use::

    images, area = clean_clip(frames, size=256)  # frames: (N, H, W) uint8 gray
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from pleura.labels import Probe

log = logging.getLogger(__name__)

WORK_SIDE = 256  # the scan area is found on a block-averaged grid whose longer side is at most this
MAX_FRAMES = 32  # frames of a clip (evenly spaced) used to find its scan area
LIVE_RANGE = 3.0  # temporal max - min (grey levels, block mean) above which a pixel is live
DARK = 6.0  # smoothed grey level above which a pixel of a still image is part of the picture
TEXTURE = 2.0  # local grey-level std (5x5 pixels, block mean) above which a still pixel is textured
MIN_FRACTION = 0.02  # a live or bright region smaller than this fraction of the frame is not a scan area
FILL_CONVEX = 0.88  # a mask filling less of its bounding box than this is a sector (convex probe) ...
TAPER_CONVEX = 0.92  # ... and so is one whose top rows are narrower than this fraction of its bottom half ...
SAG_CONVEX = 0.015  # ... or whose bottom edge sags (an arc) by more than this fraction of its width
WHITE = 250  # grey level of burnt-in white marks (text, calipers)
MARK_FRACTION = 0.002  # a white component is a mark if smaller than this fraction of the frame
CHROMA = 40  # max - min over RGB channels above which a pixel is a colour overlay ...
SATURATION = 0.3  # ... if its saturation (chroma / max) is also above this


@dataclass(frozen=True)
class ScanArea:
    """Where the ultrasound image is in a clip's frames, and which probe made it."""

    mask: np.ndarray  # bool (H, W), True inside the scan area
    bbox: tuple[int, int, int, int]  # (top, bottom, left, right) of the mask, exclusive ends
    probe: Probe  # CURVILINEAR (a convex probe's sector) or LINEAR (rectangle), see ``detect_probe``
    fill: float  # fraction of the bbox the mask fills: ~1 for a rectangle, ~0.6-0.8 for a sector
    taper: float  # mean mask width in the top 10% rows over the widest row of the bottom half
    sag: float  # how far the bottom edge's centre lies below both its points at 10% and 90% of the width, / width
    marks: np.ndarray | None = None  # bool (H, W): white marks burnt into every frame of a clip; None: image


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` blocks (the image is edge-padded to a multiple of ``f``)."""
    if f == 1:
        return image.astype(np.float32)
    h, w = image.shape
    ph, pw = -h % f, -w % f
    padded = np.pad(image.astype(np.float32), ((0, ph), (0, pw)), mode="edge")
    return padded.reshape((h + ph) // f, f, (w + pw) // f, f).mean(axis=(1, 3))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a bool mask (pixel corners as hull points)."""
    rows, cols = np.nonzero(mask ^ ndimage.binary_erosion(mask))
    pts = np.concatenate([np.stack([rows + dr, cols + dc], 1) for dr in (0, 1) for dc in (0, 1)]).astype(float)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return mask
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float32) + 0.5
    inside = np.ones(mask.shape, dtype=bool)
    for a, b, c in hull.equations:  # a * row + b * col + c <= 0 inside
        inside &= a * yy + b * xx + c <= 1e-6
    return inside | mask


def _regularise(grid: np.ndarray) -> np.ndarray:
    """Clean a rough scan-area mask: close gaps, fill holes, cut thin attached strips (opening), keep the
    largest component, take its convex hull, restore the corners the opening rounded off, and drop what
    the hull adds above a sector's top arc."""
    r = max(1, round(0.015 * max(grid.shape)))
    pad = 3 * r
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(grid, pad), _disk(r)))
    opened = ndimage.binary_opening(closed, _disk(2 * r))
    if not opened.any():
        return opened[pad:-pad, pad:-pad]
    comp = _largest_component(opened)
    corners = (closed & ndimage.binary_dilation(comp, _disk(r)))[pad:-pad, pad:-pad]
    comp = comp[pad:-pad, pad:-pad]
    rows, cols = np.nonzero(comp.any(axis=1))[0], np.nonzero(comp.any(axis=0))[0]
    box = np.zeros_like(comp)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    corners &= box  # the opening keeps a rectangle's straight edges: its corners lie in the box, strips not
    return (_hull(comp) | corners) & (np.arange(comp.shape[0])[:, None] >= _top_arc(comp | corners)[None, :])


def _top_arc(m: np.ndarray) -> np.ndarray:
    """Per column, the first row of the scan area: a parabola fitted (robustly) to the top edge of the
    central half of ``m``, never below ``m``'s own top. It removes what a convex hull adds above the
    top arc of a sector, without cutting into dark (shadowed) sides of the sector."""
    cols = np.arange(m.shape[1])
    has = m.any(axis=0)
    top = np.where(has, m.argmax(axis=0), m.shape[0])
    c0, c1 = cols[has][0], cols[has][-1]
    mid = cols[has & (cols >= c0 + (c1 - c0) / 4) & (cols <= c1 - (c1 - c0) / 4)]
    if len(mid) < 3:
        return np.zeros(m.shape[1], dtype=int)
    keep = np.ones(len(mid), dtype=bool)
    for _ in range(2):  # least squares, then again without the outliers (dark notches in the top edge)
        coef = np.polyfit(mid[keep], top[mid][keep], 2)
        resid = np.abs(np.polyval(coef, mid) - top[mid])
        keep = resid <= max(2.0, 2.5 * np.median(resid))
    arc = np.polyval(coef, cols) if coef[0] < 0 else np.full(len(cols), np.median(top[mid][keep]))
    return np.minimum(np.floor(arc), top).astype(int)


def _shape(mask: np.ndarray) -> tuple[tuple[int, int, int, int], float, float, float]:
    """Bounding box, fill, taper and sag of a non-empty mask (see ``ScanArea``)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    t, b, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = mask[t:b, left:right]
    h, w = box.shape
    widths = box.sum(axis=1)
    taper = float(widths[: max(1, h // 10)].mean() / max(1, widths[h // 2 :].max()))
    bottom = h - np.argmax(box[::-1], axis=0)  # exclusive bottom row of every column
    centre = np.median(bottom[int(0.45 * w) : int(0.55 * w) + 1])
    sag = float((centre - max(bottom[int(0.1 * (w - 1))], bottom[int(0.9 * (w - 1))])) / w)
    return (t, b, left, right), float(box.mean()), taper, sag


def _probe(fill: float, taper: float, sag: float) -> Probe:
    convex = fill < FILL_CONVEX or taper < TAPER_CONVEX or sag > SAG_CONVEX
    return Probe.CURVILINEAR if convex else Probe.LINEAR


def detect_probe(mask: np.ndarray) -> Probe:
    """Convex or linear probe from the scan area's shape.

    A linear probe images a rectangle: it fills its bounding box, is as wide at the top as at the
    bottom, and its bottom edge is straight. A convex probe images a sector: it fills ~0.6-0.8 of its
    box, its top rows are much narrower than its bottom half, and its bottom edge is an arc. Clips
    cropped inside the sector usually keep cut top corners or the bottom arc. The rule: ``convex`` if
    ``fill < FILL_CONVEX`` or ``taper < TAPER_CONVEX`` or ``sag > SAG_CONVEX``, else ``linear``. A clip
    cropped to a rectangle inside the sector cannot be told and reads ``linear``.

    Args:
        mask: bool ``(H, W)`` scan area.

    Returns:
        ``Probe.CURVILINEAR`` (convex) or ``Probe.LINEAR`` (``LINEAR`` for an empty mask).
    """
    return _probe(*_shape(mask)[1:]) if mask.any() else Probe.LINEAR


def _marks(sub: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Burnt-in white marks of a clip: small components of pixels that are ``>= WHITE`` in every frame."""
    white = (sub.min(axis=0) >= WHITE) & mask
    if not white.any():
        return white
    labels, n = ndimage.label(white, np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= MARK_FRACTION * mask.size
    small[0] = False
    return small[labels]


def find_scan_area(frames: np.ndarray) -> ScanArea:
    """Find the scan area of one clip (or one image) and the probe that made it.

    Over the frames of a clip (at most ``MAX_FRAMES``, evenly spaced) the scan area is where the image
    changes: the temporal max - min, averaged over blocks on a grid of at most ``WORK_SIDE`` pixels and
    median-filtered, is above ``LIVE_RANGE``; static overlays (text, rulers, logos, borders) do not
    change. A single image, or a clip whose live region is tiny (a frozen clip), falls back to intensity:
    pixels of the (block-averaged, median-filtered) mean image above ``DARK`` whose local 5x5 standard
    deviation is above ``TEXTURE`` (speckle; a flat grey background is not a scan).

    The rough mask is then regularised: closing and hole filling (dark lung, static marks inside), an
    opening with a disk of ~3% of the grid size (cuts thin text or ruler strips attached to the edge),
    the largest connected component, its convex hull (fills a sector's dark depths and shadowed sides)
    plus the corners the opening rounded off, minus what the hull adds above a sector's top arc (a
    parabola fitted to the top edge). The probe follows from the shape (``detect_probe``). An empty
    result falls back to the full frame, probe ``Probe.LINEAR``, with a warning.

    Args:
        frames: ``(N, H, W)`` uint8 grey frames, ``N >= 1`` (an ``(H, W)`` image is taken as ``N = 1``).

    Returns:
        The ``ScanArea``, at the frames' full resolution.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or not frames.size:
        raise ValueError(f"expected (N, H, W) grey frames with N >= 1, got shape {frames.shape}")
    n, H, W = frames.shape
    sub = frames[np.unique(np.linspace(0, n - 1, min(n, MAX_FRAMES)).round().astype(int))]
    f = max(1, math.ceil(max(H, W) / WORK_SIDE))
    live = len(sub) > 1
    if live:
        grid = ndimage.median_filter(_block_mean(sub.max(axis=0) - sub.min(axis=0), f), 3) > LIVE_RANGE
        live = grid.mean() >= MIN_FRACTION
    if not live:  # one image: bright and textured (a flat grey background is not a scan)
        image = sub.mean(axis=0, dtype=np.float32)
        var = ndimage.uniform_filter(image * image, 5) - ndimage.uniform_filter(image, 5) ** 2
        level = ndimage.median_filter(_block_mean(image, f), 3)
        texture = ndimage.median_filter(_block_mean(np.sqrt(np.maximum(var, 0)), f), 3)
        grid = (level > DARK) & (texture > TEXTURE)
    grid = _regularise(grid) if grid.mean() >= MIN_FRACTION else np.zeros_like(grid)
    if not grid.any():
        log.warning("no scan area found in %d frames of %dx%d; using the full frame", n, H, W)
        return ScanArea(np.ones((H, W), dtype=bool), (0, H, 0, W), Probe.LINEAR, 1.0, 1.0, 0.0)
    if f > 1:
        grid = ndimage.zoom(grid.astype(np.float32), f, order=1, grid_mode=True, mode="nearest")[:H, :W] > 0.5
    bbox, fill, taper, sag = _shape(grid)
    probe = _probe(fill, taper, sag)
    log.debug("scan area %s: %s (fill %.3f, taper %.3f, sag %.3f)", bbox, probe, fill, taper, sag)
    return ScanArea(grid, bbox, probe, fill, taper, sag, _marks(sub, grid) if live else None)


def _inpaint(image: np.ndarray, bad: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace ``bad`` pixels by the mean of the nearest ``valid & ~bad`` ones (growing windows)."""
    out = image.copy()
    rows, cols = np.nonzero(bad)
    todo = bad.copy()
    for k in (7, 15, 31, 63, 127):
        t, b = max(0, rows.min() - k), min(image.shape[0], rows.max() + k + 1)
        left, right = max(0, cols.min() - k), min(image.shape[1], cols.max() + k + 1)
        good = (valid & ~bad)[t:b, left:right].astype(np.float32)
        num = ndimage.uniform_filter(image[t:b, left:right].astype(np.float32) * good, k)
        den = ndimage.uniform_filter(good, k)
        ok = todo[t:b, left:right] & (den > 0.02)
        out[t:b, left:right][ok] = np.round(num[ok] / den[ok]).astype(np.uint8)
        todo[t:b, left:right] &= ~ok
        if not todo.any():
            break
    out[todo] = 0
    return out


def remove_overlays(frame: np.ndarray, rgb: np.ndarray | None = None, area: ScanArea | None = None) -> np.ndarray:
    """Zero everything outside the scan area and inpaint markings inside it.

    Inside the area, colour overlays (pixels whose RGB chroma is above ``CHROMA`` and saturation above
    ``SATURATION``: Doppler boxes, coloured arrows, markers) and white marks (connected components of
    pixels ``>= WHITE`` smaller than ``MARK_FRACTION`` of the frame: text, calipers) are replaced, with
    a 1-pixel margin, by the mean of the nearest unmarked pixels. For a clip's area the white marks are
    ``area.marks`` (white in every frame, so saturated but moving anatomy is kept); for a single image
    they are looked for in ``frame``.

    Args:
        frame: ``(H, W)`` uint8 grey frame.
        rgb: the same frame as ``(H, W, 3)`` uint8 RGB, when colour is available.
        area: the clip's scan area; found from this frame alone when ``None``.

    Returns:
        The cleaned ``(H, W)`` uint8 frame.
    """
    area = area if area is not None else find_scan_area(frame[None])
    mask = area.mask
    out = np.where(mask, frame, 0).astype(np.uint8)
    bad = np.zeros(mask.shape, dtype=bool)
    if rgb is not None:
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # (a reduction over a last axis of 3 is slow)
        hi = np.maximum(np.maximum(r, g), b)
        chroma = hi - np.minimum(np.minimum(r, g), b)  # uint8, never negative
        colour = chroma > CHROMA
        if colour.any():
            bad |= colour & (chroma > SATURATION * hi.astype(np.float32))
    if area.marks is not None:  # a clip: its marks were found once, over its frames
        bad |= area.marks
    elif (out >= WHITE).any():
        bad |= _marks(out[None], mask)
    bad &= mask
    if not bad.any():
        return out
    bad = ndimage.binary_dilation(bad, np.ones((3, 3), dtype=bool)) & mask
    return _inpaint(out, bad, mask)


def fit_to_size(frame: np.ndarray, area: ScanArea, size: int) -> np.ndarray:
    """Crop to the scan area, scale (antialiased bilinear) so the longer side is ``size``, pad with zeros.

    The result is centred horizontally and aligned to the top, so the skin line stays at the top as in
    the simulator's frames. Pixels outside the mask are not zeroed here (``remove_overlays`` does it).

    Args:
        frame: ``(H, W)`` uint8 grey frame.
        area: its scan area.
        size: side of the square output.

    Returns:
        ``(size, size)`` uint8.
    """
    t, b, left, right = area.bbox
    crop = np.ascontiguousarray(frame[t:b, left:right], dtype=np.uint8)
    h, w = crop.shape
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    resized = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    x0 = (size - nw) // 2
    out[:nh, x0 : x0 + nw] = resized
    return out


def clean_clip(frames: np.ndarray, size: int, rgb_frames: np.ndarray | None = None) -> tuple[np.ndarray, ScanArea]:
    """Clean a clip: find its scan area once, then remove overlays and fit every frame to ``size``.

    Args:
        frames: ``(N, H, W)`` uint8 grey frames (an ``(H, W)`` image is taken as ``N = 1``).
        size: side of the square output frames.
        rgb_frames: optional ``(N, H, W, 3)`` uint8 colour frames, to inpaint colour overlays.

    Returns:
        ``(N, size, size)`` uint8 frames and the clip's ``ScanArea``.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    area = find_scan_area(frames)
    out = np.empty((len(frames), size, size), dtype=np.uint8)
    for i, frame in enumerate(frames):
        rgb = None if rgb_frames is None else rgb_frames[i]
        out[i] = fit_to_size(remove_overlays(frame, rgb, area), area, size)
    return out, area
