"""The exam view's server side: a patient's clips by chest zone, scored by ``pleura score``'s own code.

The page uploads each clip through ``/api/predict`` and then names, for each zone, the result that holds its
clip. The exam is scored by :func:`pleura.infer.exam.score_exam` (what ``pleura score`` runs), each zone's score
being the clip's severity score and rule from its prediction (``Predictor.predict``, Soldati et al. 2020,
``pleura.postprocess.severity``), the very values ``pleura score`` would compute for the same clip, since the
prediction is the same. Its files are ``pleura score``'s (``write_exam``: score.json, score.csv, score.md,
chest_map.png) and a standalone HTML report (print it to PDF from the browser).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from pleura.atomic import write_text
from pleura.infer.exam import SCHEMES, ExamResult, score_exam, write_exam
from pleura.report import fmt

DEFAULT_SCHEME = "14"  # as pleura score


def zone_names(scheme: str) -> dict[str, str]:
    """The zones of a scheme (``"14"`` or ``"12"``): name -> the zone in words."""
    return {z.name: z.label for z in SCHEMES[scheme]}


def score_predictions(files: dict[str, dict[str, Any]], scheme: str = DEFAULT_SCHEME) -> tuple[ExamResult, dict]:
    """Score an exam from its clips' predictions: zone name -> that clip's ``files`` entry of predictions.json.

    Returns ``pleura score``'s result (every zone of the scheme; missing ones marked) and the exam as JSON-ready
    data for the page: that result's ``to_dict()`` with each zone's file name, diagnosis and probabilities.

    Raises:
        ValueError: an unknown scheme or zone name.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown zone scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    names = zone_names(scheme)
    unknown = [z for z in files if z not in names]
    if unknown:
        raise ValueError(f"unknown zone {unknown[0][:20]!r} for the {scheme}-zone scheme; zones: {', '.join(names)}")

    def score_clip(clip: Path) -> tuple[int | None, str]:  # the prediction is already made: its severity
        f = files[clip.stem]
        return f.get("severity"), str(f.get("severity_rule") or "")

    result = score_exam([Path(f"{zone}.clip") for zone in files], score_clip, scheme)
    for z in result.zones:
        if z.zone in files:
            z.file = str(files[z.zone].get("path", ""))
    for zone, f in files.items():  # the problems name the uploads, not the stand-in names
        result.problems = [p.replace(f"{zone}.clip", str(f.get("path", ""))) for p in result.problems]
    doc = result.to_dict()
    for z in doc["zones"]:
        f = files.get(z["zone"], {})
        z.update(diagnosis=f.get("diagnosis"), probabilities=f.get("probabilities", {}), uploaded=z["zone"] in files,
                 ood_frames=f.get("ood_frames", 0), frames=len(f.get("frames", [])))  # fmt: skip
    return result, doc


def write_report(result: ExamResult, doc: dict[str, Any], out: Path, patient: str, model: str) -> list[Path]:
    """``pleura score``'s files of the exam into ``out``, and ``report.html`` with the chest map inside."""
    written = write_exam(result, out, title=patient)
    chart = base64.b64encode((out / "chest_map.png").read_bytes()).decode("ascii")
    esc = html.escape
    rows = []
    for z in doc["zones"]:
        if not z["uploaded"]:
            continue
        probs = ", ".join(f"{esc(k)} {fmt(v, '.2f')}" for k, v in z["probabilities"].items())
        score = "n/a" if z["score"] is None else str(z["score"])
        rows.append(
            f"<tr><td>{esc(z['zone'])}</td><td>{esc(z['label'])}</td><td>{esc(z['file'])}</td>"
            f"<td>{esc(z['diagnosis'] or 'none (out of distribution)')}</td><td>{probs}</td>"
            f"<td>{z['ood_frames']} of {z['frames']}</td><td>{score}</td><td>{esc(z['rule'])}</td></tr>"
        )
    total = "n/a" if doc["total"] is None else f"{doc['total']} of {doc['max_total']}"
    problems = "".join(f"<li>{esc(p)}</li>" for p in doc["problems"])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pleura exam report</title>
<style>body{{font:14px sans-serif;margin:2em;color:#111}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:left}}.notice{{border:2px solid #c62828;padding:8px;
margin:1em 0;font-weight:bold}}img{{max-width:100%}}</style></head><body>
<h1>Lung-ultrasound exam{(": " + esc(patient)) if patient else ""}</h1>
<p class="notice">Research software, not a medical device: do not use these results for diagnosis or treatment.</p>
<p>Model: {esc(model)}. {esc(doc["scheme"])}-zone scheme. Total severity score: <b>{total}</b>
({doc["zones_scored"]} of {doc["zones_total"]} zones scored; Soldati et al. 2020, 0-3 per zone, computed as
<code>pleura score</code> computes it).</p>
<img alt="chest map" src="data:image/png;base64,{chart}">
<table><tr><th>zone</th><th>where</th><th>file</th><th>diagnosis</th><th>calibrated probabilities</th>
<th>frames out of distribution</th><th>score</th><th>rule</th></tr>
{"".join(rows)}</table>
<h2>Problems</h2><ul>{problems or "<li>none</li>"}</ul>
<p>Made by pleura serve.</p></body></html>
"""
    return [*written, write_text(out / "report.html", page)]
