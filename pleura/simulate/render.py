"""Render a scene's frames: anatomy truth and B-mode image, frame by frame for a clip.

Everything is drawn on the probe's beam grid (depth x scan line), where "below the pleural line"
means "further along the same scan line", then scan-converted. Echo sources are split in two:

* tissue (chest wall, ribs, pleura, consolidation, effusion): scatterers attenuated with depth, then
  time-gain compensated;
* reverberation artifacts (A-lines, B-lines, the haze of aerated lung): defined as displayed, after
  TGC, because they are not echoes of tissue at that depth. B-lines therefore do not fade; A-lines
  decay by the pleura's reflection ratio per round trip.

Over a clip the lung slides laterally with breathing; B-lines and the pleural texture move with it,
lung speckle decorrelates quickly and chest-wall speckle slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pleura.labels import ANATOMY
from pleura.simulate import physics
from pleura.simulate.scene import Scene

A = {name: np.uint8(i) for i, name in enumerate(ANATOMY.names)}
ALPHA_DB_CM_MHZ = 0.6  # soft-tissue attenuation (0.5-1 dB/cm/MHz; LUS-REFERENCE)
PULSE_HALF_MM = 0.35  # half the displayed thickness a sheet reflector gains from the pulse
A_LINE_VISIBLE = 0.12  # an A-line repeat is labelled while its amplitude is at least this x pleura

# Mean envelope amplitudes relative to the pleural line (1.0 = 0 dB reference).
ECHO = {
    "skin": 0.06,
    "fat": 0.022,
    "muscle": 0.04,
    "fascia": 0.2,
    "rib": 0.9,
    "pleura": 1.0,
    "lung_haze": 0.018,
    "b_line": 0.2,
    "consolidation": 0.055,
    "subpleural": 0.012,  # small subpleural consolidations read hypoechoic
    "bronchogram": 1.0,
    "effusion": 0.0015,
}


@dataclass
class Frame:
    """One rendered frame: 8-bit image, anatomy mask (both ``(size, size)``) and what it shows."""

    image: np.ndarray
    anatomy: np.ndarray
    n_alines: int
    n_blines: int


def _smooth(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Unit-variance smooth random profile of length ``n``."""
    x = ndimage.gaussian_filter1d(rng.standard_normal(n), max(sigma, 0.5), mode="wrap")
    return (x / (x.std() + 1e-9)).astype(np.float32)


def _sheet(z: np.ndarray, depth: np.ndarray, dz: float) -> np.ndarray:
    """A thin specular reflector at ``depth`` per line, spread over the two nearest samples."""
    return np.maximum(0.0, 1.0 - np.abs(z - depth) / dz)


