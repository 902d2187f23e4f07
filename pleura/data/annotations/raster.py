"""Shapes to label masks, and masks to the cleaned frame's geometry.

Conventions: coordinates are continuous pixels (pixel ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``, as in CVAT
and COCO), and a filled shape covers the pixels whose centre ``(c + 0.5, r + 0.5)`` lies inside it. Polygons
are filled by the **even-odd rule** (a self-intersecting bow-tie fills both lobes; the centre of a pentagram
drawn as a five-point star stays empty). A polygon too thin to hold a pixel centre is drawn as its outline so
it is not lost. Lines and points are drawn with a thickness in pixels (Pillow, round joints).

``fit_mask_to_size`` gives a mask exactly the crop, scale and padding that ``cleaning.fit_to_size`` gives
its frame, with nearest-neighbour sampling at the same pixel centres, so a mask never drifts from its frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from pleura.data.annotations.model import Bitmap, CocoRle, CvatRle, LabelmapRef, Shape
from pleura.data.cleaning import ScanArea
from pleura.labels import Probe

ELLIPSE_VERTICES = 72  # an ellipse is filled as a polygon of this many vertices


def fill_polygon(mask: np.ndarray, points: np.ndarray, value: int = 1) -> int:
    """Set the pixels of ``mask`` whose centres are inside the polygon (even-odd rule) to ``value``.

    Returns the number of pixels set (0 for a polygon thinner than a pixel or outside the mask).
    """
    h, w = mask.shape
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r_lo = max(0, math.floor(float(y0.min()) - 0.5))
    r_hi = min(h - 1, math.ceil(float(y0.max()) - 0.5))
    if r_hi < r_lo or len(points) < 3:
        return 0
    yc = np.arange(r_lo, r_hi + 1, dtype=np.float64)[:, None] + 0.5  # (R, 1) row centres
    cross = (y0[None] <= yc) != (y1[None] <= yc)  # (R, E) half-open: a vertex on a centre line counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0[None] + (yc - y0[None]) * ((x1 - x0) / (y1 - y0))[None]
    xi = np.where(cross, xi, np.inf)
    xi.sort(axis=1)
    n = cross.sum(axis=1)  # always even for a closed polygon
    pairs = int(n.max()) // 2 if n.size else 0
    if pairs == 0:
        return 0
    starts = xi[:, 0 : 2 * pairs : 2]
    ends = xi[:, 1 : 2 * pairs : 2]
    ok = np.isfinite(starts) & np.isfinite(ends)
    # pixel c is inside when xa <= c + 0.5 < xb: c from ceil(xa - 0.5) to ceil(xb - 0.5) - 1
    c0 = np.clip(np.ceil(np.where(ok, starts, 0) - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(np.where(ok, ends, 0) - 0.5), 0, w).astype(np.int64)
    ok &= c1 > c0
    if not ok.any():
        return 0
    left, right = int(c0[ok].min()), int(c1[ok].max())  # the work is in the polygon's columns
    diff = np.zeros((len(yc), right - left + 1), dtype=np.int32)
    rows = np.broadcast_to(np.arange(len(yc))[:, None], ok.shape)
    np.add.at(diff, (rows[ok], c0[ok] - left), 1)
    np.add.at(diff, (rows[ok], c1[ok] - left), -1)
    inside = np.cumsum(diff[:, :-1], axis=1) > 0
    mask[r_lo : r_hi + 1, left:right][inside] = value
    return int(inside.sum())


def draw_lines(mask: np.ndarray, points: np.ndarray, width: float, value: int = 1, closed: bool = False) -> None:
    """Draw a polyline ``width`` pixels thick (round joints and ends) into ``mask``."""
    w = max(1, round(width))
    pts = [(float(x) - 0.5, float(y) - 0.5) for x, y in points]  # Pillow's pixel centres are integers
    if closed and len(pts) > 2:
        pts.append(pts[0])
    img = Image.fromarray(np.zeros(mask.shape, dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    if len(pts) == 1:
        pts = pts * 2
    draw.line(pts, fill=1, width=w, joint="curve")
    if w > 2:  # round ends
        r = w / 2
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - r + 0.5, y - r + 0.5, x + r - 0.5, y + r - 0.5), fill=1)
    mask[np.asarray(img, dtype=bool)] = value


def draw_points(mask: np.ndarray, points: np.ndarray, diameter: float, value: int = 1) -> None:
    """Draw each point as a disk ``diameter`` pixels across (at least its own pixel)."""
    h, w = mask.shape
    r = max(0.5, diameter / 2)
    for x, y in points:
        r0, r1 = max(0, math.floor(y - r)), min(h, math.ceil(y + r))
        c0, c1 = max(0, math.floor(x - r)), min(w, math.ceil(x + r))
        if r1 <= r0 or c1 <= c0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1] + 0.5
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        if not disk.any():  # a tiny disk: its own pixel
            disk[min(int(y) - r0, disk.shape[0] - 1), min(int(x) - c0, disk.shape[1] - 1)] = True
        mask[r0:r1, c0:c1][disk] = value


def box_polygon(points: np.ndarray, rotation: float = 0.0) -> np.ndarray:
    """The 4 corners of a box given by 2 opposite corners, rotated ``rotation`` degrees clockwise about its centre."""
    (xa, ya), (xb, yb) = points[0], points[1]
    corners = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=np.float64)
    return _rotate(corners, rotation)


def ellipse_polygon(points: np.ndarray, rotation: float = 0.0) -> np.ndarray:
    """A polygon of an ellipse given as ``[[cx, cy], [rx, ry]]``, rotated ``rotation`` degrees clockwise."""
    (cx, cy), (rx, ry) = points[0], np.abs(points[1])
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return _rotate(np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1), rotation)


def _rotate(pts: np.ndarray, degrees: float) -> np.ndarray:
    if not degrees:
        return pts
    c = pts.mean(axis=0)
    a = math.radians(degrees)  # clockwise on screen (y down) is a positive angle in these axes
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (pts - c) @ rot.T + c


def outline(shape: Shape) -> np.ndarray | None:
    """The vertices that bound a vector shape (None for the bitmap kinds)."""
    if shape.kind == "box":
        return box_polygon(shape.points, shape.rotation)
    if shape.kind == "ellipse":
        return ellipse_polygon(shape.points, shape.rotation)
    if shape.kind in ("polygon", "polyline", "points"):
        return shape.points
    return None


def decode_cvat_rle(rle: CvatRle) -> np.ndarray:
    """A CVAT brush mask as a bool ``(height, width)`` array (runs row-major, background first)."""
    counts = np.asarray(rle.counts, dtype=np.int64)
    total = rle.width * rle.height
    if (counts < 0).any() or int(counts.sum()) != total:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, the {rle.width}x{rle.height} box holds {total}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(rle.height, rle.width)


def coco_counts(text: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``: 6-bit groups, delta-coded)."""
    counts: list[int] = []
    p = 0
    data = text.encode("ascii")
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("the RLE string ends inside a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} is not in the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_coco_rle(rle: CocoRle) -> np.ndarray:
    """A COCO RLE (compressed string or plain counts) as a bool ``(height, width)`` array (runs column-major)."""
    counts = np.asarray(coco_counts(rle.counts) if isinstance(rle.counts, str) else rle.counts, dtype=np.int64)
    total = rle.width * rle.height
    if (counts < 0).any() or int(counts.sum()) != total:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, the {rle.width}x{rle.height} image holds {total}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(rle.width, rle.height).T


def place(mask_shape: tuple[int, int], bits: np.ndarray, left: int, top: int) -> tuple[np.ndarray, int]:
    """``bits`` placed at ``(left, top)`` on a frame of ``mask_shape``, clipped; and how many set pixels fell off."""
    h, w = mask_shape
    out = np.zeros(mask_shape, dtype=bool)
    bh, bw = bits.shape
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(h, top + bh), min(w, left + bw)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = bits[r0 - top : r1 - top, c0 - left : c1 - left]
    return out, int(bits.sum()) - int(out.sum())


def shape_pixels(
    shape: Shape, frame_shape: tuple[int, int], thickness: float, read_png: Callable[[LabelmapRef], np.ndarray]
) -> tuple[np.ndarray, int]:
    """The bool pixels of one shape on a frame of ``frame_shape``, and how many of its pixels fell outside.

    For vector shapes the second value is 0 or 1 (1: partly outside, clipped); bitmaps count pixels lost.
    """
    h, w = frame_shape
    m = np.zeros(frame_shape, dtype=bool)
    if shape.kind in ("polygon", "box", "ellipse"):
        poly = outline(shape)
        assert poly is not None
        if fill_polygon(m.view(np.uint8), poly) == 0:
            draw_lines(m.view(np.uint8), poly, 1, closed=True)
    elif shape.kind == "polyline":
        draw_lines(m.view(np.uint8), shape.points, thickness)
    elif shape.kind == "points":
        draw_points(m.view(np.uint8), shape.points, thickness)
    elif shape.kind == "cvat_rle":
        assert isinstance(shape.data, CvatRle)
        return place(frame_shape, decode_cvat_rle(shape.data), shape.data.left, shape.data.top)
    elif shape.kind == "coco_rle":
        assert isinstance(shape.data, CocoRle)
        bits = decode_coco_rle(shape.data)
        return place(frame_shape, bits, 0, 0)
    elif shape.kind == "bitmap":
        assert isinstance(shape.data, Bitmap)
        return place(frame_shape, shape.data.array, shape.data.left, shape.data.top)
    elif shape.kind == "labelmap":
        assert isinstance(shape.data, LabelmapRef)
        png = read_png(shape.data)
        value = shape.data.value
        bits = (png == np.asarray(value)).all(axis=-1) if isinstance(value, tuple) else png == value
        return place(frame_shape, bits, 0, 0)
    pts = outline(shape)
    partly = pts is not None and bool(
        (pts[:, 0] < 0).any() or (pts[:, 1] < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] > h).any()
    )
    return m, int(partly)


