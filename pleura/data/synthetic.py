"""Write frames as the media files pleura reads: an MP4 (or AVI) clip, or an ultrasound DICOM.

For tests, benchmarks and examples: one place that knows how to make a valid clip or DICOM from arrays, so
every test of the readers, the predictor and the command line starts from the same kind of file.

Example:
    >>> write_clip("clip.mp4", frames, fps=10)  # frames: (N, H, W) uint8 grey or (N, H, W, 3) RGB
    >>> write_dicom("clip.dcm", frames, FrameTime=33.3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

US_MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage


def write_clip(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray] | np.ndarray,
    fps: float = 10,
    codec: str = "mpeg4",
    container: str | None = None,
) -> Path:
    """Encode uint8 frames ((H, W) grey or (H, W, 3) RGB, even sides) as a video file with PyAV.

    Args:
        codec: ``mpeg4``, ``libx264``, ``mjpeg``, ... (any encoder PyAV has).
        container: format name (``mp4``, ``avi``); ``None`` guesses it from the suffix.
    """
    import av

    path = Path(path)
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w", format=container) as box:
        stream = box.add_stream(codec, rate=round(fps))
        first = np.asarray(frames[0])
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], pix_fmt
        for frame in frames:
            rgb = np.asarray(frame, dtype=np.uint8)
            rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
            box.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        box.mux(stream.encode())
    return path


def write_dicom(
    path: str | os.PathLike,
    frames: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    **tags: object,
) -> Path:
    """An ultrasound multi-frame DICOM of ``frames`` (N, rows, cols), or (N, rows, cols, 3) for colour with a
    colour ``photometric`` (``RGB``, ``YBR_FULL``); ``bits`` above 8 are stored in 16-bit words. ``tags`` set
    or override header fields. Frames with no samples (size 0) give a header without pixel data."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path, frames = Path(path), np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape[:3]
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if frames.size:
        ds.PixelData = frames.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
