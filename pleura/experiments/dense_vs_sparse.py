"""``pleura experiment dense-vs-sparse``: do dense labels reduce false-positive detections?

The seed paper (Gare et al., ISBI 2021) reports that a U-Net trained on dense labels makes fewer
false-positive detections of A-lines, B-lines and the pleural line than one trained on sparse labels.
This experiment trains both on the same simulated images, with the same budget and seeds, scores both in
the sparse schema on a held-out simulated test set, and reports mean and spread over seeds, whichever way
it comes out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import write_json, write_text
from pleura.data import read_manifest
from pleura.evaluate.seg import evaluate_segmentation
from pleura.models import UNetConfig
from pleura.report import fmt, markdown_table, mean_std
from pleura.simulate import SimulationConfig, write_dataset
from pleura.simulate.writer import dataset_config
from pleura.train.distributed import DistEnv
from pleura.train.seg import Progress, SegTrainConfig, SegTrainer

logger = logging.getLogger(__name__)
LINE_CLASSES = ("a_line", "b_line", "pleural_line")
SCHEMAS = ("dense", "sparse")


@dataclass
class DenseVsSparseConfig:
    """Settings of the experiment; the defaults run in under 15 minutes on a 2-core CPU."""

    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds; each trains one dense and one sparse model
    train_clips: int = 90  # simulated training clips (frames x clips images), split 80/20 by clip
    test_clips: int = 60  # held-out simulated test clips, another simulation seed
    frames: int = 2  # frames per clip
    size: int = 128  # image side; 128 keeps CPU training affordable
    epochs: int = 10  # same budget for both schemas
    batch_size: int = 8
    lr: float = 3e-3
    width: int = 16
    depth: int = 4
    patience: int = 100  # no early stopping by default: both schemas get the full budget
    data_seed: int = 1000  # simulation seed of the training set; the test set uses data_seed + 1
    style: str = "physics"  # simulator output style (pocus: fitted to real POCUS frames)
    train_data: str | None = None  # a dataset with dense and sparse masks (import-annotations --densify) instead
    test_data: str | None = None  # of simulating; both or neither
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.train_data is None) != (self.test_data is None):
            raise ValueError("give both --train-data and --test-data (imported datasets), or neither (simulated)")

    def train_config(self, schema: str, seed: int) -> SegTrainConfig:
        """Training settings of one run: this schema and seed, with the budget shared by both schemas."""
        return SegTrainConfig(
            schema=schema, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            model=UNetConfig(width=self.width, depth=self.depth), patience=self.patience, seed=seed,
        )  # fmt: skip


def recorded_seconds(runs: Iterable[Path]) -> float:
    """Training seconds recorded in the runs' ``summary.json`` files, summed: what a study cost even when
    its report is rebuilt from cached stages or an interrupted run was resumed."""
    return sum(json.loads((r / "summary.json").read_text()).get("seconds", 0.0) for r in runs
               if (r / "summary.json").exists())  # fmt: skip


def training_line(results: dict[str, Any]) -> str:
    """The report sentence on cost: ``results["training_s"]`` per stage and this invocation's wall time."""
    stages = ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["training_s"].items())
    return (
        f"Training time recorded by the stages: {stages} (this invocation: {results['seconds'] / 60:.1f} min; "
        "stages found in the cache are reused)."
    )


def simulate_cached(root: Path, cfg: SimulationConfig) -> Path:
    """Simulate ``cfg`` into ``root`` unless a dataset of the same configuration is already there."""
    meta = root / "dataset.json"
    if meta.exists() and json.loads(meta.read_text()).get("config", {}) == json.loads(json.dumps(dataset_config(cfg))):
        return root
    write_dataset(cfg, root, overwrite=True)
    return root


def newer(target: Path, *sources: Path) -> bool:
    """Whether ``target`` exists and was written after every existing ``source`` (a cached result is stale
    once the data or the model it came from is rewritten)."""
    if not target.exists():
        return False
    times = [s.stat().st_mtime for s in sources if s.exists()]
    return not times or target.stat().st_mtime >= max(times)