def outside_frame(shape: Shape, frame_shape: tuple[int, int], margin: float = 0.0) -> bool:
    """Whether a vector shape lies wholly outside the frame (its bounding box misses it)."""
    pts = outline(shape)
    if pts is None:
        return False
    h, w = frame_shape
    x0, y0 = pts.min(axis=0) - margin
    x1, y1 = pts.max(axis=0) + margin
    return bool(x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h)


def fit_geometry(area: ScanArea, size: int) -> tuple[int, int, int]:
    """``(new height, new width, left offset)`` of the crop inside the square, exactly as ``fit_to_size``."""
    t, b, left, right = area.bbox
    h, w = b - t, right - left
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    return nh, nw, (size - nw) // 2


def fit_mask_to_size(mask: np.ndarray, area: ScanArea, size: int, fill: int = 0) -> np.ndarray:
    """Crop a label mask to the scan area and resize it (nearest) into the square as ``fit_to_size`` does its frame.

    Pixels outside the scan area (zeroed in the frame by ``remove_overlays``) and the padding become ``fill``.
    Pillow's nearest and bilinear resizes sample at the same pixel centres, so frame and mask stay aligned.
    """
    t, b, left, right = area.bbox
    crop = np.where(area.mask[t:b, left:right], mask[t:b, left:right], fill).astype(np.uint8)
    nh, nw, x0 = fit_geometry(area, size)
    resized = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.NEAREST))
    out = np.full((size, size), fill, dtype=np.uint8)
    out[:nh, x0 : x0 + nw] = resized
    return out


