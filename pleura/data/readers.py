"""One streamed reader for every medium a lung-ultrasound user brings: images, clips and DICOM.

The kind of a file is decided by its content (magic bytes), never by its extension. Stills and
animations in PNG/JPEG/BMP/GIF/TIFF are read with Pillow, DICOM with pydicom (frame by frame via
``pydicom.pixels.iter_pixels``), and everything else that FFmpeg can open with a video stream with
PyAV, one decoded frame at a time. Every frame comes out as a 2-D ``uint8`` grayscale array made by
:func:`to_gray_uint8`. Every failure is a one-line :class:`ReadError` naming the file.

Hostile or broken input cannot hang a reader or exhaust memory: only regular files are opened (a FIFO or a
device would block or never end), frames above ``MAX_PIXELS`` are refused from their header before any
decoding (decompression bombs), and frames above ``MAX_SIDE`` on a side come out reduced (JPEGs already
at decode, with Pillow's ``draft``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import stat
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut, iter_pixels

logger = logging.getLogger(__name__)

#: largest frame read, width x height; larger ones are refused from the header before decoding. Real
#: ultrasound exports are at most about 2000x2000 (4 MP); a 3 MB PNG bomb of 13000x13000 would take 7 GB.
MAX_PIXELS = 40_000_000
#: frames larger than this on a side come out reduced by an integer factor (box average; JPEG at decode):
#: models see at most 256 px, and a 4096x4096 frame is what cleaning and a clip's look-ahead can afford.
MAX_SIDE = 4096
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "I", "F"})  # modes Image.reduce averages
_BLOCK = 1 << 20  # samples to_gray_uint8 converts to float at once: bounds its temporaries on big images
_FILE_TYPES = (
    (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)  # fmt: skip
DEFAULT_FRAME_S = 0.1  # frame spacing assumed when a file states no timing (GIF convention: 10 fps)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)  # fmt: skip
# (offset, magic, description, is a clip container) for error messages about content nothing could read.
_CONTENT_MAGIC = (
    (4, b"ftyp", "MP4/QuickTime clip", True), (4, b"moov", "QuickTime clip", True), (8, b"AVI ", "AVI clip", True),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM clip", True), (0, b"\x00\x00\x01\xba", "MPEG clip", True),
    (0, b"\x00\x00\x01\xb3", "MPEG clip", True),
    (0, b"version https://git-lfs", "Git LFS pointer (run `git lfs pull` to fetch the real file)", False),
    (0, b"%PDF", "PDF document", False), (0, b"PK\x03\x04", "ZIP archive (unpack it first)", False),
    (0, b"\x1f\x8b", "gzip archive (unpack it first)", False),
)  # fmt: skip
_EXTENSIONS = {  # extension -> the content it promises, for the warning about lying extensions
    f".{ext}": label
    for label, exts in {
        "PNG": "png", "JPEG": "jpg jpeg jpe jfif", "GIF": "gif", "TIFF": "tif tiff", "BMP": "bmp dib",
        "DICOM": "dcm dicom", "video": "mp4 m4v mov avi mpeg mpg mkv webm wmv ogv",
    }.items()
    for ext in exts.split()
}  # fmt: skip
# Library failures wrapped as ReadError at the public boundary (ReadError itself passes through). Corrupt input
# makes the decoders raise more than OSError/ValueError; tests/data/test_readers_fuzz.py found Pillow's SyntaxError
# (seek() to a broken TIFF page) and pydicom's BytesLengthException (an element cut short); struct.error is what
# both unpack cut headers with (Pillow converts it only in Image.open).
_LIB_ERRORS = (OSError, ValueError, EOFError, LookupError, AttributeError, TypeError, RuntimeError, SyntaxError)
_LIB_ERRORS += (struct.error, av.error.FFmpegError, InvalidDicomError, BytesLengthException)
_LIB_ERRORS += (Image.DecompressionBombError,)


class ReadError(ValueError):
    """A file that cannot be read as an image, clip or DICOM; the message is one line naming the file."""


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its header where possible."""

    path: Path  # the file as given
    kind: str  # "image" (one frame), "video" (a clip or an animation) or "dicom"
    n_frames: int | None  # frame count, None when the container does not say
    fps: float | None  # frames per second, None when the file states no timing
    width: int  # columns, pixels
    height: int  # rows, pixels
    pixel_spacing_mm: tuple[float, float] | None  # (row, col) mm per pixel; DICOM only, None when absent


