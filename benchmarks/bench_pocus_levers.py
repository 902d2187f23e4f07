"""Issue 16's inference-time levers, measured on finished ``experiment pocus`` k-fold runs: no retraining.

For each run (a variant's ``classification/<init>-seed<seed>`` folder) every fold's ``best`` classifier predicts its
own held-out frames again, as they are and mirrored left-right (test-time augmentation: the probe's orientation
marker side is arbitrary in POCUS), and the frame probabilities are pooled per clip three ways:

- ``mean``: the mean of the frame probabilities (what ``eval-cls`` and ``predict`` do);
- ``tta``: the mean over the frames and their mirror images;
- ``geometric``: the normalised geometric mean (mean log-probability), which lets confident frames weigh more.

Printed: video-level balanced accuracy and COVID-19 sensitivity and specificity, mean ± std over folds, per run and
pooled over the runs given (seeds).

    python benchmarks/bench_pocus_levers.py runs/pocus/classification/foundation-seed0 [more runs]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, save
from tqdm import tqdm

from pleura.data import read_manifest
from pleura.data.dataset import LUSDataset
from pleura.labels import DIAGNOSES
from pleura.metrics.classification import aggregate_by_group, classification_metrics
from pleura.models.checkpoint import read_checkpoint
from pleura.report import fmt

POOLINGS = ("mean", "tta", "geometric")
COVID = DIAGNOSES.index("covid")


@torch.inference_mode()
def fold_probabilities(fold: Path, data: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The fold's held-out rows (clip ids, labels) and its classifier's probabilities on them, plain and mirrored."""
    with open(fold / "test_predictions.csv", newline="") as fh:
        ids = {r["id"] for r in csv.DictReader(fh)}
    rows = [r for r in read_manifest(data) if r["id"] in ids]
    model = read_checkpoint(fold / "best")[0].eval()
    plain, mirrored = [], []
    for batch in torch.utils.data.DataLoader(LUSDataset(data, None, rows=rows), batch_size=32):
        x = batch["image"]
        plain.append(torch.softmax(model(x), 1).numpy())
        mirrored.append(torch.softmax(model(torch.flip(x, dims=[-1])), 1).numpy())
    labels = np.array([DIAGNOSES.index(r["diagnosis"]) for r in rows])
    return [r["clip_id"] for r in rows], labels, np.concatenate(plain), np.concatenate(mirrored)


def video_scores(clips: list[str], y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Video-level balanced accuracy, COVID-19 sensitivity and specificity of frame probabilities pooled by clip."""
    _, yc, pc = aggregate_by_group(clips, y, prob)
    m = classification_metrics(yc, pc)
    c = m["per_class"][DIAGNOSES[COVID]]
    return {"balanced_accuracy": m["balanced_accuracy"], "covid_sensitivity": c["recall"],
            "covid_specificity": c["specificity"]}  # fmt: skip


def pooled(plain: np.ndarray, mirrored: np.ndarray, how: str) -> np.ndarray:
    """Frame probabilities as pooled by ``how``: as they are, averaged with the mirror's, or as log-probabilities
    whose per-clip mean :func:`aggregate_by_group` then takes (renormalised after)."""
    if how == "tta":
        return (plain + mirrored) / 2
    if how == "geometric":
        return np.log(np.clip(plain, 1e-6, 1.0))
    return plain


def score_run(run: Path, data: Path) -> dict[str, list[dict[str, float]]]:
    """Per pooling, the video scores of each fold of ``run``."""
    out: dict[str, list[dict[str, float]]] = {p: [] for p in POOLINGS}
    for fold in tqdm(sorted(run.glob("fold*")), desc=run.name, unit="fold"):
        clips, y, plain, mirrored = fold_probabilities(fold, data)
        for how in POOLINGS:
            prob = pooled(plain, mirrored, how)
            if how == "geometric":  # mean log-probability per clip, then back to probabilities
                groups, yc, lc = aggregate_by_group(clips, y, prob)
                pc = np.exp(lc - lc.max(1, keepdims=True))
                prob, clips_, y_ = pc / pc.sum(1, keepdims=True), list(groups), yc
                out[how].append(video_scores(clips_, y_, prob))
            else:
                out[how].append(video_scores(clips, y, prob))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="k-fold runs of experiment pocus (classification/...)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pocus_levers.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    results = {}
    for run in args.runs:
        data = Path(json.loads((run / "kfold.json").read_text())["data"])
        results[str(run)] = score_run(run, data)
    rows = []
    for how in POOLINGS:
        for name, scores in [*((r, s[how]) for r, s in results.items()),
                             ("all runs", [f for s in results.values() for f in s[how]])]:  # fmt: skip
            if name == "all runs" and len(results) == 1:
                continue
            cells = []
            for key in ("balanced_accuracy", "covid_sensitivity", "covid_specificity"):
                v = np.array([f[key] for f in scores], dtype=float)
                cells.append(fmt(float(np.nanmean(v)), pm=float(np.nanstd(v))))
            rows.append([how, Path(name).name if name != "all runs" else name, *cells])
    result = {"machine": machine(), "seconds": time.perf_counter() - start, "runs": results}
    save(args.out, result, ["pooling", "run", "video bal. acc.", "video COVID sens.", "video COVID spec."], rows)


if __name__ == "__main__":
    main()