def _run_done(run: Path, cfg: SegTrainConfig, data: Path) -> bool:
    """A finished run of the same configuration on the current data, so a rerun of the experiment can reuse it."""
    try:
        saved = json.loads((run / "config.json").read_text())["train"]
        same = saved == json.loads(json.dumps(asdict(cfg)))
        return same and newer(run / "summary.json", data / "manifest.csv")
    except (OSError, KeyError, ValueError):
        return False


def check_both_schemas(*datasets: Path) -> None:
    """Each dataset has dense and sparse masks for every frame (an import with ``--densify`` writes both)."""
    for data in datasets:
        rows = read_manifest(data)
        missing = [c for c in ("mask_dense", "mask_sparse") if c not in rows[0]]
        if missing:
            raise ValueError(
                f"{data}: no {' or '.join(missing)} column; dense-vs-sparse needs both masks for each frame "
                "(pleura data import-annotations ... --densify writes them)"
            )


def run_experiment(
    out: str | Path, cfg: DenseVsSparseConfig, env: DistEnv, progress: Progress | None = None
) -> dict[str, Any]:
    """Simulate, train both schemas for every seed, evaluate, and write ``report.md`` with figures."""
    out = Path(out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train_data is not None and cfg.test_data is not None:
        train_data, test_data = Path(cfg.train_data), Path(cfg.test_data)
        check_both_schemas(train_data, test_data)
    else:
        common = {"size": cfg.size, "frames": cfg.frames, "probe": "mixed", "style": cfg.style}
        train_data = simulate_cached(
            out / "data" / "train", SimulationConfig(n=cfg.train_clips, seed=cfg.data_seed, **common)
        )
        test_data = simulate_cached(
            out / "data" / "test", SimulationConfig(n=cfg.test_clips, seed=cfg.data_seed + 1, **common)
        )
    evals: dict[str, list[dict[str, Any]]] = {s: [] for s in SCHEMAS}
    runs: dict[str, list[str]] = {s: [] for s in SCHEMAS}
    for seed in cfg.seeds:
        for schema in SCHEMAS:
            run = out / "runs" / f"{schema}-seed{seed}"
            tcfg = cfg.train_config(schema, seed)
            if not _run_done(run, tcfg, train_data):
                logger.info("training %s", run)
                SegTrainer(tcfg, train_data, run, env, progress=progress).fit(overwrite=True)
            evals[schema].append(evaluate_segmentation(run, test_data))
            runs[schema].append(str(run))
    results = summarise_runs(evals)
    results.update(
        config=asdict(cfg),
        runs=runs,
        train_frames=len(read_manifest(train_data)),
        test_frames=len(read_manifest(test_data)),
        training_s={"segmentation": recorded_seconds(Path(r) for rs in runs.values() for r in rs)},
        seconds=time.perf_counter() - start,
    )
    from pleura.evaluate.figures import fp_bar_chart, segmentation_grid

    segmentation_grid(
        test_data,
        out / "runs" / f"dense-seed{cfg.seeds[0]}",
        out / "runs" / f"sparse-seed{cfg.seeds[0]}",
        out / "figure_grid.png",
    )
    fp_bar_chart(results, out / "figure_false_positives.png")
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_markdown(results))
    return results


