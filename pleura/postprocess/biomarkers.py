"""Clinician-read biomarkers from one segmentation map: B-line and A-line counts, confluence, pleural health,
a consolidation proxy and the 0-3 aeration score; and their per-clip summary.

    bm = frame_biomarkers(pred_mask)                     # (H, W) class indices, dense schema
    bm.b_line_count, bm.aeration_score, bm.to_dict()
    clip = clip_biomarkers([frame_biomarkers(m) for m in clip_masks])

Definitions (see ``../shared/LUS-REFERENCE.md``; every threshold is an argument of ``frame_biomarkers``):

* **Scan lines and depth**: image columns and rows for a rectangular (linear) scan. For a sector
  (curvilinear) the apex is found where lines fitted to the ``outside_scan`` sector's side edges meet; a
  pixel's scan line is its angle about the apex (bins about one pixel wide at the pleural line) and its
  depth its distance from the apex. ``beam_rc`` (``ProbeGeometry.beam_index()``) overrides the inference.
  ``outside_scan`` pixels never enter an area or a count.
* **Region below the pleura**: dense classes ``a_line``, ``b_line``, ``below_pleura_healthy`` and
  ``below_pleura_unhealthy``.
* **B-line** (2012 consensus: arises at the pleura and reaches the bottom of the screen): a connected
  component of the ``b_line`` class (8-connectivity, after bridging vertical gaps shorter than
  ``gap_fraction`` of the image height) with at least ``min_area`` pixels whose depth extent is at
  least ``min_extent_fraction`` of the depth available below the pleural line (median over scan lines
  of scan bottom minus pleural line). Shorter components are comet tails (Z/I-lines), not B-lines.
* **Confluent**: a counted B-line whose upper half (nearest the pleura) covers more than
  ``confluent_width_fraction`` of the scan lines that carry the pleural line, so rib shadows do not
  dilute it. A confluent band counts as one B-line. ``confluent_pleura_fraction`` is the share of the
  pleural line's scan lines under confluent B-lines.
* **A-line**: components of ``a_line`` with at least ``min_area // 4`` pixels (A-lines are thin),
  grouped into depth levels: a component's level is its median depth below the pleural line of its own
  scan lines; sorted levels closer than half the skin-to-pleura depth (the A-line spacing,
  LUS-REFERENCE) are one A-line, e.g. pieces of one A-line split by B-lines or rib shadows.
* **Consolidation proxy** (``subpleural_unhealthy_fraction``): the dense schema has no consolidation
  class (consolidation, effusion and interstitial lung all map to ``below_pleura_unhealthy``), so this
  is a proxy, not a measurement. Where the pleura is an air interface it throws reverberation artifacts
  (A- or B-lines) down its scan line; where fluid or tissue lies under it, it does not. The proxy is the
  fraction of the subpleural band (``subpleural_depth_fraction`` of the image height right under the
  pleural line, on scan lines that carry it) made of ``below_pleura_unhealthy`` pixels on scan lines with
  no A- or B-line pixel within ``artifact_reach_fraction`` of the lines. Limits: it cannot tell a small
  subpleural consolidation from a lobar one, nor consolidation from effusion; a predicted map that misses
  the A-lines of an unhealthy lung inflates it; a frame too shallow to show the first A-line repeat
  (twice the pleural depth) would read as consolidated.
* **Aeration score** (PMC8611396): 3 if the proxy is at least ``tissue_like_fraction`` (read as
  tissue-like consolidation); 2 if confluent B-lines plus the proxy cover at least half the pleural line
  (or the proxy alone does); 1 if three or more B-lines, any confluent B-line, or a proxy of at least
  ``min_consolidation_fraction`` (a small subpleural consolidation); else 0. "Well-spaced" is not
  checked: distinct components are taken as separate B-lines.

A ``sparse`` map has no health classes: it is turned into a dense one with
``pleura.labels.densify(mask, "normal", beam_rc)`` (image columns as scan lines without ``beam_rc``),
counts and fractions come from that, and the health-dependent fields (``pleural_line_unhealthy_fraction``,
``unhealthy_below_fraction``, ``subpleural_unhealthy_fraction``) are ``None``; the aeration score then
uses B-lines only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from pleura.labels import DENSE, SPARSE, Schema, SchemaName, densify

__all__ = ["Biomarkers", "clip_biomarkers", "frame_biomarkers"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_C = {name: DENSE.index(name) for name in DENSE.names}


@dataclass(frozen=True)
class Biomarkers:
    """Biomarkers of one frame. Fractions are in ``[0, 1]``; NaN when the denominator is empty; ``None``
    when the schema cannot give them (health measures on a sparse map)."""

    b_line_count: int  # distinct B-lines reaching down from the pleura; a confluent band counts once
    confluent_b_lines: bool  # any B-line wider than confluent_width_fraction of the pleural line
    confluent_pleura_fraction: float  # lateral share of the pleural line under confluent B-lines
    b_line_fraction: float  # B-line pixels / below-pleura pixels (B + A + healthy + unhealthy)
    a_line_count: int  # distinct A-line depth levels
    pleural_line_unhealthy_fraction: float | None  # unhealthy / all pleural-line pixels
    unhealthy_below_fraction: float | None  # below_unhealthy / (below_healthy + below_unhealthy)
    subpleural_unhealthy_fraction: float | None  # consolidation proxy, see the module docstring
    aeration_score: int  # 0-3

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the fields, for JSON or a CSV row."""
        return asdict(self)


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


