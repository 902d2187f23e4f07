"""A corpus of images that are not lung ultrasound, made in code (no downloads), for the OOD tests and benchmark.

``non_lus_corpus()`` returns ``(category, name, image)`` triples, ``image`` an ``(H, W, 3)`` or ``(H, W)`` uint8
array: packaged photographs (scikit-learn's and Matplotlib's sample images) with crops, rotations and
greyscale copies, Matplotlib charts, text rendered with Pillow, screenshot-like mock-ups, gradients,
checkerboards and noise, and other imaging (an MRI slice, elevation maps). ``ultrasound_like_corpus()``
holds ultrasound-like frames of other organs (a sector of speckle with no pleural line or ribs, an
abdominal view with a dark round organ, a cardiac view with chambers): reported apart, they are the hard
case. Everything is deterministic (fixed seeds).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Item = tuple[str, str, np.ndarray]  # (category, name, image)
CATEGORIES = ("photo", "chart", "text", "ui", "pattern", "other_imaging")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (FreeType)
    except (TypeError, OSError, ImportError):  # an older Pillow, or one built without FreeType
        return ImageFont.load_default()


def _sample_photos() -> dict[str, np.ndarray]:
    """The packaged photographs: scikit-learn's two, Matplotlib's portrait and its two logos."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    photos = {name: np.asarray(load_sample_image(f"{name}.jpg")) for name in ("flower", "china")}
    photos["grace_hopper"] = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    for name, file in (("mpl_logo", "logo2.png"), ("blue_pack", "Minduka_Present_Blue_Pack.png")):
        photos[name] = np.asarray(Image.open(cbook.get_sample_data(file)).convert("RGB"))
    return photos


