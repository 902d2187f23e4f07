"""Scene priors by diagnosis and the sampling of one clip's scene.

A ``Scene`` fixes everything about a clip that does not change from frame to frame: probe geometry,
chest-wall layers, ribs, the pleural line and its pathology, A- and B-line parameters, consolidation,
effusion, lung-sliding motion and scanner settings. Lateral positions are in mm along the pleural
line (arc length for a curvilinear probe).

The priors overlap between diagnoses on purpose, as patients do: a normal lung may show up to two
B-lines, and a COVID-19 frame may show a spared area with a regular pleura and no consolidation.
Sources (see ``../shared/LUS-REFERENCE.md`` and ``docs/simulator.md``):

* normal: A-lines, lung sliding, up to two B-lines per zone (2012 international consensus,
  Volpicelli et al.; Lichtenstein 2014).
* COVID-19: patchy separate or confluent B-lines with spared areas, irregular / thickened / broken
  pleura, small subpleural consolidations, effusion uncommon. Probabilities sit inside the ranges of a
  preprint review (irregular pleura 28-89%, thickening 7-86%, separate B-lines 17-88%, confluent
  12-79%, subpleural consolidation 8-73%, effusion 4-56%) and Lichter 2020.
* bacterial pneumonia: large tissue-like consolidation with a shred border and air bronchograms
  (dynamic in 61%; Lichtenstein, Chest 2009), effusion in 30% (BMC Med Imaging 2017), focal B-lines
  near the consolidation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from pleura.labels import DIAGNOSES, Probe
from pleura.simulate.geometry import ProbeGeometry

# Probabilities and ranges per diagnosis. ``(lo, hi)`` are uniform ranges; ``p_*`` probabilities.
PRIORS: dict[str, dict[str, object]] = {
    "normal": {
        "n_blines": ((0, 1, 2), (0.70, 0.20, 0.10)),  # up to two B-lines can be normal
        "p_confluent": 0.0,
        "p_irregular": 0.05,  # mild irregularity still seen in healthy older lungs
        "p_thickened": 0.0,
        "p_broken": 0.0,
        "p_subpleural": 0.0,
        "p_lobar": 0.0,
        "p_effusion": 0.0,
        "a_line_reflect": (0.40, 0.65),  # strong, regular A-lines
        "sliding_mm": (1.5, 3.0),
    },
    "covid": {
        "n_blines": ((0, 1, 2, 3, 4, 5, 6, 8), (0.12, 0.08, 0.08, 0.14, 0.16, 0.16, 0.14, 0.12)),
        "p_confluent": 0.35,  # review range 12-79%
        "p_irregular": 0.70,  # 28-89%
        "p_thickened": 0.50,  # 7-86%
        "p_broken": 0.35,
        "p_subpleural": 0.40,  # 8-73%
        "p_lobar": 0.05,
        "p_effusion": 0.08,  # 4-56%, uncommon
        "a_line_reflect": (0.25, 0.50),
        "sliding_mm": (0.5, 2.0),
    },
    "pneumonia": {
        "n_blines": ((0, 1, 2, 3, 4), (0.30, 0.20, 0.20, 0.15, 0.15)),  # focal, near the consolidation
        "p_confluent": 0.10,
        "p_irregular": 0.35,
        "p_thickened": 0.15,
        "p_broken": 0.10,
        "p_subpleural": 0.20,
        "p_lobar": 0.65,  # tissue-like, hepatised consolidation
        "p_effusion": 0.30,  # 30% of 510 community-acquired pneumonias
        "a_line_reflect": (0.25, 0.50),
        "sliding_mm": (0.3, 1.5),
    },
}

# Probe settings (LUS-REFERENCE: convex 3.5-5 MHz, 6-16 cm deep; linear 7.5-12 MHz, about 4-6 cm).
PROBE_SETTINGS: dict[Probe, dict[str, tuple[float, float]]] = {
    Probe.LINEAR: {
        "freq_mhz": (7.5, 11.0),
        "depth_mm": (40.0, 60.0),
        "width_mm": (38.0, 50.0),
        "pleura_mm": (9.0, 20.0),
    },
    Probe.CURVILINEAR: {
        "freq_mhz": (3.5, 5.0),
        "depth_mm": (100.0, 160.0),
        "radius_mm": (40.0, 62.0),
        "sector_deg": (50.0, 70.0),
        "pleura_mm": (13.0, 32.0),  # >= MIN_LABEL_DEPTH_MM + irregularity
    },
}


@dataclass
class Scene:
    """Everything that stays fixed over one clip. Lateral positions in mm along the pleural line."""

    diagnosis: str
    probe: Probe
    geometry: ProbeGeometry
    fps: float
    freq_mhz: float
    pleural_depth_mm: float
    pleural_thickness_mm: float
    irregularity: float  # 0..1, amplitude of the pleural line's jaggedness
    breaks: list[tuple[float, float]]  # (centre, width) gaps in the pleural echo
    ribs: list[tuple[float, float]]  # (start, end) of each rib
    rib_above_pleura_mm: float
    fascia_fractions: list[float]  # fascia depths as fractions of the pleural depth
    blines: list[tuple[float, float]]  # (centre, width) of each B-line
    confluent: bool
    a_line_reflect: float  # amplitude ratio between successive A-lines
    subpleural: list[tuple[float, float, float]]  # (centre, half-width, depth) small consolidations
    lobar: tuple[float, float, float] | None  # (start, end, depth below pleura)
    air_bronchograms: bool
    effusion: tuple[float, float, float] | None  # (start, end, max thickness)
    sliding_mm: float
    breath_period_s: float
    dynamic_range_db: float
    gain_db: float
    tgc_compensation: float
    noise_level: float
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def lateral_mm(self) -> float:
        """Length of the pleural line across the field."""
        return self.geometry.lateral_mm(self.pleural_depth_mm)

    @property
    def consolidation(self) -> str:
        """``none``, ``subpleural`` or ``lobar``, as the manifest reports it."""
        if self.lobar is not None:
            return "lobar"
        return "subpleural" if self.subpleural else "none"

    def summary(self) -> dict[str, object]:
        """Flat, CSV-friendly scene parameters for the manifest."""
        g = self.geometry
        return {
            "depth_mm": round(g.depth_mm, 2),
            "pixel_mm": round(g.pixel_mm[0], 4),
            "pixel_mm_x": round(g.pixel_mm[1], 4),
            "radius_mm": round(g.radius_mm, 2) if g.probe is Probe.CURVILINEAR else "",
            "sector_deg": round(g.sector_deg, 2) if g.probe is Probe.CURVILINEAR else "",
            "width_mm": round(g.width_mm, 2) if g.probe is Probe.LINEAR else "",
            "freq_mhz": round(self.freq_mhz, 2),
            "fps": round(self.fps, 2),
            "pleural_depth_mm": round(self.pleural_depth_mm, 3),
            "pleural_thickness_mm": round(self.pleural_thickness_mm, 3),
            "pleural_irregularity": round(self.irregularity, 3),
            "pleural_breaks": len(self.breaks),
            "n_ribs": len(self.ribs),
            "confluent_blines": int(self.confluent),
            "consolidation": self.consolidation,
            "effusion": int(self.effusion is not None),
        }

    def to_dict(self) -> dict[str, object]:
        """All parameters, JSON-serialisable."""
        d = asdict(self)
        d["geometry"] = asdict(self.geometry)
        return d


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _place(rng: np.random.Generator, n: int, free: list[tuple[float, float]], width: float) -> list[float]:
    """Up to ``n`` centres drawn inside the free intervals, ``width`` from their edges."""
    spans = [(a + width / 2, b - width / 2) for a, b in free if b - a > width]
    if not spans:
        return []
    lengths = np.array([b - a for a, b in spans])
    out = []
    for _ in range(n):
        i = rng.choice(len(spans), p=lengths / lengths.sum())
        out.append(float(rng.uniform(*spans[i])))
    return sorted(out)


def _ribs(rng: np.random.Generator, lateral: float, probe: Probe) -> list[tuple[float, float]]:
    """Alternating rib / intercostal pattern (about 2 cm each; Lichtenstein), or none (intercostal view)."""
    if probe is Probe.LINEAR and rng.random() < 0.25:
        return []  # transverse, intercostal view: no rib in the field
    rib_w = rng.uniform(10.0, 18.0)
    gap = rng.uniform(16.0, 24.0) if probe is Probe.CURVILINEAR else rng.uniform(0.55, 0.8) * lateral
    start = -rng.uniform(0.2, 0.8) * rib_w if probe is Probe.LINEAR else -rng.uniform(0.0, rib_w + gap)
    ribs = []
    x = start
    while x < lateral:
        a, b = x, x + rib_w
        if b > 0:
            ribs.append((max(a, 0.0), min(b, lateral)))
        x = b + gap
    return ribs


def free_intervals(lateral: float, taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intervals of ``[0, lateral]`` not covered by ``taken``."""
    out, x = [], 0.0
    for a, b in sorted(taken):
        if a > x:
            out.append((x, a))
        x = max(x, b)
    if x < lateral:
        out.append((x, lateral))
    return out