class Frame(NamedTuple):
    """One decoded frame."""

    index: int  # position of the frame in the file (0-based), also when frames are skipped by ``fps``
    time_s: float  # presentation time relative to the first frame
    image: np.ndarray  # (H, W) uint8 grayscale


def _line(exc: BaseException, path: Path) -> str:
    """The message of ``exc`` on one line, without the file name that FFmpeg and Pillow repeat."""
    msg = " ".join(str(getattr(exc, "strerror", None) or exc).split()).replace(f"'{path}'", "")
    return msg.rstrip(": ") or type(exc).__name__


@contextlib.contextmanager
def _wrap(path: Path, what: str) -> Iterator[None]:
    """Re-raise library failures as a one-line ReadError naming ``path``."""
    try:
        yield
    except ReadError:
        raise
    except _LIB_ERRORS as exc:
        raise ReadError(f"{path}: {what}: {_line(exc, path)}") from exc


def _finite(block: np.ndarray) -> np.ndarray:
    """``block`` as float32, NaN and infinities as 0 for float data."""
    x = block.astype(np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if np.issubdtype(block.dtype, np.floating) else x


def _rows(a: np.ndarray) -> Iterator[slice]:
    """Blocks of rows of ``a`` holding about ``_BLOCK`` samples each (at least one row)."""
    step = max(1, _BLOCK // max(1, math.prod(a.shape[1:])))
    return (slice(r, r + step) for r in range(0, a.shape[0], step))


def _unit(a: np.ndarray, bits: int | None) -> tuple[float, float]:
    """(offset, divisor) such that ``(a - offset) / divisor`` in float32 maps the samples to [0, 1].

    Integers are divided by their bit depth: ``bits`` (DICOM BitsStored, signed data shifted to start at 0)
    or else the effective depth ``2**ceil(log2(max + 1)) - 1``, at least 8 bits. So 8-bit data stays
    as is, 12-bit data in a 16-bit PNG maps 4095 to 255, and a dark frame is not contrast-stretched (as
    scaling by the frame's own max would do). Floats already in [0, 1] are kept; other floats and
    signed integers without ``bits`` are min-max normalised (NaN and infinities count as 0).
    """
    if a.dtype == bool:
        return 0.0, 1.0
    if np.issubdtype(a.dtype, np.unsignedinteger) or (bits and np.issubdtype(a.dtype, np.integer)):
        lo = -(1 << (bits - 1)) if bits and np.issubdtype(a.dtype, np.signedinteger) else 0
        depth = bits or max(int(a.max(initial=0)).bit_length(), 8)
        return float(lo), float((1 << depth) - 1)
    lo = hi = 0.0
    for rows in _rows(a):  # min and max without a float copy of the whole image
        x = _finite(a[rows])
        lo, hi = min(lo, float(x.min(initial=0.0))), max(hi, float(x.max(initial=0.0)))
    return (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi - lo)


def _gray(a: np.ndarray, offset: float, divisor: float, pi: str) -> np.ndarray:
    """A block of rows of ``a`` as grey uint8: scaled to [0, 1], luma of colour, alpha on black, inverted."""
    x = (_finite(a) - offset) / divisor
    if x.ndim == 3:
        gray = x[..., 0] if x.shape[-1] == 2 or pi.startswith("YBR") else x[..., :3] @ _LUMA
        x = gray * x[..., -1] if x.shape[-1] in (2, 4) else gray
    if pi == "MONOCHROME1":
        x = 1.0 - x
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_gray_uint8(
    array: np.ndarray | Image.Image, *, photometric: str | None = None, bits: int | None = None
) -> np.ndarray:
    """Convert any image layout to a 2-D ``uint8`` grayscale array.

    Args:
        array: (H, W) grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or YBR, (H, W, 4) RGBA, of any integer,
            bool or float dtype; or a Pillow image of any mode (palette images are expanded first).
        photometric: DICOM PhotometricInterpretation: MONOCHROME1 is inverted; for YBR_FULL(_422) the Y
            channel is the BT.601 luma already. None is treated as MONOCHROME2 / RGB.
        bits: bits per sample (DICOM BitsStored). None divides integers by their effective depth, the
            smallest ``2**b - 1`` (b >= 8) holding the max, not blindly by 65535 (see ``_unit``).

    Returns:
        (H, W) uint8; colour becomes BT.601 luma and alpha is composited on black. Big images are
        converted in blocks of rows, so memory stays near the size of the input and output.
    """
    if isinstance(array, Image.Image):
        img = array
        if img.mode in ("P", "PA", "La", "RGBa"):
            img = img.convert("RGBA")
        elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not img.mode.startswith("I;16"):
            img = img.convert("RGB" if len(img.getbands()) >= 3 else "L")
        array = np.array(img)  # a writable copy
        if img.mode == "I" and array.min(initial=0) >= 0:
            array = array.view(np.uint32)  # Pillow's 32-bit mode; non-negative data scale by bit depth
    a = np.asarray(array)
    pi = (photometric or "").upper()
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"cannot convert an array of shape {a.shape} to grayscale")
    if a.dtype == np.uint8 and a.ndim == 2 and pi != "MONOCHROME1":
        return a
    offset, divisor = _unit(a, bits)
    out = np.empty(a.shape[:2], np.uint8)
    for rows in _rows(a):  # blocks of rows: float temporaries of about _BLOCK samples, whatever the image size
        out[rows] = _gray(a[rows], offset, divisor, pi)
    return out


def _describe(head: bytes) -> tuple[str, str]:
    """A short description of content no reader recognised, and "clip", "unknown" or "other" (not media)."""
    for offset, magic, what, is_clip in _CONTENT_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return what, "clip" if is_clip else "other"
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a cut multi-byte character at the end
    if text and all(c.isprintable() or c in "\t\r\n\f" for c in text):
        kind = "HTML page" if text.lstrip().lower().startswith(("<!doctype html", "<html")) else "text"
        return f'{kind} "{text.strip()[:30]}"', "other"
    return f"unrecognised binary data starting {head[:8].hex(' ')}", "unknown"


def _check_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: reading a FIFO, socket or device blocks or never ends."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ReadError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ReadError(f"{path}: cannot read the file: {_line(exc, path)}") from exc
    if stat.S_ISDIR(mode):
        raise ReadError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _FILE_TYPES if test(mode)), "not a file")
        raise ReadError(
            f"{path}: not a regular file ({what}: reading it could block or never end); "
            "save the image, clip or DICOM to a file and give that"
        )


