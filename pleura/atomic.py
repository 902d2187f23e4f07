"""Atomic writes: a temporary file (or folder) beside the target, finished, then renamed over it.

Readers never see a half-written file, and an interrupted write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def finite(obj: Any) -> Any:
    """Replace NaN and infinities by ``None`` throughout, so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (NaN becomes null) atomically."""
    return write_text(path, json.dumps(finite(obj), indent=2) + "\n")


@contextlib.contextmanager
def staged_folder(
    out: str | os.PathLike, overwrite: bool = False, subdirs: Sequence[str] = (), error: type[Exception] = ValueError
) -> Iterator[Path]:
    """Build a whole output folder under a temporary name beside ``out``, then rename it onto ``out``.

    The ``with`` body writes into the yielded folder; only when it finishes is ``out`` replaced, so an
    interrupted or failed run leaves the old folder (or none) and never a half-written one.

    Raises:
        error: ``out`` is a file, is a non-empty folder without ``overwrite``, or cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"{out}: output folder is not empty; pass --overwrite to replace it")
    parent = out.absolute().parent
    tmp = parent / f".{out.name}.partial-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for sub in subdirs:
            (tmp / sub).mkdir(parents=True)
    except OSError as e:
        raise error(f"{out}: cannot write the output folder ({e.strerror or e})") from None
    try:
        yield tmp
        old = None
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
