"""pleura.data.readers on small files written here: clips (PyAV), images (Pillow), DICOM (pydicom)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence

from pleura.data import readers
from pleura.data.readers import ReadError, iter_frames, media_info, read_frames, sniff, to_gray_uint8
from pleura.data.synthetic import write_dicom

W, H, N, RATE = 64, 48, 30, 30
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
POCUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pocus"


def square_frame(i: int) -> np.ndarray:
    """Black RGB frame with a white 10x10 square whose left edge is at column ``i``."""
    a = np.zeros((H, W, 3), np.uint8)
    a[10:20, i : i + 10] = 255
    return a


def write_clip(path: Path, n: int = N, codec: str = "mpeg4", fmt: str | None = None, **options: str) -> Path:
    c = av.open(str(path), "w", format=fmt, options=options)
    with c:
        s = c.add_stream(codec, rate=RATE)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = 1  # all key frames: a cut file keeps its first half decodable
        c.start_encoding()
        for i in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(square_frame(i), format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of clips, including broken ones, shared by the tests of this module."""
    d = tmp_path_factory.mktemp("media")
    write_clip(d / "clip.mp4", codec=CODEC)
    write_clip(d / "clip.avi", fmt="avi")
    write_clip(d / "fast.mp4", movflags="faststart")
    write_clip(d / "empty.avi", n=0, fmt="avi")
    for name in ("clip.mp4", "fast.mp4"):  # moov at the end (nothing decodable) / at the start
        data = (d / name).read_bytes()
        (d / f"cut_{name}").write_bytes(data[: len(data) // 2])
    shutil.copy(d / "clip.mp4", d / "really_a_clip.png")
    with av.open(str(d / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode())
    return d


def test_mp4_and_avi_frames_and_info(media):
    for name in ("clip.mp4", "clip.avi"):
        frames = read_frames(media / name)
        assert frames.shape == (N, H, W) and frames.dtype == np.uint8
        for i in (0, 17):  # the square moves one column per frame
            assert frames[i, 12:18, i + 2 : i + 8].min() > 200 and frames[i, 30:, :].max() < 40
        info = media_info(media / name)
        assert (info.kind, info.n_frames, info.fps, info.width, info.height) == ("video", N, RATE, W, H)
        assert info.pixel_spacing_mm is None and sniff(media / name) == "video"


def test_fps_sampling_and_max_frames(media, monkeypatch):
    path = media / "clip.mp4"
    assert [f.index for f in iter_frames(path, fps=3)] == [0, 10, 20]
    assert [f.index for f in iter_frames(path, fps=10)] == list(range(0, N, 3))
    assert [round(f.time_s, 3) for f in iter_frames(path, fps=3)] == [0.0, 0.333, 0.667]
    assert [f.index for f in iter_frames(path, fps=100)] == list(range(N))  # faster than the clip: all

    pulled = []
    backend = readers._av_frames

    def counting(p):
        for raw in backend(p):
            pulled.append(raw[0])
            yield raw

    monkeypatch.setattr(readers, "_av_frames", counting)
    assert [f.index for f in iter_frames(path, max_frames=2)] == [0, 1]
    assert pulled == [0, 1]  # decoding stopped at the cap
    assert [f.index for f in iter_frames(path, fps=3, max_frames=2)] == [0, 10]


@pytest.mark.parametrize("pix_fmt, codec", [("yuv420p", "mpeg4"), ("yuvj420p", "mjpeg"), ("yuv444p", "ffv1")])
def test_video_luma_matches_the_rgb_path(tmp_path, pix_fmt, codec):
    """Grey frames come from the luma plane (limited or full range) and agree with luma-of-RGB."""
    rng = np.random.default_rng(0)
    path, sources = tmp_path / "grad.avi", []
    with av.open(str(path), "w", format="avi") as c:
        s = c.add_stream(codec, rate=RATE)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        for _ in range(3):  # grey speckle on a ramp, slightly tinted, as an ultrasound clip
            grey = np.tile(np.linspace(0, 255, W), (H, 1)) + rng.normal(0, 20, (H, W))
            sources.append(np.clip(grey[..., None] * np.array([1.0, 0.97, 0.94]), 0, 255).astype(np.uint8))
            c.mux(s.encode(av.VideoFrame.from_ndarray(sources[-1], format="rgb24")))
        c.mux(s.encode())
    with av.open(str(path)) as c:
        decoded = list(c.decode(video=0))
    assert decoded[0].format.name == pix_fmt
    fast = np.stack([readers._av_gray(f) for f in decoded])
    slow = np.stack([to_gray_uint8(f.to_ndarray(format="rgb24")) for f in decoded])
    assert fast.shape == (3, H, W) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 3  # RGB conversion rounds and clips
    assert fast.max() > 230 and fast.min() < 25  # the range is expanded, not left at 16-235
    if codec == "ffv1":  # lossless: the luma of the source frames, to rounding
        truth = np.stack([to_gray_uint8(a) for a in sources])
        assert np.abs(fast.astype(int) - truth.astype(int)).max() <= 1
    np.testing.assert_array_equal(read_frames(path), fast)


def test_animated_gif_is_a_video(tmp_path):
    levels = [20, 80, 140, 200, 250]
    frames = [Image.fromarray(np.full((H, W), v, np.uint8)) for v in levels]
    for k, im in enumerate(frames):
        im.paste(255 - levels[k], (k, 0, k + 5, 5))
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert sniff(path) == "video"
    info = media_info(path)
    assert (info.kind, info.n_frames, info.fps, info.width, info.height) == ("video", 5, 10.0, W, H)
    out = list(iter_frames(path))
    assert [f.image[30, 30] for f in out] == levels
    assert [round(f.time_s, 3) for f in out] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert [f.index for f in iter_frames(path, fps=5)] == [0, 2, 4]


def _rgba(px: list[tuple[int, int, int, int]]) -> Image.Image:
    return Image.fromarray(np.array([px], np.uint8), "RGBA")


def _palette() -> Image.Image:
    im = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    return im


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("grey.png", lambda: Image.fromarray(np.array([[0, 7, 255]], np.uint8)), [0, 7, 255]),
        ("grey.tif", lambda: Image.fromarray(np.array([[0, 7, 255]], np.uint8)), [0, 7, 255]),
        ("still.gif", lambda: Image.fromarray(np.array([[0, 7, 255]], np.uint8)), [0, 7, 255]),  # one frame: image
        # 12-bit data in a 16-bit PNG: scaled by its bit depth (4095 -> 255), not by 65535
        ("deep.png", lambda: Image.fromarray(np.array([[0, 2048, 4095]], np.uint16)), [0, 128, 255]),
        # alpha composited on black: red opaque, grey half transparent, white fully transparent
        ("rgba.png", lambda: _rgba([(255, 0, 0, 255), (200, 200, 200, 128), (255, 255, 255, 0)]), [76, 100, 0]),
        ("palette.png", _palette, [76, 150, 29]),  # red, green, blue through the palette: BT.601 luma
        (
            "rgb.bmp",
            lambda: Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [10, 20, 30]]], np.uint8)),
            [76, 150, 18],
        ),
    ],
)
def test_still_images(tmp_path, name, make, expected):
    path = tmp_path / name
    make().save(path)
    assert sniff(path) == "image"
    (frame,) = iter_frames(path, fps=1)
    assert (frame.index, frame.time_s, frame.image.dtype) == (0, 0.0, np.uint8)
    assert frame.image.tolist() == [expected]
    info = media_info(path)
    assert (info.kind, info.n_frames, info.fps, info.width, info.height) == ("image", 1, None, 3, 1)


