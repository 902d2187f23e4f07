"""The readers refuse what would hang them or blow up memory, with a one-line ReadError naming the file.

Issue 12, defects 7-9: FIFOs and devices, TIFF pages of different sizes, decompression bombs (PNG, JPEG,
DICOM, video headers). Files are written here, the bombs as headers with next to no pixel data.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_readers import write_clip, write_dicom

from pleura.data import readers
from pleura.data.readers import ReadError, iter_frames, media_info, read_frames, sniff, to_gray_uint8

HANG_S = 5.0  # a reader that has not answered by then is hanging


def call_with_timeout(fn: Callable[[], object], path: Path) -> BaseException | object:
    """Run ``fn`` in a thread; its result or exception. Fails (instead of hanging the suite) after ``HANG_S``."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        if path.is_fifo():  # unblock the reader stuck in open(): a writer that opens and closes at once
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(HANG_S)
        pytest.fail(f"reading {path} hung for more than {HANG_S:g} s")
    return box[0]


def special_file(tmp_path: Path, kind: str) -> Path:
    """A FIFO or a unix socket in ``tmp_path``, or the device ``/dev/zero``."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.mp4")
        return tmp_path / "pipe.mp4"
    if kind == "socket":
        path = tmp_path / "sock.png"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))  # the socket file stays after close
        sock.close()
        return path
    return Path("/dev/zero")


@pytest.mark.parametrize(
    ("kind", "what"), [("fifo", "a FIFO"), ("socket", "a socket"), ("device", "a character device")]
)
@pytest.mark.parametrize("reader", [sniff, media_info, lambda p: list(iter_frames(p))])
def test_special_files_are_refused_without_hanging(tmp_path, kind, what, reader):
    if kind == "socket" and len(str(tmp_path / "sock.png")) > 100:
        pytest.skip("unix socket paths are limited to about 104 bytes")
    if kind == "device" and not Path("/dev/zero").is_char_device():
        pytest.skip("no /dev/zero here")
    path = special_file(tmp_path, kind)
    got = call_with_timeout(lambda: reader(path), path)
    assert isinstance(got, ReadError), got
    assert str(got).startswith(f"{path}: not a regular file ({what}") and "\n" not in str(got)


def test_a_symlink_to_a_file_is_read(tmp_path):
    Image.fromarray(np.full((4, 6), 9, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    assert read_frames(tmp_path / "link.png").shape == (1, 4, 6)


def two_page_tiff(path: Path, second: tuple[int, int]) -> Path:
    first = Image.fromarray(np.full((64, 64), 50, np.uint8))
    first.save(path, save_all=True, append_images=[Image.new("L", second, 200)])
    return path


def test_tiff_pages_of_one_size_are_a_clip(tmp_path):
    path = two_page_tiff(tmp_path / "pages.tif", (64, 64))
    assert sniff(path) == "video" and media_info(path).n_frames == 2
    assert read_frames(path)[:, 0, 0].tolist() == [50, 200]


def test_tiff_pages_of_different_sizes_name_the_file_and_the_page(tmp_path):
    path = two_page_tiff(tmp_path / "pages.tif", (40, 30))
    with pytest.raises(ReadError) as err:
        list(iter_frames(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: page 2 is 40x30 pixels, page 1 was 64x64") and "\n" not in msg
    with pytest.raises(ReadError, match="page 2 is 40x30"):
        read_frames(path)
    assert next(iter_frames(path)).image.shape == (64, 64)  # the pages before the odd one are read


def test_a_tiff_page_above_the_pixel_cap_is_refused_before_decoding(tmp_path, monkeypatch):
    path = two_page_tiff(tmp_path / "pages.tif", (80, 80))
    monkeypatch.setattr(readers, "MAX_PIXELS", 64 * 64)
    frames = iter_frames(path)
    assert next(frames).image.shape == (64, 64)
    with pytest.raises(ReadError) as err:
        next(frames)
    assert str(err.value).startswith(f"{path}: page 2 is 80x80 pixels, more than the 0.004096 megapixel limit")


def png_header(path: Path, width: int, height: int, colour: int = 6) -> Path:
    """A PNG that claims ``width`` x ``height`` (RGBA by default) and holds one compressed row: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    row = zlib.compress(bytes(1 + 4 * width))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(8000, 6000), (20000, 20000)])  # above ours / above Pillow's limit