def summarise_runs(evals: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per schema: per-seed values and mean/std of sparse IoU and false positives; paired differences."""
    table: dict[str, dict[str, Any]] = {}
    for schema, items in evals.items():
        per: dict[str, list[float]] = {"mean_iou": [e["sparse_metrics"]["mean_iou"] for e in items]}
        names = items[0]["sparse_metrics"]["class_names"]
        for c in LINE_CLASSES:
            i = names.index(c)
            per[f"{c}_iou"] = [e["sparse_metrics"]["iou"][i] for e in items]
            per[f"{c}_fp_pixel_rate"] = [e["false_positives"][c]["fp_pixel_rate"] for e in items]
            per[f"{c}_fp_components_per_frame"] = [e["false_positives"][c]["fp_components_per_frame"] for e in items]
        table[schema] = {k: {"values": v, "mean": mean_std(v)[0], "std": mean_std(v)[1]} for k, v in per.items()}
    verdict = {}
    for c in LINE_CLASSES:
        for metric in ("fp_components_per_frame", "fp_pixel_rate"):
            key = f"{c}_{metric}"
            d, s = table["dense"][key]["values"], table["sparse"][key]["values"]
            diffs = [a - b for a, b in zip(d, s, strict=True) if a is not None and b is not None]
            m, sd = mean_std(diffs)
            verdict[key] = {
                "dense_minus_sparse_mean": m,
                "dense_minus_sparse_std": sd,
                "seeds_dense_lower": int(sum(x < 0 for x in diffs)),
                "seeds": len(diffs),
            }
    return {"table": table, "paired": verdict}


def report_markdown(results: dict[str, Any]) -> str:
    """The experiment's report: setup, table (mean ± std over seeds), verdict per class, figures."""
    cfg, t, p = results["config"], results["table"], results["paired"]
    n = len(cfg["seeds"])
    if cfg.get("train_data"):
        data = (
            f"**The data are imported** (your labels): training {results['train_frames']} frames of "
            f"`{cfg['train_data']}` (20% of clips held out for validation); test: {results['test_frames']} frames of "
            f"`{cfg['test_data']}`; U-Net width"
        )
    else:
        data = (
            "**The data are simulated** (pleura's B-mode simulator, exact labels). "
            f"Training: {results['train_frames']} frames ({cfg['train_clips']} clips, 20% of clips held out for "
            f"validation); test: {results['test_frames']} frames of {cfg['test_clips']} other clips; {cfg['size']}x"
            f"{cfg['size']} px; U-Net width"
        )
    lines = [
        "# Dense versus sparse labels: false positives of a U-Net",
        "",
        data + f" {cfg['width']}, depth {cfg['depth']}; {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}; seeds {', '.join(map(str, cfg['seeds']))}. Both schemas see the "
        "same images, budget and seeds; every prediction is mapped to the sparse schema and scored there. "
        f"Mean ± standard deviation over {n} seeds. " + training_line(results),
        "",
    ]
    rows = [("mean_iou", "mean IoU", ".3f")] + [
        (f"{c}_{key}", f"{c} {label}", spec)
        for c in LINE_CLASSES
        for key, label, spec in (
            ("iou", "IoU", ".3f"),
            ("fp_components_per_frame", "false-positive components / frame", ".3f"),
            ("fp_pixel_rate", "false-positive pixel rate (frames without it)", ".2e"),
        )
    ]
    cells = [[label, *(fmt(t[s][k]["mean"], spec, pm=t[s][k]["std"]) for s in SCHEMAS)] for k, label, spec in rows]
    lines.append(markdown_table(["metric (test set, sparse schema)", "dense labels", "sparse labels"], cells))
    lines += ["", "## Verdict", ""]
    for c in LINE_CLASSES:
        v = p[f"{c}_fp_components_per_frame"]
        m, s = v["dense_minus_sparse_mean"], v["dense_minus_sparse_std"]
        if m is None or not np.isfinite(m):
            lines.append(f"- {c}: not measurable (no predictions).")
            continue
        direction = "fewer" if m < 0 else "more" if m > 0 else "as many"
        clear = abs(m) > (s or 0)
        lines.append(
            f"- {c}: dense labels gave {direction} false-positive components per frame than sparse "
            f"(difference {m:+.3f} ± {s:.3f}; dense lower in {v['seeds_dense_lower']} of {v['seeds']} seeds)"
            + ("." if clear else "; the difference is within its spread over seeds, so not conclusive.")
        )
    lines += [
        "",
        "Definitions: a false-positive component is a predicted connected component (8-connected) of the "
        "class that touches no true pixel of it; the false-positive pixel rate counts predicted pixels of "
        "the class over all pixels of the test frames whose truth has none of it.",
        "",
        "## Figures",
        "",
        "![segmentation grid](figure_grid.png)",
        "",
        "Rows: image, sparse truth, sparse prediction, dense prediction, dense truth (seed "
        f"{cfg['seeds'][0]} models); columns: test frames of each diagnosis.",
        "",
        "![false positives](figure_false_positives.png)",
        "",
    ]
    return "\n".join(lines)
