"""What ``pleura predict`` writes: per-file figures and clips, and the tables of every file and frame.

For each input: ``<name>.png`` (the most confident in-distribution frame: the frame, its segmentation and
its class-activation map, with the diagnosis) and, for a clip, ``<name>.mp4`` (every predicted frame with
its segmentation overlaid). For the batch: ``predictions.json`` (every file with its frames, severity score
and rule; label maps are left out), ``clips.csv`` (with the severity score and its rule) and ``frames.csv``.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import finite, printable, write_text
from pleura.infer.explain import AnnotatedVideo, class_activation_map
from pleura.infer.predictor import ClipResult, FrameResult, Predictor
from pleura.report import csv_text
from pleura.viz import annotated_panel, save_png


def _title(result: FrameResult | ClipResult) -> str:
    p = result.probabilities
    if result.diagnosis is None:
        head = "no diagnosis (out of distribution):"
    elif result.ood if isinstance(result, FrameResult) else result.all_ood:
        head = f"{result.diagnosis} (out of distribution: do not trust)"
    else:
        head = result.diagnosis
    return f"{head} " + " ".join(f"{k} {v:.2f}" for k, v in p.items())


class PredictionWriter:
    """Predicts files one by one into ``out``; ``close()`` writes the tables."""

    def __init__(self, out: str | Path, predictor: Predictor, video: bool = True) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.predictor, self.video = predictor, video
        self.results: list[ClipResult] = []
        self.names: set[str] = set()

    def _name(self, path: Path) -> str:
        name, k = path.stem or path.name, 1
        while name in self.names:
            k += 1
            name = f"{path.stem}-{k}"
        self.names.add(name)
        return name

    def predict(self, path: str | Path) -> ClipResult:
        """Predict ``path`` and write its figure (and annotated clip); raises ``ReadError`` for a bad file."""
        path = Path(path)
        name = self._name(path)
        best: dict[str, Any] = {}
        movie: AnnotatedVideo | None = None
        schema = self.predictor.schema

        def on_frame(r: FrameResult, image: np.ndarray, labels: np.ndarray) -> None:
            nonlocal movie
            conf = r.probabilities[r.diagnosis] - (1.0 if r.ood else 0.0)
            if not best or conf > best["conf"]:
                best.update(conf=conf, result=r, image=image.copy(), labels=labels.copy())
            if self.video and r.index > 0 and movie is None and "first" in best:  # a clip: start the video
                movie = AnnotatedVideo(self.out / f"{name}.mp4", fps=self._fps(best["first"][0], r))
                movie.add(annotated_panel(best["first"][1], best["first"][2], schema, _title(best["first"][0])))
            if movie is not None:
                movie.add(annotated_panel(image, labels, schema, _title(r) + (" OOD" if r.ood else "")))
            best.setdefault("first", (r, image.copy(), labels.copy()))

        try:
            result = self.predictor.predict(path, on_frame=on_frame, keep_labels=False)
        except BaseException:
            if movie is not None:
                movie.abort()
            raise
        if movie is not None:
            movie.close()
        k = self.predictor.class_names.index(best["result"].diagnosis)  # frames always have one
        cam = class_activation_map(self.predictor.model, best["image"], k)
        save_png(annotated_panel(best["image"], best["labels"], schema, _title(result), cam), self.out / f"{name}.png")
        self.results.append(result)
        return result

    @staticmethod
    def _fps(first: FrameResult, second: FrameResult) -> float:
        dt = second.time_s - first.time_s
        return 1.0 / dt if dt > 0 else 10.0

    def close(self) -> None:
        """Write ``predictions.json``, ``clips.csv`` and ``frames.csv``."""
        names = self.predictor.class_names
        clips, frames = [], []
        for r in self.results:
            name = printable(r.path)
            probs = {f"p_{c}": r.probabilities[c] for c in names}
            clips.append({"file": name, "diagnosis": r.diagnosis, **probs, "frames": len(r.frames),
                          "ood_frames": r.ood_frames, "probe": r.probe, "severity": r.severity,
                          "severity_rule": r.severity_rule, **r.biomarkers})  # fmt: skip
            for f in r.frames:
                frames.append({"file": name, "frame": f.index, "time_s": f.time_s, "diagnosis": f.diagnosis,
                               **{f"p_{c}": f.probabilities[c] for c in names}, "ood": f.ood,
                               "ood_score": round(f.ood_score, 4), **f.biomarkers})  # fmt: skip
        meta = {
            "model": printable(self.predictor.path),
            "temperature": self.predictor.temperature,
            "tta": self.predictor.tta,
            "class_names": names,
        }
        doc = {**meta, "files": [{**r.to_dict(), "path": printable(r.path)} for r in self.results]}
        write_text(self.out / "predictions.json", json.dumps(finite(doc), indent=2) + "\n")
        write_text(self.out / "clips.csv", csv_text(clips))
        write_text(self.out / "frames.csv", csv_text(frames))