def test_jpeg_rgb_luma(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((16, 16, 3), (200, 100, 50), np.uint8)).save(path, quality=95)
    img = read_frames(path)
    assert img.shape == (1, 16, 16) and abs(int(img[0, 8, 8]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 2


def test_to_gray_uint8_layouts():
    assert to_gray_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]  # floats in [0, 1]
    assert to_gray_uint8(np.array([[-1.0, 0.0, 1.0]])).tolist() == [[0, 128, 255]]  # other floats: min-max
    assert to_gray_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    assert to_gray_uint8(np.array([[[9], [3]]], np.uint8)).tolist() == [[9, 3]]
    assert to_gray_uint8(np.array([[0, 4095]], np.uint16), photometric="MONOCHROME1", bits=12).tolist() == [[255, 0]]
    assert to_gray_uint8(np.array([[-2048, 2047]], np.int16), bits=12).tolist() == [[0, 255]]
    assert to_gray_uint8(np.array([[[90, 128, 128]]], np.uint8), photometric="YBR_FULL").tolist() == [[90]]
    assert to_gray_uint8(np.array([[[200, 128]]], np.uint8)).tolist() == [[100]]  # grey + alpha
    with pytest.raises(ValueError, match="shape"):
        to_gray_uint8(np.zeros((2, 2, 5)))


def test_dicom_multiframe_cine_and_ultrasound_regions(tmp_path):
    region = Dataset()
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02
    pixels = np.stack([np.full((H, W), 10 * i, np.uint8) for i in range(6)])
    path = write_dicom(
        tmp_path / "cine.dcm", pixels, FrameTime=40.0, CineRate=25, SequenceOfUltrasoundRegions=Sequence([region])
    )
    assert sniff(path) == "dicom"
    info = media_info(path)
    assert (info.kind, info.n_frames, info.fps, info.width, info.height) == ("dicom", 6, 25.0, W, H)
    assert info.pixel_spacing_mm == pytest.approx((0.2, 0.1))
    np.testing.assert_array_equal(read_frames(path), pixels)
    assert [(f.index, round(f.time_s, 3)) for f in iter_frames(path, fps=12.5)] == [(0, 0.0), (2, 0.08), (4, 0.16)]
    assert len(read_frames(path, max_frames=2)) == 2


def test_dicom_monochrome1_16bit_pixel_spacing(tmp_path):
    pixels = np.array([[[0, 2048, 4095]]], np.uint16)
    path = write_dicom(tmp_path / "mono1", pixels, "MONOCHROME1", bits=12, PixelSpacing=[0.3, 0.4])  # no extension
    info = media_info(path)
    assert (info.n_frames, info.fps, info.pixel_spacing_mm) == (1, None, (0.3, 0.4))
    assert read_frames(path).tolist() == [[[255, 127, 0]]]  # inverted, scaled by BitsStored


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_dicom_colour(tmp_path, photometric):
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [10, 20, 30]]]], np.uint8)
    stored = rgb if photometric == "RGB" else convert_color_space(rgb[0], "RGB", "YBR_FULL")[None]
    path = write_dicom(tmp_path / "colour.dcm", stored, photometric)
    assert np.abs(read_frames(path).astype(int) - [[[76, 150, 18]]]).max() <= 1


