"""Self-training within folds (``experiment pocus --adapt-weight``) against the same run without it, fold by fold.

Both runs are ``experiment pocus`` k-fold runs with the same seed (so the same folds, frames and training order up to
the self-training); only the folds finished in every run are compared, so partial runs can be compared too. Per
fold and run, all from the fold's ``best`` classifier and its own held-out patients (nothing here was seen by the
self-training, which only labels a fold's training frames):

- video-level balanced accuracy and COVID-19 sensitivity (frame probabilities averaged per clip, as ``eval-cls``);
- the B-line flag: ROC AUC of the clip's maximum B-line count (``test_predictions.csv``'s per-frame biomarkers) for
  the POCUS annotators' B-line flag, over the held-out clips of the compared folds pooled;
- the real cvat-lus clip (39 expert frames, ``experiment pocus --cvat-lus`` imports it to ``OUT/real-seg``):
  pleural-line and A-line Dice and false A-line components per frame of the fold's U-Net.

    python benchmarks/bench_pocus_adapt.py runs/pocus-control/classification/foundation-seed0 \\
        runs/pocus-adapt/classification/foundation-seed0 --data runs/pocus-adapt/data \\
        --real-seg runs/pocus-adapt/real-seg/cvat-lus128 --out benchmarks/results/pocus_adapt.json
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_pocus_levers import clip_probabilities, fold_probabilities, video_scores
from common import machine, save

from pleura.data import read_manifest
from pleura.evaluate.real_seg import score_real_segmentation
from pleura.metrics.classification import binary_roc_auc
from pleura.report import fmt, mean_std


def finished_folds(run: Path) -> set[str]:
    """Names of the folds of ``run`` that wrote their held-out predictions."""
    return {f.name for f in run.glob("fold*") if (f / "test_predictions.csv").exists()}


def held_out_b_lines(fold: Path) -> dict[str, float]:
    """Each held-out clip's maximum B-line count over its frames (NaN: no pleural line in any frame)."""
    out: dict[str, float] = {}
    with open(fold / "test_predictions.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            v = float(r["bm_b_line_count"]) if r.get("bm_b_line_count", "") not in ("", "nan", "None") else math.nan
            prev = out.get(r["clip_id"], math.nan)
            out[r["clip_id"]] = v if math.isnan(prev) else prev if math.isnan(v) else max(prev, v)
    return out


def flag_auc(counts: dict[str, float], flags: dict[str, str]) -> tuple[float, int, int]:
    """AUC of the count for the B-line flag over the flagged clips, a clip with no count ranked lowest."""
    pairs = [(int(flags[c]), v) for c, v in counts.items() if flags.get(c) in ("0", "1")]
    y = np.array([p[0] for p in pairs], dtype=int)
    x = np.array([p[1] for p in pairs], dtype=float)
    pos, neg = int(y.sum()), int((1 - y).sum())
    if not pos or not neg:  # no flags (simulated data), or one kind only: undefined
        return math.nan, pos, neg
    x = np.where(np.isfinite(x), x, (np.nanmin(x) if np.isfinite(x).any() else 0.0) - 1.0)
    return binary_roc_auc(y, x), pos, neg


def score_fold(fold: Path, data: Path, real_seg: Path | None) -> dict[str, Any]:
    """Video scores and, with ``real_seg``, the cvat-lus scores of one fold's best classifier."""
    clips, y, plain, mirrored = fold_probabilities(fold, data)
    out: dict[str, Any] = video_scores(*clip_probabilities(clips, y, plain, mirrored, "mean"))
    if real_seg is not None:
        s = score_real_segmentation(fold / "best" / "model.safetensors", real_seg)
        out |= {"pleural_line_dice": s["pleural_line"]["dice"], "a_line_dice": s["a_line"]["dice"],
                "fp_a_line_per_frame": s["a_line"]["fp_components_per_frame"]}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="k-fold runs of experiment pocus with the same seed")
    parser.add_argument("--data", type=Path, required=True, help="the imported POCUS dataset (OUT/data)")
    parser.add_argument(
        "--real-seg", type=Path, default=None, help="the imported cvat-lus dataset (OUT/real-seg/cvat-lus128)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pocus_adapt.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    folds = sorted(set.intersection(*(finished_folds(r) for r in args.runs)))
    if not folds:
        raise SystemExit("bench_pocus_adapt: no fold is finished in every run")
    flags = {r["clip_id"]: r.get("b_lines", "") for r in read_manifest(args.data)}
    results: dict[str, Any] = {}
    for run in args.runs:
        per_fold = {f: score_fold(run / f, args.data, args.real_seg) for f in folds}
        counts: dict[str, float] = {}
        for f in folds:
            counts |= held_out_b_lines(run / f)
        auc, pos, neg = flag_auc(counts, flags)
        results[str(run)] = {"folds": per_fold, "b_line_flag_auc": auc, "flagged": pos, "unflagged": neg}
    keys = ["balanced_accuracy", "covid_sensitivity", "pleural_line_dice", "a_line_dice", "fp_a_line_per_frame"]
    rows = []
    for run, r in results.items():
        cells = []
        for k in keys:
            values = [r["folds"][f].get(k, math.nan) for f in folds]
            mean, std = mean_std(values)
            cells.append(fmt(mean, pm=std) + " (" + ", ".join(fmt(v) for v in values) + ")")
        rows.append([run, ", ".join(folds), *cells, f"{fmt(r['b_line_flag_auc'])} ({r['flagged']} / {r['unflagged']})"])
    result = {"machine": machine(), "seconds": time.perf_counter() - start, "folds": folds, "runs": results}
    columns = ["run", "folds", "video bal. acc. (per fold)", "video COVID sens.", "cvat-lus pleural-line Dice",
               "cvat-lus A-line Dice", "FP A-line comp./frame", "held-out B-line count vs flag, AUC"]  # fmt: skip
    save(args.out, result, columns, rows)


if __name__ == "__main__":
    main()