def _scan_lines(inside: np.ndarray, pleura: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel scan-line index (``-1`` outside) and depth along it, in pixels.

    Image columns and rows for a rectangular scan. For a sector, the apex is where straight lines fitted
    to the sector's two side edges meet; a pixel's line is its angle about the apex, binned about one
    pixel wide at the pleural line (mid-depth if there is none), and its depth is its distance from the apex.
    """
    h, w = inside.shape
    rows, cols = np.indices((h, w))
    lines, depth = np.where(inside, cols, -1), rows.astype(float)
    scan_rows = np.flatnonzero(inside.any(axis=1))
    if inside.all() or scan_rows.size < 8:
        return lines, depth
    left = np.argmax(inside, axis=1) + 0.5  # pixel centres
    right = w - 0.5 - np.argmax(inside[:, ::-1], axis=1)
    lo, hi = scan_rows[0], scan_rows[-1]
    fit = scan_rows[(scan_rows >= lo + 0.25 * (hi - lo)) & (scan_rows <= lo + 0.6 * (hi - lo))]
    if fit.size < 2:  # a predicted scan area in pieces: no side edges to fit
        return lines, depth
    (bl, al), (br, ar) = np.polyfit(fit, left[fit], 1), np.polyfit(fit, right[fit], 1)
    if br - bl < 0.05:  # side edges (nearly) parallel: not a sector
        return lines, depth
    y0 = (al - ar) / (br - bl)
    x0 = al + bl * y0
    theta = np.arctan2(cols + 0.5 - x0, rows + 0.5 - y0)
    radius = np.hypot(cols + 0.5 - x0, rows + 0.5 - y0)
    t_in, r_in = theta[inside], radius[inside]
    span = float(t_in.max() - t_in.min())
    ref = radius[pleura & inside] if (pleura & inside).any() else r_in
    n_bins = max(round(span * float(np.median(ref))), 1)
    idx = np.clip(((theta - t_in.min()) / max(span, 1e-9) * n_bins).astype(int), 0, n_bins - 1)
    return np.where(inside, idx, -1), radius


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


def frame_biomarkers(
    mask: np.ndarray,
    schema: str | SchemaName | Schema = "dense",
    *,
    beam_rc: tuple[np.ndarray, np.ndarray] | None = None,
    min_area: int | None = None,
    min_extent_fraction: float = 0.3,
    gap_fraction: float = 0.02,
    confluent_width_fraction: float = 0.15,
    subpleural_depth_fraction: float = 0.1,
    tissue_like_fraction: float = 0.5,
    min_consolidation_fraction: float = 0.05,
    artifact_reach_fraction: float = 0.02,
) -> Biomarkers:
    """Biomarkers of one segmentation map.

    Args:
        mask: ``(H, W)`` integer class indices in ``schema``.
        schema: ``"dense"`` or ``"sparse"`` (a ``Schema``, a ``SchemaName`` or its text).
        beam_rc: per-pixel ``(row, col)`` beam indices, ``-1`` outside the scan
            (``ProbeGeometry.beam_index()``); ``None`` infers scan lines from the ``outside_scan`` sector,
            or uses image columns when there is none.
        min_area: smallest B-line component in pixels; ``None`` means 0.1% of the image (at least 4).
            A-line components need a quarter of it.
        min_extent_fraction: a B-line spans at least this fraction of the depth below the pleural line.
        gap_fraction: vertical gaps in a B-line shorter than this fraction of the height are bridged.
        confluent_width_fraction: a B-line wider than this fraction of the pleural line is confluent.
        subpleural_depth_fraction: depth of the subpleural band, as a fraction of the image height.
        tissue_like_fraction: consolidation proxy at or above which the aeration score is 3.
        min_consolidation_fraction: consolidation proxy at or above which the score is at least 1.
        artifact_reach_fraction: an A- or B-line pixel marks scan lines within this fraction of the
            lines on either side as aerated (artifact-bearing) for the consolidation proxy.

    Example:
        >>> bm = frame_biomarkers(np.zeros((64, 64), np.uint8))
        >>> bm.b_line_count, bm.aeration_score
        (0, 0)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask should be 2-D (H, W) class indices, got shape {mask.shape}; take argmax over classes")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask should hold integer class indices, got dtype {mask.dtype}; take argmax over classes")
    schema = str(schema.name if isinstance(schema, Schema) else schema)
    if schema == "sparse":
        SPARSE.check(mask, "mask")
        dense = densify(mask.astype(np.uint8), "normal", beam_rc)
    elif schema == "dense":
        DENSE.check(mask, "mask")
        dense = mask
    else:
        raise ValueError(f"schema should be 'dense' or 'sparse', got {schema!r}")
    h, w = dense.shape
    if min_area is None:
        min_area = max(4, round(0.001 * h * w))

    inside = dense != _C["outside_scan"]
    dense_pleura = (dense == _C["pleural_line_healthy"]) | (dense == _C["pleural_line_unhealthy"])
    if beam_rc is not None:
        if beam_rc[0].shape != dense.shape:
            raise ValueError(f"beam_rc shape {beam_rc[0].shape} differs from mask shape {dense.shape}")
        inside &= beam_rc[1] >= 0
        lines, depth = np.where(inside, beam_rc[1], -1), beam_rc[0].astype(float)
    else:
        lines, depth = _scan_lines(inside, dense_pleura)
    n_lines = int(lines.max()) + 1 if inside.any() else 0
    b = dense == _C["b_line"]
    a = dense == _C["a_line"]
    pl_h, pl_u = dense == _C["pleural_line_healthy"], dense == _C["pleural_line_unhealthy"]
    pleura = (pl_h | pl_u) & inside
    bel_h, bel_u = dense == _C["below_pleura_healthy"], dense == _C["below_pleura_unhealthy"]
    below = a | b | bel_h | bel_u

    # Pleural depth per scan line (deepest pleural pixel); the depth available below it.
    pl_depth = _per_line(lines, depth, pleura, n_lines, "max")
    pleura_lines = ~np.isnan(pl_depth)
    pl_filled = _fill(pl_depth)
    bottom = _per_line(lines, depth, inside, n_lines, "max")
    skin = _per_line(lines, depth, inside, n_lines, "min")
    if pleura_lines.any():
        available = float(np.nanmedian(bottom[pleura_lines] - pl_depth[pleura_lines]))
        spacing = float(np.nanmedian(pl_depth[pleura_lines] - skin[pleura_lines]))  # A-line spacing
    else:
        top = float(depth[below].min()) - 1 if below.any() else float(np.nanmin(skin)) if n_lines else 0.0
        available = float(np.nanmax(bottom)) - top if n_lines else float(h)
        spacing = 0.1 * h
    available = max(available, 1.0)

    # B-lines: long components along the scan lines; wide ones are confluent. A width is the share of
    # the pleural line's scan lines that the upper half of the component (nearest the pleura) covers.
    n_pleura = int(pleura_lines.sum()) if pleura_lines.any() else n_lines
    labels, n_comp = ndimage.label(_close_vertical(b, round(gap_fraction * h)), structure=_EIGHT)
    b_count, confluent, confluent_lines = 0, False, np.zeros(max(n_lines, 1), dtype=bool)
    sizes = np.bincount(labels[b & inside], minlength=n_comp + 1)  # small components skipped without a loop
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < min_area:
            continue
        comp = (labels[sl] == i) & b[sl] & inside[sl]
        d = depth[sl][comp]
        if d.max() - d.min() + 1 < min_extent_fraction * available:
            continue  # a short comet tail, not a B-line
        b_count += 1
        upper = lines[sl][comp][d <= (d.min() + d.max()) / 2]
        covered = np.zeros_like(confluent_lines)
        covered[upper] = True
        if covered.sum() / max(n_pleura, 1) > confluent_width_fraction:
            confluent = True
            confluent_lines |= covered
    if pleura_lines.any():
        confluent_share = float((confluent_lines & pleura_lines).sum() / n_pleura)
    else:
        confluent_share = float(confluent_lines.sum() / max(n_pleura, 1))

    # A-lines: components grouped into depth levels below the pleural line (A-line spacing apart).
    labels, n_comp = ndimage.label(a & inside, structure=_EIGHT)
    levels = []
    sizes = np.bincount(labels.ravel(), minlength=n_comp + 1)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < max(1, min_area // 4):
            continue
        comp = labels[sl] == i
        d, ln = depth[sl][comp], lines[sl][comp]
        levels.append(float(np.median(d - pl_filled[ln])) if pleura_lines.any() else float(np.median(d)))
    tol = max(0.5 * spacing, 2.0)
    levels.sort()
    a_count = sum(1 for k, lv in enumerate(levels) if k == 0 or lv - levels[k - 1] >= tol)

    # Health measures and the consolidation proxy (dense only).
    health = schema == "dense"
    pl_unhealthy = _fraction(pl_u.sum(), (pl_h | pl_u).sum()) if health else None
    unhealthy_below = _fraction(bel_u.sum(), bel_h.sum() + bel_u.sum()) if health else None
    subpleural = None
    if health:
        line_ok = np.append(pleura_lines, False)  # last slot: outside pixels
        ln = np.where(inside, lines, n_lines)
        ref = np.append(pl_depth, np.nan)[ln]
        has_pl = line_ok[ln]
        band = has_pl & below & (depth > ref) & (depth <= ref + subpleural_depth_fraction * h)
        noisy = np.zeros(n_lines + 1, dtype=bool)  # lines with reverberation artifacts (air under the pleura)
        noisy[ln[(a | b) & inside]] = True
        # A thin A-line on a sector misses some angular bins (nearest-neighbour scan conversion).
        reach = max(1, round(artifact_reach_fraction * n_lines))
        noisy[:n_lines] = ndimage.binary_dilation(noisy[:n_lines], np.ones(2 * reach + 1, dtype=bool))
        subpleural = _fraction((band & bel_u & ~noisy[ln]).sum(), band.sum())

    cons = 0.0 if subpleural is None or math.isnan(subpleural) else subpleural
    if cons >= tissue_like_fraction:
        score = 3
    elif (confluent and confluent_share + cons >= 0.5) or cons >= 0.5:
        score = 2
    elif b_count >= 3 or confluent or cons >= min_consolidation_fraction:
        score = 1
    else:
        score = 0

    return Biomarkers(
        b_line_count=b_count,
        confluent_b_lines=confluent,
        confluent_pleura_fraction=confluent_share,
        b_line_fraction=_fraction((b & inside).sum(), (below & inside).sum()),
        a_line_count=a_count,
        pleural_line_unhealthy_fraction=pl_unhealthy,
        unhealthy_below_fraction=unhealthy_below,
        subpleural_unhealthy_fraction=subpleural,
        aeration_score=score,
    )


def _nanmean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    finite = [v for v in vals if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def clip_biomarkers(frames: Sequence[Biomarkers]) -> dict[str, object]:
    """Summary of a clip's frames.

    Counts are medians (a B-line sliding in and out of the field for a few frames should not change the
    clip's count) and the maximum B-line count is kept too (clinicians report the worst view); confluence
    is "any frame"; fractions are means over frames where defined (NaN-skipping; ``None`` when the schema
    lacks them); the aeration score is the maximum, as a zone is scored by its worst appearance.
    """
    if not frames:
        raise ValueError("clip_biomarkers needs at least one frame's Biomarkers, got an empty sequence")
    fractions = (
        "confluent_pleura_fraction",
        "b_line_fraction",
        "pleural_line_unhealthy_fraction",
        "unhealthy_below_fraction",
        "subpleural_unhealthy_fraction",
    )
    out: dict[str, object] = {
        "n_frames": len(frames),
        "b_line_count_median": float(np.median([f.b_line_count for f in frames])),
        "b_line_count_max": max(f.b_line_count for f in frames),
        "a_line_count_median": float(np.median([f.a_line_count for f in frames])),
        "confluent_b_lines": any(f.confluent_b_lines for f in frames),
    }
    for name in fractions:
        out[f"{name}_mean"] = _nanmean([getattr(f, name) for f in frames])
    out["aeration_score_max"] = max(f.aeration_score for f in frames)
    return out
