"""Masks to editable polygons: one polygon per connected region of a class, holes kept, simplified within a bound.

The inverse of ``raster.fill_polygon``. A region's boundary is traced along the pixel edges between a pixel of
the region and one outside it; the outline goes through the midpoints of those edges and cuts each corner by a
diagonal (what marching squares at level 0.5, ``skimage.measure.find_contours`` on the padded mask, gives). It
holds every pixel centre of the region and none other, at least 0.35 px inside or outside, so filled again by
``fill_polygon`` it gives the same pixels, bit for bit; and a staircase along a slanted line becomes a straight
line through the middle of the stair, so simplifying it does not shave half a pixel off one side. Regions are
4-connected: two pixels touching only at a corner are two regions (the trace turns tightly around each).

A region with holes (in the dense schema, the region below the pleura around the A-lines inside it) becomes
**one** polygon: its outer boundary runs along a zero-width cut to each hole, around the hole the other way,
and back (a "keyhole"). Every fill rule then leaves the hole empty: even-odd (pleura, pycocotools) because a
point in the hole is surrounded twice, non-zero (CVAT's SVG) because the two boundaries wind in opposite
senses; the cut covers no area. Each boundary (outer and holes) is simplified first by Douglas-Peucker
(``simplify``, the algorithm of ``skimage.measure.approximate_polygon``) at a tolerance in pixels, each side
refitted by least squares to the points it replaces, then joined. Only numpy and scipy are used (scikit-image
is not a dependency of pleura).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# directions of a boundary step in screen axes (x right, y down); the region is on the step's right-hand side,
# so an outer boundary runs clockwise on screen and a hole's counter-clockwise
_E, _S, _W, _N = 0, 1, 2, 3
_DR = np.array([0, 1, 0, -1])  # row change per direction
_DC = np.array([1, 0, -1, 0])  # column change per direction


def trace_boundaries(region: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Closed boundaries of the 4-connected regions of a bool mask, each with the label of its region.

    Returns ``(outline, region)`` pairs: ``outline`` a ``(K, 2)`` float array of ``x, y`` points, the midpoints
    of the pixel edges on either side of each turn of the boundary (so each corner is cut by a diagonal, and
    a pixel centre is never closer than 0.35 px to the outline), clockwise on screen for an outer boundary and
    counter-clockwise for a hole;
    ``region`` the 1-based label of the region (``scipy.ndimage.label`` with 4-connectivity, in the order
    ``label`` numbers them).
    """
    full = np.asarray(region, dtype=bool)
    rows, cols = np.nonzero(full.any(axis=1))[0], np.nonzero(full.any(axis=0))[0]
    if not len(rows):
        return []
    top, left = int(rows[0]), int(cols[0])
    m = full[top : rows[-1] + 1, left : cols[-1] + 1]  # the work is in the region's bounding box
    labels, _ = ndimage.label(m)  # default structure: 4-connectivity
    h, w = m.shape
    p = np.zeros((h + 2, w + 2), dtype=bool)  # padded: every boundary edge has a pixel on both sides
    p[1:-1, 1:-1] = m
    stride = w + 3  # vertices (r, c) of the padded grid, 0 <= r <= h + 2, 0 <= c <= w + 2
    # horizontal edges between pixel rows r - 1 and r of the padded mask, along vertex row r, from column c
    above, below = p[:-1, :], p[1:, :]
    r_top, c_top = np.nonzero(below & ~above)  # top edge of a region pixel: eastward
    r_bot, c_bot = np.nonzero(above & ~below)  # bottom edge of a region pixel: westward, from its right end
    west, east = p[:, :-1], p[:, 1:]
    r_lft, c_lft = np.nonzero(east & ~west)  # left edge of a region pixel: northward, from its lower end
    r_rgt, c_rgt = np.nonzero(west & ~east)  # right edge of a region pixel: southward
    r0 = np.concatenate([r_top + 1, r_bot + 1, r_lft + 1, r_rgt])
    c0 = np.concatenate([c_top, c_bot + 1, c_lft + 1, c_rgt + 1])
    d = np.concatenate([
        np.full(len(r_top), _E), np.full(len(r_bot), _W), np.full(len(r_lft), _N), np.full(len(r_rgt), _S)
    ])  # fmt: skip
    start = r0 * stride + c0
    end = (r0 + _DR[d]) * stride + (c0 + _DC[d])
    key = start * 4 + d  # one outgoing edge per (vertex, direction)
    order = np.argsort(key)
    keys = key[order]

    def lookup(vertex: np.ndarray, direction: np.ndarray) -> np.ndarray:
        want = vertex * 4 + direction
        pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        return np.where(keys[pos] == want, order[pos], -1)

    # the next edge: a right turn first (tight around the pixel on the right: diagonal pixels stay apart, as
    # 4-connectivity has it), else straight on, else a left turn; a vertex that is no saddle has only one
    nxt = lookup(end, (d + 1) % 4)
    for turn in (0, 3):
        miss = nxt < 0
        nxt[miss] = lookup(end[miss], (d[miss] + turn) % 4)
    if (nxt < 0).any():  # a programming error: boundary edges always close into loops
        raise RuntimeError("boundary tracing found an open boundary")
    # the region on the right of each edge: the pixel below (E), left (S), above (W) or right (N) of the step
    pr = r0 + np.array([0, 0, -1, -1])[d] - 1
    pc = c0 + np.array([0, -1, -1, 0])[d] - 1
    nxt_l, turns = nxt.tolist(), (d != d[nxt]).tolist()
    seen = bytearray(len(nxt_l))
    out: list[tuple[np.ndarray, int]] = []
    for e0 in range(len(nxt_l)):
        if seen[e0]:
            continue
        loop: list[int] = []
        e = e0
        while not seen[e]:
            seen[e] = 1
            if turns[e]:
                loop.append(e)  # the boundary turns where this edge ends
            e = nxt_l[e]
        e_in = np.asarray(loop, dtype=np.int64)
        e_out = nxt[e_in]
        # at each turn, the midpoints of the unit edge coming in and the one going out (a corner cut by a
        # diagonal, as marching squares cuts it): a straight stair is then a straight line through its middle
        vy, vx = r0[e_out] - 1 + top, c0[e_out] - 1 + left  # the turning vertex, in frame coordinates
        pts = np.empty((2 * len(e_in), 2), dtype=np.float64)
        pts[0::2, 0], pts[0::2, 1] = vx - 0.5 * _DC[d[e_in]], vy - 0.5 * _DR[d[e_in]]
        pts[1::2, 0], pts[1::2, 1] = vx + 0.5 * _DC[d[e_out]], vy + 0.5 * _DR[d[e_out]]
        keep = np.any(pts != np.roll(pts, -1, axis=0), axis=1)  # a unit edge between two turns: one midpoint
        out.append((pts[keep], int(labels[pr[e0], pc[e0]])))
    return out


