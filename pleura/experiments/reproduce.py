"""``pleura reproduce``: the seed paper end to end on simulated data.

simulate -> dense and sparse segmentation -> dense-vs-sparse false positives -> three classifiers
(dense-pretrained, sparse-pretrained, scratch) with stratified group k-fold -> classification table ->
``report.md`` with figures. Every stage caches its results in the output folder, so a rerun continues.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import write_json, write_text
from pleura.evaluate.cls import evaluate_classification
from pleura.experiments.dense_vs_sparse import (
    DenseVsSparseConfig,
    newer,
    recorded_seconds,
    run_experiment,
    training_line,
)
from pleura.models import ClassifierConfig, UNetConfig
from pleura.report import fmt, markdown_table, mean_std
from pleura.train.cls import ClsTrainConfig, train_kfold
from pleura.train.distributed import DistEnv
from pleura.train.loop import Progress

INITS = ("dense", "sparse", "scratch")
PAIRS = (("dense", "sparse"), ("dense", "scratch"), ("sparse", "scratch"))  # the seed paper's ranking, pairwise
HEADLINE = (
    ("frame", "balanced_accuracy"),
    ("frame", "macro_roc_auc"),
    ("clip", "balanced_accuracy"),
    ("clip", "covid_sensitivity"),
)


@dataclass
class ReproduceConfig:
    """Budget of the whole study; ``quick()`` is the 10-minute CPU setting."""

    seg: DenseVsSparseConfig  # simulation and segmentation stage
    folds: int = 5  # stratified group k-fold of the classifiers
    cls_epochs: int = 15  # epochs per fold
    freeze_epochs: int = 1  # head-only epochs before the U-Net joins
    cls_lr: float = 1e-3

    @classmethod
    def quick(cls) -> ReproduceConfig:
        """The 10-minute CPU setting: one seed, fewer clips, 3 folds and 5 epochs per fold."""
        seg = DenseVsSparseConfig(seeds=(0,), train_clips=60, test_clips=30, epochs=10)
        return cls(seg=seg, folds=3, cls_epochs=5)

    @classmethod
    def full(cls) -> ReproduceConfig:
        """The full study: every default (3 seeds, 5 folds)."""
        return cls(seg=DenseVsSparseConfig())


def run_reproduce(
    out: str | Path, cfg: ReproduceConfig, env: DistEnv, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every stage and write ``report.md``, ``results.json`` and the figures into ``out``."""
    out = Path(out)
    start = time.perf_counter()
    seg = run_experiment(out / "segmentation", cfg.seg, env, progress)
    train_data = out / "segmentation" / "data" / "train"
    evals: dict[str, list[dict[str, Any]]] = {i: [] for i in INITS}
    for seed in cfg.seg.seeds:
        ccfg = ClsTrainConfig(
            epochs=cfg.cls_epochs, freeze_epochs=cfg.freeze_epochs, lr=cfg.cls_lr, seed=seed,
            model=ClassifierConfig(unet=UNetConfig(width=cfg.seg.width, depth=cfg.seg.depth)), group="patient_id",
        )  # fmt: skip
        runs = train_variants(train_data, out / "segmentation" / "runs", out / "classification", ccfg, cfg.folds, env,
                              progress)  # fmt: skip
        for init, run in runs.items():
            evals[init].append(json.loads((run / "eval.json").read_text()))
    table = classification_table(evals)
    paired = {f"{a}-{b}": paired_differences(evals, a, b) for a, b in PAIRS}
    cls_runs = {i: [out / "classification" / f"{i}-seed{seed}" for seed in cfg.seg.seeds] for i in INITS}
    results = {
        "config": asdict(cfg),
        "segmentation": {k: seg[k] for k in ("table", "paired")},
        "classification": table,
        "paired": paired,
        "training_s": {
            **seg["training_s"],
            **{i: recorded_seconds(f for r in runs for f in sorted(r.glob("fold*"))) for i, runs in cls_runs.items()},
        },
        "seconds": time.perf_counter() - start,
    }
    from pleura.evaluate.figures import biomarker_chart, confusion_figure, roc_figure

    first = {i: out / "classification" / f"{i}-seed{cfg.seg.seeds[0]}" for i in INITS}
    confusion_figure({i: json.loads((r / "eval.json").read_text()) for i, r in first.items()}, out / "confusion.png")
    roc_figure(first, out / "roc.png")
    biomarker_chart(json.loads((first["dense"] / "eval.json").read_text()), out / "biomarkers.png")
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_markdown(results, cfg))
    return results


