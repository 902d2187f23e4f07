"""Clinician-read biomarkers from one segmentation map, each with a written rule: the pleural line (found or
not, depth, length, continuity, irregularity, thickness), B-lines (count, confluence, coverage of the
intercostal space), A-lines, consolidation and effusion, the 0-3 aeration score; and their per-clip summary.

    bm = frame_biomarkers(pred_mask, pixel_mm=0.3)       # (H, W) class indices, dense schema
    bm.pleural_line_found, bm.b_line_count, bm.pleural_line_depth_mm, bm.to_dict()
    clip = clip_biomarkers([frame_biomarkers(m) for m in clip_masks])

The rules and their sources are in ``docs/biomarkers.md`` (sources gathered in ``../shared/LUS-REFERENCE.md``);
every threshold is an argument of :func:`frame_biomarkers`. In short:

* **Not found, never zero.** A map with no scan area, or whose pleural line covers fewer than
  ``min_pleura_fraction`` of the scan lines, has ``pleural_line_found = False`` and every other field
  ``None``: B-lines arise from the pleural line, A-lines repeat it, and without it nothing below can be
  placed. A reader never sees "0 B-lines" for a frame where nothing was seen.
* **Scan lines and depth**: image columns and rows for a rectangular (linear) scan. For a sector
  (curvilinear) the apex is found where lines fitted to the ``outside_scan`` sector's side edges meet; a
  pixel's scan line is its angle about the apex (bins about one pixel wide at the pleural line) and its
  depth its distance from the apex. ``beam_rc`` (``ProbeGeometry.beam_index()``) overrides the inference.
  ``outside_scan`` pixels (and pixels outside ``scan_area``) never enter an area or a count.
* **Pleural line**: per scan line, its upper edge (shallowest pleural pixel) and lower edge. Depth: median
  over its lines of upper edge minus skin (the scan area's top on that line). Length: its lines times their
  lateral width at the pleura. Gaps along the line at least ``rib_gap_fraction`` of the scan lines wide are
  rib shadows and split it into intercostal spaces; gaps of at least ``min_break_fraction`` are **breaks**;
  shorter gaps are bridged. Continuity: covered (and bridged) lines over the intercostal lines.
  Irregularity: mean absolute distance of the upper edge from its running median (a window of
  ``smooth_fraction`` of the scan lines) within each intercostal space. Thickness: median over its lines of
  lower minus upper edge plus one pixel.
* **B-line** (2012 consensus: arises at the pleura and reaches the bottom of the screen): a connected
  component of ``b_line`` (8-connectivity, after bridging vertical gaps shorter than ``gap_fraction`` of
  the height) with at least ``min_area`` pixels whose depth extent is at least ``min_extent_fraction`` of
  the depth below the pleural line. Shorter components are comet tails (Z/I-lines), not B-lines.
  **Confluent**: a counted B-line whose upper half covers more than ``confluent_width_fraction`` of the
  pleural line's scan lines; it counts once. **Coverage** (the "B-line artefact score" idea of Howell et al.
  2024): the percentage of the intercostal lines under a counted B-line.
* **A-line**: components of ``a_line`` with at least ``min_area // 4`` pixels grouped into depth levels
  (levels closer than half the skin-to-pleura depth are one A-line).
* **Consolidation**: on an ``anatomy`` map, the ``consolidation`` class. The dense schema has none
  (consolidation, effusion and unhealthy lung are all ``below_pleura_unhealthy``): there the area is that of
  the ``below_pleura_unhealthy`` regions touching the subpleural band on scan lines without A- or B-line
  artefacts (air under the pleura throws artefacts; tissue or fluid does not), and
  ``subpleural_unhealthy_fraction`` is that region's share of the subpleural band (a proxy, not a
  measurement). A sparse map has no health classes: ``None``.
* **Effusion**: the ``effusion`` class of an ``anatomy`` map; ``None`` for dense and sparse maps, whose
  classes cannot tell effusion from consolidation.
* **Aeration score** (PMC8611396) from the B-lines and the consolidation proxy; see ``docs/biomarkers.md``.

Lengths ending ``_px`` are in pixels of the map (the model's map in ``predict`` and ``segment``), areas in
its pixels; ``_mm`` / ``_mm2`` need ``pixel_mm`` (the map's pixel size) and are ``None`` without it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from pleura.labels import ANATOMY, DENSE, SPARSE, Schema, SchemaName, densify, to_dense

__all__ = ["Biomarkers", "clip_biomarkers", "frame_biomarkers"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_C = {name: DENSE.index(name) for name in DENSE.names}


@dataclass(frozen=True)
class Biomarkers:
    """Biomarkers of one frame. Fractions are in ``[0, 1]``, percentages in ``[0, 100]``. ``None``: not found
    (no scan area or no pleural line: every field but ``pleural_line_found``), not given by the schema (health
    measures on a sparse map, effusion on a dense one) or not measurable (``_mm`` without a pixel size). NaN:
    an empty denominator (e.g. no pleural pixel of either health class)."""

    pleural_line_found: bool  # a pleural line over at least min_pleura_fraction of the scan lines
    b_line_count: int | None  # distinct B-lines reaching down from the pleura; a confluent band counts once
    confluent_b_lines: bool | None  # any B-line wider than confluent_width_fraction of the pleural line
    confluent_pleura_fraction: float | None  # lateral share of the pleural line under confluent B-lines
    b_line_fraction: float | None  # B-line pixels / below-pleura pixels (B + A + healthy + unhealthy)
    a_line_count: int | None  # distinct A-line depth levels
    pleural_line_unhealthy_fraction: float | None  # unhealthy / all pleural-line pixels
    unhealthy_below_fraction: float | None  # below_unhealthy / (below_healthy + below_unhealthy)
    subpleural_unhealthy_fraction: float | None  # consolidation proxy's share of the subpleural band
    aeration_score: int | None  # 0-3 (PMC8611396)
    a_lines_present: bool | None  # at least one A-line
    b_line_coverage_pct: float | None  # % of the intercostal space under counted B-lines
    pleural_line_depth_px: float | None  # skin to the upper edge of the pleural line (median over its lines)
    pleural_line_depth_mm: float | None
    pleural_line_length_px: float | None  # lateral extent of the pleural line (its lines times their width)
    pleural_line_length_mm: float | None
    pleural_line_thickness_px: float | None  # median lower - upper edge + 1
    pleural_line_thickness_mm: float | None
    pleural_line_irregularity_px: float | None  # mean |upper edge - its running median|
    pleural_line_irregularity_mm: float | None
    pleural_line_breaks: int | None  # gaps in the line narrower than a rib shadow
    pleural_line_continuity: float | None  # covered / intercostal scan lines
    consolidation_area_px: float | None  # pixels of the map (anatomy class, or the dense proxy region)
    consolidation_area_mm2: float | None
    effusion_area_px: float | None  # anatomy maps only
    effusion_area_mm2: float | None

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the fields, for JSON or a CSV row."""
        return asdict(self)

    @classmethod
    def not_found(cls) -> Biomarkers:
        """The record of a frame with no scan area or no pleural line: found False, everything else ``None``."""
        return cls(**{f.name: None for f in fields(cls) if f.name != "pleural_line_found"}, pleural_line_found=False)


