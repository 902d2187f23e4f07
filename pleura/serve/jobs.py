"""The server's work: a bounded worker pool, the private folder results live in, progress tickets, and the
analysis of one upload through ``pleura predict``'s own writer.

* :class:`WorkerPool`: ``workers`` threads (1-2) and ``workers + queue`` slots. A request takes a slot before
  its upload is read and gives it back when its prediction ends, so uploads, queued and running jobs together
  are bounded; without a free slot the answer is 503 with ``Retry-After``.
* :class:`ResultStore`: one private temporary folder (mode 0700) per server, one random-id folder per job in
  it. Uploads are deleted as soon as their prediction ends; results (JSON, CSV, MP4...) are kept ``keep_s``
  seconds for downloads, at most ``max_results`` of them, and everything is removed when the server stops (or,
  after a SIGKILL, by the next server).
* :class:`Analysis`: one upload through :class:`pleura.infer.report.PredictionWriter` (the predict command's
  writer, so the JSON is the one ``pleura predict`` writes) with the one shared :class:`Predictor`, plus what
  the page's player needs: cleaned frames, label maps and Grad-CAM of a sample of frames, and the masks as PNG.
"""

from __future__ import annotations

import concurrent.futures
import copy
import io
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura.atomic import remove_stale, write_bytes, write_text
from pleura.data.readers import media_info
from pleura.infer.explain import class_activation_map
from pleura.infer.predictor import ClipResult, FrameHook, FrameResult, Predictor
from pleura.infer.report import PredictionWriter

logger = logging.getLogger(__name__)

PLAYER_FRAMES = 48  # frames of a clip the page's player gets (evenly spaced), each with a Grad-CAM (~60 ms each)
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def valid_id(text: str) -> bool:
    """Whether ``text`` looks like an id this server hands out or a page's ticket (8-64 URL-safe characters)."""
    return 8 <= len(text) <= 64 and set(text) <= ID_CHARS


class BusyError(Exception):
    """Every slot of the pool is taken: answer 503 and ask the client to come back after ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class WorkerPool:
    """``workers`` threads that run predictions, and ``workers + queue`` slots for requests in flight."""

    def __init__(self, workers: int = 1, queue: int = 4) -> None:
        if not 1 <= workers <= 2:
            raise ValueError(f"workers must be 1 or 2 (one model in memory, a 2-core CPU), got {workers}")
        if queue < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        self.workers, self.capacity = workers, workers + queue
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pleura-serve")
        self._lock = threading.Lock()
        self.in_flight = 0
        self._seconds: list[float] = []  # durations of the last jobs, for Retry-After

    def acquire(self) -> None:
        """Take a slot, or raise :class:`BusyError`."""
        with self._lock:
            if self.in_flight >= self.capacity:
                raise BusyError(self.retry_after())
            self.in_flight += 1

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the mean job time x jobs ahead / workers, 1-120 s."""
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 5.0
        return int(min(120, max(1, math.ceil(mean * self.in_flight / self.workers))))

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on a worker; the slot taken by :meth:`acquire` is given back when it ends (or is cancelled)."""

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                with self._lock:
                    self._seconds = [*self._seconds[-19:], time.perf_counter() - start]

        future = self.executor.submit(timed)
        future.add_done_callback(lambda _: self.release())
        return future

    def close(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish."""
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Entry:
    folder: Path
    created: float
    name: str = ""  # the upload's display name
    files: dict[str, Path] = field(default_factory=dict)  # public name -> file; empty until published
    kind: str = "file"  # "file" (a prediction) or "exam"
    doc: dict[str, Any] | None = None  # what the job answered (an exam reads its files' predictions here)