def train_variants(
    data: Path,
    seg_runs: Path,
    out: Path,
    ccfg: ClsTrainConfig,
    folds: int,
    env: DistEnv,
    progress: Progress | None = None,
    inits: tuple[str, ...] = INITS,
) -> dict[str, Path]:
    """Train and evaluate the reverse-transfer variants on ``data`` with k-fold; cached per variant.

    Every variant uses ``ccfg`` (architecture, budget, seed) and differs only in its start: the
    ``{init}-seed{seed}`` run of ``seg_runs`` for dense and sparse, random weights for scratch. Scratch has
    nothing worth freezing, so its ``freeze_epochs`` train end to end (same number of epochs). Returns the
    run folder of each variant (``out/{init}-seed{seed}``, holding ``eval.json``).
    """
    runs = {}
    for init in inits:
        source = "scratch" if init == "scratch" else f"{init}:{seg_runs / f'{init}-seed{ccfg.seed}'}"
        vcfg = replace(ccfg, init=source, freeze_epochs=0 if init == "scratch" else ccfg.freeze_epochs)
        seg_summary = seg_runs / f"{init}-seed{ccfg.seed}" / "summary.json"
        runs[init] = train_variant(data, out / f"{init}-seed{ccfg.seed}", vcfg, folds, env, progress, seg_summary)
    return runs


def train_variant(
    data: Path,
    run: Path,
    ccfg: ClsTrainConfig,
    folds: int,
    env: DistEnv,
    progress: Progress | None = None,
    *sources: Path,
) -> Path:
    """One variant's k-fold run of ``ccfg`` on ``data`` into ``run``, evaluated (``eval.json``); kept when a finished
    run of the same configuration is newer than the data and every file in ``sources`` (what it started from)."""
    if not (_fresh(run, ccfg, folds) and newer(run / "kfold.json", data / "manifest.csv", *sources)):
        resume = _same_config(run / "fold0", ccfg)  # an interrupted run of this config: keep its folds
        train_kfold(ccfg, data, run, env, folds=folds, progress=progress, overwrite=not resume, resume=resume)
        evaluate_classification(run)
    return run


def _same_config(fold: Path, ccfg: ClsTrainConfig) -> bool:
    """Whether ``fold`` was started with exactly ``ccfg`` (so finished folds can be kept)."""
    try:
        return json.loads((fold / "config.json").read_text())["train"] == json.loads(json.dumps(asdict(ccfg)))
    except (OSError, KeyError, ValueError):
        return False


def _fresh(run: Path, ccfg: ClsTrainConfig, folds: int) -> bool:
    """A finished k-fold run of exactly this configuration, so a rerun can reuse it."""
    try:
        kfold = json.loads((run / "kfold.json").read_text())
        same = kfold["folds"] == folds and kfold["train"] == json.loads(json.dumps(asdict(ccfg)))
        return same and (run / "eval.json").exists()
    except (OSError, KeyError, ValueError):
        return False