def test_png_bomb_is_refused_before_decoding(tmp_path, width, height):
    path = png_header(tmp_path / "bomb.png", width, height)
    limit = f"more than the {readers.MAX_PIXELS / 1e6:g} megapixel limit"
    for reader in (sniff, media_info, iter_frames):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's DecompressionBombWarning is not passed on
            with pytest.raises(ReadError) as err:
                reader(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: image is {width}x{height} pixels, {limit}") and "\n" not in msg


def test_pixel_cap_is_between_real_exports_and_bombs():
    assert 2000 * 2000 * 4 < readers.MAX_PIXELS <= 50_000_000


def test_big_jpeg_is_decoded_reduced(tmp_path):
    """12000x8000 (96 MP: above Pillow's warning) comes out at 3000x2000 (draft 1/4), aspect kept."""
    path = tmp_path / "photo.jpg"
    ramp = (np.arange(12000) * 255 // 11999).astype(np.uint8)
    Image.fromarray(np.broadcast_to(ramp, (8000, 12000))).save(path, quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = media_info(path)
        (frame,) = iter_frames(path)
    assert frame.image.shape == (2000, 3000) and (info.width, info.height) == (3000, 2000)
    expected = (np.arange(3000) * 4 + 1.5) * 255 / 11999
    assert np.abs(frame.image[1000].astype(float) - expected).max() <= 3


def test_wide_image_is_reduced_below_the_side_limit(tmp_path):
    path = tmp_path / "strip.png"
    Image.fromarray(np.tile(np.array([[0, 200]], np.uint8), (10, 2500))).save(path)  # 5000x10
    (frame,) = iter_frames(path)
    assert frame.image.shape == (5, 2500) and (frame.image == 100).all()  # 2x2 boxes averaged
    assert (media_info(path).width, media_info(path).height) == (2500, 5)


def test_dicom_bomb_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((1, 4, 4), np.uint8), Rows=60000, Columns=60000)
    for reader in (media_info, iter_frames):
        with pytest.raises(ReadError) as err:
            reader(path)
        assert str(err.value).startswith(f"{path}: DICOM frame is 60000x60000 pixels, more than the")


def test_video_frame_size_is_capped_from_the_header(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "clip.avi", n=3, fmt="avi")  # 64x48
    monkeypatch.setattr(readers, "MAX_PIXELS", 1000)
    for reader in (media_info, iter_frames):
        with pytest.raises(ReadError) as err:
            reader(path)
        assert str(err.value).startswith(f"{path}: video frame is 64x48 pixels, more than the 0.001 megapixel")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(60 * 70 * 4, dtype=np.uint16).reshape(60, 70, 4) % 4096,
        np.linspace(-3, 5, 60 * 70 * 3, dtype=np.float32).reshape(60, 70, 3),
        np.arange(60 * 70, dtype=np.int32).reshape(60, 70) - 100,
        np.arange(60 * 70 * 2, dtype=np.uint8).reshape(60, 70, 2),
    ],
)
def test_to_gray_uint8_in_blocks_matches_one_go(monkeypatch, array):
    """Big images are converted in blocks of rows (bounded float temporaries), to the same result."""
    whole = to_gray_uint8(array, photometric="MONOCHROME1")
    monkeypatch.setattr(readers, "_BLOCK", 500)  # elements per block: 2-8 rows here
    np.testing.assert_array_equal(to_gray_uint8(array, photometric="MONOCHROME1"), whole)