def test_dicom_palette_colour(tmp_path):
    luts = {
        f"{c}PaletteColorLookupTable{part}": value
        for c, entries in (("Red", [65535, 0, 0]), ("Green", [0, 65535, 0]), ("Blue", [0, 0, 65535]))
        for part, value in (("Descriptor", [3, 0, 16]), ("Data", np.array(entries, "<u2").tobytes()))
    }
    path = write_dicom(tmp_path / "palette.dcm", np.array([[[0, 1, 2]]], np.uint8), "PALETTE COLOR", **luts)
    assert read_frames(path).tolist() == [[[76, 150, 29]]]


def test_lying_extension_is_read_by_content(media, tmp_path, caplog):
    honest = [media / "clip.mp4", write_dicom(tmp_path / "a.dcm", np.zeros((1, 2, 2))), tmp_path / "a.gif"]
    Image.new("L", (2, 2)).save(honest[-1])
    with caplog.at_level(logging.WARNING, logger="pleura.data.readers"):
        assert [sniff(p) for p in honest] == ["video", "dicom", "image"]
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="pleura.data.readers"):
        assert sniff(media / "really_a_clip.png") == "video"
        assert read_frames(media / "really_a_clip.png", max_frames=3).shape == (3, H, W)
    assert "really_a_clip.png" in caplog.text and "extension says .png" in caplog.text


def test_truncated_clip_yields_what_it_can(media, caplog):
    with caplog.at_level(logging.WARNING, logger="pleura.data.readers"):
        frames = read_frames(media / "cut_fast.mp4")
    assert 0 < len(frames) < N and frames.shape[1:] == (H, W)
    assert f"read {len(frames)} of the {N} frames in the header" in caplog.text and "cut_fast.mp4" in caplog.text


def test_bad_inputs_raise_read_error_naming_the_file(media, tmp_path):
    (tmp_path / "zero.mp4").touch()
    (tmp_path / "notes.mp4").write_text("patient 12, left lung, B-lines\n")
    (tmp_path / "report.png").write_bytes(b"%PDF-1.4\n" + bytes(200))
    no_pixels = write_dicom(tmp_path / "nopixels.dcm", np.zeros((1, 4, 4, 0)))
    cases = {
        tmp_path / "missing.mp4": "no such file",
        tmp_path / "zero.mp4": "empty file",
        tmp_path / "notes.mp4": "content is 'text",
        tmp_path / "report.png": "content is 'PDF document' although the extension says .png",
        media / "cut_clip.mp4": "truncated or corrupt",
        media / "audio.mp4": "no video stream (the file holds audio only)",
        media / "empty.avi": "holds no frames",
        no_pixels: "DICOM has no pixel data",
    }
    for path, message in cases.items():
        with pytest.raises(ReadError) as err:
            read_frames(path)
        assert path.name in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
        if message != "holds no frames":  # the zero-frame clip's header is fine; only decoding finds it empty
            with pytest.raises(ReadError, match=path.name):
                media_info(path)


def test_real_pocus_files():
    """A few files of the shared POCUS set (one per extension), when the folder is present."""
    if not (POCUS / "manifest.csv").is_file():
        pytest.skip(f"real-data check skipped: {POCUS} not found")
    with open(POCUS / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen = set()
    for row in rows:
        ext = Path(row["file"]).suffix.lower().lstrip(".")
        if ext not in {"mp4", "avi", "mpeg", "mov", "gif", "jpg", "png"} or ext in seen:
            continue
        seen.add(ext)
        frames = list(iter_frames(POCUS / row["file"], max_frames=3))
        assert 1 <= len(frames) <= 3, row["file"]
        for f in frames:
            assert f.image.dtype == np.uint8 and f.image.shape == (int(row["height"]), int(row["width"])), row["file"]
    assert seen
