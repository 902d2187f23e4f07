"""Receiving an upload: the request body streamed to a file of the server's choosing, under a size cap.

The client's file name is kept only as text to show (``display_name``); it never becomes a path. The body is
either ``multipart/form-data`` (``curl -F file=@clip.mp4``, the page's form; the first part with a file name is
taken, parsed as it streams by python-multipart's low-level parser, never spooled elsewhere) or the raw file
(``curl --data-binary @clip.mp4 -H 'Content-Type: application/octet-stream'``, its name in ``?name=``).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from pleura.atomic import printable

NAME_CHARS = 120  # longest display name kept (the rest is cut): a name is shown, never used as a path


class UploadError(Exception):
    """An upload refused before prediction: ``status`` is the HTTP status, the message one line for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """A received file: where the server put it, how many bytes, and the client's name (text only)."""

    path: Path
    size: int
    display_name: str


def display_name(name: str | None) -> str:
    """The client's file name as safe display text: the last path component, control characters removed,
    at most ``NAME_CHARS`` characters; ``upload`` when nothing is left."""
    text = printable(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip()
    return text[:NAME_CHARS] or "upload"


def download_stem(name: str) -> str:
    """A file-name stem for downloads (``Content-Disposition``): ASCII letters, digits, ``.``, ``-``, ``_``."""
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "upload"


def _too_big(cap: int) -> UploadError:
    limit = f"{cap / 1e6:g} MB"
    return UploadError(413, f"the file is larger than the upload limit of {limit} (pleura serve --max-upload-mb)")


def _create(path: Path) -> BinaryIO:
    """A new file only the server's user can read (0600); refuses to follow or replace an existing one."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600), "wb")


class _Sink:
    """Writes the bytes of the first file part of a multipart body to ``path``, counting them against ``cap``."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = path, cap
        self.fh: BinaryIO | None = None
        self.size = 0
        self.name: str | None = None
        self.done = False  # the file part has ended: later parts are ignored
        self._field, self._value = b"", b""
        self._disposition = b""
        self._in_file = False

    def callbacks(self) -> dict:
        """The parser's callbacks."""
        return {
            "on_part_begin": self._begin, "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end,
        }  # fmt: skip

    def _begin(self) -> None:
        self._disposition, self._in_file = b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        filename = options.get(b"filename")
        if filename is not None and not self.done and self.fh is None:
            self.name = filename.decode("utf-8", "surrogateescape")
            self.fh = _create(self.path)
            self._in_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self.fh is None:
            return
        self.size += end - start
        if self.size > self.cap:
            raise _too_big(self.cap)
        self.fh.write(data[start:end])

    def _end(self) -> None:
        if self._in_file and self.fh is not None:
            self.fh.close()
            self._in_file, self.done = False, True


async def receive_upload(
    content_type: str, content_length: str | None, chunks: AsyncIterator[bytes], path: Path, cap: int, name: str | None
) -> Upload:
    """Stream a request body to ``path`` (created new, mode 0600) and return what was received.

    Args:
        content_type: the request's ``Content-Type``; ``multipart/form-data`` or anything else for a raw body.
        content_length: the request's ``Content-Length``: a body announced larger than ``cap`` is refused unread.
        chunks: the body as it arrives (``request.stream()``).
        name: the display name of a raw body (``?name=``); multipart bodies carry their own.

    Raises:
        UploadError: 413 over ``cap``, 400 for a body without a file or an empty file.
    """
    if content_length and content_length.isdigit() and int(content_length) > cap + 64 * 1024:  # + multipart framing
        raise _too_big(cap)
    mime, options = parse_options_header(content_type or "")
    if mime == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadError(400, "multipart upload without a boundary")
        sink = _Sink(path, cap)
        parser = MultipartParser(boundary, sink.callbacks())
        try:
            async for chunk in chunks:
                parser.write(chunk)
            parser.finalize()
        except UploadError:
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends: a malformed body
            raise UploadError(400, f"malformed multipart upload ({type(exc).__name__})") from None
        finally:
            if sink.fh is not None:
                sink.fh.close()
        if sink.name is None:
            raise UploadError(400, "the upload holds no file (send it as the form field 'file')")
        size, name = sink.size, sink.name
    else:
        size = 0
        with _create(path) as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise _too_big(cap)
                fh.write(chunk)
    shown = display_name(name)
    if size == 0:
        raise UploadError(400, f"{shown}: empty file (0 bytes)")
    return Upload(path=path, size=size, display_name=shown)