def _too_big(path: Path, what: str, width: int, height: int) -> ReadError:
    """The error for a frame above ``MAX_PIXELS`` (a decompression bomb, or not ultrasound)."""
    return ReadError(
        f"{path}: {what} is {width}x{height} pixels, more than the {MAX_PIXELS / 1e6:g} megapixel limit "
        "(ultrasound is at most about 2000x2000: a decompression bomb, or not a scan?); save it smaller to read it"
    )


def _factor(width: int, height: int) -> int:
    """The integer factor that brings the longer side down to at most ``MAX_SIDE``."""
    return max(1, math.ceil(max(width, height) / MAX_SIDE))


def _out_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the frames a ``width`` x ``height`` frame comes out as, after ``_reduce``."""
    f = _factor(width, height)
    return -(-width // f), -(-height // f)


def _reduce(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W) uint8 box-averaged by an integer factor when a side is above ``MAX_SIDE``."""
    f = _factor(image.shape[1], image.shape[0])
    return image if f == 1 else np.asarray(Image.fromarray(image).reduce(f))


@contextlib.contextmanager
def _pillow(path: Path) -> Iterator[None]:
    """Pillow's decompression-bomb error as ReadError, its warning silenced: ``MAX_PIXELS`` is lower, checked first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as exc:
            msg = f"more than the {MAX_PIXELS / 1e6:g} megapixel limit: {_line(exc, path)}"
            raise ReadError(f"{path}: image is too large, {msg}") from exc


def _open_image(path: Path, fmt: str) -> Image.Image:
    """Open ``path`` with Pillow as ``fmt``, set up to decode within the limits: a JPEG above ``MAX_SIDE`` is
    decoded reduced (1/2, 1/4 or 1/8, grey), any other image above ``MAX_PIXELS`` is refused before decoding."""
    with _pillow(path):
        try:
            img = Image.open(path, formats=[fmt])
        except Image.DecompressionBombError:  # above twice Pillow's limit: read the size from the header alone
            Image.init()
            with open(path, "rb") as fh:
                raise _too_big(path, "image", *Image.OPEN[fmt][0](fh, str(path)).size) from None
    try:
        width, height = img.size
        if fmt == "JPEG" and max(width, height) > MAX_SIDE:
            f = next((f for f in (2, 4) if max(width, height) <= f * MAX_SIDE), 8)
            img.draft("L", (max(1, width // f), max(1, height // f)))  # DCT scaling: the size changes now
        if img.width * img.height > MAX_PIXELS:
            raise _too_big(path, "image", width, height)
    except BaseException:
        img.close()
        raise
    return img


def _probe(path: Path) -> tuple[str, str, str]:
    """(kind, backend, format) of ``path`` by content; backend is "pil", "dicom" or "av"."""
    _check_file(path)
    with _wrap(path, "cannot read the file"), open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise ReadError(f"{path}: empty file (0 bytes; an interrupted download or copy?)")
    fmt = next((f for magic, f in _IMAGE_MAGIC if head.startswith(magic)), None)
    if fmt is not None:
        with _wrap(path, f"corrupt {fmt} image"), _pillow(path), _open_image(path, fmt) as img:
            animated = getattr(img, "is_animated", False)  # cheaper than counting frames
        kind, backend, label = ("video" if animated else "image"), "pil", fmt
    elif head[128:132] == b"DICM":  # what pydicom.dcmread(force=False) accepts, checked without parsing
        kind, backend, label = "dicom", "dicom", "DICOM"
    else:
        ext = path.suffix.lower()
        although = f" although the extension says {ext}" if ext in _EXTENSIONS else ""
        what, verdict = _describe(head)
        unknown = f"{path}: not an image or clip: content is '{what}'{although}"
        if verdict == "other":  # text, documents, archives: FFmpeg could guess a format from them wrongly
            raise ReadError(unknown)
        try:
            with av.open(str(path)) as container:
                streams = [s.type for s in container.streams]
                video = container.streams.video
                width, height = (video[0].codec_context.width, video[0].codec_context.height) if video else (0, 0)
        except _LIB_ERRORS as exc:
            if verdict == "clip":
                raise ReadError(f"{path}: cannot open the {what} (truncated or corrupt?): {_line(exc, path)}") from exc
            raise ReadError(unknown) from exc
        if "video" not in streams:
            holds = f"{' and '.join(sorted(set(streams)))} only" if streams else "no streams: an empty clip?"
            raise ReadError(f"{path}: no video stream (the file holds {holds})")
        if width * height > MAX_PIXELS:
            raise _too_big(path, "video frame", width, height)
        kind, backend, label = "video", "av", "video"
    expected = _EXTENSIONS.get(path.suffix.lower())
    if expected is not None and expected != label:
        logger.warning("%s: content is %s although the extension says %s; read by content", path, label, path.suffix)
    return kind, backend, label


def sniff(path: str | Path) -> str:
    """The kind of ``path`` by content: "image", "video" (clips, animated GIFs) or "dicom".

    Raises:
        ReadError: missing, empty, not a regular file, unrecognised content, a clip without a video stream,
            or an image or clip whose frames are above ``MAX_PIXELS``.
    """
    return _probe(Path(path))[0]


def _dicom_header(path: Path) -> pydicom.Dataset:
    """The DICOM header, pixel data left on disk; refuses a file without pixel data or with frames too large."""
    ds = pydicom.dcmread(path, defer_size="1 KB")  # large values (pixel data) stay on disk
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ReadError(f"{path}: DICOM has no pixel data (PixelData element missing; a report or DICOMDIR?)")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or cols < 1:
        raise ReadError(f"{path}: DICOM has pixel data but no frame size (Rows {rows}, Columns {cols}; corrupt?)")
    if rows * cols > MAX_PIXELS:
        raise _too_big(path, "DICOM frame", cols, rows)
    return ds


def _positive(value: Any) -> float | None:
    """``value`` as a finite positive float, else None (a timing tag that is absent, 0 or garbage)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _dicom_fps(ds: pydicom.Dataset) -> float | None:
    """Frame rate from FrameTime (ms), else CineRate, else RecommendedDisplayFrameRate."""
    ms = _positive(ds.get("FrameTime"))
    fps = 1000.0 / ms if ms else _positive(ds.get("CineRate")) or _positive(ds.get("RecommendedDisplayFrameRate"))
    return fps if fps and math.isfinite(fps) else None


