"""Issue 16's inference-time levers, measured on finished ``experiment pocus`` k-fold runs: no retraining.

For each run (a variant's ``classification/<init>-seed<seed>`` folder) every fold's ``best`` classifier predicts its
own held-out frames again, as they are and mirrored left-right (test-time augmentation: the probe's orientation
marker side is arbitrary in POCUS), and the frame probabilities are pooled per clip three ways:

- ``mean``: the mean of the frame probabilities (what ``eval-cls`` and ``predict`` do);
- ``tta``: the mean over the frames and their mirror images;
- ``geometric``: the normalised geometric mean (mean log-probability), which lets confident frames weigh more.

Printed: video-level balanced accuracy and COVID-19 sensitivity and specificity, mean ± std over folds per run, and
over the runs given (seeds) the mean ± std of their fold means. The ``mean`` rows reproduce ``eval-cls``'s figures.

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
from rich.progress import track

from pleura.data import read_manifest
from pleura.data.dataset import LUSDataset
from pleura.labels import DIAGNOSES
from pleura.metrics.classification import aggregate_by_group, classification_metrics
from pleura.models.checkpoint import read_checkpoint
from pleura.report import fmt, mean_std

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


def video_scores(yc: np.ndarray, pc: np.ndarray) -> dict[str, float]:
    """Video-level balanced accuracy, COVID-19 sensitivity and specificity of clip labels and probabilities."""
    m = classification_metrics(yc, pc)
    c = m["per_class"][DIAGNOSES[COVID]]
    return {"balanced_accuracy": m["balanced_accuracy"], "covid_sensitivity": c["recall"],
            "covid_specificity": c["specificity"]}  # fmt: skip


def clip_probabilities(clips: list[str], y: np.ndarray, plain: np.ndarray, mirrored: np.ndarray, how: str):
    """``(clip labels, clip probabilities)`` pooled by ``how``: the mean of the frames' probabilities (``mean``), of
    the frames' and their mirrors' (``tta``), or the renormalised geometric mean (``geometric``)."""
    if how == "geometric":
        _, yc, _ = aggregate_by_group(clips, y, plain)
        ids, inverse = np.unique(np.asarray(clips), return_inverse=True)
        logs = np.zeros((len(ids), plain.shape[1]))
        np.add.at(logs, inverse, np.log(np.clip(plain, 1e-6, 1.0)))
        logs /= np.bincount(inverse, minlength=len(ids))[:, None]
        p = np.exp(logs - logs.max(1, keepdims=True))
        return yc, p / p.sum(1, keepdims=True)
    _, yc, pc = aggregate_by_group(clips, y, (plain + mirrored) / 2 if how == "tta" else plain)
    return yc, pc


def score_run(run: Path, data: Path) -> dict[str, list[dict[str, float]]]:
    """Per pooling, the video scores of each fold of ``run``."""
    out: dict[str, list[dict[str, float]]] = {p: [] for p in POOLINGS}
    for fold in track(sorted(run.glob("fold*")), description=run.name):
        clips, y, plain, mirrored = fold_probabilities(fold, data)
        for how in POOLINGS:
            out[how].append(video_scores(*clip_probabilities(clips, y, plain, mirrored, how)))
    return out


def _mean_std(values: list[float]) -> str:
    """``mean ± std`` of the finite values, as the reports compute them (``pleura.report.mean_std``, ddof 1)."""
    mean, std = mean_std(values)
    return fmt(mean, pm=std)


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
    keys = ("balanced_accuracy", "covid_sensitivity", "covid_specificity")
    rows = []
    for how in POOLINGS:
        for run, scores in results.items():  # mean ± std over the run's folds
            cells = [_mean_std([f[k] for f in scores[how]]) for k in keys]
            rows.append([how, Path(run).name, *cells])
        if len(results) > 1:  # mean ± std over the runs (seeds) of their fold means
            cells = [_mean_std([np.nanmean([f[k] for f in s[how]]) for s in results.values()]) for k in keys]
            rows.append([how, f"{len(results)} runs (± std over runs)", *cells])
    result = {"machine": machine(), "seconds": time.perf_counter() - start, "runs": results}
    save(args.out, result, ["pooling", "run", "video bal. acc.", "video COVID sens.", "video COVID spec."], rows)


if __name__ == "__main__":
    main()