def _fraction(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def _close_vertical(mask: np.ndarray, length: int) -> np.ndarray:
    """Bridge vertical gaps of fewer than ``length`` rows (padded, so image borders do not erode)."""
    if length < 2:
        return mask
    pad = length
    padded = np.pad(mask, ((pad, pad), (0, 0)), mode="edge")
    closed = ndimage.binary_closing(padded, structure=np.ones((length, 1), dtype=bool))
    return closed[pad:-pad] | mask


def _scan_lines(inside: np.ndarray, pleura: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-pixel scan-line index (``-1`` outside), depth along it in pixels, and a line's lateral width in
    pixels at the pleural line.

    Image columns and rows for a rectangular scan (width 1). For a sector, the apex is where straight lines
    fitted to the sector's two side edges meet; a pixel's line is its angle about the apex, binned about one
    pixel wide at the pleural line (mid-depth if there is none), and its depth is its distance from the apex.
    """
    h, w = inside.shape
    rows, cols = np.indices((h, w))
    lines, depth = np.where(inside, cols, -1), rows.astype(float)
    scan_rows = np.flatnonzero(inside.any(axis=1))
    if inside.all() or scan_rows.size < 8:
        return lines, depth, 1.0
    left = np.argmax(inside, axis=1) + 0.5  # pixel centres
    right = w - 0.5 - np.argmax(inside[:, ::-1], axis=1)
    lo, hi = scan_rows[0], scan_rows[-1]
    fit = scan_rows[(scan_rows >= lo + 0.25 * (hi - lo)) & (scan_rows <= lo + 0.6 * (hi - lo))]
    if fit.size < 2:  # a predicted scan area in pieces: no side edges to fit
        return lines, depth, 1.0
    (bl, al), (br, ar) = np.polyfit(fit, left[fit], 1), np.polyfit(fit, right[fit], 1)
    if br - bl < 0.05:  # side edges (nearly) parallel: not a sector
        return lines, depth, 1.0
    y0 = (al - ar) / (br - bl)
    x0 = al + bl * y0
    theta = np.arctan2(cols + 0.5 - x0, rows + 0.5 - y0)
    radius = np.hypot(cols + 0.5 - x0, rows + 0.5 - y0)
    t_in, r_in = theta[inside], radius[inside]
    span = float(t_in.max() - t_in.min())
    ref = radius[pleura & inside] if (pleura & inside).any() else r_in
    r_ref = float(np.median(ref))
    n_bins = max(round(span * r_ref), 1)
    idx = np.clip(((theta - t_in.min()) / max(span, 1e-9) * n_bins).astype(int), 0, n_bins - 1)
    return np.where(inside, idx, -1), radius, span * r_ref / n_bins


def _per_line(lines: np.ndarray, values: np.ndarray, select: np.ndarray, n: int, fn: str) -> np.ndarray:
    """``fn`` (``"max"`` or ``"min"``) of ``values`` over selected pixels per line; NaN for lines without any."""
    out = np.full(n, -np.inf if fn == "max" else np.inf)
    (np.maximum if fn == "max" else np.minimum).at(out, lines[select], values[select])
    out[~np.isfinite(out)] = np.nan
    return out


def _fill(x: np.ndarray) -> np.ndarray:
    """Interpolate NaNs of a per-line profile from the nearest defined lines; all NaN stays NaN."""
    ok = ~np.isnan(x)
    if not ok.any() or ok.all():
        return x
    i = np.arange(x.size)
    return np.interp(i, i[ok], x[ok])


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` (end exclusive) of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


@dataclass(frozen=True)
class _Pleura:
    """The pleural line along the scan lines: intercostal spaces, breaks and the upper-edge profile's spread."""

    intercostal: np.ndarray  # bool per line: inside an intercostal space (covered, bridged or a break)
    breaks: int
    continuity: float
    irregularity: float  # mean |upper edge - running median| over the covered lines, in depth pixels


def _pleura_profile(covered: np.ndarray, top: np.ndarray, rib_lines: int, break_lines: int, window: int) -> _Pleura:
    """Split the covered lines into intercostal spaces at rib-shadow gaps; count breaks; measure irregularity."""
    n = covered.size
    intercostal = np.zeros(n, dtype=bool)
    breaks, bridged = 0, np.zeros(n, dtype=bool)
    idx = np.flatnonzero(covered)
    segments, start = [], idx[0]
    for gap_start, gap_end in _runs(~covered):
        if gap_start == 0 or gap_end == n:
            continue  # before the first or after the last covered line: not a gap in the line
        width = gap_end - gap_start
        if width >= rib_lines:  # a rib shadow: ends one intercostal space
            segments.append((start, gap_start))
            start = gap_end
        elif width >= break_lines:
            breaks += 1
        else:
            bridged[gap_start:gap_end] = True
    segments.append((start, int(idx[-1]) + 1))
    deviations = []
    for s, e in segments:
        intercostal[s:e] = True
        profile = _fill(np.where(covered[s:e], top[s:e], np.nan))
        smooth = ndimage.median_filter(profile, size=min(window, e - s), mode="nearest")
        deviations.append(np.abs(profile - smooth)[covered[s:e]])
    continuity = _fraction((covered | bridged)[intercostal].sum(), intercostal.sum())
    return _Pleura(intercostal, breaks, continuity, float(np.mean(np.concatenate(deviations))))


def _pixel_size(pixel_mm: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """``(row, col)`` mm per pixel from a number (square pixels) or a pair; ``None`` stays ``None``."""
    if pixel_mm is None:
        return None
    pair = (pixel_mm, pixel_mm) if np.isscalar(pixel_mm) else tuple(pixel_mm)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"pixel_mm should be a positive number of mm or a (row, col) pair, got {pixel_mm!r}")
    return float(pair[0]), float(pair[1])


def _mm(value: float | None, scale: float | None) -> float | None:
    return None if value is None or scale is None else float(value) * scale


def frame_biomarkers(
    mask: np.ndarray,
    schema: str | SchemaName | Schema = "dense",
    *,
    pixel_mm: float | tuple[float, float] | None = None,
    scan_area: np.ndarray | None = None,
    beam_rc: tuple[np.ndarray, np.ndarray] | None = None,
    min_area: int | None = None,
    min_pleura_fraction: float = 0.05,
    min_extent_fraction: float = 0.3,
    gap_fraction: float = 0.02,
    confluent_width_fraction: float = 0.15,
    rib_gap_fraction: float = 0.15,
    min_break_fraction: float = 0.02,
    smooth_fraction: float = 0.25,
    subpleural_depth_fraction: float = 0.1,
    tissue_like_fraction: float = 0.5,
    min_consolidation_fraction: float = 0.05,
    artifact_reach_fraction: float = 0.02,
) -> Biomarkers:
    """Biomarkers of one segmentation map.

    Args:
        mask: ``(H, W)`` integer class indices in ``schema``.
        schema: ``"dense"``, ``"sparse"`` or ``"anatomy"`` (a ``Schema``, a ``SchemaName`` or its text).
        pixel_mm: the map's pixel size in mm, a number (square pixels) or ``(row, col)``, for the ``_mm``
            fields: depth, thickness and irregularity use the row size, length the column size, areas both.
            ``None``: unknown (the ``_mm`` fields are ``None``).
        scan_area: bool ``(H, W)``, True inside the scan area; pixels outside never count, and an empty
            area gives "not found". ``None``: the map's own ``outside_scan`` class decides.
        beam_rc: per-pixel ``(row, col)`` beam indices, ``-1`` outside the scan
            (``ProbeGeometry.beam_index()``); ``None`` infers scan lines from the ``outside_scan`` sector,
            or uses image columns when there is none. With it, a line's width is taken as one pixel.
        min_area: smallest B-line component in pixels; ``None`` means 0.1% of the image (at least 4).
            A-line components need a quarter of it.
        min_pleura_fraction: the pleural line is found if it covers at least this fraction of the scan lines.
        min_extent_fraction: a B-line spans at least this fraction of the depth below the pleural line.
        gap_fraction: vertical gaps in a B-line shorter than this fraction of the height are bridged.
        confluent_width_fraction: a B-line wider than this fraction of the pleural line is confluent.
        rib_gap_fraction: a gap in the pleural line at least this fraction of the scan lines wide is a rib
            shadow (it separates intercostal spaces), not a break.
        min_break_fraction: a narrower gap of at least this fraction of the scan lines (and 2 lines) is a
            break; shorter gaps are bridged.
        smooth_fraction: window of the running median the irregularity is measured from, as a fraction of
            the scan lines.
        subpleural_depth_fraction: depth of the subpleural band, as a fraction of the image height.
        tissue_like_fraction: consolidation proxy at or above which the aeration score is 3.
        min_consolidation_fraction: consolidation proxy at or above which the score is at least 1.
        artifact_reach_fraction: an A- or B-line pixel marks scan lines within this fraction of the
            lines on either side as aerated (artifact-bearing) for the consolidation proxy.

    Example:
        >>> bm = frame_biomarkers(np.zeros((64, 64), np.uint8))  # no pleural line: not found
        >>> bm.pleural_line_found, bm.b_line_count
        (False, None)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask should be 2-D (H, W) class indices, got shape {mask.shape}; take argmax over classes")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask should hold integer class indices, got dtype {mask.dtype}; take argmax over classes")
    size_mm = _pixel_size(pixel_mm)
    row_mm, col_mm = size_mm if size_mm is not None else (None, None)
    area_mm2 = None if size_mm is None else size_mm[0] * size_mm[1]
    schema = str(schema.name if isinstance(schema, Schema) else schema)
    consolidation = effusion = None
    if schema == "sparse":
        SPARSE.check(mask, "mask")
        dense = densify(mask.astype(np.uint8), "normal", beam_rc)
    elif schema == "dense":
        DENSE.check(mask, "mask")
        dense = mask
    elif schema == "anatomy":
        ANATOMY.check(mask, "mask")
        dense = to_dense(mask.astype(np.uint8))
        consolidation, effusion = mask == ANATOMY.index("consolidation"), mask == ANATOMY.index("effusion")
    else:
        raise ValueError(f"schema should be 'dense', 'sparse' or 'anatomy', got {schema!r}")
    h, w = dense.shape
    if min_area is None:
        min_area = max(4, round(0.001 * h * w))

    inside = dense != _C["outside_scan"]
    if scan_area is not None:
        if scan_area.shape != dense.shape:
            raise ValueError(f"scan_area shape {scan_area.shape} differs from mask shape {dense.shape}")
        inside &= scan_area.astype(bool)
    dense_pleura = (dense == _C["pleural_line_healthy"]) | (dense == _C["pleural_line_unhealthy"])
    line_px = 1.0
    if beam_rc is not None:
        if beam_rc[0].shape != dense.shape:
            raise ValueError(f"beam_rc shape {beam_rc[0].shape} differs from mask shape {dense.shape}")
        inside &= beam_rc[1] >= 0
        lines, depth = np.where(inside, beam_rc[1], -1), beam_rc[0].astype(float)
    elif inside.any():
        lines, depth, line_px = _scan_lines(inside, dense_pleura & inside)
    if not inside.any():
        return Biomarkers.not_found()
    n_lines = int(lines.max()) + 1
    b = dense == _C["b_line"]
    a = dense == _C["a_line"]
    pl_h, pl_u = dense == _C["pleural_line_healthy"], dense == _C["pleural_line_unhealthy"]
    pleura = (pl_h | pl_u) & inside
    bel_h, bel_u = dense == _C["below_pleura_healthy"], dense == _C["below_pleura_unhealthy"]
    below = a | b | bel_h | bel_u

    # The pleural line per scan line: lower edge (deepest pixel), upper edge; found or not.
    pl_depth = _per_line(lines, depth, pleura, n_lines, "max")
    pl_top = _per_line(lines, depth, pleura, n_lines, "min")
    pleura_lines = ~np.isnan(pl_depth)
    n_pleura = int(pleura_lines.sum())
    if n_pleura < max(2, min_pleura_fraction * n_lines):
        return Biomarkers.not_found()
    pl_filled = _fill(pl_depth)
    bottom = _per_line(lines, depth, inside, n_lines, "max")
    skin = _per_line(lines, depth, inside, n_lines, "min")
    available = max(float(np.nanmedian(bottom[pleura_lines] - pl_depth[pleura_lines])), 1.0)
    pl_to_skin = float(np.nanmedian(pl_top[pleura_lines] - skin[pleura_lines]))
    spacing = float(np.nanmedian(pl_depth[pleura_lines] - skin[pleura_lines]))  # A-line spacing
    shape = _pleura_profile(
        pleura_lines,
        pl_top,
        rib_lines=max(3, round(rib_gap_fraction * n_lines)),
        break_lines=max(2, round(min_break_fraction * n_lines)),
        window=max(3, round(smooth_fraction * n_lines) | 1),
    )

    # B-lines: long components along the scan lines; wide ones are confluent. A width is the share of
    # the pleural line's scan lines that the upper half of the component (nearest the pleura) covers.
    labels, n_comp = ndimage.label(_close_vertical(b, round(gap_fraction * h)), structure=_EIGHT)
    b_count, confluent = 0, False
    confluent_lines, b_lines = np.zeros(n_lines, dtype=bool), np.zeros(n_lines, dtype=bool)
    sizes = np.bincount(labels[b & inside], minlength=n_comp + 1)  # small components skipped without a loop
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < min_area:
            continue
        comp = (labels[sl] == i) & b[sl] & inside[sl]
        d = depth[sl][comp]
        if d.max() - d.min() + 1 < min_extent_fraction * available:
            continue  # a short comet tail, not a B-line
        b_count += 1
        b_lines[lines[sl][comp]] = True
        upper = lines[sl][comp][d <= (d.min() + d.max()) / 2]
        covered = np.zeros_like(confluent_lines)
        covered[upper] = True
        if covered.sum() / n_pleura > confluent_width_fraction:
            confluent = True
            confluent_lines |= covered
    confluent_share = float((confluent_lines & pleura_lines).sum() / n_pleura)
    coverage = 100.0 * _fraction((b_lines & shape.intercostal).sum(), shape.intercostal.sum())

    # A-lines: components grouped into depth levels below the pleural line (A-line spacing apart).
    labels, n_comp = ndimage.label(a & inside, structure=_EIGHT)
    levels = []
    sizes = np.bincount(labels.ravel(), minlength=n_comp + 1)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < max(1, min_area // 4):
            continue
        comp = labels[sl] == i
        d, ln = depth[sl][comp], lines[sl][comp]
        levels.append(float(np.median(d - pl_filled[ln])))
    tol = max(0.5 * spacing, 2.0)
    levels.sort()
    a_count = sum(1 for k, lv in enumerate(levels) if k == 0 or lv - levels[k - 1] >= tol)

    # Health measures and the consolidation proxy (dense and anatomy maps).
    health = schema != "sparse"
    pl_unhealthy = _fraction(pl_u.sum(), (pl_h | pl_u).sum()) if health else None
    unhealthy_below = _fraction(bel_u.sum(), bel_h.sum() + bel_u.sum()) if health else None
    subpleural, proxy_area = None, None
    if health:
        line_ok = np.append(pleura_lines, False)  # last slot: outside pixels
        ln = np.where(inside, lines, n_lines)
        ref = np.append(pl_depth, np.nan)[ln]
        has_pl = line_ok[ln]
        under = has_pl & inside & (depth > ref)
        band = under & below & (depth <= ref + subpleural_depth_fraction * h)
        noisy = np.zeros(n_lines + 1, dtype=bool)  # lines with reverberation artifacts (air under the pleura)
        noisy[ln[(a | b) & inside]] = True
        # A thin A-line on a sector misses some angular bins (nearest-neighbour scan conversion).
        reach = max(1, round(artifact_reach_fraction * n_lines))
        noisy[:n_lines] = ndimage.binary_dilation(noisy[:n_lines], np.ones(2 * reach + 1, dtype=bool))
        quiet = under & bel_u & ~noisy[ln]
        subpleural = _fraction((band & quiet).sum(), band.sum())
        regions, n_reg = ndimage.label(quiet, structure=_EIGHT)
        touching = np.unique(regions[band & quiet])
        proxy_area = float(np.isin(regions, touching[touching > 0]).sum()) if n_reg else 0.0

    cons = 0.0 if subpleural is None or math.isnan(subpleural) else subpleural
    if cons >= tissue_like_fraction:
        score = 3
    elif (confluent and confluent_share + cons >= 0.5) or cons >= 0.5:
        score = 2
    elif b_count >= 3 or confluent or cons >= min_consolidation_fraction:
        score = 1
    else:
        score = 0

    if consolidation is not None:  # anatomy: the classes themselves
        cons_area = float((consolidation & inside).sum())
        eff_area: float | None = float((effusion & inside).sum())
    else:
        cons_area, eff_area = proxy_area, None
    thickness = float(np.nanmedian(pl_depth[pleura_lines] - pl_top[pleura_lines])) + 1.0
    length = n_pleura * line_px
    return Biomarkers(
        pleural_line_found=True,
        b_line_count=b_count,
        confluent_b_lines=confluent,
        confluent_pleura_fraction=confluent_share,
        b_line_fraction=_fraction((b & inside).sum(), (below & inside).sum()),
        a_line_count=a_count,
        pleural_line_unhealthy_fraction=pl_unhealthy,
        unhealthy_below_fraction=unhealthy_below,
        subpleural_unhealthy_fraction=subpleural,
        aeration_score=score,
        a_lines_present=a_count > 0,
        b_line_coverage_pct=coverage,
        pleural_line_depth_px=pl_to_skin,
        pleural_line_depth_mm=_mm(pl_to_skin, row_mm),
        pleural_line_length_px=length,
        pleural_line_length_mm=_mm(length, col_mm),
        pleural_line_thickness_px=thickness,
        pleural_line_thickness_mm=_mm(thickness, row_mm),
        pleural_line_irregularity_px=shape.irregularity,
        pleural_line_irregularity_mm=_mm(shape.irregularity, row_mm),
        pleural_line_breaks=shape.breaks,
        pleural_line_continuity=shape.continuity,
        consolidation_area_px=cons_area,
        consolidation_area_mm2=_mm(cons_area, area_mm2),
        effusion_area_px=eff_area,
        effusion_area_mm2=_mm(eff_area, area_mm2),
    )


def _nanmean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    finite = [v for v in vals if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


#: the per-frame fractions and measurements :func:`clip_biomarkers` averages (``<name>_mean``)
CLIP_MEANS = (
    "confluent_pleura_fraction",
    "b_line_fraction",
    "pleural_line_unhealthy_fraction",
    "unhealthy_below_fraction",
    "subpleural_unhealthy_fraction",
    "b_line_coverage_pct",
    "pleural_line_depth_px",
    "pleural_line_depth_mm",
    "pleural_line_length_px",
    "pleural_line_length_mm",
    "pleural_line_thickness_px",
    "pleural_line_thickness_mm",
    "pleural_line_irregularity_px",
    "pleural_line_irregularity_mm",
    "pleural_line_continuity",
    "consolidation_area_px",
    "consolidation_area_mm2",
    "effusion_area_px",
    "effusion_area_mm2",
)


def clip_biomarkers(frames: Sequence[Biomarkers]) -> dict[str, object]:
    """Summary of a clip's frames, over the frames where the pleural line was found.

    Counts are medians (a B-line sliding in and out of the field for a few frames should not change the
    clip's count) and the maximum B-line count is kept too (clinicians report the worst view); confluence
    and A-lines are "any frame"; fractions and measurements are means over frames where defined (NaN-skipping;
    ``None`` when no frame has them); the aeration score is the maximum, as a zone is scored by its worst
    appearance. A clip where no frame shows a pleural line gets ``None`` for all of them (not zeros).
    """
    if not frames:
        raise ValueError("clip_biomarkers needs at least one frame's Biomarkers, got an empty sequence")
    found = [f for f in frames if f.pleural_line_found]
    out: dict[str, object] = {
        "n_frames": len(frames),
        "frames_with_pleural_line": len(found),
        "pleural_line_found": bool(found),
    }
    if not found:
        keys = ("b_line_count_median", "b_line_count_max", "a_line_count_median", "confluent_b_lines",
                "a_lines_present", "pleural_line_breaks_max", "aeration_score_max")  # fmt: skip
        out.update(dict.fromkeys(keys))
        out.update({f"{name}_mean": None for name in CLIP_MEANS})
        return out
    out.update(
        {
            "b_line_count_median": float(np.median([f.b_line_count for f in found])),
            "b_line_count_max": max(f.b_line_count for f in found),
            "a_line_count_median": float(np.median([f.a_line_count for f in found])),
            "confluent_b_lines": any(f.confluent_b_lines for f in found),
            "a_lines_present": any(f.a_lines_present for f in found),
            "pleural_line_breaks_max": max(f.pleural_line_breaks for f in found),
        }
    )
    for name in CLIP_MEANS:
        out[f"{name}_mean"] = _nanmean([getattr(f, name) for f in found])
    out["aeration_score_max"] = max(f.aeration_score for f in found)
    return out