def _dicom_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, col) mm per pixel: the first ultrasound region calibrated in cm (units code 3), else PixelSpacing."""
    for r in ds.get("SequenceOfUltrasoundRegions", []):
        if r.get("PhysicalUnitsXDirection") == 3 and r.get("PhysicalUnitsYDirection") == 3:
            return abs(float(r.PhysicalDeltaY)) * 10.0, abs(float(r.PhysicalDeltaX)) * 10.0
    spacing = ds.get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


_Raw = Iterator[tuple[int, float, Callable[[], np.ndarray]]]  # (index, time_s, lazy image) from a backend


def _pil_frames(path: Path, fmt: str) -> _Raw:
    """Frames (pages of a TIFF) of a Pillow image, each checked against ``MAX_PIXELS`` before it is decoded."""
    with _pillow(path):
        img = _open_image(path, fmt)
    unit = "page" if fmt == "TIFF" else "frame"
    with img:
        t = 0.0
        for i in range(getattr(img, "n_frames", 1)):
            if i:
                with _pillow(path):
                    img.seek(i)
                if img.width * img.height > MAX_PIXELS:  # a page of a TIFF has its own size
                    raise _too_big(path, f"{unit} {i + 1}", *img.size)
            yield i, t, lambda: _pil_gray(path, img)
            t += img.info.get("duration", 0) / 1000.0 or DEFAULT_FRAME_S


def _pil_gray(path: Path, img: Image.Image) -> np.ndarray:
    """The current frame of ``img`` as grey uint8; reduced in Pillow first when above ``MAX_SIDE`` (and its mode
    averages: not palette or 16-bit), which spares a full-size array copy of a big image."""
    with _pillow(path):
        f = _factor(*img.size)
        return to_gray_uint8(img.reduce(f) if f > 1 and img.mode in _REDUCIBLE else img)


def _dicom_frames(path: Path) -> _Raw:
    """Reads the header at the call (so a bad one is raised by ``iter_frames`` itself), pixels when iterated."""
    ds = _dicom_header(path)
    return _dicom_pixels(path, ds)


def _dicom_pixels(path: Path, ds: pydicom.Dataset) -> _Raw:
    """Frames of a DICOM whose header is ``ds``, decoded one at a time from the file."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored") or 0)
    bits = bits if 0 < bits <= 64 else None  # garbage (0, 255) means: scale by the data's effective depth
    dt = 1.0 / (_dicom_fps(ds) or 1.0 / DEFAULT_FRAME_S)
    for i, arr in enumerate(iter_pixels(path)):  # YBR is converted to RGB by pydicom
        if pi == "PALETTE COLOR":
            yield i, i * dt, lambda a=arr: to_gray_uint8(apply_color_lut(a, ds))
        else:
            yield i, i * dt, lambda a=arr: to_gray_uint8(a, photometric=pi if a.ndim == 2 else "RGB", bits=bits)