def classification_table(evals: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per init and headline metric: the per-seed fold means, their mean and std over seeds, and
    the mean fold-to-fold std (the spread within a seed)."""
    table: dict[str, dict[str, Any]] = {}
    for init, items in evals.items():
        row = {}
        for level, metric in HEADLINE:
            means = [e[level]["folds"][metric]["mean"] for e in items]
            stds = [e[level]["folds"][metric]["std"] for e in items]
            m, s = mean_std(means)
            row[f"{level}_{metric}"] = {
                "seed_means": means,
                "mean": m,
                "std_over_seeds": s,
                "fold_std": mean_std(stds)[0],
            }
        table[init] = row
    return table


def paired_differences(
    evals: dict[str, list[dict[str, Any]]], a: str, b: str, level: str = "frame", metric: str = "balanced_accuracy"
) -> dict[str, Any]:
    """Differences ``a - b`` of a metric, fold by fold: within a seed every variant is scored on the same
    folds (the split depends on the seed only), so the comparison is paired. Seeds are the independent
    replicates; folds of one seed share most of their training data."""
    folds: list[float] = []
    per_seed: list[float] = []
    for ea, eb in zip(evals[a], evals[b], strict=True):
        va, vb = (e[level]["folds"][metric]["values"] for e in (ea, eb))
        d = [x - y for x, y in zip(va, vb, strict=True) if x is not None and y is not None]
        d = [v for v in d if np.isfinite(v)]
        folds += d
        per_seed.append(float(np.mean(d)) if d else float("nan"))
    m, sd = mean_std(per_seed)
    return {
        "metric": f"{level}_{metric}",
        "seed_differences": per_seed,
        "mean": m,
        "std_over_seeds": sd,
        "seeds_higher": sum(v > 0 for v in per_seed),
        "seeds": len(per_seed),
        "folds_higher": sum(v > 0 for v in folds),
        "folds_tied": sum(v == 0 for v in folds),
        "folds": len(folds),
    }


def _cell(c: dict[str, Any], n_seeds: int) -> str:
    """A headline cell: the mean ± the spread over seeds (over folds for one seed)."""
    return fmt(c["mean"], pm=c["std_over_seeds"] if n_seeds > 1 else c["fold_std"])


def report_markdown(results: dict[str, Any], cfg: ReproduceConfig) -> str:
    """The study's report: data statement, segmentation table, classification table, ranking, figures."""
    n = len(cfg.seg.seeds)
    spread = "standard deviation over seeds" if n > 1 else "standard deviation over folds (one seed)"
    t = results["classification"]
    key = "frame_balanced_accuracy"
    ranking = sorted(INITS, key=lambda i: -(t[i][key]["mean"] if t[i][key]["mean"] is not None else -1))
    a, b = t[ranking[0]][key], t[ranking[1]][key]
    gap = (a["mean"] or 0) - (b["mean"] or 0)
    sd = max(
        (a["std_over_seeds"] if n > 1 else a["fold_std"]) or 0, (b["std_over_seeds"] if n > 1 else b["fold_std"]) or 0
    )
    seg_report = Path("segmentation") / "report.md"
    lines = [
        "# Reproduction of Gare et al. (ISBI 2021) on simulated lung ultrasound",
        "",
        "**All data here are simulated** by pleura's B-mode simulator; no claim about real patients follows.",
        training_line(results) + f" Seeds {', '.join(map(str, cfg.seg.seeds))}; "
        f"{cfg.folds}-fold stratified group cross-validation by patient (clip) for the classifiers, "
        f"{cfg.cls_epochs} epochs per fold ({cfg.freeze_epochs} with the U-Net frozen).",
        "",
        "## 1. Dense versus sparse labels (segmentation)",
        "",
        f"Details, per-class table and figures: [{seg_report}]({seg_report}).",
        "",
        "## 2. Reverse transfer: diagnosis from the segmentation U-Net",
        "",
        f"Mean ± {spread}.",
        "",
        markdown_table(
            [
                "init",
                "frame balanced accuracy",
                "frame macro ROC AUC",
                "clip balanced accuracy",
                "clip COVID-19 sensitivity",
            ],
            [[init, *(_cell(t[init][f"{lv}_{m}"], n) for lv, m in HEADLINE)] for init in INITS],
        ),
    ]
    lines += [
        "",
        f"Ranking by frame-level balanced accuracy, as measured: {' > '.join(ranking)}. The gap between the "
        f"first two is {gap:.3f}, " + ("larger" if gap > sd else "not larger") + f" than their spread ({sd:.3f}).",
        "The seed paper's ranking is dense > sparse > scratch.",
        "",
        "Paired differences of frame balanced accuracy (every variant of a seed is scored on the same folds; "
        "mean ± standard deviation over seeds of each seed's mean difference):",
        "",
        markdown_table(
            ["comparison", "difference", "higher in seeds", "higher in folds (ties)"],
            [
                [
                    k.replace("-", " - "),
                    fmt(d["mean"], "+.3f", pm=d["std_over_seeds"]),
                    f"{d['seeds_higher']} of {d['seeds']}",
                    f"{d['folds_higher']} of {d['folds']} ({d['folds_tied']})",
                ]
                for k, d in results["paired"].items()
            ],
        ),
        "",
        "## 3. Figures",
        "",
        "![confusion matrices](confusion.png)",
        "",
        "Clip-level confusion matrices pooled over folds (first seed).",
        "",
        "![ROC curves](roc.png)",
        "",
        "Frame-level one-vs-rest ROC curves pooled over folds (first seed).",
        "",
        "![biomarkers](biomarkers.png)",
        "",
        "Biomarkers read from the dense-initialised classifier's own segmentation, by true diagnosis: the "
        "segmentation explains the diagnosis.",
        "",
        f"![segmentation grid]({Path('segmentation') / 'figure_grid.png'})",
        "",
    ]
    return "\n".join(lines)
