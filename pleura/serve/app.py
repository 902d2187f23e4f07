"""The FastAPI app of ``pleura serve``: one page, the prediction API, downloads, the exam view.

Routes:

* ``GET /``: the page (``static/index.html``, its CSS and JavaScript: package data, no build step, no CDN).
* ``POST /api/predict``: one file (multipart field ``file``, or the raw body with ``?name=``); answers the JSON
  ``pleura predict`` writes (``predictions.json``; the file named by its upload name, the model by its file
  name) and the result's id in the ``X-Pleura-Result`` header. 413 over the size cap, 415 for content that is not
  an image, clip or DICOM, 422 for a file that cannot be predicted, 503 with ``Retry-After`` when the queue is full.
* ``GET /api/results/{id}`` and ``/api/results/{id}/{file}``: a result's downloads (JSON, CSV, annotated MP4,
  figure, masks) and the page's player data, by fixed public names; ``GET /api/progress/{ticket}``.
* ``POST /api/exam`` (zone -> result id): scored by ``pleura score``'s code; its files under ``/api/results/{id}/``.
* ``GET /api/models``, ``GET /model-card``, ``GET /openapi.json`` (FastAPI's schema; its Swagger and ReDoc pages
  are off because they load their scripts from a CDN).

Security: no client string becomes a path (uploads get server-made names, results are looked up by random id
and fixed names); uploads go to a private 0700 folder and are deleted when their prediction ends; a bounded
queue; CSP ``'self'`` only and nosniff on every answer; a Host check against DNS rebinding and an Origin check
against cross-site posts while bound to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from pleura import __version__
from pleura.data.readers import ReadError, sniff
from pleura.infer.predictor import Predictor
from pleura.models import PRETRAINED
from pleura.serve.exam import DEFAULT_SCHEME, score_predictions, write_report, zone_names
from pleura.serve.jobs import RESULT_FILES, Analysis, BusyError, ProgressBoard, ResultStore, WorkerPool, valid_id
from pleura.serve.uploads import UploadError, download_stem, receive_upload

logger = logging.getLogger(__name__)

MB = 1_000_000
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
EXAM_FILES = {  # pleura score's files of an exam, and the report
    "score.json": "application/json", "score.csv": "text/csv; charset=utf-8",
    "score.md": "text/markdown; charset=utf-8", "chest_map.png": "image/png", "report.html": "text/html; charset=utf-8",
}  # fmt: skip
STATIC = {  # public name -> (package data file, media type): the page's only files
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


@dataclass
class ServeConfig:
    """What ``pleura serve`` runs with (every field is an option of the command)."""

    model: Path  # the model file (pleura export model), loaded once
    host: str = "127.0.0.1"  # loopback unless the command was told otherwise (--allow-remote)
    port: int = 8000
    max_upload_mb: float = 500.0  # uploads above this are refused (413), also while they stream
    workers: int = 1  # prediction threads: 1 or 2 (one model in memory)
    queue: int = 4  # requests that may wait (uploading or queued) beyond the running ones; more -> 503
    keep_s: float = 900.0  # a result's downloads stay this long after the answer
    timeout_s: float = 600.0  # an upload or a prediction taking longer is given up (408 / 504)
    engine: str = "onnx"  # onnx or torch, as pleura predict
    rate: float | None = 10.0  # frames per second predicted from clips, as pleura predict
    max_frames: int | None = None  # at most this many frames per file
    tta: bool = False  # average each frame's probabilities with its mirror's, as pleura predict --tta
    ood: str = "withhold"  # a file whose every frame is out of distribution: withhold or warn, as pleura predict --ood

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.workers not in (1, 2):
            raise ValueError(f"--workers must be 1 or 2, got {self.workers}")
        if self.queue < 0:
            raise ValueError(f"--queue must be >= 0, got {self.queue}")
        if not (1 <= self.port <= 65535):
            raise ValueError(f"--port must be 1-65535, got {self.port}")
        if not self.keep_s > 0 or not self.timeout_s > 0:
            raise ValueError("--keep and --timeout must be > 0 seconds")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: ``{"error": "one line"}``, which the page shows as it is."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _static(name: str) -> bytes:
    return (resources.files("pleura.serve") / "static" / name).read_bytes()


def create_app(config: ServeConfig, predictor: Predictor | None = None) -> FastAPI:
    """The app for ``config``; ``predictor`` (the model already loaded) is used instead of loading ``config.model``.

    Raises:
        ValueError: a bad config, or a model file that cannot be loaded.
    """
    config.validate()
    if predictor is None:
        predictor = Predictor(config.model, engine=config.engine, rate=config.rate, max_frames=config.max_frames,
                              tta=config.tta, ood_policy=config.ood)  # fmt: skip
    cap = int(config.max_upload_mb * MB)
    state: dict[str, Any] = {}
    busy: set[str] = set()  # result ids whose job is running (the sweeper leaves them)
    local = is_loopback(config.host)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["store"] = ResultStore(keep_s=config.keep_s)
        state["pool"] = WorkerPool(config.workers, config.queue)
        state["progress"] = ProgressBoard()
        state["analysis"] = Analysis(predictor, workers=config.workers)

        async def sweeper() -> None:
            while True:
                await asyncio.sleep(min(30.0, config.keep_s / 4))
                state["store"].sweep(busy)

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            state["pool"].close()
            state["store"].close()

    app = FastAPI(
        title="pleura serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Lung-ultrasound diagnosis, segmentation and biomarkers of uploaded images, clips and DICOM "
        "files. Research software, not a medical device.",
    )  # fmt: skip

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if local and host and not is_loopback(host):  # DNS rebinding: a page of another site resolving to us
            return _error(403, f"host {host!r} refused: pleura serve answers only to localhost unless --allow-remote")
        origin = request.headers.get("origin")
        cross = origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host")
        if request.method not in ("GET", "HEAD") and cross:  # a cross-site form post
            return _error(403, "cross-origin request refused")
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(_static("index.html"), media_type=STATIC["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC or name == "index.html":
            return _error(404, "no such file")
        return Response(_static(name), media_type=STATIC[name])

    @app.get("/model-card", response_class=PlainTextResponse, summary="The shipped models' card (Markdown)")
    async def model_card() -> PlainTextResponse:
        text = (resources.files("pleura.models") / "pretrained" / "README.md").read_text("utf-8")
        return PlainTextResponse(text, media_type="text/plain; charset=utf-8")

    @app.get("/api/models", summary="The shipped models and the one loaded")
    async def models() -> dict[str, Any]:
        loaded = predictor.path.stem
        items = [{"name": n, "description": d, "loaded": n == loaded} for n, d in PRETRAINED.items()]
        if loaded not in PRETRAINED:
            items.append({"name": loaded, "description": "model file given with --model", "loaded": True})
        return {
            "loaded": {"name": loaded, "class_names": list(predictor.class_names), "image_size": predictor.size,
                       "schema": predictor.schema.name, "temperature": predictor.temperature,
                       "ood_detector": predictor.ood is not None, "engine": config.engine, "rate": config.rate},
            "models": items,
            "limits": {"max_upload_mb": config.max_upload_mb, "workers": config.workers, "queue": config.queue,
                       "keep_s": config.keep_s},
            "zones": {scheme: zone_names(scheme) for scheme in ("14", "12")},
            "default_scheme": DEFAULT_SCHEME,
        }  # fmt: skip

    @app.get("/api/progress/{ticket}", summary="Progress of an upload the page tagged with ?ticket=")
    async def progress(ticket: str) -> Response:
        item = state["progress"].get(ticket) if valid_id(ticket) else None
        return JSONResponse(item) if item is not None else _error(404, "no such ticket")

    @app.post(
        "/api/predict",
        summary="Diagnose one image, clip or DICOM file: the JSON pleura predict writes",
        openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
            "type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}}}}},
    )  # fmt: skip
    async def predict(request: Request, name: str | None = None, ticket: str | None = None) -> Response:
        pool, store, board = state["pool"], state["store"], state["progress"]
        ticket = ticket if ticket and valid_id(ticket) else None
        store.sweep(busy)
        try:
            pool.acquire()
        except BusyError as e:
            board.update(ticket, stage="error", error=str(e))
            return _error(503, str(e), {"Retry-After": str(e.retry_after)})
        submitted = False
        rid, folder = store.new()
        busy.add(rid)
        upload_path = folder / "upload"
        try:
            (folder / "in").mkdir(mode=0o700)
            upload_path = folder / "in" / "input"
            board.update(ticket, stage="upload")
            try:
                upload = await asyncio.wait_for(
                    receive_upload(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                   request.stream(), upload_path, cap, name),
                    config.timeout_s,
                )  # fmt: skip
            except TimeoutError:
                raise UploadError(408, f"the upload took longer than {config.timeout_s:g} s") from None
            shown = upload.display_name
            board.update(ticket, stage="check", name=shown)
            try:
                await run_in_threadpool(sniff, upload.path)
            except ReadError as e:
                raise UploadError(415, str(e).replace(str(upload.path), shown)) from None
            out = folder / "out"
            out.mkdir(mode=0o700)
            job = functools.partial(state["analysis"], upload.path, shown, out, functools.partial(board.update, ticket))
            board.update(ticket, stage="queued")
            future = pool.submit(job)
            submitted = True
            future.add_done_callback(lambda _: upload.path.unlink(missing_ok=True))  # the upload goes at once
            try:
                doc = await asyncio.wait_for(asyncio.wrap_future(future), config.timeout_s)
            except TimeoutError:  # the job may still run: its folder goes when it ends
                future.add_done_callback(lambda _: store.discard(rid))
                message = f"{shown}: the prediction took longer than {config.timeout_s:g} s"
                board.update(ticket, stage="error", error=message)
                return _error(504, message)
            except (ReadError, ValueError, OSError) as e:
                store.discard(rid)
                raise UploadError(422, str(e).replace(str(upload.path), shown) or f"{shown}: cannot predict") from None
            files = {public: out / actual for public, (actual, _) in RESULT_FILES.items()}
            store.publish(rid, shown, files, doc=doc)
            board.update(ticket, stage="done", result=rid)
            return JSONResponse(doc, headers={"X-Pleura-Result": rid})
        except UploadError as e:
            store.discard(rid)
            board.update(ticket, stage="error", error=str(e))
            return _error(e.status, str(e))
        except Exception as e:  # a bug or a resource failure: the server stays up, the page gets one line
            logger.exception("prediction failed")
            store.discard(rid)
            board.update(ticket, stage="error", error="internal error")
            return _error(500, f"internal error ({type(e).__name__}); the server log has the details")
        finally:
            busy.discard(rid)
            if not submitted:
                pool.release()
                upload_path.unlink(missing_ok=True)

    def _entry(rid: str) -> Any:
        return state["store"].get(rid) if valid_id(rid) else None

    @app.get("/api/results/{rid}", summary="A result's downloads")
    async def result(rid: str) -> Response:
        entry = _entry(rid)
        if entry is None:
            return _error(404, "no such result (results are kept for a while after the answer, then deleted)")
        files = {k: f"/api/results/{rid}/{k}" for k in entry.files}
        return JSONResponse({"id": rid, "name": entry.name, "kind": entry.kind, "files": files})

    @app.get("/api/results/{rid}/{name}", summary="One download of a result, by its public name")
    async def result_file(rid: str, name: str, download: bool = False) -> Response:
        entry = _entry(rid)
        path = entry.files.get(name) if entry is not None else None
        if path is None or not path.is_file():
            return _error(404, "no such result file")
        media = RESULT_FILES[name][1] if name in RESULT_FILES else EXAM_FILES[name]
        suffix = name.rsplit(".", 1)[-1]
        headers = {"Cache-Control": "private, max-age=60"}
        if name == "report.html":  # a standalone document: its own inline style and image, no script
            headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        filename = f"{download_stem(entry.name)}-{name.rsplit('.', 1)[0]}.{suffix}"
        return FileResponse(
            path, media_type=media, headers=headers, filename=filename if download else None,
            content_disposition_type="attachment" if download else "inline",
        )  # fmt: skip

    @app.post("/api/exam", summary="Score an exam as pleura score does: {'patient', 'scheme', 'zones': {zone: id}}")
    async def exam(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            zones, patient = body["zones"], str(body.get("patient", ""))[:120]
            scheme = str(body.get("scheme", DEFAULT_SCHEME))
            if not isinstance(zones, dict) or not zones:
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, 'send {"patient": "...", "scheme": "14", "zones": {"R1": "<result id>", ...}}')
        files = {}
        for zone, rid in zones.items():
            entry = _entry(str(rid))
            if entry is None or entry.kind != "file" or not entry.doc:
                return _error(404, f"{str(zone)[:20]}: no such result (upload the clip again)")
            files[str(zone)] = entry.doc["files"][0]
        try:
            result, doc = score_predictions(files, scheme)
        except ValueError as e:
            return _error(400, str(e))
        store = state["store"]
        eid, folder = store.new()
        try:
            await run_in_threadpool(write_report, result, doc, folder, patient, predictor.path.name)
        except (ValueError, OSError) as e:
            store.discard(eid)
            return _error(500, f"cannot write the exam report ({e})")
        store.publish(eid, patient or "exam", {k: folder / k for k in EXAM_FILES}, kind="exam", doc=doc)
        files_out = {k: f"/api/results/{eid}/{k}" for k in EXAM_FILES}
        return JSONResponse({**doc, "patient": patient, "id": eid, "files": files_out})

    app.state.config = config
    app.state.predictor = predictor
    app.state.serve = state
    return app


def serve(config: ServeConfig, on_ready: Callable[[], None] | None = None) -> None:
    """Load the model and run the app with uvicorn until interrupted (``pleura serve``); ``on_ready`` is called once
    the model has loaded, before listening (the command announces its address there, not before a refusal)."""
    import uvicorn

    app = create_app(config)
    if on_ready is not None:
        on_ready()
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", server_header=False,
                timeout_graceful_shutdown=5)  # fmt: skip


__all__ = ["ServeConfig", "create_app", "is_loopback", "serve"]