def _av_frames(path: Path) -> _Raw:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"max_pixels": str(MAX_PIXELS)}  # FFmpeg refuses larger frames mid-clip too
        rate = _positive(stream.average_rate or stream.guessed_rate)
        dt = 1.0 / rate if rate else DEFAULT_FRAME_S
        n, t0 = 0, None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else n * dt
                t0 = t if t0 is None else t0
                yield n, t - t0, lambda f=frame: _av_gray(f)
                n += 1
        except _LIB_ERRORS as exc:
            if n == 0:
                raise ReadError(f"{path}: no frame decodable (truncated or corrupt clip?): {_line(exc, path)}") from exc
            logger.warning("%s: read %d frames, then a decoding error (truncated clip?): %s", path, n, _line(exc, path))
            return
        if 0 < n < stream.frames:
            logger.warning("%s: read %d of the %d frames in the header (truncated clip?)", path, n, stream.frames)


#: planar YUV formats whose first plane is the luma (BT.601 luma of the RGB the encoder saw)
_PLANAR_YUV = frozenset(f"yuv{j}{s}p" for j in ("", "j") for s in ("420", "422", "444")) | {"nv12", "nv21"}
#: limited-range (16-235) luma to full range (0-255)
_LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def _av_gray(frame: av.VideoFrame) -> np.ndarray:
    """A decoded video frame as grey ``uint8``: the luma plane itself for planar YUV (range-expanded when
    limited), about 10x faster than converting to RGB and back and within 2 grey levels of it; other
    formats go through RGB."""
    name = frame.format.name
    if name not in _PLANAR_YUV:
        return to_gray_uint8(frame.to_ndarray(format="rgb24"))
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    full = name.startswith("yuvj") or frame.color_range == 2  # AVCOL_RANGE_JPEG
    return luma.copy() if full else _LIMITED_TO_FULL[luma]


