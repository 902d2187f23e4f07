"""``eval-cls``: score a k-fold classification run at frame and clip (video) level.

Reads the held-out predictions ``train-cls`` wrote (``RUN/fold*/test_predictions.csv``), computes the
metrics of every fold at frame level and at clip level (mean of the clip's frame probabilities), their
mean and standard deviation over folds, and on the pooled predictions bootstrap 95% intervals that
resample whole patients. Writes ``RUN/eval.json`` and ``RUN/eval.md``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import write_json, write_text
from pleura.labels import DIAGNOSES
from pleura.metrics.classification import (
    accuracy,
    aggregate_by_group,
    balanced_accuracy,
    bootstrap_ci,
    classification_metrics,
    metrics_table,
    summarise_folds,
)
from pleura.report import fmt, markdown_table


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """Columns of a ``test_predictions.csv``: ids, labels and the ``(N, 3)`` probabilities."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    markers = [k for k in rows[0] if k.startswith("bm_")]
    return {
        "markers": {k[3:]: np.array([_number(r[k]) for r in rows]) for k in markers},
        "id": np.array([r["id"] for r in rows]),
        "clip_id": np.array([r["clip_id"] for r in rows]),
        "patient_id": np.array([r["patient_id"] for r in rows]),
        "label": np.array([int(r["label"]) for r in rows]),
        "prob": np.array([[float(r[f"p_{c}"]) for c in DIAGNOSES] for r in rows]),
    }


def _number(text: str) -> float:
    """A CSV cell as a number: booleans as 0/1, empty as NaN."""
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return float("nan")


