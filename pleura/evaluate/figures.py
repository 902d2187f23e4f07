"""Figures of the experiments: segmentation grid, false-positive bars, confusion matrices, ROC curves, biomarkers.

The drawing they share with the simulator and ``predict`` (overlays, saving a figure) is in ``pleura.viz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pleura.viz import overlay, save_figure, sign_count


def _pick_examples(root: Path) -> list[dict[str, str]]:
    """One telling first frame per (diagnosis, probe), ordered by diagnosis then probe."""
    from pleura.data.manifest import read_manifest

    picks: dict[tuple[str, str], dict[str, str]] = {}
    for row in read_manifest(root):
        key = (row["diagnosis"], row.get("probe", ""))
        if str(row.get("frame", "0")) == "0" and (key not in picks or sign_count(row) > sign_count(picks[key])):
            picks[key] = row
    return [picks[k] for k in sorted(picks)]


def segmentation_grid(data: str | Path, dense_run: str | Path, sparse_run: str | Path, path: str | Path) -> Path:
    """The seed paper's figure: rows image, sparse truth, sparse and dense predictions, dense truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pleura.evaluate.seg import load_segmenter
    from pleura.labels import DENSE, SPARSE

    data = Path(data)
    rows = _pick_examples(data)
    dense_model, _ = load_segmenter(dense_run, schema="dense")
    sparse_model, _ = load_segmenter(sparse_run, schema="sparse")
    titles = ["image", "sparse truth", "sparse prediction", "dense prediction", "dense truth"]
    fig, axes = plt.subplots(len(titles), len(rows), figsize=(2.2 * len(rows), 2.3 * len(titles)), squeeze=False)
    fig.patch.set_facecolor("black")
    for c, row in enumerate(rows):
        image = np.array(Image.open(data / row["image"]).convert("L"))
        x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
        with torch.no_grad():
            dense_pred = dense_model(x).argmax(1)[0].numpy().astype(np.uint8)
            sparse_pred = sparse_model(x).argmax(1)[0].numpy().astype(np.uint8)
        panels = [
            np.repeat(image[..., None], 3, axis=2),
            overlay(image, np.array(Image.open(data / row["mask_sparse"])), SPARSE),
            overlay(image, sparse_pred, SPARSE),
            overlay(image, dense_pred, DENSE),
            overlay(image, np.array(Image.open(data / row["mask_dense"])), DENSE),
        ]
        for r, rgb in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{row['diagnosis']} / {row.get('probe', '')}", color="white", fontsize=8)
            if c == 0:
                ax.set_ylabel(titles[r], color="white", fontsize=8)
    fig.suptitle("simulated test frames: sparse vs dense labels", color="white", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def fp_bar_chart(results: dict, path: str | Path) -> Path:
    """False-positive components per frame by class, dense vs sparse, mean and std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = ("a_line", "b_line", "pleural_line")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (metric, label) in zip(
        axes, (("fp_components_per_frame", "FP components / frame"), ("iou", "IoU (sparse schema)")), strict=True
    ):
        xs = np.arange(len(classes))
        for k, (schema, colour) in enumerate((("dense", "#2a9d8f"), ("sparse", "#e76f51"))):
            cells = [results["table"][schema][f"{c}_{metric}"] for c in classes]
            means = [np.nan if x["mean"] is None else x["mean"] for x in cells]
            stds = [0 if x["std"] is None else x["std"] for x in cells]
            ax.bar(xs + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=schema, color=colour)
        ax.set_xticks(xs, classes)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("dense vs sparse labels (simulated test set, mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, facecolor="white")


def confusion_figure(evals: dict[str, dict], path: str | Path, level: str = "clip") -> Path:
    """One pooled confusion matrix per model (``eval-cls`` results keyed by name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(evals), figsize=(3.3 * len(evals), 3.2), squeeze=False)
    for ax, (name, ev) in zip(axes[0], evals.items(), strict=True):
        cm = np.array(ev[level]["pooled"]["confusion"])
        names = ev["class_names"]
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("truth", fontsize=8)
        ax.set_title(f"{name} ({level} level)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, facecolor="white")


def roc_figure(runs: dict[str, Path], path: str | Path) -> Path:
    """Frame-level one-vs-rest ROC curves per class, one line per model, pooled over folds.

    ``runs`` maps a name to a ``train-cls`` run (its ``fold*/test_predictions.csv``) or to one predictions CSV.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pleura.evaluate.cls import read_predictions
    from pleura.labels import DIAGNOSES
    from pleura.metrics.classification import binary_roc_auc, roc_points

    fig, axes = plt.subplots(1, len(DIAGNOSES), figsize=(3.4 * len(DIAGNOSES), 3.3), squeeze=False)
    for name, run in runs.items():
        files = [Path(run)] if Path(run).suffix == ".csv" else sorted(Path(run).glob("fold*/test_predictions.csv"))
        preds = [read_predictions(f) for f in files]
        y = np.concatenate([p["label"] for p in preds])
        prob = np.concatenate([p["prob"] for p in preds])
        for k, ax in enumerate(axes[0]):
            fpr, tpr = roc_points(y == k, prob[:, k])
            ax.plot(fpr, tpr, label=f"{name} (AUC {binary_roc_auc(y == k, prob[:, k]):.2f})")
    for k, ax in enumerate(axes[0]):
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(f"{DIAGNOSES[k]} vs rest", fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, facecolor="white")


def biomarker_chart(ev: dict, path: str | Path) -> Path:
    """Mean biomarkers by true diagnosis from an ``eval-cls`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = ev.get("biomarkers_by_diagnosis") or {}
    shown = [m for m in ("b_line_count", "a_line_count", "b_line_fraction", "aeration_score") if m in markers]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(2.8 * max(len(shown), 1), 3.0), squeeze=False)
    for ax, marker in zip(axes[0], shown, strict=False):
        names = list(markers[marker])
        values = [np.nan if markers[marker][n] is None else markers[marker][n] for n in names]
        ax.bar(names, values, color=["#e63946", "#f4a261", "#2a9d8f"][: len(names)])
        ax.set_title(marker, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle("biomarkers from the model's segmentation, by true diagnosis", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, facecolor="white")
