"""Atomic writes: a temporary file (or folder) beside the target, finished, then renamed over it.

Readers never see a half-written file, and an interrupted write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:  # unlike mkstemp's 0600, the file gets the user's umask like any other
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


def printable(text: object) -> str:
    """``text`` (often a file name) as valid UTF-8: bytes of a name that are not UTF-8 become ``\\xNN`` escapes,
    so every name can be shown and written to a table instead of crashing the writer."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _owner(path: Path) -> int | None:
    """The process id at the end of a staging name (``.out.partial-1234``), or ``None``."""
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def remove_stale(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders matching ``pattern`` in ``parent`` whose owning process (the trailing ``-PID``) is gone.

    A run killed with SIGKILL cannot clean up after itself; the next run does it here.
    """
    removed = []
    for tmp in parent.glob(pattern) if parent.is_dir() else ():
        pid = _owner(tmp)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _recover(out: Path) -> None:
    """Undo a run killed between its two renames (``out -> .old``, then ``.partial -> out``): put the old output
    back, so a folder that was complete is never lost; then remove stale staging folders of dead runs."""
    parent = out.absolute().parent
    if not out.exists():
        olds = [p for p in parent.glob(f".{out.name}.old-*") if (pid := _owner(p)) is not None and not pid_alive(pid)]
        if olds:
            max(olds, key=lambda p: p.stat().st_mtime).rename(out)
    remove_stale(parent, f".{out.name}.partial-*")
    remove_stale(parent, f".{out.name}.old-*")


def check_output(out: Path, overwrite: bool = False, error: type[Exception] = ValueError) -> None:
    """Refuse an output folder that is a file, or that is not empty without ``overwrite`` (after undoing what a
    killed run left there), so a command can check its ``--out`` before any work."""
    _recover(out)
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"{out}: output folder is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_folder(
    out: str | os.PathLike, overwrite: bool = False, subdirs: Sequence[str] = (), error: type[Exception] = ValueError
) -> Iterator[Path]:
    """Build a whole output folder under a temporary name beside ``out``, then rename it onto ``out``.

    The ``with`` body writes into the yielded folder; only when it finishes is ``out`` replaced, so an
    interrupted or failed run leaves the old folder (or none) and never a half-written one.

    Staging folders left by runs that were killed (SIGKILL, power loss) are removed, and an output that such a
    run had moved aside is put back, before anything else.

    Raises:
        error: ``out`` is a file, is a non-empty folder without ``overwrite``, or cannot be written.
    """
    out = Path(out)
    check_output(out, overwrite, error)
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
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:  # put the old output back: the caller sees the failure and keeps what it had
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