def photos() -> list[Item]:
    """Each photograph as it is, then greyscale, centre crop, rotations and a corner crop of the main three."""
    out: list[Item] = [("photo", name, img) for name, img in _sample_photos().items()]
    for name in ("flower", "china", "grace_hopper"):
        img = _sample_photos()[name]
        h, w = img.shape[:2]
        grey = np.asarray(Image.fromarray(img).convert("L"))
        out += [
            ("photo", f"{name}_grey", grey),
            ("photo", f"{name}_crop", img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]),
            ("photo", f"{name}_rot90", np.ascontiguousarray(np.rot90(img))),
            ("photo", f"{name}_rot180_grey", np.ascontiguousarray(grey[::-1, ::-1])),
            ("photo", f"{name}_corner", img[: h // 2, w // 2 :]),
        ]
    return out


def _figure(draw: Callable, dark: bool = False) -> np.ndarray:
    """A Matplotlib figure drawn by ``draw(ax, rng)``, rendered to an RGB array (Agg, 320x240)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=80, facecolor="black" if dark else "white")
    ax = fig.add_subplot()
    if dark:
        ax.set_facecolor("black")
        ax.tick_params(colors="white")
    draw(ax, np.random.default_rng(0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    return np.asarray(Image.open(buf).convert("RGB"))


def charts() -> list[Item]:
    """Line, bar, scatter, pie, histogram and heat-map charts (one on a dark background)."""
    x = np.linspace(0, 10, 200)
    draws = {
        "line": lambda ax, r: (ax.plot(x, np.sin(x)), ax.plot(x, np.cos(x) * 0.5), ax.set_title("signal")),
        "bar": lambda ax, r: ax.bar(list("ABCDEF"), r.integers(1, 10, 6)),
        "scatter": lambda ax, r: ax.scatter(r.standard_normal(150), r.standard_normal(150), c=r.random(150)),
        "pie": lambda ax, r: ax.pie([30, 25, 20, 15, 10], labels=list("abcde")),
        "histogram": lambda ax, r: ax.hist(r.standard_normal(1000), bins=30),
        "heatmap": lambda ax, r: ax.imshow(r.random((12, 12)), cmap="viridis"),
        "stacked_area": lambda ax, r: ax.stackplot(x, np.abs(np.sin(x)), np.abs(np.cos(x))),
    }
    out = [("chart", name, _figure(draw)) for name, draw in draws.items()]
    out.append(("chart", "line_dark", _figure(lambda ax, r: ax.plot(x, np.exp(-x / 4) * np.sin(3 * x), "w"), True)))
    return out


LOREM = (
    "Lung ultrasound is not what this page shows. It is a page of text, set in a plain font, line after "
    "line, with margins and a title, to check that a document is flagged as out of distribution by the "
    "detector and not diagnosed."
)


def _page(w: int, h: int, bg: tuple, fg: tuple, size: int, title: str) -> np.ndarray:
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    d.text((20, 12), title, fill=fg, font=_font(size + 8))
    words, line, y = LOREM.split() * 3, "", 24 + size + 12
    for word in words:
        if len(line) + len(word) > w // (size * 0.55):
            d.text((20, y), line, fill=fg, font=_font(size))
            line, y = "", y + size + 6
            if y > h - size - 10:
                break
        line += word + " "
    return np.asarray(img)


def text_images() -> list[Item]:
    """Pages of text: black on white, white on black, coloured, large print, a single big word."""
    out = [
        ("text", "page_black_on_white", _page(400, 300, (255, 255, 255), (0, 0, 0), 14, "Report")),
        ("text", "page_white_on_black", _page(400, 300, (0, 0, 0), (255, 255, 255), 14, "Terminal")),
        ("text", "page_coloured", _page(320, 320, (250, 240, 200), (20, 40, 120), 12, "Memo")),
        ("text", "large_print", _page(300, 400, (255, 255, 255), (30, 30, 30), 28, "NOTICE")),
    ]
    img = Image.new("L", (320, 240), 0)
    ImageDraw.Draw(img).text((20, 80), "PLEURA", fill=255, font=_font(64))
    out.append(("text", "big_word_on_black", np.asarray(img)))
    return out


def _ui(dark: bool, seed: int, layout: str) -> np.ndarray:
    """A screenshot-like mock-up: title bar, side bar or grid of cards, buttons and labels."""
    r = np.random.default_rng(seed)
    bg, panel, fg = (
        ((30, 30, 36), (50, 52, 60), (230, 230, 230)) if dark else ((245, 246, 248), (255, 255, 255), (20, 20, 20))
    )
    img = Image.new("RGB", (480, 320), bg)
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, 480, 28), fill=(40, 90, 200))
    d.text((10, 6), "Dashboard - pleura", fill=(255, 255, 255), font=_font(14))
    if layout == "sidebar":
        d.rectangle((0, 28, 110, 320), fill=panel)
        for i, label in enumerate(("Home", "Patients", "Reports", "Settings", "Help")):
            d.text((14, 44 + 30 * i), label, fill=fg, font=_font(13))
        for i in range(4):
            y = 50 + 60 * i
            d.rounded_rectangle((130, y, 460, y + 45), 6, fill=panel, outline=(200, 200, 210))
            d.text((142, y + 14), f"Item {i + 1}: {int(r.integers(100, 999))}", fill=fg, font=_font(13))
    else:
        for i in range(6):
            x, y = 20 + 150 * (i % 3), 45 + 130 * (i // 3)
            d.rounded_rectangle((x, y, x + 135, y + 115), 8, fill=panel, outline=(180, 180, 190))
            colour = tuple(int(c) for c in r.integers(60, 220, 3))
            d.rectangle((x + 10, y + 10, x + 125, y + 60), fill=colour)
            d.text((x + 10, y + 70), f"Card {i + 1}", fill=fg, font=_font(13))
    d.rounded_rectangle((360, 280, 460, 308), 6, fill=(40, 160, 80))
    d.text((380, 286), "Submit", fill=(255, 255, 255), font=_font(13))
    return np.asarray(img)


def ui_mockups() -> list[Item]:
    """Light and dark screenshot-like mock-ups, with a side bar or a grid of cards, and a dialog box."""
    out = [
        ("ui", f"{layout}_{'dark' if dark else 'light'}", _ui(dark, i, layout))
        for i, (layout, dark) in enumerate((("sidebar", False), ("sidebar", True), ("cards", False), ("cards", True)))
    ]
    img = Image.new("RGB", (400, 260), (128, 128, 128))
    d = ImageDraw.Draw(img)
    d.rectangle((60, 50, 340, 210), fill=(240, 240, 240), outline=(0, 0, 0), width=2)
    d.text((80, 70), "Delete 3 files?", fill=(0, 0, 0), font=_font(18))
    d.rounded_rectangle((90, 160, 190, 190), 5, fill=(200, 60, 60))
    d.rounded_rectangle((210, 160, 310, 190), 5, fill=(210, 210, 210), outline=(90, 90, 90))
    d.text((115, 166), "Delete", fill=(255, 255, 255), font=_font(14))
    d.text((235, 166), "Cancel", fill=(0, 0, 0), font=_font(14))
    out.append(("ui", "dialog", np.asarray(img)))
    return out


def patterns() -> list[Item]:
    """Gradients, checkerboards, stripes and noise."""
    r = np.random.default_rng(0)
    h, w = 240, 320
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    radial = np.hypot(y - h / 2, x - w / 2)
    u8 = lambda a: np.clip(a, 0, 255).astype(np.uint8)  # noqa: E731
    return [
        ("pattern", "gradient_horizontal", u8(255 * x / w)),
        ("pattern", "gradient_vertical", u8(255 * y / h)),
        ("pattern", "gradient_radial", u8(255 - 255 * radial / radial.max())),
        ("pattern", "gradient_colour", np.stack([u8(255 * x / w), u8(255 * y / h), u8(128 + 0 * x)], axis=-1)),
        ("pattern", "checkerboard_8", u8(255 * (((y // 8) + (x // 8)) % 2))),
        ("pattern", "checkerboard_40", u8(40 + 180 * (((y // 40) + (x // 40)) % 2))),
        ("pattern", "stripes", u8(128 + 127 * np.sin(x / 6))),
        ("pattern", "noise_uniform", u8(r.integers(0, 256, (h, w)))),
        ("pattern", "noise_gaussian", u8(128 + 40 * r.standard_normal((h, w)))),
        ("pattern", "noise_colour", r.integers(0, 256, (h, w, 3)).astype(np.uint8)),
        ("pattern", "salt_and_pepper", u8(255 * (r.random((h, w)) > 0.9))),
        ("pattern", "noise_smooth", u8(np.asarray(Image.fromarray(u8(r.integers(0, 256, (24, 32)))).resize((w, h))))),
    ]


def other_imaging() -> list[Item]:
    """Other images that are not lung ultrasound: Matplotlib's MRI slice and its elevation and bathymetry maps."""
    from matplotlib import cbook

    with cbook.get_sample_data("s1045.ima.gz") as fh:  # opened already decompressed
        mri = np.frombuffer(fh.read(), np.uint16).reshape(256, 256).astype(np.float32)
    out = [("other_imaging", "mri_head", (255 * mri / mri.max()).astype(np.uint8))]
    for name, file, key in (
        ("elevation", "jacksboro_fault_dem.npz", "elevation"),
        ("bathymetry", "topobathy.npz", "topo"),
    ):
        with np.load(cbook.get_sample_data(file, asfileobj=False)) as npz:
            z = npz[key].astype(np.float32)
        out.append(("other_imaging", name, (255 * (z - z.min()) / (np.ptp(z) + 1e-6)).astype(np.uint8)))
    return out


def non_lus_corpus() -> list[Item]:
    """Every non-ultrasound image (``CATEGORIES``): photographs, charts, text, UI, patterns, other imaging."""
    return photos() + charts() + text_images() + ui_mockups() + patterns() + other_imaging()


def _sector(h: int, w: int, apex_y: float, radius: tuple[float, float], half_angle: float) -> tuple[np.ndarray, ...]:
    """A convex probe's fan: its mask, and each pixel's depth (0 at the skin, 1 at the bottom)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = y - apex_y, x - w / 2
    r, a = np.hypot(dx, dy), np.arctan2(dx, dy)
    mask = (r >= radius[0]) & (r <= radius[1]) & (np.abs(a) <= half_angle)
    return mask, np.clip((r - radius[0]) / (radius[1] - radius[0]), 0, 1)


def _b_mode(reflectivity: np.ndarray, mask: np.ndarray, depth: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """A B-mode picture of a reflectivity map: speckle (smoothed complex noise, a few pixels' grain), depth
    attenuation, log compression over 55 dB, as a scanner displays it; zero outside ``mask``."""
    from scipy import ndimage

    shape = reflectivity.shape
    grain = (3.0, 2.0)  # speckle is longer across than along the beam
    z = ndimage.gaussian_filter(r.standard_normal(shape), grain) + 1j * ndimage.gaussian_filter(
        r.standard_normal(shape), grain
    )
    envelope = np.abs(z) / np.abs(z).mean() * reflectivity * np.exp(-2.0 * depth)
    db = 20 * np.log10(np.maximum(envelope, 1e-6))
    return (np.clip((db + 55) / 55, 0, 1) * 230 * mask).astype(np.uint8)


def ultrasound_like_corpus() -> list[Item]:
    """Ultrasound-like frames of other organs (or none): B-mode speckle, log compression, no lung anatomy."""
    r = np.random.default_rng(1)
    h, w = 300, 400
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fan, fan_depth = _sector(h, w, -60, (70, 340), 0.6)
    rect = np.zeros((h, w), bool)
    rect[10:290, 60:340] = True
    rect_depth = np.clip((y - 10) / 280, 0, 1)
    ellipse = lambda cx, cy, ax, ay: ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2  # noqa: E731
    out: list[Item] = []

    out.append(("ultrasound_like", "fan_speckle_only", _b_mode(np.full((h, w), 0.08), fan, fan_depth, r)))

    liver = np.full((h, w), 0.08, np.float32)  # abdomen: liver with a dark gallbladder and a bright wall
    e = ellipse(230, 170, 55, 40)
    liver[e < 1] = 0.003
    liver += 0.4 * np.exp(-((np.sqrt(e) - 1) ** 2) / 0.004)
    out.append(("ultrasound_like", "abdomen_dark_organ", _b_mode(liver, fan, fan_depth, r)))

    heart = np.full((h, w), 0.08, np.float32)  # cardiac: four dark chambers between bright septa
    for cx, cy, ax_, ay in ((160, 150, 45, 55), (245, 150, 40, 55), (165, 240, 40, 35), (240, 240, 38, 35)):
        heart[ellipse(cx, cy, ax_, ay) < 1] = 0.003
    out.append(("ultrasound_like", "cardiac_chambers", _b_mode(heart, fan, fan_depth, r)))

    kidney = np.full((h, w), 0.08, np.float32)  # kidney: darker cortex, bright sinus in the middle
    k = ellipse(200, 160, 90, 50)
    kidney[k < 1] = 0.03
    kidney[k < 0.35] = 0.3
    out.append(("ultrasound_like", "kidney", _b_mode(kidney, fan, fan_depth, r)))

    muscle = 0.06 * (1 + 0.8 * np.sin(y / 9 + 0.3 * np.sin(x / 40))).astype(np.float32)  # linear: muscle fibres
    out.append(("ultrasound_like", "linear_muscle", _b_mode(muscle, rect, rect_depth, r)))

    vessel = np.full((h, w), 0.08, np.float32)  # linear: a vessel in cross-section, dark lumen, bright wall
    v = np.hypot(x - 200, y - 130) / 35
    vessel[v < 1] = 0.003
    vessel += 0.4 * np.exp(-((v - 1) ** 2) / 0.005)
    out.append(("ultrasound_like", "linear_vessel", _b_mode(vessel, rect, rect_depth, r)))
    return out
