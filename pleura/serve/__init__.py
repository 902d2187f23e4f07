"""``pleura serve``: a local web app where a clinician drops a clip and sees the diagnosis, the segmentation,
the biomarkers and the score, and an HTTP API that answers what ``pleura predict`` writes.

One page of plain HTML, CSS and JavaScript (``static/``, package data: no build step, no CDN, works offline),
FastAPI and uvicorn, one model in memory, a bounded worker pool. Prediction goes through the predict command's
own writer (``pleura.infer.report.PredictionWriter``) and the one :class:`pleura.infer.predictor.Predictor`.

Example:
    >>> from pleura.serve import ServeConfig, create_app
    >>> app = create_app(ServeConfig(model=pretrained()))  # an ASGI app; pleura serve runs it with uvicorn
"""

from __future__ import annotations

from pleura.serve.app import ServeConfig, create_app, is_loopback, serve

__all__ = ["ServeConfig", "create_app", "is_loopback", "serve"]