def fit_area_mask(area: ScanArea, size: int) -> np.ndarray:
    """The scan area in the cleaned frame's geometry (bool ``(size, size)``)."""
    return fit_mask_to_size(area.mask.astype(np.uint8), area, size).astype(bool)


def scan_lines(inside: np.ndarray, probe: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(depth, scan line)`` indices of a cleaned frame (``-1`` outside the scan), for ``densify``.

    A linear probe's scan lines are the image columns. A convex probe's are rays from the apex where the
    sector's left and right edges (straight lines fitted to the mask) meet; depth is the distance from it.
    When the edges do not meet above the image the columns are used.
    """
    h, w = inside.shape
    rows, cols = np.indices((h, w))
    rr, cc = rows.copy(), cols.copy()
    if probe in (Probe.CURVILINEAR, "convex") and inside.any():  # ScanArea.probe is a Probe; convex its alias
        apex = _apex(inside)
        if apex is not None:
            ay, ax = apex
            angle = np.arctan2(cols + 0.5 - ax, rows + 0.5 - ay)
            lo, hi = angle[inside].min(), angle[inside].max()
            n = max(2, int(inside.any(axis=0).sum()))
            cc = np.clip(((angle - lo) / max(hi - lo, 1e-9) * (n - 1)).round(), 0, n - 1).astype(np.int64)
            rr = np.hypot(cols + 0.5 - ax, rows + 0.5 - ay).round().astype(np.int64)
    rr = np.where(inside, rr, -1)
    cc = np.where(inside, cc, -1)
    return rr, cc


def _apex(inside: np.ndarray) -> tuple[float, float] | None:
    """Where lines fitted to a sector's left and right edges meet ``(row, col)``; None if not above the middle."""
    rows = np.nonzero(inside.any(axis=1))[0]
    if len(rows) < 8:
        return None
    lo, hi = rows[0] + len(rows) // 5, rows[-1] - len(rows) // 10  # skip the top arc and the bottom corners
    sel = np.arange(lo, hi + 1)
    sel = sel[inside[sel].any(axis=1)]
    if len(sel) < 4:
        return None
    left = inside[sel].argmax(axis=1).astype(float)
    right = inside.shape[1] - 1 - inside[sel, ::-1].argmax(axis=1).astype(float)
    a1, b1 = np.polyfit(sel, left, 1)  # col = a * row + b
    a2, b2 = np.polyfit(sel, right, 1)
    if abs(a1 - a2) < 1e-3:
        return None
    r = (b2 - b1) / (a1 - a2)
    if r > rows[0] + 0.5 * (rows[-1] - rows[0]):
        return None
    return float(r), float(a1 * r + b1)
