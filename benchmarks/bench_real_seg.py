"""The first real check of segmentation (issue 14): the cvat-lus clip's 39 expert-labelled frames.

Imports the real clip (``../shared/data/cvat-lus``, one linear-probe clip with A-line and pleural-line polygons;
MIT) into a 128 px manifest dataset in a temporary folder, then scores on it, through the one prediction path
(``pleura.evaluate.real_seg.score_real_segmentation``):

1. the U-Nets of the two shipped classifiers (``pocus-dense-w4-128``, the default, and ``pocus-dense-w8-128``);
2. simulator-only U-Nets trained here with the command line, dense and sparse, one simulated set per seed
   (``pleura simulate --n 60 --frames 2 --size 128 --seed 1000+S``, then ``pleura train-seg --schema dense|sparse
   --width 16 --epochs 10 --patience 100 --seed S``; the best checkpoint by the *simulated* validation score,
   so no real frame chooses anything).

Reported: pleural-line Dice, precision and recall (the model's healthy and unhealthy pleural-line classes merged;
on the 17 frames where the expert drew it), A-line Dice (all 39 frames), false-positive A-line components per
frame, and the physics consistency (the share of predicted A-line components within 10 % of 2x, 3x, ... the
predicted pleural line's depth). Simulator-only models: mean ± std over seeds. Also draws
``docs/results/real_seg_examples.png``: four real frames, the expert masks, the default model's prediction and
the best simulator-only model's (best on this clip: a choice for the picture only).

    python benchmarks/bench_real_seg.py                  # 3 seeds; writes results/real_seg.json and the figure
    python benchmarks/bench_real_seg.py --seeds 0 --epochs 2 --out /tmp/real_seg.json --figure /tmp/rs.png
    python benchmarks/bench_real_seg.py --schemas sparse --line-label-px 8 --a-line-label-px 10.5 \
        --out results/real_seg_thick.json --figure /tmp/rs.png   # line labels as the experts' bands
    python benchmarks/bench_real_seg.py ... --randomize       # simulate with domain randomisation
    python benchmarks/bench_real_seg.py --table results/real_seg_plain600.json results/real_seg_randomized.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pleura.atomic import write_json
from pleura.data import read_manifest
from pleura.evaluate.real_seg import score_real_segmentation, sparse_predictions
from pleura.evaluate.seg import load_segmenter
from pleura.labels import SPARSE
from pleura.models import DEFAULT_PRETRAINED, PRETRAINED, pretrained
from pleura.report import fmt, markdown_table, mean_std
from pleura.viz import overlay, save_figure

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"schema": "sparse", "labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}
SIZE = 128
METRICS = (  # (column, path into the score, format)
    ("pleural-line Dice", ("pleural_line", "dice"), ".3f"),
    ("pleural-line precision", ("pleural_line", "precision"), ".3f"),
    ("pleural-line recall", ("pleural_line", "recall"), ".3f"),
    ("A-line Dice", ("a_line", "dice"), ".3f"),
    ("FP A-line comp./frame", ("a_line", "fp_components_per_frame"), ".2f"),
    ("physics share", ("physics", "share"), ".2f"),
)
FIGURE_FRAMES = (2, 50, 100, 160)  # clip frames with both classes drawn, spread over the clip


def pleura_cmd(*args: str) -> float:
    """Run ``python -m pleura ARGS`` from the repository; its seconds. On failure, exit with its last lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pleura", *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pleura {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return time.perf_counter() - t


def get(score: dict[str, Any], path: tuple[str, str]) -> float:
    value = score[path[0]][path[1]]
    return float("nan") if value is None else float(value)