def sample_scene(
    rng: np.random.Generator,
    diagnosis: str,
    probe: Probe | str,
    size: int,
    settings: Mapping[Probe, Mapping[str, tuple[float, float]]] | None = None,
) -> Scene:
    """Draw one clip's scene from the diagnosis- and probe-conditioned priors (``probe``: see ``Probe.parse``).

    ``settings`` replaces ``PROBE_SETTINGS`` (the ranges of frequency, depth, aperture or sector and
    skin-to-pleura depth), as domain randomisation does with wider ranges; it draws the same numbers.
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; choose from {', '.join(DIAGNOSES)}")
    probe = Probe.parse(probe)
    pri = PRIORS[diagnosis]
    ps = (PROBE_SETTINGS if settings is None else settings)[probe]
    # Geometry is rounded to 0.01 so that the manifest's values rebuild it exactly (for densify).
    depth = round(_u(rng, ps["depth_mm"]), 2)
    if probe is Probe.LINEAR:
        geom = ProbeGeometry(probe, size, depth, width_mm=round(_u(rng, ps["width_mm"]), 2))
    else:
        radius, sector = round(_u(rng, ps["radius_mm"]), 2), round(_u(rng, ps["sector_deg"]), 2)
        geom = ProbeGeometry(probe, size, depth, radius_mm=radius, sector_deg=sector)
    pleura = _u(rng, ps["pleura_mm"])
    if probe is Probe.LINEAR:
        pleura = min(pleura, depth / 2.6)  # keep at least one A-line repeat in the field
    lateral = geom.lateral_mm(pleura)
    ribs = _ribs(rng, lateral, probe)
    free = free_intervals(lateral, ribs)

    irregular = rng.random() < pri["p_irregular"]
    irregularity = rng.uniform(0.45, 1.0) if irregular else rng.uniform(0.0, 0.12)
    thickness = rng.uniform(0.4, 0.7) * (rng.uniform(2.0, 4.0) if rng.random() < pri["p_thickened"] else 1.0)
    breaks = []
    if rng.random() < pri["p_broken"]:
        breaks = [(c, rng.uniform(1.5, 4.0)) for c in _place(rng, int(rng.integers(1, 4)), free, 4.0)]

    # Consolidation and effusion claim parts of the pleura; B-lines go elsewhere.
    lobar, effusion, subpleural = None, None, []
    claimed: list[tuple[float, float]] = []
    big_free = [iv for iv in free if iv[1] - iv[0] > 12.0]

    def span(fraction: tuple[float, float]) -> tuple[float, float]:
        """A stretch of pleura centred in an intercostal space; it may run under ribs (they shadow it)."""
        a, b = big_free[int(rng.integers(len(big_free)))]
        w = rng.uniform(*fraction) * (lateral if probe is Probe.CURVILINEAR else b - a)
        c = rng.uniform(a + 0.3 * (b - a), b - 0.3 * (b - a))
        return max(0.0, c - w / 2), min(lateral, c + w / 2)

    if big_free and rng.random() < pri["p_lobar"]:
        s, e = span((0.35, 0.8) if probe is Probe.CURVILINEAR else (0.6, 1.0))
        # 6.3 +/- 3.4 cm consolidations (BMC Med Imaging 2017), cut by the field of view
        lobar = (s, e, float(np.clip(rng.normal(45.0, 20.0), 15.0, 90.0)))
        claimed.append((s, e))
    if big_free and rng.random() < pri["p_effusion"]:
        s, e = span((0.4, 0.8) if probe is Probe.CURVILINEAR else (0.7, 1.0))
        effusion = (s, e, rng.uniform(6.0, max(6.0, 0.3 * (depth - pleura))))  # (wider randomised ranges)
        claimed.append((s, e))
    if rng.random() < pri["p_subpleural"]:
        for c in _place(rng, int(rng.integers(1, 4)), free_intervals(lateral, ribs + claimed), 8.0):
            hw = rng.uniform(1.5, 5.0)
            subpleural.append((c, hw, rng.uniform(2.0, 9.0)))
            claimed.append((c - hw, c + hw))

    counts, probs = pri["n_blines"]
    n_b = int(rng.choice(counts, p=probs))
    bfree = free_intervals(lateral, ribs + claimed)
    confluent = rng.random() < pri["p_confluent"]
    blines: list[tuple[float, float]] = []
    if confluent:
        wide = [iv for iv in bfree if iv[1] - iv[0] > 8.0]
        if wide:
            a, b = max(wide, key=lambda iv: iv[1] - iv[0])
            w = (b - a) * rng.uniform(0.35, 0.75)
            c = rng.uniform(a + w / 2, b - w / 2)
            blines.append((c, w))
            bfree = free_intervals(lateral, ribs + claimed + [(c - w / 2 - 2, c + w / 2 + 2)])
            n_b = max(0, n_b - 3)
        else:
            confluent = False
    for c in _place(rng, n_b, bfree, 3.0):
        if all(abs(c - c2) > (w2 / 2 + 2.5) for c2, w2 in blines):  # keep B-lines discrete
            blines.append((c, rng.uniform(1.2, 2.6)))

    return Scene(
        diagnosis=diagnosis,
        probe=probe,
        geometry=geom,
        fps=float(rng.uniform(20.0, 30.0)),
        freq_mhz=_u(rng, ps["freq_mhz"]),
        pleural_depth_mm=pleura,
        pleural_thickness_mm=thickness,
        irregularity=float(irregularity),
        breaks=breaks,
        ribs=ribs,
        rib_above_pleura_mm=rng.uniform(2.5, 5.0),  # ~0.5 cm anteriorly (Lichtenstein)
        fascia_fractions=sorted(rng.uniform(0.15, 0.85, size=int(rng.integers(2, 4))).tolist()),
        blines=sorted(blines),
        confluent=confluent,
        a_line_reflect=_u(rng, pri["a_line_reflect"]) * (1.0 - 0.4 * irregularity),
        subpleural=sorted(subpleural),
        lobar=lobar,
        air_bronchograms=lobar is not None and rng.random() < 0.8,
        effusion=effusion,
        sliding_mm=_u(rng, pri["sliding_mm"]),
        breath_period_s=rng.uniform(3.0, 5.0),
        dynamic_range_db=rng.uniform(50.0, 62.0),
        gain_db=rng.uniform(-12.0, -6.0),
        tgc_compensation=rng.uniform(0.85, 0.97),
        noise_level=rng.uniform(0.003, 0.008),
        extras={"phase": float(rng.uniform(0, 2 * math.pi))},
    )