def signed_area(points: np.ndarray) -> float:
    """Shoelace area of a closed polygon in screen axes: positive when it runs clockwise on screen."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _dp_open(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline: indices of the kept vertices (both ends always kept)."""
    n = len(points)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    pts = points.astype(np.float64)
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = pts[i], pts[j]
        seg = pts[i + 1 : j]
        ab = b - a
        norm = float(np.hypot(*ab))
        if norm == 0.0:
            dist = np.hypot(*(seg - a).T)
        else:
            dist = np.abs(ab[0] * (seg[:, 1] - a[1]) - ab[1] * (seg[:, 0] - a[0])) / norm
        k = int(dist.argmax())
        if dist[k] > tolerance:
            m = i + 1 + k
            keep[m] = True
            stack += [(i, m), (m, j)]
    return np.nonzero(keep)[0]


def simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """A closed ring simplified by Douglas-Peucker at ``tolerance`` px, each side then fitted to the points it
    replaces.

    Douglas-Peucker picks the vertices to keep (no dropped point farther than ``tolerance`` from the result);
    a kept vertex is itself a point of the traced stair, up to half a pixel off the edge it stands for, so each
    side is then moved onto the least-squares line through the points between its two vertices, and a vertex
    becomes where its two sides' lines meet (where they are near parallel, or meet more than
    ``max(1, 2 * tolerance)`` px away, halfway between its feet on the two lines). At tolerance 0 only
    collinear points go and the ring is exact. A ring that would keep fewer than 3 vertices is returned as it was.
    """
    n = len(ring)
    if n <= 3:
        return ring
    far = int(np.hypot(*(ring - ring[0]).T).argmax())  # split the ring at its first point and the farthest one
    a = _dp_open(ring[: far + 1], tolerance)
    b = _dp_open(np.concatenate([ring[far:], ring[:1]]), tolerance) + far
    idx = np.concatenate([a, b[1:-1]])
    if len(idx) < 3:
        return ring
    if tolerance <= 0 or len(idx) == n:
        return ring[idx]
    pts = ring.astype(np.float64)
    # each side's points (vertex idx[s] to idx[s + 1], around the ring): their sums from cumulative sums over the
    # ring taken twice, so a side that wraps past the start is one slice; then centroid and principal axis
    twice = np.concatenate([pts, pts])
    x, y = twice[:, 0], twice[:, 1]
    cum = np.concatenate([np.zeros((1, 5)), np.cumsum(np.stack([x, y, x * x, x * y, y * y], axis=1), axis=0)])
    i = idx
    j = np.roll(idx, -1)
    j = np.where(j > i, j, j + n)  # the last side wraps to the first vertex
    count = (j - i + 1).astype(np.float64)
    sums = cum[j + 1] - cum[i]
    centre = sums[:, :2] / count[:, None]
    sxx = sums[:, 2] / count - centre[:, 0] ** 2
    sxy = sums[:, 3] / count - centre[:, 0] * centre[:, 1]
    syy = sums[:, 4] / count - centre[:, 1] ** 2
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    axis = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    two = count <= 2  # a side of two points: the line through them
    axis[two] = (twice[j] - twice[i])[two]
    axis /= np.maximum(np.hypot(axis[:, 0], axis[:, 1]), 1e-12)[:, None]
    out = pts[idx]
    p, u = np.roll(centre, 1, axis=0), np.roll(axis, 1, axis=0)  # vertex v joins side v - 1 (p, u) and side v
    q, w = centre, axis
    det = u[:, 1] * w[:, 0] - u[:, 0] * w[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((q[:, 1] - p[:, 1]) * w[:, 0] - (q[:, 0] - p[:, 0]) * w[:, 1]) / det
    meet = p + t[:, None] * u
    # near-parallel sides (a long side split in two), or lines meeting far away: halfway between the vertex's feet
    feet = 0.5 * (p + ((out - p) * u).sum(axis=1)[:, None] * u + q + ((out - q) * w).sum(axis=1)[:, None] * w)
    near = (np.abs(det) > 1e-6) & (np.hypot(*(meet - out).T) <= max(1.0, 2.0 * tolerance))
    return np.where(near[:, None], meet, feet)


def bridge(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring for a region with holes: from a vertex of the ring to the nearest vertex of each hole, around the
    hole, and back along the same cut (a keyhole). The cut covers no area under any fill rule."""
    ring = outer
    for hole in sorted(holes, key=lambda h: -abs(signed_area(h))):
        d = ((ring[:, None, :].astype(np.float64) - hole[None, :, :]) ** 2).sum(axis=2)  # (R, H) squared distances
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        around = np.concatenate([hole[j:], hole[: j + 1]])  # the hole from vertex j back to it
        ring = np.concatenate([ring[: i + 1], around, ring[i:]])
    return ring


def group_boundaries(region: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The traced boundaries of a bool mask's 4-connected regions: ``(outer, holes)`` per region, in label order."""
    outers: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for outline, lab in trace_boundaries(region):
        if signed_area(outline) > 0:
            outers[lab] = outline
        else:
            holes.setdefault(lab, []).append(outline)
    return [(outers[lab], holes.get(lab, [])) for lab in sorted(outers)]


def region_polygons(regions: list[tuple[np.ndarray, list[np.ndarray]]], tolerance: float) -> list[np.ndarray]:
    """One polygon per traced region (``group_boundaries``): each boundary simplified, holes joined as keyholes."""
    return [bridge(simplify(outer, tolerance), [simplify(h, tolerance) for h in holes]) for outer, holes in regions]


def mask_polygons(region: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Polygons (``(K, 2)`` x, y rings) of the 4-connected regions of a bool mask, one per region, holes kept as
    keyholes, each boundary simplified at ``tolerance`` pixels (0: only collinear points go: exact)."""
    return region_polygons(group_boundaries(region), tolerance)