class ResultStore:
    """The private temporary folder of one server: a random-id folder per job, results kept ``keep_s`` seconds."""

    def __init__(self, keep_s: float = 900.0, max_results: int = 64) -> None:
        tmp = Path(tempfile.gettempdir())
        remove_stale(tmp, "pleura-serve-*")  # folders of servers that were killed
        self.root = Path(tempfile.mkdtemp(prefix="pleura-serve-", suffix=f"-{os.getpid()}"))  # mode 0700
        self.keep_s, self.max_results = keep_s, max_results
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def new(self) -> tuple[str, Path]:
        """A fresh job id and its private folder."""
        rid = secrets.token_urlsafe(12)
        folder = self.root / rid
        folder.mkdir(mode=0o700)
        with self._lock:
            self._entries[rid] = _Entry(folder, time.monotonic())
        return rid, folder

    def publish(self, rid: str, name: str, files: dict[str, Path], kind: str = "file", doc: dict | None = None) -> None:
        """Make a finished job's files downloadable (those that exist) under their public names."""
        with self._lock:
            entry = self._entries.get(rid)
            if entry is None:  # discarded meanwhile (timed out, server closing)
                return
            entry.name, entry.kind, entry.doc = name, kind, doc
            entry.files = {k: p for k, p in files.items() if p.is_file()}
            entry.created = time.monotonic()  # the keep time runs from the answer

    def get(self, rid: str) -> _Entry | None:
        """The published job ``rid``, or ``None`` (unknown, expired, or not finished)."""
        with self._lock:
            entry = self._entries.get(rid)
            return entry if entry is not None and entry.files else None

    def discard(self, rid: str) -> None:
        """Delete a job's folder and forget it."""
        with self._lock:
            entry = self._entries.pop(rid, None)
        if entry is not None:
            shutil.rmtree(entry.folder, ignore_errors=True)

    def sweep(self, busy: set[str] | frozenset[str] = frozenset()) -> int:
        """Delete results older than ``keep_s`` and the oldest beyond ``max_results`` (jobs in ``busy`` are kept);
        returns how many were deleted."""
        now = time.monotonic()
        with self._lock:
            old = [r for r, e in self._entries.items() if r not in busy and now - e.created > self.keep_s]
            done = [r for r, e in self._entries.items() if e.files and r not in old]
            old += done[: max(0, len(done) - self.max_results)]
        for rid in old:
            self.discard(rid)
        return len(old)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def close(self) -> None:
        """Delete every job and the folder itself."""
        with self._lock:
            self._entries.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class ProgressBoard:
    """What the page polls while a file is analysed: the stage and the frames done, by the page's ticket."""

    LIMIT = 512  # tickets kept; the oldest go first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def update(self, ticket: str | None, **fields: Any) -> None:
        """Set fields of a ticket's progress (nothing without a ticket)."""
        if not ticket:
            return
        with self._lock:
            item = self._items.setdefault(ticket, {"stage": "upload", "frames": 0, "expected": None})
            item.update(fields)
            self._items.move_to_end(ticket)
            while len(self._items) > self.LIMIT:
                self._items.popitem(last=False)

    def get(self, ticket: str) -> dict[str, Any] | None:
        """A copy of a ticket's progress, or ``None``."""
        with self._lock:
            item = self._items.get(ticket)
            return dict(item) if item is not None else None


def expected_frames(path: Path, rate: float | None, max_frames: int | None) -> int | None:
    """About how many frames the predictor will take from ``path`` (for the progress bar and the player's
    spacing); ``None`` when the file's header does not say."""
    try:
        info = media_info(path)
    except ValueError:
        return None
    if info.kind == "image":
        n: int | None = 1
    elif info.n_frames is None:
        n = None
    elif rate and info.fps:
        n = max(1, math.ceil(info.n_frames * min(1.0, rate / info.fps)))
    else:
        n = info.n_frames
    return min(n, max_frames) if n is not None and max_frames else n


class _View:
    """The shared :class:`Predictor` as one worker sees it: the model's file name in place of its path (no server
    path in an answer), the worker's own copy of the network for Grad-CAM (it hooks modules, so two workers must
    not share one), and an extra frame hook (progress, player, masks). Prediction itself is the shared one."""

    def __init__(self, predictor: Predictor, model: Any, hook: FrameHook) -> None:
        self._predictor, self._hook = predictor, hook
        self.model = model
        self.path = Path(predictor.path.name)
        self.schema, self.class_names, self.temperature = predictor.schema, predictor.class_names, predictor.temperature
        self.tta = predictor.tta  # the report states whether the mirror was averaged in

    def predict(self, path: str | Path, on_frame: FrameHook | None = None, **options: Any) -> ClipResult:
        """``Predictor.predict`` (its keyword options passed on) with this view's hook called after the writer's."""

        def both(result: FrameResult, image: np.ndarray, labels: np.ndarray) -> None:
            if on_frame is not None:
                on_frame(result, image, labels)
            self._hook(result, image, labels)

        return self._predictor.predict(path, on_frame=both, **options)


