"""Fuzzing the media readers: whatever bytes a file holds, a reader yields grey uint8 frames or raises ReadError.

Random bytes (bare, or behind the magic of each format the readers recognise) and small valid files (PNG,
JPEG, GIF, TIFF, BMP, MP4, AVI, DICOM; written here) with random byte flips and truncations go through every
public reader, fully consumed. Any other exception is a bug; so is a hang (an alarm fails the example after
``EXAMPLE_S`` seconds, and ``faulthandler`` ends the whole run after ``RUN_S`` if a decoder is stuck in C).
Derandomized, so CI sees the same examples each run; about 20 s on two cores.
"""

from __future__ import annotations

import faulthandler
import functools
import io
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_readers import write_clip, write_dicom

from pleura.data.readers import ReadError, iter_frames, media_info, read_frames, sniff

EXAMPLE_S = 10  # one example (four readers on one small file) taking longer is a hang
RUN_S = 300  # the whole module taking longer: a decoder stuck in C code, where the alarm cannot reach
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow and pydicom warn about every corrupt file
FUZZ = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow], print_blob=False
)

MAGIC = {
    "none": b"",
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "gif": b"GIF89a",
    "tiff-le": b"II*\x00",
    "tiff-be": b"MM\x00*",
    "bmp": b"BM",
    "mp4": b"\x00\x00\x00\x18ftypisom",
    "avi": b"RIFF\x00\x10\x00\x00AVI ",
    "webm": b"\x1a\x45\xdf\xa3",
    "dicom": bytes(128) + b"DICM",
}


def _image(fmt: str, **kw: object) -> bytes:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray((rng.random((12, 16)) * 255).astype(np.uint8)) for _ in range(2)]
    buf = io.BytesIO()
    if kw.pop("pages", False):
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kw)
    else:
        frames[0].convert(str(kw.pop("mode", "L"))).save(buf, fmt, **kw)
    return buf.getvalue()


@functools.cache
def seeds() -> dict[str, bytes]:
    """Small valid files of every kind, as bytes (made once; not a fixture, so failing examples stay short)."""
    rgb = np.random.default_rng(1).integers(0, 255, (2, 8, 8, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {
            "png": _image("PNG"),
            "png-rgba": _image("PNG", mode="RGBA"),
            "jpeg": _image("JPEG", quality=80),
            "gif": _image("GIF", pages=True, duration=50),
            "tiff": _image("TIFF", pages=True),
            "tiff-deflate": _image("TIFF", mode="RGB", compression="tiff_adobe_deflate"),
            "bmp": _image("BMP", mode="RGB"),
            "mp4": write_clip(d / "clip.mp4", n=4, codec="libx264" if "libx264" in av.codecs_available else "mpeg4"),
            "avi": write_clip(d / "clip.avi", n=4, fmt="avi"),
            "dicom": write_dicom(d / "a.dcm", np.arange(60, dtype=np.uint8).reshape(2, 6, 5), FrameTime=40.0),
            "dicom-16": write_dicom(d / "b.dcm", np.full((1, 4, 4), 4000), "MONOCHROME1", bits=12),
            "dicom-rgb": write_dicom(d / "c.dcm", rgb, "RGB"),
        }
        return {k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The file each example writes; the whole module is ended (with tracebacks) if it runs past ``RUN_S``."""
    faulthandler.dump_traceback_later(RUN_S, exit=True)
    yield tmp_path_factory.mktemp("fuzz") / "input"
    faulthandler.cancel_dump_traceback_later()


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError(f"a reader ran for more than {EXAMPLE_S} s: a hang")


def read_everything(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and run every reader on it: frames are grey uint8 or the reader raises ReadError."""
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_S)
    try:
        for reader in (sniff, media_info, read_frames):
            try:
                reader(path)
            except ReadError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc), exc
        try:
            for frame in iter_frames(path, fps=7.0):
                assert frame.image.dtype == np.uint8 and frame.image.ndim == 2 and frame.image.size, frame.image.shape
        except ReadError:
            pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(FUZZ, max_examples=1500)
@given(magic=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=2048))
def test_random_bytes(target, magic, tail):
    read_everything(target, MAGIC[magic] + tail)


@pytest.mark.slow
@settings(FUZZ, max_examples=3500)
@given(data=st.data())
def test_valid_files_with_flips_and_cuts(target, data):
    name = data.draw(st.sampled_from(sorted(seeds())), label="seed")
    buf = bytearray(seeds()[name])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)), max_size=8), "flips")
    for at, value in flips:
        buf[at] = value
    cut = data.draw(st.one_of(st.none(), st.integers(1, len(buf))), label="cut")
    read_everything(target, bytes(buf[:cut]))


@pytest.mark.parametrize("name", ["png", "jpeg", "gif", "tiff", "bmp", "mp4", "avi", "dicom", "dicom-rgb"])
def test_seeds_are_read(target, name):
    """The unmutated seeds are valid: the fuzzing starts from files that read."""
    target.write_bytes(seeds()[name])
    frames = read_frames(target)
    assert frames.dtype == np.uint8 and frames.ndim == 3 and len(frames) >= 1