def table(models: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per model, mean ± std over seeds for the trained ones."""
    rows = []
    for m in models:
        cells = [m["name"], str(len(m["scores"]))]
        for _, path, spec in METRICS:
            mean, std = mean_std(get(s, path) for s in m["scores"])
            cells.append(fmt(mean, spec, std if len(m["scores"]) > 1 else None))
        rows.append(cells)
    return markdown_table(["model", "runs", *(c for c, _, _ in METRICS)], rows)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside, next to outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool))


def draw(image: np.ndarray, pred: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    """The prediction as a colour overlay (the expert mask when ``pred`` is None), the expert outline in white."""
    rgb = overlay(image, truth if pred is None else pred, SPARSE)
    for k in (SPARSE.index("a_line"), SPARSE.index("pleural_line")):
        rgb[outline(truth == k)] = 255
    return rgb


def figure(data: Path, models: dict[str, Any], path: Path) -> Path:
    """Four real frames: the expert masks, then each model's sparse prediction with the expert outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_manifest(data) if int(r["frame"]) in FIGURE_FRAMES]
    preds = {name: [p for _, pred, _ in sparse_predictions(m, data, rows) for p in pred] for name, m in models.items()}
    images = []  # (frame as uint8, expert sparse mask)
    for batch, _, truth in sparse_predictions(next(iter(models.values())), data, rows):
        frames = np.clip(batch["image"][:, 0].numpy() * 255, 0, 255).astype(np.uint8)
        images += list(zip(frames, truth, strict=True))
    cols = ["expert (filled)", *models]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.7 * len(rows)))
    for i, (row, (image, truth)) in enumerate(zip(rows, images, strict=True)):
        panels = [draw(image, None, truth)] + [draw(image, preds[n][i], truth) for n in models]
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], color="white", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"frame {row['frame']}", color="white", fontsize=8)
    fig.suptitle(
        "cvat-lus (real, linear probe): blue A-line, yellow pleural line; white outline = expert mask",
        color="white",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


COMPARE = (  # the comparison table of simulator-only runs (--table)
    *METRICS[:3],
    ("A-line Dice", ("a_line", "dice"), ".3f"),
    ("A-line precision", ("a_line", "precision"), ".3f"),
    ("A-line recall", ("a_line", "recall"), ".3f"),
    *METRICS[4:],
    ("median A-line/pleura depth", ("physics", "median_ratio"), ".2f"),
)


def compare_tables(paths: list[Path]) -> str:
    """The simulator-only rows of several result files side by side (mean ± std over seeds), then per seed."""
    runs = []
    for path in paths:
        result = json.loads(path.read_text())
        setup = result["setup"]
        recipe = f"{setup['clips']} clips x {setup['frames']}, {setup['epochs']} ep."
        for m in result["models"]:
            if m.get("kind") == "simulator":
                runs.append((f"{m['name']}, {recipe} ({path.name})", m))
    rows, per_seed = [], []
    for name, m in runs:
        cells = [name, str(len(m["scores"]))]
        for _, path, spec in COMPARE:
            mean, std = mean_std(get(s, path) for s in m["scores"])
            cells.append(fmt(mean, spec, std if len(m["scores"]) > 1 else None))
        rows.append(cells)
        seeds = " / ".join(str(s) for s in m["seeds"])
        per_seed.append(
            [name, seeds]
            + [" / ".join(fmt(get(s, path), spec) for s in m["scores"]) for _, path, spec in COMPARE]
            + [" / ".join(f"{t:.0f}" for t in m["train_s"])]
        )
    head = [c for c, _, _ in COMPARE]
    return (
        markdown_table(["simulator-only", "runs", *head], rows)
        + "\n\nPer seed:\n\n"
        + markdown_table(["simulator-only", "seeds", *head, "training s"], per_seed)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cvat-lus", help="the CVAT backup")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="training seeds (none: shipped only)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--clips", type=int, default=60, help="simulated clips per seed (2 frames each)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--schemas", nargs="+", choices=["dense", "sparse"], default=["dense", "sparse"])
    ap.add_argument(
        "--line-label-px",
        type=float,
        default=None,
        help="simulate with the pleural line labelled as a band this many px thick (pleura simulate)",
    )
    ap.add_argument("--a-line-label-px", type=float, default=None, help="A-line band thickness in px")  # fmt: skip
    ap.add_argument("--randomize", action="store_true", help="simulate with domain randomisation (pleura simulate)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "real_seg.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "results" / "real_seg_examples.png")
    ap.add_argument("--table", type=Path, nargs="+", default=None, help="compare result files; runs nothing")
    args = ap.parse_args()
    if args.table:
        print(compare_tables(args.table))
        return
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder (the cvat-lus CVAT task backup); pass --data")
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="pleura-real-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        (work / "labels.json").write_text(json.dumps(LABELS))
        data = work / "cvat-lus128"
        if not (data / "manifest.csv").is_file():
            pleura_cmd("data", "import-annotations", str(args.data), "--format", "cvat", "--labels",
                       str(work / "labels.json"), "--out", str(data), "--size", str(SIZE))  # fmt: skip
        models: list[dict[str, Any]] = []
        for name in PRETRAINED:
            t = time.perf_counter()
            score = score_real_segmentation(pretrained(name), data)
            models.append({"name": name, "kind": "shipped", "scores": [score], "score_s": time.perf_counter() - t})
            print(f"{name}: {json.dumps(score)}", flush=True)
        trained: dict[str, list[dict[str, Any]]] = {schema: [] for schema in args.schemas}
        bands = [] if args.line_label_px is None else ["--line-label-px", str(args.line_label_px)]
        if args.a_line_label_px is not None:
            bands += ["--a-line-label-px", str(args.a_line_label_px)]
        if args.randomize:
            bands.append("--randomize")
        for seed in args.seeds:
            sim = work / f"sim{seed}"
            if not (sim / "manifest.csv").is_file():
                pleura_cmd("simulate", "--out", str(sim), "--n", str(args.clips), "--frames", "2", "--size",
                           str(SIZE), "--seed", str(1000 + seed), "--overwrite", *bands)  # fmt: skip
            for schema in trained:
                run = work / f"{schema}-seed{seed}"
                seconds = 0.0
                if not (run / "best" / "model.safetensors").is_file():
                    seconds = pleura_cmd("train-seg", "--data", str(sim), "--out", str(run), "--schema", schema,
                                         "--width", str(args.width), "--epochs", str(args.epochs), "--patience",
                                         "100", "--seed", str(seed), "--device", "cpu", "--overwrite")  # fmt: skip
                model, _ = load_segmenter(run)
                score = score_real_segmentation(model, data)
                trained[schema].append({"seed": seed, "run": str(run), "train_s": seconds, "score": score})
                print(f"{schema} seed {seed} ({seconds:.0f} s): {json.dumps(score)}", flush=True)
        for schema, runs in trained.items():
            if runs:
                kind = "randomised " if args.randomize else ""
                models.append({"name": f"simulator-only {kind}{schema} U-Net (w{args.width})", "kind": "simulator",
                               "schema": schema, "seeds": [r["seed"] for r in runs],
                               "train_s": [round(r["train_s"], 1) for r in runs], "scores": [r["score"] for r in runs],
                               "runs": [r["run"] for r in runs]})  # fmt: skip
        shown = {f"default: {DEFAULT_PRETRAINED}": pretrained(DEFAULT_PRETRAINED)}
        every = [r for runs in trained.values() for r in runs]
        best = None
        if every:  # best on this clip (mean of the two Dice): for the picture only
            best = max(
                every, key=lambda r: np.nansum([r["score"]["pleural_line"]["dice"], r["score"]["a_line"]["dice"]])
            )
            shown[f"best sim-only: {best['score']['schema']} seed {best['seed']}"] = load_segmenter(best["run"])[0]
        figure(data, shown, args.figure)
        text = table(models)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python benchmarks/bench_real_seg.py", *sys.argv[1:]]),
        "data": "cvat-lus (../shared/data/cvat-lus): 39 labelled frames at 128 px; pleural line drawn on 17",
        "setup": {
            "size": SIZE,
            "clips": args.clips,
            "frames": 2,
            "epochs": args.epochs,
            "width": args.width,
            "seeds": args.seeds,
            "simulation_seeds": [1000 + s for s in args.seeds],
            "checkpoint": "best",
            "schemas": args.schemas,
            "line_label_px": args.line_label_px,
            "a_line_label_px": args.a_line_label_px,
            "randomize": args.randomize,
        },
        "targets": {"pleural_line_dice": 0.60, "a_line_dice": 0.40},
        "seconds": round(time.perf_counter() - start, 1),
        "figure_best": None if best is None else {"schema": best["score"]["schema"], "seed": best["seed"]},
        "models": [{k: v for k, v in m.items() if k != "runs"} for m in models],
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(text)
    print(f"{result['seconds']:.0f} s; wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