#: public name of a result file -> (file name in the job's output folder, media type)
RESULT_FILES: dict[str, tuple[str, str]] = {
    "predictions.json": ("predictions.json", "application/json"),
    "clips.csv": ("clips.csv", "text/csv; charset=utf-8"),
    "frames.csv": ("frames.csv", "text/csv; charset=utf-8"),
    "annotated.mp4": ("input.mp4", "video/mp4"),
    "figure.png": ("input.png", "image/png"),
    "masks.zip": ("masks.zip", "application/zip"),
    "player.json": ("player.json", "application/json"),
    "frames.bin": ("frames.bin", "application/octet-stream"),
    "labels.bin": ("labels.bin", "application/octet-stream"),
    "cam.bin": ("cam.bin", "application/octet-stream"),
}
INPUT_NAME = "input"  # the server's name for every upload (its stem names the writer's figure and clip)


class Analysis:
    """Analyses one upload with the one model in memory: ``pleura predict``'s outputs plus the page's player data.

    Args:
        predictor: the server's only :class:`Predictor`.
        workers: worker threads that may call this at once (each gets its own Grad-CAM copy of the network when
            there are two; the copy of the default model is about 0.5 MB).
        player_frames: frames of a clip sampled for the page's player, each with its Grad-CAM.
    """

    def __init__(self, predictor: Predictor, workers: int = 1, player_frames: int = PLAYER_FRAMES) -> None:
        self.predictor, self.workers, self.player_frames = predictor, workers, player_frames
        self._local = threading.local()

    def _cam_model(self) -> Any:
        if self.workers == 1:
            return self.predictor.model
        if not hasattr(self._local, "model"):
            self._local.model = copy.deepcopy(self.predictor.model)
        return self._local.model

    def __call__(self, upload: Path, name: str, out: Path, progress: Callable[..., None]) -> dict[str, Any]:
        """Predict ``upload`` (shown as ``name``) into ``out``; returns the predictions.json document.

        Raises:
            ReadError, ValueError, OSError: the file cannot be read or predicted (the message names ``upload``).
        """
        p = self.predictor
        expected = expected_frames(upload, p.rate, p.max_frames)
        stride = max(1, math.ceil((expected or 1) / self.player_frames))
        progress(stage="predict", expected=expected, frames=0)
        player: list[tuple[FrameResult, np.ndarray, np.ndarray]] = []
        palette = p.schema.palette().reshape(-1).tolist()
        masks_tmp = out / ".masks.zip.partial"
        count = 0
        with zipfile.ZipFile(masks_tmp, "w", zipfile.ZIP_STORED) as masks:

            def hook(result: FrameResult, image: np.ndarray, labels: np.ndarray) -> None:
                nonlocal count
                if count % stride == 0 and len(player) < self.player_frames:
                    player.append((result, image.copy(), labels.astype(np.uint8)))
                png = Image.fromarray(labels.astype(np.uint8), mode="P")
                png.putpalette(palette)
                buf = io.BytesIO()
                png.save(buf, format="PNG")
                masks.writestr(f"masks/frame{result.index:06d}.png", buf.getvalue())
                count += 1
                progress(frames=count)

            writer = PredictionWriter(out, _View(p, self._cam_model(), hook), video=True)
            result = writer.predict(upload)
            result.path = name  # the tables and the JSON name the upload, never the server's file
            names = p.schema.names
            masks.writestr("labels.json", json.dumps({"schema": p.schema.name, "classes": list(names),
                                                      "palette": p.schema.palette().tolist()}, indent=2))  # fmt: skip
        os.replace(masks_tmp, out / "masks.zip")
        progress(stage="write")
        writer.close()
        self._write_player(out, result, player)
        doc = json.loads((out / "predictions.json").read_text())
        progress(stage="done")
        return doc

    def _write_player(self, out: Path, result: ClipResult, player: list) -> None:
        """The player's frames, label maps and Grad-CAMs as raw (N, S, S) uint8 arrays, and their description."""
        p = self.predictor
        target = result.diagnosis or max(result.probabilities, key=result.probabilities.get)
        k = p.class_names.index(target)
        model = self._cam_model()
        images = np.stack([im for _, im, _ in player])
        labels = np.stack([lab for _, _, lab in player])
        cams = np.stack([np.round(class_activation_map(model, im, k) * 255).astype(np.uint8) for im in images])
        write_bytes(out / "frames.bin", images.astype(np.uint8).tobytes())
        write_bytes(out / "labels.bin", labels.tobytes())
        write_bytes(out / "cam.bin", cams.tobytes())
        meta = {
            "size": int(images.shape[1]), "count": len(player), "cam_class": target,
            "frames": [{"index": r.index, "time_s": r.time_s, "ood": r.ood, "diagnosis": r.diagnosis}
                       for r, _, _ in player],
            "classes": [{"index": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(p.schema.classes)],
        }  # fmt: skip
        write_text(out / "player.json", json.dumps(meta) + "\n")