def media_info(path: str | Path) -> MediaInfo:
    """Kind, frame count, rate, size and (DICOM) pixel spacing of ``path``, from headers where possible.

    The size is that of the frames :func:`iter_frames` yields: reduced for frames above ``MAX_SIDE``.

    Raises:
        ReadError: see :func:`sniff`; also a DICOM without pixel data, and frames above ``MAX_PIXELS``.
    """
    path = Path(path)
    kind, backend, label = _probe(path)
    with _wrap(path, "cannot read the header"):
        if backend == "pil":
            with _pillow(path), _open_image(path, label) as img:
                ms = img.info.get("duration", 0) if kind == "video" else 0
                fps = _positive(1000.0 / ms) if ms else None
                return MediaInfo(path, kind, getattr(img, "n_frames", 1), fps, *_out_size(*img.size), None)
        if backend == "dicom":
            ds = _dicom_header(path)
            n, width, height = int(ds.get("NumberOfFrames") or 1), int(ds.Columns), int(ds.Rows)
            f, spacing = _factor(width, height), _dicom_spacing(ds)
            spacing = (spacing[0] * f, spacing[1] * f) if spacing else None  # a reduced frame has bigger pixels
            return MediaInfo(path, kind, n, _dicom_fps(ds), *_out_size(width, height), spacing)
        with av.open(str(path)) as container:
            s = container.streams.video[0]
            rate = _positive(s.average_rate or s.guessed_rate)
            n, width, height = s.frames or None, s.codec_context.width, s.codec_context.height
        if not (width and height):  # header without codec parameters: decode the first frame
            height, width = next(iter_frames(path, max_frames=1)).image.shape
        return MediaInfo(path, kind, n, rate, *_out_size(width, height), None)


def iter_frames(path: str | Path, *, fps: float | None = None, max_frames: int | None = None) -> Iterator[Frame]:
    """Decode ``path`` one frame at a time; a still image yields one frame at time 0.

    Frames above ``MAX_SIDE`` on a side come out reduced by an integer factor (JPEG already at decode).

    Args:
        path: an image, clip, animated GIF, multi-page TIFF or DICOM file, recognised by content.
        fps: sample at this rate by timestamp: the first frame at or after each ``k / fps`` seconds
            (the first frame is always included). None keeps every frame.
        max_frames: stop decoding after yielding this many frames.

    Raises:
        ReadError: unreadable file (raised at the call: not a regular file, unknown content, a bad header,
            frames above ``MAX_PIXELS``), or no frame decodable or frames of different sizes (raised when
            iterating). A clip that breaks after some frames yields those and logs a warning.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    path = Path(path)
    _, backend, label = _probe(path)
    with _wrap(path, "cannot read the header"):
        if backend == "pil":
            source = _pil_frames(path, label)
        else:
            source = _dicom_frames(path) if backend == "dicom" else _av_frames(path)
    return _sample(path, source, fps, max_frames, "page" if label == "TIFF" else "frame")


def _sample(path: Path, source: _Raw, fps: float | None, max_frames: int | None, unit: str) -> Iterator[Frame]:
    count, next_k, first = 0, 0, (0, (0, 0))
    with _wrap(path, "cannot decode (truncated or corrupt file?)"), contextlib.closing(source):
        for index, time_s, image in source:
            if fps is not None:
                k = math.floor(time_s * fps + 1e-3)  # tolerance for rounded timestamps
                if k < next_k:
                    continue
                next_k = k + 1
            frame = Frame(index, time_s, _reduce(image()))
            if not count:
                first = (index, frame.image.shape)
            elif frame.image.shape != first[1]:  # pages of a TIFF, a clip whose resolution changes
                (h, w), (h0, w0) = frame.image.shape, first[1]
                raise ReadError(
                    f"{path}: {unit} {index + 1} is {w}x{h} pixels, {unit} {first[0] + 1} was {w0}x{h0}; "
                    f"the {unit}s of one file are read as a clip and must have one size: save them as separate files"
                )
            yield frame
            count += 1
            if count == max_frames:
                return
    if count == 0:
        raise ReadError(f"{path}: the clip holds no frames")


def read_frames(path: str | Path, **kw: Any) -> np.ndarray:
    """All frames of :func:`iter_frames` (same keywords) stacked as an (N, H, W) ``uint8`` array.

    Raises:
        ReadError: as :func:`iter_frames`, or frames of different sizes.
    """
    images = [f.image for f in iter_frames(path, **kw)]
    if len({im.shape for im in images}) > 1:
        raise ReadError(f"{path}: frames differ in size ({sorted({im.shape for im in images})}); use iter_frames")
    return np.stack(images)