def biomarkers_by_diagnosis(folds: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Mean of each biomarker over the frames of each true diagnosis (NaN-safe)."""
    if not folds or not folds[0]["markers"]:
        return {}
    labels = np.concatenate([p["label"] for p in folds])
    out: dict[str, dict[str, float]] = {}
    for name in folds[0]["markers"]:
        values = np.concatenate([p["markers"][name] for p in folds])
        out[name] = {
            d: float(np.nanmean(values[labels == k])) if np.isfinite(values[labels == k]).any() else float("nan")
            for k, d in enumerate(DIAGNOSES)
        }
    return out


def write_clip_biomarkers(folds: list[dict[str, np.ndarray]], path: Path) -> None:
    """Per clip: its label, mean predicted probabilities and biomarkers (mean of fractions, max of counts
    and of the aeration score: a zone is scored by its worst view)."""
    if not folds or not folds[0]["markers"]:
        return
    clip = np.concatenate([p["clip_id"] for p in folds])
    label = np.concatenate([p["label"] for p in folds])
    prob = np.concatenate([p["prob"] for p in folds])
    markers = {k: np.concatenate([p["markers"][k] for p in folds]) for k in folds[0]["markers"]}
    rows = []
    for c in sorted(set(clip.tolist())):
        m = clip == c
        row: dict[str, Any] = {"clip_id": c, "diagnosis": DIAGNOSES[int(label[m][0])], "frames": int(m.sum())}
        row.update({f"p_{d}": round(float(prob[m, k].mean()), 5) for k, d in enumerate(DIAGNOSES)})
        for k, v in markers.items():
            values = v[m][np.isfinite(v[m])]
            agg = np.max if k.endswith(("count", "score", "b_lines")) else np.mean
            row[k] = round(float(agg(values)), 5) if values.size else ""
        rows.append(row)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _levels(p: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Frame- and clip-level ``(y, prob, patient groups)``."""
    clips, y_clip, prob_clip = aggregate_by_group(p["clip_id"], p["label"], p["prob"])
    patient_of = dict(zip(p["clip_id"], p["patient_id"], strict=True))
    return {
        "frame": (p["label"], p["prob"], p["patient_id"]),
        "clip": (y_clip, prob_clip, np.array([patient_of[c] for c in clips])),
    }


def evaluate_classification(run: str | Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-fold, fold-summary and pooled metrics with bootstrap intervals; writes eval.json / eval.md."""
    run = Path(run)
    files = sorted(run.glob("fold*/test_predictions.csv"))
    if not files:
        raise ValueError(f"{run}: no fold*/test_predictions.csv; run train-cls with --folds first")
    return evaluate_predictions(files, run, f"run `{run}`, {len(files)} folds", n_boot, seed, run=str(run))


def evaluate_predictions(
    files: list[Path],
    out: Path,
    title: str,
    n_boot: int = 1000,
    seed: int = 0,
    markdown: Callable[[dict[str, Any]], str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Score prediction CSVs (one per fold, or one external set) into ``out``'s eval.json and eval.md.

    Metrics per file and their mean ± std, pooled metrics with patient-bootstrap 95% intervals, and the
    biomarkers by true diagnosis; ``extra`` items are stored in the result as they are. ``markdown``
    renders eval.md (default :func:`eval_markdown`).
    """
    folds = [read_predictions(f) for f in files]
    result: dict[str, Any] = {**extra, "title": title, "folds": len(folds), "class_names": list(DIAGNOSES)}
    for level in ("frame", "clip"):
        per_fold = [classification_metrics(*_levels(p)[level][:2]) for p in folds]
        pooled = {k: np.concatenate([_levels(p)[level][i] for p in folds]) for i, k in enumerate(("y", "prob", "g"))}
        overall = classification_metrics(pooled["y"], pooled["prob"])
        ci = {
            name: bootstrap_ci(pooled["y"], pooled["prob"], fn, n_boot=n_boot, seed=seed, groups=pooled["g"])
            for name, fn in (("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy))
        }
        result[level] = {"per_fold": per_fold, "folds": summarise_folds(per_fold), "pooled": overall, "ci95": ci}
    result["biomarkers_by_diagnosis"] = biomarkers_by_diagnosis(folds)
    write_clip_biomarkers(folds, out / "clip_biomarkers.csv")
    write_json(out / "eval.json", result)
    write_text(out / "eval.md", (markdown or eval_markdown)(result))
    return result


def eval_markdown(result: dict[str, Any]) -> str:
    """The evaluation as markdown: fold summaries, pooled intervals and confusion matrices."""
    title = result.get("title") or f"run `{result['run']}`, {result['folds']} folds"
    lines = [f"# Classification evaluation\n\n{title}\n"]
    for level in ("frame", "clip"):
        r = result[level]
        over = " (mean ± std over folds)" if result["folds"] > 1 else ""
        lines.append(f"## {level.capitalize()} level{over}\n")
        lines.append(metrics_table(r["folds"]))
        ci = r["ci95"]
        pooled = r["pooled"]
        scope = "Pooled over folds" if result["folds"] > 1 else f"All {level}s"
        lines.append(
            f"\n{scope}: accuracy {pooled['accuracy']:.3f} (95% CI {ci['accuracy'][0]:.3f}-"
            f"{ci['accuracy'][1]:.3f}), balanced accuracy {pooled['balanced_accuracy']:.3f} (95% CI "
            f"{ci['balanced_accuracy'][0]:.3f}-{ci['balanced_accuracy'][1]:.3f}); bootstrap over patients.\n"
        )
        names = result["class_names"]
        confusion = [[name, *row] for name, row in zip(names, pooled["confusion"], strict=True)]
        lines.append(markdown_table(["truth \\ predicted", *names], confusion))
        lines.append("")
    markers = result.get("biomarkers_by_diagnosis") or {}
    if markers:
        names = result["class_names"]
        rows = [[marker, *(fmt(by[n], ".3g", missing="nan") for n in names)] for marker, by in markers.items()]
        lines += [
            "## Biomarkers read from the model's segmentation (mean over held-out frames, by true diagnosis)\n",
            markdown_table(["biomarker", *names], rows),
            "",
        ]
    return "\n".join(lines) + "\n"