class ClipRenderer:
    """Renders the frames of one clip of ``scene``; frame ``t`` depends on frames before it.

    Example:
        >>> r = ClipRenderer(sample_scene(rng, "covid", "linear", 256), rng)
        >>> frames = [r.render(t) for t in range(8)]
    """

    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene, self.rng = scene, rng
        g = scene.geometry
        self.geom = g
        nz, nx = g.n_samples, g.n_lines
        self.dz = g.dz_mm
        self.z = ((np.arange(nz, dtype=np.float32) + 0.5) * self.dz)[:, None]
        self.mm_per_line = scene.lateral_mm / nx
        self.u = ((np.arange(nx, dtype=np.float32) + 0.5) * self.mm_per_line)[None, :]
        lines_per_mm = 1.0 / self.mm_per_line

        # PSF: pulse and beam width from the probe's frequency (axial ~ half a pulse, lateral ~ beam).
        psf = scene.extras.get("psf_scale", 1.0)  # domain randomisation: coarser or finer speckle
        axial_mm = 1.3 / scene.freq_mhz * psf  # pulse envelope sigma: ~0.15 mm at 9 MHz, ~0.33 mm at 4 MHz
        lateral_mm = 3.5 / scene.freq_mhz * psf  # beam sigma: ~0.4 mm at 9 MHz, ~0.9 mm at 4 MHz
        self.pulse = physics.gabor_pulse(max(axial_mm / self.dz, 1.0))
        self.beam = physics.beam_profile(max(lateral_mm * lines_per_mm, 0.7))
        self.video_smoothing = (1.2 * axial_mm / self.dz, 0.8 * lateral_mm * lines_per_mm)
        self.diffuse_norm = 1.0 / math.sqrt(float((self.pulse**2).sum() * (self.beam**2).sum()))
        self.att = physics.attenuation_and_tgc(self.z, scene.freq_mhz, ALPHA_DB_CM_MHZ, scene.tgc_compensation)
        self.noise = scene.noise_level * physics.tgc_gain(
            self.z, scene.freq_mhz, ALPHA_DB_CM_MHZ, scene.tgc_compensation
        )

        self.band_speckle = np.abs(1 + 0.5 * rng.standard_normal((nz, nx), np.float32))  # texture of bright bands
        self._build_static()
        self.n_t = rng.standard_normal((nz, nx), dtype=np.float32)
        self.n_l = rng.standard_normal((nz, nx), dtype=np.float32)
        self.n_s = rng.standard_normal((nz, nx), dtype=np.float32)
        self.shift_lines = 0

    # ----------------------------------------------------------------- static anatomy
    def _build_static(self) -> None:
        s, rng, z, u = self.scene, self.rng, self.z, self.u[0]
        nz, nx = z.shape[0], u.shape[0]
        lines_per_mm = 1.0 / self.mm_per_line
        d0 = s.pleural_depth_mm

        # Pleural line: depth, thickness, label band, echo amplitude.
        depth = d0 + 0.35 * _smooth(rng, nx, nx / 5) + s.irregularity * 0.9 * _smooth(rng, nx, 1.2 * lines_per_mm)
        # Domain randomisation (``pleura.simulate.randomize``) may tilt the pleura and the chest wall (mm/mm).
        slope = s.extras["tilt"] * (u - s.lateral_mm / 2) if "tilt" in s.extras else None
        if slope is not None:
            depth = depth + slope
        thick = s.pleural_thickness_mm * np.clip(1 + 0.3 * s.irregularity * _smooth(rng, nx, 2 * lines_per_mm), 0.5, 2)
        half = np.maximum(thick / 2 + PULSE_HALF_MM, self.geom.min_label_mm / 2)
        self.pl_depth, self.pl_top, self.pl_bottom = depth, depth - half, depth + half
        self.pl_half = half
        gap = np.zeros(nx, np.float32)
        for c, w in s.breaks:
            gap = np.maximum(gap, np.clip(1.5 - 3 * np.abs(u - c) / w, 0, 1))
        self.pl_gap = gap
        self.pl_shape = self._band(depth, thick)
        self.texture = _smooth(rng, 4 * nx, 1.5 * lines_per_mm)  # sliding pleural texture, sampled with offset

        # Ribs: bright convex arcs above the pleura, shadow below.
        rib_col = np.zeros(nx, bool)
        rib_surface = np.full(nx, np.inf, np.float32)
        for a, b in s.ribs:
            m = (u >= a) & (u < b)
            p = (u[m] - a) / max(b - a, 1e-6)
            rib_col |= m
            rib_surface[m] = d0 - s.rib_above_pleura_mm + 1.6 * (2 * p - 1) ** 2
            if slope is not None:
                rib_surface[m] += slope[m]
        self.rib_col = rib_col
        inter = ~rib_col

        # Consolidations and effusion: per-line depth extents below the pleura.
        cons_extent = np.zeros(nx, np.float32)
        for c, hw, dep in s.subpleural:
            q = np.clip(1 - ((u - c) / hw) ** 2, 0, None)
            cons_extent = np.maximum(cons_extent, dep * np.sqrt(q) * (1 + 0.15 * _smooth(rng, nx, lines_per_mm)))
        lobar_col = np.zeros(nx, bool)
        if s.lobar is not None:
            a, b, dep = s.lobar
            mid, hw = (a + b) / 2, (b - a) / 2
            q = np.clip(1 - ((u - mid) / hw) ** 4, 0, None)
            shred = 3.5 * _smooth(rng, nx, 0.8 * lines_per_mm) + 2.0 * _smooth(rng, nx, 3 * lines_per_mm)
            ext = np.where(q > 0, np.maximum(dep * np.sqrt(q) + shred, 3.0), 0.0)
            lobar_col = q > 0
            cons_extent = np.maximum(cons_extent, ext)
        eff_extent = np.zeros(nx, np.float32)
        if s.effusion is not None:
            a, b, th = s.effusion
            q = np.clip((u - a) / (b - a), 0, 1)
            arch = np.clip(np.sin(np.pi * q), 0, None)
            eff_extent = th * arch**0.7
            # compressed (atelectatic) lung under the fluid is consolidated tissue
            under = np.where(eff_extent > 0.5, rng.uniform(4.0, 12.0) * arch**0.5, 0.0)
            cons_extent = np.maximum(cons_extent, np.where(eff_extent > 0.5, eff_extent + under, 0.0))
        eff_extent = np.where(eff_extent > 0.5, eff_extent, 0.0)
        cons_extent = np.where(inter, cons_extent, 0.0)
        eff_extent = np.where(inter, eff_extent, 0.0)
        self.path_col = (cons_extent > 0) | (eff_extent > 0)  # lines whose pleura is not an air interface
        self.open_col = inter & ~self.path_col  # lines where A-lines and B-lines can show

        below = z - self.pl_bottom[None, :]  # mm below the pleural line
        lab = np.full((nz, nx), A["soft_tissue"], np.uint8)
        diffuse = np.zeros((nz, nx), np.float32)  # tissue scatter amplitude (pre-attenuation)
        spec = np.zeros((nz, nx), np.float32)  # tissue specular reflectors (pre-attenuation)
        haze = np.zeros((nz, nx), np.float32)  # aerated-lung reverberation haze (displayed)

        # Chest wall: skin, alternating fat / muscle layers separated by fascia.
        wall_floor = np.where(rib_col, rib_surface, self.pl_top)[None, :]
        layer_depths = [f * d0 + 0.5 * _smooth(rng, nx, nx / 4) for f in s.fascia_fractions]
        if slope is not None:
            layer_depths = [ld + f * slope for f, ld in zip(s.fascia_fractions, layer_depths, strict=True)]
        wall_rows = max(1, min(nz, int(np.ceil(float(wall_floor.max()) / self.dz)) + 1))  # >= 1: wall above the frame
        striation = np.zeros((nz, nx), np.float32)  # muscle fibres: long laterally, thin axially
        striation[:wall_rows] = ndimage.gaussian_filter(rng.standard_normal((wall_rows, nx), np.float32), (0.6, 6.0))
        striation /= striation[:wall_rows].std() + 1e-9
        tissue = np.full((nz, nx), ECHO["fat"], np.float32)
        layer = np.zeros((nz, nx), np.int8)
        for ld in layer_depths:
            layer += (z > ld[None, :]).astype(np.int8)
        muscle = (layer % 2) == 1
        tissue[muscle] = s.extras.get("muscle_echo", ECHO["muscle"]) * np.clip(1 + 0.6 * striation[muscle], 0.2, 3)
        tissue[z[:, 0] < s.extras.get("skin_mm", 1.5), :] = s.extras.get("skin_echo", ECHO["skin"])
        wall = z < wall_floor
        diffuse[wall] = tissue[wall]
        fascia_mm = s.extras.get("fascia_mm")  # None: a thin sheet (the default); else a speckled band this thick
        for ld in layer_depths:
            half = 0.4 if fascia_mm is None else max(0.4, fascia_mm / 2)
            above = z < wall_floor - 0.8
            lab[(np.abs(z - ld[None, :]) <= half) & above] = A["fascia"]
            amp = s.extras.get("fascia_echo", ECHO["fascia"]) * np.clip(
                0.6 + 0.8 * _smooth(rng, nx, 3 * lines_per_mm), 0, 2
            )
            if fascia_mm is None:
                spec += amp[None, :] * _sheet(z, ld[None, :], self.dz) * above
            else:
                spec += amp[None, :] * self._band(ld, np.full(nx, fascia_mm, np.float32)) * above
                if s.extras.get("clutter", 0.0) > 0:  # reverberations of the layer, above the pleura only
                    k = 2
                    while k <= 6 and k * float(ld.mean()) < float(self.pl_top.max()):
                        keep = above & (z < self.pl_top[None, :] - 1.0)
                        echo = self._band(k * ld, np.full(nx, 1.5 * fascia_mm, np.float32))
                        spec += (s.extras["clutter"] * 0.6 ** (k - 2)) * amp[None, :] * echo * keep
                        k += 1

        # Ribs and their shadows.
        rs = rib_surface[None, :]
        rib_zone = rib_col[None, :] & (z >= rs)
        lab[rib_zone] = A["rib_shadow"]
        lab[rib_col[None, :] & (z >= rs) & (z < rs + 1.2)] = A["rib"]
        cortex = self._band(np.where(rib_col, rib_surface + 0.5, -10.0), np.full(nx, 1.0, np.float32))
        spec += ECHO["rib"] * cortex * rib_col[None, :]
        diffuse += np.where(rib_zone & (z < rs + 1.5), 0.15, 0.0).astype(np.float32)

        # Pleura and what lies below it, on intercostal lines.
        unhealthy = s.diagnosis != "normal"
        ic = inter[None, :]
        lab[ic & (z >= self.pl_top[None, :]) & (z <= self.pl_bottom[None, :])] = (
            A["pleural_line_unhealthy"] if unhealthy else A["pleural_line_healthy"]
        )
        lung = ic & (below > 0)
        lab[lung] = A["lung_unhealthy"] if unhealthy else A["lung_healthy"]
        thick_band = ic & (np.abs(z - depth[None, :]) <= thick[None, :] / 2)
        diffuse += np.where(thick_band & (thick[None, :] > 1.5), 0.25, 0.0).astype(np.float32)
        haze_level = ECHO["lung_haze"] * (1.2 if unhealthy else 1.0) * s.extras.get("haze_gain", 1.0)
        haze[lung] = (haze_level * np.exp(-np.maximum(below, 0) / (0.5 * self.geom.depth_mm)))[lung]

        cons = lung & (below <= cons_extent[None, :]) & (cons_extent[None, :] > 0)
        eff = lung & (below <= eff_extent[None, :]) & (eff_extent[None, :] > 0)
        cons &= ~eff
        if cons.any():  # tissue-like (hepatised) echotexture; small subpleural ones darker
            blobs = ndimage.gaussian_filter(rng.standard_normal((nz, nx), np.float32), 2.0)
            blobs /= blobs.std() + 1e-9
            level = np.where((lobar_col | (eff_extent > 0))[None, :], ECHO["consolidation"], ECHO["subpleural"])
            diffuse[cons] = (level * np.clip(1 + 0.45 * blobs, 0.2, 3))[cons]
            border = _sheet(z, (self.pl_bottom + cons_extent)[None, :], self.dz) * (cons_extent > 0)[None, :]
            frag = np.clip(_smooth(rng, nx, 0.7 * lines_per_mm), 0, None)
            spec += (0.25 + 0.35 * frag)[None, :] * border  # bright, ragged deep border (shred sign)
        haze[cons] = 0
        lab[cons] = A["consolidation"]
        diffuse[eff] = ECHO["effusion"]
        haze[eff] = 0
        lab[eff] = A["effusion"]
        if s.effusion is not None:  # bright lung surface under the fluid
            spec += 0.5 * _sheet(z, (self.pl_bottom + eff_extent)[None, :], self.dz) * (eff_extent > 0)[None, :]
        if s.lobar is not None and s.air_bronchograms:
            spec += self._bronchograms(cons & lobar_col[None, :])

        self.lab_static = lab
        self.diffuse, self.spec, self.haze = diffuse, spec, haze
        self.below = below
        self.lung_open = lung & ~cons & ~eff
        self._a_lines()

    def _band(self, centre: np.ndarray, thick: np.ndarray) -> np.ndarray:
        """Echo shape of the pleural line (and its A-line replicas): a sharp specular top on a speckled
        band as thick as the line, so it reads as a bright band, not a drawn line."""
        z = self.z
        inside = np.abs(z - centre[None, :]) <= thick[None, :] / 2 + 0.15
        return 0.6 * _sheet(z, (centre - thick / 2)[None, :], self.dz) + 0.45 * inside * self.band_speckle

    def _bronchograms(self, region: np.ndarray) -> np.ndarray:
        """Air bronchograms: short bright branching tracks inside a consolidation."""
        rng = self.rng
        out = np.zeros(region.shape, np.float32)
        rows, cols = np.nonzero(region)
        if rows.size == 0:
            return out
        lines_per_mm = 1.0 / self.mm_per_line
        for _ in range(int(rng.integers(3, 9))):
            i = int(rng.integers(rows.size))
            zr, xc = float(rows[i]), float(cols[i])
            ang = rng.uniform(-1.2, 1.2)
            for _step in range(int(rng.integers(8, 40))):
                ri, ci = round(zr), round(xc)
                if not (0 <= ri < out.shape[0] and 0 <= ci < out.shape[1]) or not region[ri, ci]:
                    break
                out[ri, ci : ci + 2] = ECHO["bronchogram"] * rng.uniform(0.5, 1.0)
                ang += rng.normal(0, 0.25)
                zr += math.cos(ang) * 0.4 / self.dz
                xc += math.sin(ang) * 0.4 * lines_per_mm
        return out

    def _a_lines(self) -> None:
        """Repeats of the pleural line at whole multiples of its depth, decaying per round trip."""
        s, z = self.scene, self.z
        self.a_bands: list[np.ndarray] = []
        self.a_echo = np.zeros_like(self.haze)
        k = 2
        while s.a_line_reflect ** (k - 1) >= A_LINE_VISIBLE:
            centre = k * self.pl_depth
            if centre.min() - self.pl_half.max() > self.geom.depth_mm:
                break
            band = (np.abs(z - centre[None, :]) <= self.pl_half[None, :]) & self.lung_open & self.open_col[None, :]
            if band.any():
                self.a_bands.append(band)
            amp = s.a_line_reflect ** (k - 1) * (1 - self.pl_gap)
            self.a_echo += (amp * self.open_col)[None, :] * self._band(centre, self.pl_half * 2 - 2 * PULSE_HALF_MM)
            k += 1

    # ----------------------------------------------------------------- per frame
    def _b_lines(self, slide_mm: float) -> tuple[np.ndarray, list[bool]]:
        """Lateral B-line profile (0..1) for this frame's sliding offset, and which B-lines show."""
        u = self.u[0]
        prof = np.zeros(u.shape[0], np.float32)
        shown = []
        for c, w in self.scene.blines:
            inside = (np.abs(u - (c + slide_mm)) <= w / 2) & self.open_col
            prof = np.maximum(prof, inside.astype(np.float32))
            shown.append(bool(inside.any()))
        return prof, shown

    def _b_echo_profile(self, bprof: np.ndarray, slide_mm: float) -> np.ndarray:
        """Lateral B-line brightness: soft edges; a confluent band is dimmer and streaked, as merged lines."""
        streaks = np.interp(
            self.u[0] - slide_mm, np.arange(self.texture.size) * self.mm_per_line - self.scene.lateral_mm, self.texture
        )
        wide = ndimage.uniform_filter1d(bprof, max(3, int(6 / self.mm_per_line))) > 0.99
        level = np.where(wide, 0.55 + 0.3 * np.clip(streaks, -1.5, 1.5), 1.0)
        return ndimage.gaussian_filter1d(bprof * level, 0.6)

    def render(self, t: int) -> Frame:
        """Frame ``t`` of the clip (call in order ``0, 1, 2, ...``)."""
        s, rng, g = self.scene, self.rng, self.geom
        slide = s.sliding_mm * math.sin(2 * math.pi * t / (s.fps * s.breath_period_s) + s.extras["phase"])
        if t > 0:  # speckle decorrelation: chest wall slowly, sliding lung fast
            shift = round(slide / self.mm_per_line) - self.shift_lines
            self.shift_lines += shift
            w = rng.standard_normal(self.n_t.shape, dtype=np.float32)
            self.n_t = 0.97 * self.n_t + math.sqrt(1 - 0.97**2) * w
            self.n_l = 0.6 * np.roll(self.n_l, shift, axis=1) + 0.8 * rng.standard_normal(
                self.n_l.shape, dtype=np.float32
            )
        bprof, shown = self._b_lines(slide)

        # Labels: static anatomy, A-lines where no B-line, then B-lines to the bottom.
        lab = self.lab_static.copy()
        no_b = (bprof == 0)[None, :]
        n_alines = 0
        for band in self.a_bands:
            m = band & no_b
            if m.any():
                lab[m] = A["a_line"]
                n_alines += 1
        lab[(bprof > 0)[None, :] & (self.below > 0) & self.lung_open] = A["b_line"]
        self.beam_labels = lab  # kept for inspection and tests: the truth before scan conversion

        # Echoes.
        texture = np.interp(
            self.u[0] - slide, np.arange(self.texture.size) * self.mm_per_line - self.scene.lateral_mm, self.texture
        )
        pleura_amp = ECHO["pleura"] * np.clip(1 + 0.25 * texture, 0.4, 1.6) * (1 - self.pl_gap) * ~self.rib_col
        pl_sheet = pleura_amp[None, :] * self.pl_shape
        soft_b = ndimage.uniform_filter1d(bprof, 3)  # B-lines erase the A-lines they cross
        art_spec = self.a_echo * (1 - soft_b)[None, :]
        b_echo = ECHO["b_line"] * self._b_echo_profile(bprof, slide)[None, :] * (self.below > 0) * self.lung_open
        b_echo *= 1 + 0.3 * np.exp(-np.maximum(self.below, 0) / 4.0)  # brightest where it leaves the pleura

        tissue_diffuse = self.diffuse * self.n_t * self.att
        tissue_spec = (self.spec + pl_sheet) * (1 + 0.3 * self.n_s) * self.att
        artifacts = (self.haze + b_echo) * self.n_l * self.diffuse_norm + art_spec * (1 + 0.3 * self.n_s)
        noise = self.noise * rng.standard_normal(self.n_t.shape, dtype=np.float32)
        scatter = tissue_diffuse * self.diffuse_norm + tissue_spec + artifacts + noise * self.diffuse_norm
        rf = physics.rf_from_scatterers(scatter.astype(np.float32), self.pulse, self.beam)
        env = physics.envelope(rf, pad=int(s.extras.get("envelope_pad", 0)))  # randomised scenes pad (no wrap)
        env = ndimage.gaussian_filter(env, self.video_smoothing)  # scanner speckle reduction
        disp = physics.log_compress(env, 1.0, s.dynamic_range_db, s.gain_db)

        image = np.round(g.scan_convert_image(disp) * 255).astype(np.uint8)
        anatomy = g.scan_convert_labels(lab, outside=int(A["outside_scan"]))
        return Frame(image=image, anatomy=anatomy, n_alines=n_alines, n_blines=int(sum(shown)))
