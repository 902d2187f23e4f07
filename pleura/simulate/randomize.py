"""Domain randomisation: vary what real scanners, operators and exports vary, labels exact (issue 14).

A simulator-only U-Net meets real frames that differ from the simulator's in ways the anatomy does not: the
scanner's gain, dynamic range, TGC and frequency, the operator's depth, sector and probe tilt, the patient's
chest wall, and the export (burned-in text, rulers and markers, the scan area's aspect and padding after
cleaning). ``pleura simulate --randomize`` draws all of these per clip, from ``RANGES``, so that a network
cannot rely on any one setting. Three levels, each applied to image and labels together:

1. **Scene** (before rendering, so the physics and the labels stay exact): wider probe settings
   (``PROBE_RANGES``: frequency, depth, aperture or sector and radius, skin-to-pleura depth), the scanner's
   gain, dynamic range, TGC compensation and receiver noise, the speckle size (PSF scale), and a realistic
   chest wall: 2-6 fascia layers that echo as bright as 0.15-1.3x the pleura, as thick bands, with their
   reverberation clutter *above* the pleura, and a tilt of pleura and chest wall. The chest wall is labelled
   as it always is (soft tissue and fascia, background in the dense and sparse schemas): bright horizontal
   lines above the pleura are not A-lines. A-lines stay where physics puts them, at whole multiples of the
   skin-to-pleura depth along each scan line, tilt included.
2. **Display** (the scan-converted frame, inside the scan area): a TGC curve over depth, a fade at depth
   and at the lateral edges, haze, a gamma curve, blur (speckle smoothing) and noise. Labels unchanged.
3. **Export** (image and masks transformed identically): the bottom and sides cropped, the scan area
   resampled to another aspect (a linear probe's field shown at its true width-to-depth ratio) and fitted
   into the square frame as ``pleura.data.cleaning.fit_to_size`` fits real frames (top-aligned, centred,
   black padding labelled ``outside_scan``); then burned-in text, a depth ruler and grey "colour" markers
   drawn on the image only. Overlays are never labelled: the masks are those of the anatomy under them.

Every draw comes from its own stream, ``SeedSequence([seed, clip index, RANDOMIZE_KEY])``, so a dataset is
reproducible, independent of the worker count, and the default (not randomised) output is byte-identical to
what it was before this module existed. Ranges and the reasons for them: ``docs/simulator.md``.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pleura.labels import ANATOMY, Probe
from pleura.simulate.render import ClipRenderer, Frame
from pleura.simulate.scene import Scene, sample_scene

__all__ = [
    "PROBABILITIES",
    "PROBE_RANGES",
    "RANDOMIZE_KEY",
    "RANGES",
    "FrameRandomizer",
    "randomize_scene",
    "randomized_clip",
    "refit",
    "sample_parameters",
]

RANDOMIZE_KEY = 14  # the third word of a clip's randomisation seed: SeedSequence([seed, index, 14])
OUTSIDE = ANATOMY.index("outside_scan")
TGC_KNOTS = 5  # display offsets at this many depths, evenly spaced from the top to the bottom of the scan

# Wider probe settings than ``scene.PROBE_SETTINGS`` (which stay the default), from what real exports show:
# linear probes down to 12 cm (the cvat-lus clip, L12-4), convex ones shallow or deep, narrow or wide.
PROBE_RANGES: dict[Probe, dict[str, tuple[float, float]]] = {
    Probe.LINEAR: {
        "freq_mhz": (5.0, 13.0),
        "depth_mm": (30.0, 120.0),
        "width_mm": (30.0, 60.0),
        "pleura_mm": (8.0, 45.0),  # at most depth / 2.6 (sample_scene), so an A-line fits
    },
    Probe.CURVILINEAR: {
        "freq_mhz": (2.0, 6.0),
        "depth_mm": (60.0, 180.0),
        "radius_mm": (20.0, 70.0),
        "sector_deg": (40.0, 90.0),
        "pleura_mm": (13.0, 45.0),  # >= MIN_LABEL_DEPTH_MM + irregularity + tilt, as in the default
    },
}

# (low, high) of every drawn parameter; ``LOG_UNIFORM`` ones are drawn log-uniformly, the others uniformly.
RANGES: dict[str, tuple[float, float]] = {
    # scanner (scene level)
    "gain_db": (-22.0, -6.0),
    "dynamic_range_db": (45.0, 65.0),
    "tgc_compensation": (0.70, 1.00),
    "noise_level": (0.0005, 0.006),
    "psf_scale": (0.7, 1.8),  # speckle grain: pulse and beam sigma times this
    # chest wall (scene level)
    "layers": (2, 6),  # fascia layers between skin and pleura (an integer)
    "fascia_depth": (0.05, 0.9),  # each layer's depth, as a fraction of the skin-to-pleura depth
    "fascia_echo": (0.15, 1.3),  # layer echo relative to the pleura (default 0.2)
    "fascia_mm": (0.3, 1.5),  # layer thickness (default: a thin sheet)
    "muscle_echo": (0.03, 0.12),  # default 0.04
    "skin_echo": (0.06, 0.6),  # default 0.06
    "skin_mm": (0.8, 2.5),  # default 1.5
    "tilt": (-0.12, 0.12),  # depth change of pleura and chest wall per mm across the field
    "clutter": (0.0, 0.5),  # reverberations of the chest-wall layers (above the pleura), x their echo
    "haze_gain": (0.5, 2.5),  # aerated-lung haze below the pleura, x the default
    # display (scan-converted frame, inside the scan area; values in 0..1 of the 8-bit range)
    "tgc_offset": (-0.15, 0.08),  # each of TGC_KNOTS display offsets along depth
    "deep_fade": (0.0, 0.7),  # darkening at the bottom, quadratic in depth
    "edge_fade": (0.0, 0.35),  # darkening at each lateral edge
    "gamma": (0.7, 1.6),
    "haze": (0.0, 0.12),  # additive low-frequency and near-field haze
    "blur_axial_px": (0.0, 1.2),  # Gaussian sigma, in pixels of a 128-px frame
    "blur_lateral_px": (0.0, 2.0),
    "noise": (0.0, 0.04),  # additive noise sigma, growing with depth
    # export geometry
    "aspect_jitter": (0.8, 1.25),  # the scan area's width/height ratio times this
    "crop_bottom": (0.0, 0.35),  # fraction of the scan area's height cut off at the bottom
    "crop_side": (0.0, 0.2),  # fraction of its width cut off at each side
    # overlays (burned in, not labelled)
    "text_lines": (1, 4),
    "text_px": (4.0, 9.0),  # text height in pixels of a 128-px frame
    "overlay_level": (120.0, 255.0),  # grey level of text, ruler and markers (colour markers: their luma)
    "markers": (1, 3),
}
LOG_UNIFORM = frozenset({"psf_scale", "fascia_echo", "haze_gain", "gamma", "aspect_jitter", "noise_level"})
INTEGER = frozenset({"layers", "text_lines", "markers"})
# Probability that an effect is on for a clip; off, it takes its ``NEUTRAL`` value (the renderer's default).
PROBABILITIES: dict[str, float] = {
    "chest_wall": 0.85,
    "tilt": 0.6,
    "clutter": 0.5,
    "tgc": 0.7,
    "deep_fade": 0.5,
    "edge_fade": 0.5,
    "gamma": 0.7,
    "haze": 0.5,
    "blur": 0.6,
    "noise": 0.5,
    "aspect": 0.8,
    "crop": 0.4,
    "text": 0.5,
    "ruler": 0.4,
    "markers": 0.4,
}
NEUTRAL: dict[str, Any] = {
    "tilt": 0.0, "clutter": 0.0, "deep_fade": 0.0, "gamma": 1.0, "haze": 0.0, "blur_axial_px": 0.0,
    "blur_lateral_px": 0.0, "noise": 0.0, "aspect_jitter": 1.0, "crop_bottom": 0.0, "text_lines": 0, "markers": 0,
}  # fmt: skip
WORDS = ("MI", "TIs", "TIb", "Gn", "DR", "FR", "Hz", "cm", "dB", "Lung", "L12-4", "C5-1", "C60", "THI", "2D", "Frq")


def _draw(rng: np.random.Generator, name: str) -> float:
    lo, hi = RANGES[name]
    if name in INTEGER:
        return int(rng.integers(int(lo), int(hi) + 1))
    if name in LOG_UNIFORM:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def sample_parameters(rng: np.random.Generator) -> dict[str, Any]:
    """One clip's randomisation: every parameter of ``RANGES`` (lists for per-knot and per-side ones), with
    the effects that are off for this clip (``PROBABILITIES``) at their ``NEUTRAL`` values."""
    p: dict[str, Any] = {}

    def on(effect: str) -> bool:
        return bool(rng.random() < PROBABILITIES[effect])

    for name in ("gain_db", "dynamic_range_db", "tgc_compensation", "noise_level", "psf_scale"):
        p[name] = _draw(rng, name)
    p["chest_wall"] = on("chest_wall")
    for name in ("layers", "fascia_echo", "fascia_mm", "muscle_echo", "skin_echo", "skin_mm", "haze_gain"):
        p[name] = _draw(rng, name)
    p["fascia_depth"] = sorted(float(rng.uniform(*RANGES["fascia_depth"])) for _ in range(p["layers"]))
    p["tilt"] = _draw(rng, "tilt") if on("tilt") else NEUTRAL["tilt"]
    p["clutter"] = _draw(rng, "clutter") if on("clutter") else NEUTRAL["clutter"]
    p["tgc_offset"] = [_draw(rng, "tgc_offset") for _ in range(TGC_KNOTS)] if on("tgc") else [0.0] * TGC_KNOTS
    p["deep_fade"] = _draw(rng, "deep_fade") if on("deep_fade") else NEUTRAL["deep_fade"]
    p["edge_fade"] = [_draw(rng, "edge_fade") for _ in range(2)] if on("edge_fade") else [0.0, 0.0]
    p["gamma"] = _draw(rng, "gamma") if on("gamma") else NEUTRAL["gamma"]
    p["haze"] = _draw(rng, "haze") if on("haze") else NEUTRAL["haze"]
    blur = on("blur")
    for name in ("blur_axial_px", "blur_lateral_px"):
        p[name] = _draw(rng, name) if blur else NEUTRAL[name]
    p["noise"] = _draw(rng, "noise") if on("noise") else NEUTRAL["noise"]
    p["aspect"] = on("aspect")  # show the field at its true aspect (times a jitter) rather than square
    p["aspect_jitter"] = _draw(rng, "aspect_jitter") if p["aspect"] else NEUTRAL["aspect_jitter"]
    crop = on("crop")
    p["crop_bottom"] = _draw(rng, "crop_bottom") if crop else NEUTRAL["crop_bottom"]
    p["crop_side"] = [_draw(rng, "crop_side") for _ in range(2)] if crop else [0.0, 0.0]
    p["text_lines"] = _draw(rng, "text_lines") if on("text") else NEUTRAL["text_lines"]
    p["ruler"] = on("ruler")
    p["markers"] = _draw(rng, "markers") if on("markers") else NEUTRAL["markers"]
    p["text_px"] = _draw(rng, "text_px")
    p["overlay_level"] = _draw(rng, "overlay_level")
    return p


def randomize_scene(scene: Scene, params: dict[str, Any]) -> Scene:
    """``scene`` with the scanner settings and, when on, the chest wall and tilt of ``params``.

    The tilt is shrunk where needed so that the pleura stays at least 12 mm (curvilinear) or 4 mm (linear)
    below the skin across the field, and above the bottom of the linear field's A-line.
    """
    extras = dict(scene.extras) | {"psf_scale": params["psf_scale"], "haze_gain": params["haze_gain"]}
    extras["envelope_pad"] = scene.geometry.n_samples // 2  # no wrap-around of bright skin into the depths
    changes: dict[str, Any] = {
        "gain_db": params["gain_db"],
        "dynamic_range_db": params["dynamic_range_db"],
        "tgc_compensation": params["tgc_compensation"],
        "noise_level": params["noise_level"],
    }
    if params["chest_wall"]:
        extras |= {k: params[k] for k in ("fascia_echo", "fascia_mm", "muscle_echo", "skin_echo", "skin_mm")}
        extras["clutter"] = params["clutter"]
        changes["fascia_fractions"] = list(params["fascia_depth"])
    if params["tilt"]:
        floor = 12.0 if scene.probe is Probe.CURVILINEAR else 4.0
        half = scene.lateral_mm / 2
        room = max(0.0, min(scene.pleural_depth_mm - floor, scene.geometry.depth_mm / 2.2 - scene.pleural_depth_mm))
        extras["tilt"] = float(np.clip(params["tilt"], -room / half, room / half))
    return dataclasses.replace(scene, extras=extras, **changes)


def refit(
    image: np.ndarray, anatomy: np.ndarray, crop: tuple[float, float, float], stretch: float, size: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Crop the scan area, resample it to ``stretch`` times its aspect and fit it into a ``size`` square frame.

    As ``pleura.data.cleaning.fit_to_size`` fits a real frame: the longer side becomes ``size``, the result is
    top-aligned and centred, the padding black and ``outside_scan``. The image is resampled bilinearly (with
    antialiasing), the anatomy mask with nearest neighbours on the same pixel grid.

    Args:
        image: ``(H, W)`` float32 frame, 0 outside the scan area.
        anatomy: ``(H, W)`` uint8 anatomy mask; its ``outside_scan`` pixels define the scan area.
        crop: fractions of the scan area's height cut at the bottom, and of its width at the left and right.
        stretch: the output width/height ratio over the cropped area's.
        size: side of the output square.

    Returns:
        The image (0 outside the scan), the mask, and ``(rows, cols)`` input pixels per output pixel.
    """
    inside = anatomy != OUTSIDE
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = bottom - top, right - left
    bottom -= round(crop[0] * h)
    left += round(crop[1] * w)
    right -= round(crop[2] * w)
    h, w = max(bottom - top, 1), max(right - left, 1)
    ratio = w / h * stretch
    nh, nw = (size, max(1, min(size, round(size * ratio)))) if ratio <= 1 else (max(1, round(size / ratio)), size)
    img = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right], np.float32), mode="F")
    lab = Image.fromarray(np.ascontiguousarray(anatomy[top:bottom, left:right], np.uint8), mode="L")
    out_img = np.zeros((size, size), np.float32)
    out_lab = np.full((size, size), OUTSIDE, np.uint8)
    x0 = (size - nw) // 2
    out_img[:nh, x0 : x0 + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
    out_lab[:nh, x0 : x0 + nw] = np.asarray(lab.resize((nw, nh), Image.Resampling.NEAREST))
    out_img[out_lab == OUTSIDE] = 0.0
    return out_img, out_lab, (h / nh, w / nw)


@cache
def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at about ``height`` pixels (nothing is downloaded)."""
    return ImageFont.load_default(size=max(height, 6))


def _text(rng: np.random.Generator) -> str:
    """A line of scanner text: words, numbers and units as on real exports (never a real name or date)."""
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        if kind < 0.5:
            parts.append(f"{rng.choice(WORDS)} {rng.uniform(0, 99):.{int(rng.integers(0, 2))}f}")
        elif kind < 0.8:
            parts.append("".join(rng.choice(list(string.ascii_uppercase + string.digits), int(rng.integers(2, 7)))))
        else:
            day, month, hour = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(0, 24))
            parts.append(f"{day:02d}/{month:02d} {hour:02d}")
    return " ".join(parts)


class FrameRandomizer:
    """Applies one clip's display and export randomisation to its rendered frames, in order.

    Example:
        >>> scene, randomizer, frames = randomized_clip(0, 3, "covid", "linear", size=128, frames=4)
        >>> [f.image.shape for f in frames]  # randomised frames and their anatomy masks, (128, 128) each
    """

    def __init__(self, params: dict[str, Any], scene: Scene, size: int, rng: np.random.Generator) -> None:
        self.params, self.scene, self.size, self.rng = params, scene, size, rng
        self.scale = (1.0, 1.0)  # input pixels per output pixel, set by the first frame's refit
        self.stretch = params["aspect_jitter"]
        if params["aspect"]:  # show the field with square pixels (as scanners do), then jitter
            mm_row, mm_col = scene.geometry.pixel_mm
            self.stretch *= mm_col / mm_row
        self.haze_field = self._haze_field()
        self.overlay: np.ndarray | None = None  # (alpha, level) drawn once per clip: burned in
        self.level = np.zeros((size, size), np.float32)

    def _haze_field(self) -> np.ndarray:
        """0..1: low-frequency blotches plus a near-field glow, fixed over the clip."""
        s = self.size
        blotch = ndimage.gaussian_filter(self.rng.standard_normal((s, s)).astype(np.float32), s / 8, mode="reflect")
        blotch = (blotch - blotch.min()) / max(float(np.ptp(blotch)), 1e-6)
        near = np.exp(-(np.arange(s, dtype=np.float32) + 0.5) / (s * self.rng.uniform(0.1, 0.4)))[:, None]
        return 0.5 * blotch + 0.5 * near

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """Output pixel size ``(row, col)`` in mm after the export geometry (for the manifest)."""
        mm_row, mm_col = self.scene.geometry.pixel_mm
        return mm_row * self.scale[0], mm_col * self.scale[1]

    def display(self, image: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The display-level randomisation of a uint8 frame, as float32 0..1, 0 outside ``inside``."""
        p, s = self.params, self.size
        v = image.astype(np.float32) / 255.0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        d = np.clip((np.arange(s) + 0.5 - rows[0]) / max(rows[-1] + 1 - rows[0], 1), 0, 1).astype(np.float32)
        x = np.clip((np.arange(s) + 0.5 - cols[0]) / max(cols[-1] + 1 - cols[0], 1), 0, 1).astype(np.float32)
        tgc = np.interp(d, np.linspace(0, 1, TGC_KNOTS), p["tgc_offset"]).astype(np.float32)
        v += (ndimage.gaussian_filter1d(tgc, s / 20) - p["deep_fade"] * d**2)[:, None]
        left, right = p["edge_fade"]
        fade = left * np.clip(1 - x / 0.35, 0, 1) ** 2 + right * np.clip(1 - (1 - x) / 0.35, 0, 1) ** 2
        v *= (1 - fade)[None, :]
        v += p["haze"] * self.haze_field
        v = np.clip(v, 0, 1) ** np.float32(p["gamma"])
        sigma = (p["blur_axial_px"] * s / 128, p["blur_lateral_px"] * s / 128)
        if max(sigma) > 0:  # normalised convolution: the black outside does not bleed in
            weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
            v = ndimage.gaussian_filter(v * inside, sigma) / np.maximum(weight, 1e-3)
        if p["noise"] > 0:
            v += p["noise"] * (0.3 + 0.7 * d)[:, None] * self.rng.standard_normal((s, s), dtype=np.float32)
        return np.where(inside, np.clip(v, 0, 1), 0).astype(np.float32)

    def _draw_overlay(self, inside: np.ndarray) -> None:
        """Text, a depth ruler and markers, burned into every frame of the clip (alpha and grey level)."""
        p, s, rng = self.params, self.size, self.rng
        k = 4  # drawn at 4x and reduced, so thin strokes are antialiased as in a downscaled export
        canvas = Image.new("L", (s * k, s * k), 0)
        draw = ImageDraw.Draw(canvas)
        levels = Image.new("L", (s * k, s * k), 0)
        draw_levels = ImageDraw.Draw(levels)

        def mark(shape: str, xy: Any, level: int, width: int = k) -> None:
            for d, fill in ((draw, 255), (draw_levels, level)):
                if shape == "text":
                    d.text(xy[0], xy[1], fill=fill, font=_font(round(p["text_px"] * s / 128 * k)))
                elif shape == "line":
                    d.line(xy, fill=fill, width=width)
                elif shape == "ellipse":
                    d.ellipse(xy, fill=fill)
                else:
                    d.polygon(xy, fill=fill)

        base = int(p["overlay_level"])
        for _ in range(p["text_lines"]):
            x, y = rng.uniform(0, 0.75) * s * k, rng.uniform(0, 0.92) * s * k
            mark("text", ((x, y), _text(rng)), int(np.clip(base + rng.integers(-30, 31), 90, 255)))
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if p["ruler"]:  # depth scale: a tick every cm along one side of the scan area, 5-cm ticks longer
            x = (cols[0] + rng.uniform(0.5, 3)) if rng.random() < 0.5 else (cols[-1] - rng.uniform(0.5, 3))
            step = 10.0 / self.pixel_mm[0]  # output pixels per cm
            for i in range(int((rows[-1] - rows[0]) / step) + 1):
                y = (rows[0] + i * step) * k
                length = (3.0 if i % 5 == 0 else 1.5) * k
                mark("line", [(x * k - length / 2, y), (x * k + length / 2, y)], base)
        for _ in range(p["markers"]):
            cx, cy = rng.uniform(cols[0], cols[-1] + 1) * k, rng.uniform(rows[0], rows[-1] + 1) * k
            r = rng.uniform(1.0, 3.0) * s / 128 * k
            level = int(rng.uniform(100, 255))
            kind = rng.integers(4)
            if kind == 0:  # caliper cross
                mark("line", [(cx - r, cy), (cx + r, cy)], level)
                mark("line", [(cx, cy - r), (cx, cy + r)], level)
            elif kind == 1:  # orientation or marker dot
                mark("ellipse", [(cx - r / 2, cy - r / 2), (cx + r / 2, cy + r / 2)], level)
            elif kind == 2:  # focus marker: a small triangle
                mark("polygon", [(cx, cy), (cx + r, cy - r / 2), (cx + r, cy + r / 2)], level)
            else:  # arrow
                a = rng.uniform(0, 2 * math.pi)
                tip = (cx + 2 * r * math.cos(a), cy + 2 * r * math.sin(a))
                mark("line", [(cx, cy), tip], level)
                mark("polygon", [tip, (tip[0] - r * math.cos(a - 0.5), tip[1] - r * math.sin(a - 0.5)),
                                 (tip[0] - r * math.cos(a + 0.5), tip[1] - r * math.sin(a + 0.5))], level)  # fmt: skip
        alpha = np.asarray(canvas.resize((s, s), Image.Resampling.BOX), np.float32) / 255.0
        level = np.asarray(levels.resize((s, s), Image.Resampling.BOX), np.float32) / 255.0
        self.overlay = alpha
        self.level = np.where(alpha > 0, level / np.maximum(alpha, 1e-6), 0.0).clip(0, 1).astype(np.float32)

    def __call__(self, frame: Frame) -> Frame:
        """``frame`` randomised: display, export geometry and overlays; the anatomy mask moves with the image."""
        p = self.params
        v = self.display(frame.image, frame.anatomy != OUTSIDE)
        crop = (p["crop_bottom"], *p["crop_side"])
        v, anatomy, self.scale = refit(v, frame.anatomy, crop, self.stretch, self.size)
        if self.overlay is None:
            self._draw_overlay(anatomy != OUTSIDE)
        assert self.overlay is not None
        v = v * (1 - self.overlay) + self.level * self.overlay
        image = np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)
        return dataclasses.replace(frame, image=image, anatomy=anatomy)


def randomized_clip(
    seed: int, index: int, diagnosis: str, probe: Probe | str, size: int = 256, frames: int = 1
) -> tuple[Scene, FrameRandomizer, Iterator[Frame]]:
    """The randomised twin of ``simulate_clip``: scene (wider settings, randomised), the clip's randomizer and
    its lazily rendered, randomised frames. The scene is drawn from ``SeedSequence([seed, index])`` as by
    default, everything randomised from ``SeedSequence([seed, index, RANDOMIZE_KEY])``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    rrng = np.random.default_rng(np.random.SeedSequence([seed, index, RANDOMIZE_KEY]))
    params = sample_parameters(rrng)
    scene = randomize_scene(sample_scene(rng, diagnosis, probe, size, settings=PROBE_RANGES), params)
    renderer = ClipRenderer(scene, rng)
    randomizer = FrameRandomizer(params, scene, size, rrng)
    return scene, randomizer, (randomizer(renderer.render(t)) for t in range(frames))
