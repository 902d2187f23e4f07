"""Scan-area detection and frame cleaning on simulated clips with burnt-in overlays, and on real clips."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from pleura.data.cleaning import (
    ScanArea,
    clean_clip,
    detect_probe,
    find_scan_area,
    fit_to_size,
    remove_overlays,
)
from pleura.labels import Probe
from pleura.simulate import ProbeGeometry, simulate_clip

SIM = 256  # side of the simulated frames
CANVAS = (320, 420)  # the "scanner screen" they are embedded in
TOP, LEFT = 40, 120  # where the simulated frame goes on it
ARROW_RGB = (255, 200, 0)  # a yellow arrow drawn on the scan area
POCUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pocus"
REAL_CLIPS = {  # real clips with a clear scan area: file -> probe in the manifest
    "pneumonia/Pneu_Avi_Video_001.mp4": "convex",
    "normal/Reg_Avi_Video_002.mp4": "convex",
    "normal/Reg_Image_181206_crop.mp4": "linear",
}


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def _screen(images: np.ndarray) -> dict[str, np.ndarray]:
    """Embed ``(N, SIM, SIM)`` frames in a black screen with text, a ruler, a depth scale, a logo, a
    coloured arrow and a white caliper mark; returns the RGB and grey frames and the overlay masks."""
    n = len(images)
    rgb = np.zeros((n, *CANVAS, 3), dtype=np.uint8)
    rgb[:, TOP : TOP + SIM, LEFT : LEFT + SIM] = images[..., None]
    for k in range(10):  # text: glyph-like blocks, top-left
        rgb[:, 10:19, 8 + 9 * k : 15 + 9 * k] = 255
        rgb[:, 13:16, 10 + 9 * k : 13 + 9 * k] = 0
    rgb[:, 300:308, 20:90] = 230  # a second line of "text", bottom-left
    rgb[:, TOP : TOP + SIM, 96:98] = 200  # depth scale: a line with ticks every 16 rows
    for r in range(TOP, TOP + SIM, 16):
        rgb[:, r : r + 2, 90:104] = 200
    rgb[:, 24:30, LEFT : LEFT + SIM : 8] = 180  # a ruler of ticks above the scan area
    rgb[:, 280:310, 385:412] = (40, 90, 200)  # a logo, bottom-right
    rgb[:, 284:306, 392:404] = 255
    arrow_img = Image.new("L", (CANVAS[1], CANVAS[0]))
    ImageDraw.Draw(arrow_img).polygon(
        [(220, 150), (250, 150), (250, 143), (265, 157), (250, 171), (250, 164), (220, 164)], fill=1
    )
    arrow = np.asarray(arrow_img).astype(bool)
    rgb[:, arrow] = ARROW_RGB
    caliper = np.zeros(CANVAS, dtype=bool)  # a white "+" on the scan area
    caliper[196:209, 300:302] = caliper[202:204, 294:308] = True
    rgb[:, caliper] = 255
    text = np.zeros(CANVAS, dtype=bool)
    text[:, :LEFT] = text[:TOP] = True
    text[280:, 380:] = True
    return {"rgb": rgb, "gray": _luma(rgb), "arrow": arrow, "caliper": caliper, "margin": text}


@pytest.fixture(scope="module", params=["linear", "curvilinear"])
def clip(request: pytest.FixtureRequest) -> dict[str, object]:
    probe = request.param
    scene, frames = simulate_clip(seed=3, index=0, diagnosis="normal", probe=probe, size=SIM, frames=8)
    images = np.stack([f.image for f in frames])
    truth = np.zeros(CANVAS, dtype=bool)
    truth[TOP : TOP + SIM, LEFT : LEFT + SIM] = scene.geometry.inside
    screen = _screen(images)
    assert (truth[screen["arrow"]]).all() and (truth[screen["caliper"]]).all()  # overlays on the scan
    return {"probe": Probe(probe), "images": images, "truth": truth, **screen}


def _above_top_arc(truth: np.ndarray) -> np.ndarray:
    """Pixels between the chord joining a sector's top corners and its top arc (empty for a rectangle)."""
    first = np.where(truth.any(axis=0), truth.argmax(axis=0), truth.shape[0])
    corners = np.nonzero(first <= first.min() + 1)[0]
    rows, cols = np.ogrid[: truth.shape[0], : truth.shape[1]]
    return (cols >= corners.min()) & (cols <= corners.max()) & (rows >= first.min()) & (rows < first[None, :])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_clip_scan_area_matches_simulated_geometry(clip: dict) -> None:
    area = find_scan_area(clip["gray"])
    assert area.mask.shape == CANVAS and area.mask.dtype == bool
    assert _iou(area.mask, clip["truth"]) > 0.9
    lens = _above_top_arc(clip["truth"])  # what a convex hull adds to a sector, above its top arc
    assert (area.mask & lens).sum() <= 0.3 * lens.sum()
    assert area.probe == clip["probe"]
    rows, cols = np.nonzero(area.mask)
    assert area.bbox == (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    assert not area.mask[clip["margin"]].any()
    assert not area.marks[clip["arrow"]].any()  # the arrow is not white: it is inpainted as colour
    assert area.marks[clip["caliper"]].mean() > 0.9  # the caliper is white in every frame: a mark


def test_single_image_scan_area(clip: dict) -> None:
    area = find_scan_area(clip["gray"][:1])
    assert _iou(area.mask, clip["truth"]) > 0.9
    assert area.probe == clip["probe"]
    assert area.marks is None


def test_detect_probe_on_exact_shapes() -> None:
    sector = ProbeGeometry("curvilinear", 200, 120.0, radius_mm=50.0, sector_deg=60.0).inside
    assert detect_probe(sector) is Probe.CURVILINEAR  # a convex probe's sector
    rect = np.zeros((200, 300), dtype=bool)
    rect[20:180, 40:260] = True
    assert detect_probe(rect) is Probe.LINEAR
    cropped = sector[40:, 30:170]  # a sector cropped inside: straight sides, cut top corners, bottom arc
    assert detect_probe(cropped) is Probe.CURVILINEAR
    assert detect_probe(sector[50:, 50:150]) is Probe.CURVILINEAR  # cropped to a rectangle but for the bottom arc
    assert detect_probe(np.zeros((10, 10), dtype=bool)) is Probe.LINEAR


def test_remove_overlays(clip: dict) -> None:
    gray, rgb, arrow, caliper = clip["gray"], clip["rgb"], clip["arrow"], clip["caliper"]
    area = find_scan_area(gray)
    out = remove_overlays(gray[0], rgb[0], area)
    assert out.shape == gray[0].shape and out.dtype == np.uint8
    assert not out[~area.mask].any() and not out[clip["margin"]].any()
    sim = np.zeros(CANVAS, dtype=np.uint8)  # the frame without overlays
    sim[TOP : TOP + SIM, LEFT : LEFT + SIM] = clip["images"][0]
    for mark, luma in ((arrow, _luma(np.array(ARROW_RGB))), (caliper, 255)):
        ring = ndimage.binary_dilation(mark, iterations=6) & ~ndimage.binary_dilation(mark, iterations=2)
        local = sim[ring & area.mask].mean()
        assert abs(out[mark].mean() - local) < 25
        assert abs(out[mark].mean() - luma) > 60
    untouched = area.mask & ~ndimage.binary_dilation(arrow | caliper, iterations=2)
    np.testing.assert_array_equal(out[untouched], gray[0][untouched])


def test_remove_overlays_single_image_finds_white_marks(clip: dict) -> None:
    out = remove_overlays(clip["gray"][0])  # no RGB, no area: the arrow stays, the white "+" goes
    assert out[clip["caliper"]].max() < 250
    assert not out[clip["margin"]].any()


def test_fit_to_size_keeps_aspect_and_top(clip: dict) -> None:
    images, area = clean_clip(clip["gray"], 128, clip["rgb"])
    assert images.shape == (8, 128, 128) and images.dtype == np.uint8
    t, b, left, right = area.bbox
    rows, cols = np.nonzero(images[0])
    assert rows.min() == 0  # top-aligned: the skin line stays at the top
    assert max(cols.min(), 127 - cols.max()) <= 1 or cols.max() - cols.min() >= 126
    ratio = (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)
    assert ratio == pytest.approx((right - left) / (b - t), rel=0.03)


def test_fit_to_size_tall_area_is_centred() -> None:
    frame = np.zeros((300, 400), dtype=np.uint8)
    frame[50:250, 100:200] = 128
    mask = frame > 0
    area = ScanArea(mask, (50, 250, 100, 200), "linear", 1.0, 1.0, 0.0)
    out = fit_to_size(frame, area, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max()) == (0, 63)
    assert (cols.min(), cols.max()) == (16, 47)  # 32 columns, centred
    assert (out[:, 16:48] == 128).all()


def test_blank_frames_fall_back_to_full_frame(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pleura.data.cleaning"):
        area = find_scan_area(np.zeros((3, 50, 60), dtype=np.uint8))
    assert area.mask.all() and area.bbox == (0, 50, 0, 60) and area.probe is Probe.LINEAR
    assert "full frame" in caplog.text
    images, _ = clean_clip(np.zeros((2, 50, 60), dtype=np.uint8), 32)
    assert images.shape == (2, 32, 32) and not images.any()
    assert find_scan_area(np.zeros((40, 40), dtype=np.uint8)).mask.all()  # one (H, W) image


def test_clean_clip_is_fast() -> None:
    rng = np.random.default_rng(0)
    sector = ProbeGeometry("curvilinear", 560, 140.0, radius_mm=50.0, sector_deg=65.0).inside
    frames = np.zeros((60, 600, 800), dtype=np.uint8)
    frames[:, 20:580, 120:680] = rng.integers(0, 200, (60, 560, 560), dtype=np.uint8) * sector
    frames[:, 30:45, 20:100] = 255  # text
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    rgb[:, 300:320, 380:420] = (255, 0, 0)  # a red marker on the scan area
    clean_clip(frames[:2], 256)  # warm up
    start = time.perf_counter()
    images, area = clean_clip(frames, 256, rgb)
    elapsed = time.perf_counter() - start
    assert images.shape == (60, 256, 256) and area.probe is Probe.CURVILINEAR
    assert elapsed < 2.0  # ~0.3 s on an idle core; generous for a shared CI machine


def _read_video(path: Path, n_frames: int, count: int = 8) -> np.ndarray:
    av = pytest.importorskip("av")
    wanted = set(np.linspace(0, max(n_frames - 1, 0), count).round().astype(int).tolist())
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="gray"))
            if i >= max(wanted):
                break
    return np.stack(frames)


def test_real_clips_probe_and_coverage() -> None:
    if not (POCUS / "manifest.csv").exists():
        pytest.skip(f"real POCUS data not found at {POCUS}")
    with open(POCUS / "manifest.csv", newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    missing = [name for name in REAL_CLIPS if name not in rows or not (POCUS / name).exists()]
    if missing:
        pytest.skip(f"clips missing from {POCUS}: {missing}")
    for name, probe in REAL_CLIPS.items():
        row = rows[name]
        assert row["type"] == "video" and row["probe"] == probe
        frames = _read_video(POCUS / name, int(row["n_frames"] or 8))
        area = find_scan_area(frames)
        assert area.probe is Probe.parse(row["probe"]), name  # the manifest says convex for curvilinear
        assert 0.15 < area.mask.mean() < 0.95, name
