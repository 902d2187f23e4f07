"""``pleura experiment pocus``: reverse transfer from the simulator to real lung ultrasound.

U-Nets pretrained on simulated frames (dense and sparse labels) are reverse-transferred to the real POCUS
frames and compared with the same network trained from scratch, with 5-fold cross-validation stratified
by diagnosis and grouped by patient. Besides frame- and video-level metrics (as ``eval-cls``) the report
breaks results down by data source (source and class are partly confounded in POCUS), checks the
segmentation's biomarkers against the dataset's own pathology flags, measures the sim-to-real gap, and
sets everything beside the published POCOVID-Net figures.

No real frame has a mask, so fine-tuning for diagnosis alone would erase what the U-Net learnt to segment (issue
14). With ``seg_weight`` > 0 (the default) every variant, scratch included, is fine-tuned with the pretraining's
simulated training frames as ``--seg-data``: each classification step also takes a segmentation step on them. The
report scores the segmentation before fine-tuning (the pretrained U-Nets) and after (each fold's classifier) on
the simulated test set and, when given, on the real cvat-lus clip with expert polygons.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import write_json, write_text
from pleura.data import read_manifest
from pleura.data.annotations import AnnotationImportConfig, import_annotations
from pleura.data.pocus import PocusImportConfig, import_pocus, is_pocus_source
from pleura.evaluate.real_seg import score_real_segmentation, sparse_predictions
from pleura.experiments.dense_vs_sparse import (
    DenseVsSparseConfig,
    recorded_seconds,
    run_experiment,
    simulate_cached,
    training_line,
)
from pleura.experiments.reproduce import INITS, train_variant, train_variants
from pleura.labels import DIAGNOSES, SPARSE
from pleura.metrics.classification import binary_roc_auc
from pleura.metrics.segmentation import SegmentationMetrics
from pleura.models import ClassifierConfig, UNetConfig
from pleura.models.checkpoint import read_checkpoint
from pleura.report import fmt, markdown_table, mean_std
from pleura.simulate import SimulationConfig
from pleura.simulate.bands import expert_bands
from pleura.simulate.style import STYLES
from pleura.train.cls import ClsTrainConfig, init_weights
from pleura.train.distributed import DistEnv
from pleura.train.loop import Progress
from pleura.train.selftrain import check_adapt

#: the variant that starts from the shipped segmentation foundation (issue 14) instead of this experiment's pretraining
FOUNDATION = "foundation"
#: every variant the experiment can train: reproduce's dense, sparse and scratch, and the foundation
POCUS_INITS = (*INITS, FOUNDATION)
#: (dataset flag, clip biomarker read from the segmentation) pairs the report checks
FLAG_CHECKS = (
    ("b_lines", "b_line_count"),
    ("a_lines", "a_line_count"),
    ("consolidations", "subpleural_unhealthy_fraction"),
    ("pleural_irreg", "pleural_line_unhealthy_fraction"),
)
#: published POCOVID-Net results on the full POCUS dataset, for context (not the same subset)
PUBLISHED = (
    ("POCOVID-Net, Born et al. 2021 (5 folds by video)", "frame", 0.90, 0.08, 0.96, 0.04),
    ("POCOVID-Net, Born et al. 2020", "video", 0.98, None, 0.91, None),
)
#: the cvat-lus clip's CVAT labels in the sparse schema (as benchmarks/bench_real_seg.py imports it)
CVAT_LUS_LABELS = {"schema": "sparse", "labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}
#: the segmentation scores of the report: (key, column head)
SEG_SIM_KEYS = (("mean_iou", "sim. mean IoU"), ("pleural_line_dice", "sim. pleural-line Dice"),
                ("a_line_dice", "sim. A-line Dice"))  # fmt: skip
SEG_REAL_KEYS = (("pleural_line_dice", "real pleural-line Dice"), ("a_line_dice", "real A-line Dice"),
                 ("fp_a_line_per_frame", "real FP A-line comp./frame"))  # fmt: skip


@dataclass
class PocusExperimentConfig:
    """Budget of the real-data experiment; the defaults finish within an hour on a 2-core CPU."""

    seg: DenseVsSparseConfig = field(
        default_factory=lambda: DenseVsSparseConfig(seeds=(0,), train_clips=90, test_clips=30, epochs=10, width=8)
    )  # simulator pretraining: one seed, the real frames' size, the classifier's width, the physics style
    rate: float = 3.0  # frames sampled per second of clip
    max_per_clip: int = 8  # frames kept per clip (evenly spread), so long clips do not dominate
    folds: int = 5  # stratified group k-fold by patient
    seed: int = 0
    cls_epochs: int = 7  # epochs per fold, the same for every variant
    freeze_epochs: int = 2  # head-only epochs on a frozen U-Net before it joins (every variant)
    cls_lr: float = 1e-3
    batch_size: int = 16
    inits: tuple[str, ...] = INITS
    seg_weight: float = 0.5  # segmentation loss on the pretraining's simulated frames while fine-tuning; 0: none
    adapt_weight: float = 0.0  # self-training of the segmentation on each fold's training frames (real); 0: none
    # the foundation variant: its start (a shipped name or a U-Net model file, sparse schema, the frames' size) and
    # its segmentation stream, randomised simulated clips (x 4 frames) labelled as the foundation learnt them
    foundation: str = "foundation-sparse-w16-128"
    foundation_seg_clips: int = 300

    def __post_init__(self) -> None:
        if self.seg.style not in STYLES:
            raise ValueError(f"unknown simulator style {self.seg.style!r}; choose one of: {', '.join(STYLES)}")
        unknown = [i for i in self.inits if i not in POCUS_INITS]
        if unknown or not self.inits:
            raise ValueError(f"unknown variants {unknown or list(self.inits)}; choose from: {', '.join(POCUS_INITS)}")
        if not isinstance(self.foundation_seg_clips, int) or self.foundation_seg_clips < 1:
            raise ValueError(f"foundation_seg_clips should be a positive integer, got {self.foundation_seg_clips!r}")
        if not isinstance(self.seg.width, int) or self.seg.width < 1:
            raise ValueError(f"width should be a positive integer, got {self.seg.width!r}")
        w = self.seg_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"seg_weight should be a number >= 0 (0: no segmentation loss), got {w!r}")
        check_adapt(self.adapt_weight, ClsTrainConfig.adapt_threshold, allow_zero=True)
        if not 0 <= self.freeze_epochs < self.cls_epochs:
            raise ValueError(f"freeze_epochs should be in [0, cls_epochs={self.cls_epochs}), got {self.freeze_epochs}")
        if self.seg.seeds != (self.seed,):
            raise ValueError(f"the pretraining's seeds {self.seg.seeds} should be the experiment's seed ({self.seed},)")

    @property
    def size(self) -> int:
        """Image side of the frames, pixels: the segmentation stage's, so pretrained U-Nets fit the real frames."""
        return self.seg.size

    @classmethod
    def quick(cls) -> PocusExperimentConfig:
        """A smoke-sized run (minutes): fewer frames, folds and epochs."""
        seg = DenseVsSparseConfig(seeds=(0,), train_clips=40, test_clips=10, epochs=4, width=8)
        return cls(seg=seg, max_per_clip=4, folds=3, cls_epochs=3, freeze_epochs=1)

    @classmethod
    def full(cls) -> PocusExperimentConfig:
        """The larger run for a GPU: 256 px, width 16, 30 frames per clip, 3 seeds' worth of epochs."""
        seg = DenseVsSparseConfig(seeds=(0,), train_clips=400, test_clips=60, epochs=30, size=256, width=16)
        return cls(seg=seg, max_per_clip=30, cls_epochs=30, freeze_epochs=3)


def prepare_data(
    data: Path, out: Path, cfg: PocusExperimentConfig, progress: Any = None, files: list[str] | None = None
) -> Path:
    """The real dataset at the experiment's size: imported from a POCUS source folder into ``out`` (cached;
    ``files`` restricts the import to those source files), or an already imported dataset used as it is."""
    if not is_pocus_source(data):
        return data
    icfg = PocusImportConfig(rate=cfg.rate, max_per_clip=cfg.max_per_clip, size=cfg.size)
    meta = out / "import.json"
    if meta.exists():
        saved = json.loads(meta.read_text())
        same_files = saved.get("files") == (sorted(files) if files is not None else None)
        if saved.get("config") == asdict(icfg) and saved.get("source_folder") == str(data.resolve()) and same_files:
            return out
    step = None
    if progress is not None:
        from pleura.data.pocus import read_source_manifest, select_files

        rows = [r for r in read_source_manifest(data) if files is None or r["file"] in files]
        progress.start("import", len(select_files(rows, icfg)))
        step = progress.advance
    import_pocus(data, out, icfg, overwrite=True, progress=step, files=files)
    return out


def prepare_real_seg(src: Path, out: Path, size: int) -> Path:
    """The real segmentation check's dataset at the experiment's size: a manifest dataset with sparse masks used as
    it is, or the cvat-lus CVAT backup imported into ``out`` (cached) with :data:`CVAT_LUS_LABELS`."""
    if (src / "manifest.csv").is_file():
        return src
    data, meta = out / f"cvat-lus{size}", out / "cvat-lus.json"
    wanted = {"source": str(src.resolve()), "size": size, "labels": CVAT_LUS_LABELS}
    if (data / "manifest.csv").is_file() and meta.is_file() and json.loads(meta.read_text()) == wanted:
        return data
    out.mkdir(parents=True, exist_ok=True)
    labels = write_json(out / "cvat-lus-labels.json", CVAT_LUS_LABELS)
    import_annotations(src, data, labels, AnnotationImportConfig(format="cvat", size=size, workers=1), overwrite=True)
    write_json(meta, wanted)
    return data


def seg_scores(model: Any, sim: Path, real: Path | None) -> dict[str, Any]:
    """One model's segmentation, mapped to the sparse schema: on the simulated set ``sim`` (mean IoU over the sparse
    classes, pleural-line and A-line Dice) and, when given, on the real labelled set ``real``
    (:func:`~pleura.evaluate.real_seg.score_real_segmentation`: Dice of each line on the frames the expert drew it,
    false-positive A-line components per frame)."""
    metrics = SegmentationMetrics(SPARSE.num_classes, class_names=list(SPARSE.names))
    for _batch, pred, truth in sparse_predictions(model, sim):
        metrics.update(pred, truth)
    m = metrics.aggregate()
    out: dict[str, Any] = {
        "sim": {
            "mean_iou": m["mean_iou"],
            "pleural_line_dice": m["dice"][SPARSE.index("pleural_line")],
            "a_line_dice": m["dice"][SPARSE.index("a_line")],
        }
    }
    if real is not None:
        r = score_real_segmentation(model, real)
        out["real"] = {
            "pleural_line_dice": r["pleural_line"]["dice"],
            "a_line_dice": r["a_line"]["dice"],
            "fp_a_line_per_frame": r["a_line"]["fp_components_per_frame"],
        }
    return out


def segmentation_check(
    seg_runs: Path, runs: dict[str, Path], sim: Path, real: Path | None, cfg: PocusExperimentConfig
) -> dict[str, dict[str, Any]]:
    """Segmentation before fine-tuning (each pretrained U-Net's ``best``, the foundation's file; none for scratch) and
    after (each fold's classifier ``best``, the checkpoint its predictions come from), with the mean and std over
    folds."""
    from pleura.models import load_model

    out: dict[str, dict[str, Any]] = {}
    for init, run in runs.items():
        before = None
        if init == FOUNDATION:
            before = seg_scores(load_model(init_weights(Path(cfg.foundation)))[0].eval(), sim, real)
        elif init != "scratch":
            before = seg_scores(read_checkpoint(seg_runs / f"{init}-seed{cfg.seed}" / "best")[0].eval(), sim, real)
        folds = [seg_scores(read_checkpoint(f / "best")[0].eval(), sim, real) for f in sorted(run.glob("fold*"))]
        after: dict[str, dict[str, list[float]]] = {}
        for where in folds[0] if folds else {}:
            after[where] = {k: list(mean_std(f[where][k] for f in folds)) for k in folds[0][where]}
        out[init] = {"before": before, "folds": folds, "after": after}
    return out


def run_pocus(
    data: str | Path,
    out: str | Path,
    cfg: PocusExperimentConfig,
    env: DistEnv,
    progress: Progress | None = None,
    files: list[str] | None = None,
    real_seg: str | Path | None = None,
) -> dict[str, Any]:
    """Import, pretrain on the simulator, reverse-transfer with k-fold, evaluate; writes ``report.md``.

    ``real_seg``: real frames with expert masks for the segmentation check, the cvat-lus CVAT backup (e.g.
    ``../shared/data/cvat-lus``) or a manifest dataset with sparse masks; None skips the real check.
    """
    out = Path(out)
    start = time.perf_counter()
    real = prepare_data(Path(data), out / "data", cfg, progress, files)
    rows = read_manifest(real)
    real_seg_data = prepare_real_seg(Path(real_seg), out / "real-seg", cfg.size) if real_seg is not None else None
    timings = {"import_s": time.perf_counter() - start}
    seg = run_experiment(out / "segmentation", cfg.seg, env, progress)
    timings["pretrain_s"] = time.perf_counter() - start - timings["import_s"]
    sim_train, sim_test = _sim_data(out, cfg)
    seg_data = {"seg_data": str(sim_train), "seg_weight": cfg.seg_weight} if cfg.seg_weight > 0 else {}
    ccfg = ClsTrainConfig(
        epochs=cfg.cls_epochs, freeze_epochs=cfg.freeze_epochs, lr=cfg.cls_lr, seed=cfg.seed, batch_size=cfg.batch_size,
        model=ClassifierConfig(unet=UNetConfig(width=cfg.seg.width, depth=cfg.seg.depth)), group="patient_id",
        adapt_weight=cfg.adapt_weight, **seg_data,
    )  # fmt: skip
    runs = train_variants(real, out / "segmentation" / "runs", out / "classification", ccfg, cfg.folds, env, progress,
                          inits=tuple(i for i in cfg.inits if i != FOUNDATION))  # fmt: skip
    if FOUNDATION in cfg.inits:
        runs[FOUNDATION] = foundation_variant(real, out, ccfg, cfg, env, progress)
    timings["transfer_s"] = time.perf_counter() - start - timings["import_s"] - timings["pretrain_s"]
    evals = {i: json.loads((r / "eval.json").read_text()) for i, r in runs.items()}
    seg_check = segmentation_check(out / "segmentation" / "runs", runs, sim_test, real_seg_data, cfg)
    gap = {f"{cfg.seg.style} (pretraining data)": _gap(real, rows, out / "segmentation" / "data" / "train", cfg.seed)}
    for style in STYLES:  # the same scenes in the other styles: what each style does to the gap
        if style != cfg.seg.style:
            sim = SimulationConfig(n=cfg.seg.train_clips, seed=cfg.seg.data_seed, size=cfg.size, frames=cfg.seg.frames,
                                   style=style)  # fmt: skip
            gap[style] = _gap(real, rows, simulate_cached(out / "segmentation" / "data" / style, sim), cfg.seed)
    results = {
        "config": asdict(cfg),
        "data": {"folder": str(real), **dataset_summary(rows)},
        "segmentation_on_simulator": {k: seg[k] for k in ("table", "paired")},
        "classification": {i: headline(e) for i, e in evals.items()},
        "by_source": {i: by_source(r, rows) for i, r in runs.items()},
        "flags": {i: flag_check(r, rows) for i, r in runs.items()},
        "domain_gap": gap,
        "segmentation_check": {
            "sim_data": str(sim_test),
            "real_data": str(real_seg_data) if real_seg_data is not None else None,
            "variants": seg_check,
        },
        **({"foundation": {"unet": _run_unet(runs[FOUNDATION])}} if FOUNDATION in runs else {}),
        "timings_s": timings,
        "training_s": training_seconds(out, runs, cfg.seed),
        "seconds": time.perf_counter() - start,
    }
    from pleura.evaluate.figures import biomarker_chart, confusion_figure, roc_figure

    confusion_figure(evals, out / "confusion.png")
    roc_figure(runs, out / "roc.png")
    biomarker_chart(evals["dense" if "dense" in evals else next(iter(evals))], out / "biomarkers.png")
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_markdown(results))
    return results


def foundation_variant(
    real: Path, out: Path, ccfg: ClsTrainConfig, cfg: PocusExperimentConfig, env: DistEnv, progress: Progress | None
) -> Path:
    """The foundation variant's k-fold run: ``ccfg`` (budget, seed, segmentation weight) started from
    ``cfg.foundation``, with its U-Net, and, while fine-tuning, segmentation batches of randomised simulated clips
    labelled as the foundation learnt them (bands of the experts' thickness), not the physics-style pretraining set."""
    weights = init_weights(Path(cfg.foundation))
    record = json.loads(weights.with_suffix(".json").read_text())
    unet = UNetConfig(**record["config"])
    seg_data = {}
    if cfg.seg_weight > 0:
        line_px, a_line_px = expert_bands(cfg.size)
        sim = SimulationConfig(n=cfg.foundation_seg_clips, seed=2000 + cfg.seed, size=cfg.size, frames=4,
                               randomize=True, line_label_px=line_px, a_line_label_px=a_line_px)  # fmt: skip
        seg_data = {"seg_data": str(simulate_cached(out / "segmentation" / "data" / "randomized", sim))}
    vcfg = replace(ccfg, init=f"{record['config'].get('schema') or 'sparse'}:{cfg.foundation}",
                   model=replace(ccfg.model, unet=unet), **seg_data)  # fmt: skip
    return train_variant(real, out / "classification" / f"{FOUNDATION}-seed{cfg.seed}", vcfg, cfg.folds, env,
                         progress, weights)  # fmt: skip


def _run_unet(run: Path) -> dict[str, Any]:
    """The U-Net configuration a k-fold run's classifiers were built with (its first fold's ``config.json``)."""
    return json.loads((run / "fold0" / "config.json").read_text())["train"]["model"]["unet"]


def _sim_data(out: Path, cfg: PocusExperimentConfig) -> tuple[Path, Path]:
    """The pretraining's simulated training and test sets (given in ``cfg.seg``, or simulated under ``out``)."""
    if cfg.seg.train_data is not None and cfg.seg.test_data is not None:
        return Path(cfg.seg.train_data), Path(cfg.seg.test_data)
    return out / "segmentation" / "data" / "train", out / "segmentation" / "data" / "test"


def _gap(real: Path, rows: list[dict[str, str]], sim: Path, seed: int) -> dict[str, Any]:
    from pleura.evaluate.domain_gap import domain_gap

    return domain_gap(real, rows, sim, read_manifest(sim), seed=seed)


def training_seconds(out: Path, runs: dict[str, Path], seed: int) -> dict[str, float]:
    """Training time recorded by each stage's runs, so a report rebuilt from cached stages still tells what
    the whole study cost."""
    seg = [out / "segmentation" / "runs" / f"{s}-seed{seed}" for s in ("dense", "sparse")]
    return {
        "pretraining": recorded_seconds(seg),
        **{i: recorded_seconds(sorted(r.glob("fold*"))) for i, r in runs.items()},
    }


def dataset_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Frames, clips and patients per diagnosis, and the distinct patients over all (``patients``: a patient with
    clips of two diagnoses counts once)."""
    out: dict[str, Any] = {"patients": len({r["patient_id"] for r in rows})}
    for d in DIAGNOSES:
        sub = [r for r in rows if r["diagnosis"] == d]
        out[d] = {
            "frames": len(sub),
            "clips": len({r["clip_id"] for r in sub}),
            "patients": len({r["patient_id"] for r in sub}),
        }
    return out


HEADLINE_KEYS = (
    ("frame", "balanced_accuracy"),
    ("frame", "covid_sensitivity"),
    ("frame", "covid_specificity"),
    ("clip", "balanced_accuracy"),
    ("clip", "covid_sensitivity"),
    ("clip", "covid_specificity"),
    ("clip", "macro_roc_auc"),
)


def headline(ev: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean and std over folds of the metrics the report leads with."""
    return {f"{lv}_{m}": ev[lv]["folds"].get(m, {"mean": float("nan"), "std": float("nan")}) for lv, m in HEADLINE_KEYS}


def _clip_predictions(run: Path) -> dict[str, tuple[int, np.ndarray]]:
    """clip id -> (true label, mean frame probabilities) pooled over the held-out folds."""
    acc: dict[str, list] = {}
    for path in sorted(run.glob("fold*/test_predictions.csv")):
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                p = np.array([float(r[f"p_{d}"]) for d in DIAGNOSES])
                acc.setdefault(r["clip_id"], [int(r["label"]), []])[1].append(p)
    return {c: (y, np.mean(ps, axis=0)) for c, (y, ps) in acc.items()}


def by_source(run: Path, rows: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Clip-level accuracy per data source, with the classes each source contributes."""
    source = {r["clip_id"]: r.get("source_id", "") or "?" for r in rows}
    clips = _clip_predictions(run)
    out: dict[str, dict[str, Any]] = {}
    for c, (y, p) in clips.items():
        s = out.setdefault(source.get(c, "?"), {"clips": 0, "correct": 0, "classes": {}})
        s["clips"] += 1
        s["correct"] += int(int(np.argmax(p)) == y)
        s["classes"][DIAGNOSES[y]] = s["classes"].get(DIAGNOSES[y], 0) + 1
    for s in out.values():
        s["accuracy"] = s["correct"] / s["clips"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["clips"]))


def flag_check(run: Path, rows: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Do the segmentation's clip biomarkers agree with the dataset's own pathology flags?

    For each flag, the clips flagged 1 and 0 are compared through the biomarker (max of counts, mean of
    fractions over the clip's frames): the mean in each group over the clips where it was found, the share of
    clips where it was found and above 0, and the ROC AUC of the biomarker for the flag (0.5: no agreement
    beyond chance) over all flagged clips, a clip where it was not found (no pleural line, an empty cell)
    ranked lowest: nothing seen.
    """
    flags = {r["clip_id"]: r for r in rows}
    path = run / "clip_biomarkers.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        clips = list(csv.DictReader(fh))
    out = {}
    for flag, marker in FLAG_CHECKS:
        ys, xs = [], []
        for c in clips:
            f = flags.get(c["clip_id"], {}).get(flag, "")
            if f in ("0", "1"):
                ys.append(int(f))
                xs.append(float(c[marker]) if c.get(marker, "") not in ("", "nan") else math.nan)
        y, x = np.array(ys, dtype=int), np.array(xs, dtype=float)
        seen = np.isfinite(x)
        ranked = np.where(seen, x, (x[seen].min() if seen.any() else 0.0) - 1.0)  # not found: below every value
        pos, neg = x[(y == 1) & seen], x[(y == 0) & seen]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        out[flag] = {
            "biomarker": marker,
            "clips_flagged": n_pos,
            "clips_unflagged": n_neg,
            "clips_flagged_found": int(pos.size),
            "clips_unflagged_found": int(neg.size),
            "mean_flagged": float(pos.mean()) if pos.size else float("nan"),
            "mean_unflagged": float(neg.mean()) if neg.size else float("nan"),
            "share_flagged_detected": float((pos > 0).sum() / n_pos) if n_pos else float("nan"),
            "share_unflagged_detected": float((neg > 0).sum() / n_neg) if n_neg else float("nan"),
            "auc": binary_roc_auc(y, ranked) if n_pos and n_neg else float("nan"),
        }
    return out


def report_markdown(results: dict[str, Any]) -> str:
    """The real-data report: data, headline table beside POCOVID-Net, sources, flags, sim-to-real gap."""
    cfg, t = results["config"], results["classification"]
    d = results["data"]
    n_frames = sum(d[x]["frames"] for x in DIAGNOSES)
    lines = [
        "# Reverse transfer from the simulator to real lung ultrasound (POCUS)",
        "",
        f"Real data: {n_frames} frames of {sum(d[x]['clips'] for x in DIAGNOSES)} clips and images from "
        f"{d.get('patients', sum(d[x]['patients'] for x in DIAGNOSES))} patients ("
        + ", ".join(
            f"{x}: {d[x]['frames']} frames, {d[x]['clips']} clips, {d[x]['patients']} patients" for x in DIAGNOSES
        )
        + f"), sampled at {cfg['rate']:g} frames/s, at most {cfg['max_per_clip']} per clip, cleaned and resized to "
        f"{cfg['seg']['size']} px. Segmentation pretraining used **simulated** frames only (no real frame has a mask). "
        f"{cfg['folds']}-fold cross-validation stratified by diagnosis and grouped by patient; {cfg['cls_epochs']} "
        f"epochs per fold ({cfg['freeze_epochs']} with the U-Net frozen), {_width_line(results)}, seed "
        f"{cfg['seed']}. " + _seg_line(cfg) + " Mean ± standard deviation over folds. " + training_line(results),
        "",
    ]
    rows = [
        [init, *(fmt(row[f"{lv}_{m}"].get("mean"), pm=row[f"{lv}_{m}"].get("std")) for lv, m in HEADLINE_KEYS)]
        for init, row in t.items()
    ]
    for name, level, sens, sens_sd, spec, spec_sd in PUBLISHED:
        s, p = fmt(sens, ".2f", pm=sens_sd), fmt(spec, ".2f", pm=spec_sd)
        rows.append([name, *(["", s, p, "", "", "", ""] if level == "frame" else ["", "", "", "", s, p, ""])])
    head = [
        "init",
        "frame bal. acc.",
        "frame COVID sens.",
        "frame COVID spec.",
        "video bal. acc.",
        "video COVID sens.",
        "video COVID spec.",
        "video macro AUC",
    ]
    lines += [
        markdown_table(head, rows),
        "",
        "The published POCOVID-Net figures come from the full POCUS dataset (with the Butterfly and web-scraped "
        "videos that this openly licensed subset lacks, and more COVID-19 patients); they set the context, not "
        "a like-for-like comparison.",
        "",
    ]
    lines += _target_lines(t)
    lines += ["", "## By data source (video level, pooled held-out folds)", "",
              "Source and class are partly confounded in POCUS: a source that supplies one class can be "
              "recognised by its look rather than its lung.", ""]  # fmt: skip
    # the tables below print an undefined value as "nan", as they always have
    inits = list(results["by_source"])
    rows = []
    for src, s in results["by_source"][inits[0]].items():
        classes = ", ".join(f"{k} {v}" for k, v in sorted(s["classes"].items()))
        accs = [results["by_source"][i].get(src, {}).get("accuracy", float("nan")) for i in inits]
        rows.append([src, classes, *(fmt(a, ".2f", missing="nan") for a in accs)])
    lines.append(markdown_table(["source", "clips by class", *(f"{i} acc." for i in inits)], rows))
    lines += ["", "## Biomarkers against the dataset's own flags (video level)", "",
              "Biomarkers come from each classifier's own segmentation; the flags are the upstream annotators'. "
              "AUC 0.5 means the biomarker does not tell flagged from unflagged clips.", ""]  # fmt: skip
    rows = [
        [
            init,
            flag,
            c["biomarker"],
            f"{c['clips_flagged']} / {c['clips_unflagged']}",
            *(
                fmt(c[k], spec, missing="nan")
                for k, spec in (
                    ("mean_flagged", ".3g"),
                    ("mean_unflagged", ".3g"),
                    ("share_flagged_detected", ".2f"),
                    ("share_unflagged_detected", ".2f"),
                    ("auc", ".3f"),
                )
            ),
        ]
        for init, checks in results["flags"].items()
        for flag, c in checks.items()
    ]
    head = [
        "init",
        "flag",
        "biomarker",
        "clips flagged / not",
        "mean flagged",
        "mean unflagged",
        "detected in flagged",
        "detected in unflagged",
        "AUC",
    ]
    lines.append(markdown_table(head, rows))
    lines += ["", *segmentation_section(results.get("segmentation_check"), cfg)]
    lines += [
        "",
        "## Sim-to-real gap",
        "",
        "A logistic regression on image statistics (intensity, speckle, texture, depth profile, scan-area "
        "shape) told to separate real from simulated frames, cross-validated by clip: ROC AUC 0.5 means "
        "indistinguishable, 1.0 fully separable. The mean standardised difference averages, over the "
        "statistics, |real mean - simulated mean| / pooled standard deviation.",
        "",
    ]
    rows = []
    for style, g in results["domain_gap"].items():
        top = ", ".join(
            f"{k} {fmt(v['real'], '.3g', missing='nan')} vs {fmt(v['sim'], '.3g', missing='nan')}"
            for k, v in list(g["top"].items())[:3]
        )
        rows.append(
            [
                style,
                fmt(g["auc"], pm=g["auc_std"], missing="nan"),
                fmt(g["mean_d"], ".2f", missing="nan"),
                f"{g['real_frames']} / {g['sim_frames']}",
                top,
            ]
        )
    head = [
        "simulator style",
        "ROC AUC (mean ± std over folds)",
        "mean standardised difference",
        "real / simulated frames",
        "largest differences (real vs simulated)",
    ]
    lines += [
        markdown_table(head, rows),
        "",
        "## Figures",
        "",
        "![confusion matrices](confusion.png)",
        "",
        "Video-level confusion matrices pooled over folds.",
        "",
        "![ROC curves](roc.png)",
        "",
        "![biomarkers](biomarkers.png)",
        "",
        f"Biomarkers read from the {'dense' if 'dense' in t else next(iter(t))} variant's segmentation, by true "
        "diagnosis.",
        "",
        f"Segmentation pretraining on the simulator: [{Path('segmentation') / 'report.md'}]"
        f"({Path('segmentation') / 'report.md'}).",
        "",
    ]
    return "\n".join(lines)


def _width_line(results: dict[str, Any]) -> str:
    """The report's U-Net width: the experiment's, and the foundation's own when it is a variant."""
    cfg = results["config"]
    line = f"U-Net width {cfg['seg']['width']}"
    found = results.get("foundation")
    if found is None:
        return line
    others = [i for i in cfg["inits"] if i != FOUNDATION]
    own = f"the foundation variant keeps its own U-Net (`{cfg['foundation']}`, width {found['unet']['width']})"
    return f"{line} ({', '.join(others)}); {own}" if others else own


def _seg_line(cfg: dict[str, Any]) -> str:
    """The report sentence on the segmentation loss during fine-tuning."""
    w = cfg.get("seg_weight", 0)
    if not w:
        return "Fine-tuning had no segmentation loss (seg_weight 0): nothing keeps the U-Net segmenting."
    inits = cfg.get("inits", ())
    own = [i for i in inits if i != FOUNDATION]
    scratch = " (scratch included)" if "scratch" in inits else ""
    parts = []
    if own:
        parts.append(f"for {'every variant' if len(own) > 1 else own[0]}{scratch}, a batch of the pretraining's "
                     "simulated training frames")  # fmt: skip
    if FOUNDATION in inits:
        parts.append(f"for the foundation, a batch of {cfg['foundation_seg_clips'] * 4} randomised simulated frames "
                     "labelled as the foundation learnt them (bands of the experts' thickness)")  # fmt: skip
    return (
        f"Every fine-tuning step also took a segmentation step ({'; '.join(parts)}; `train-cls --seg-data`, "
        f"weight {w:g})."
    )


def segmentation_section(check: dict[str, Any] | None, cfg: dict[str, Any]) -> list[str]:
    """The report's table of segmentation quality before and after fine-tuning, simulated and real."""
    if not check:
        return []
    real = check.get("real_data")
    keys = [("sim", k, h) for k, h in SEG_SIM_KEYS] + ([("real", k, h) for k, h in SEG_REAL_KEYS] if real else [])
    spec = lambda k: ".2f" if k.startswith("fp_") else ".3f"  # noqa: E731
    rows = []
    for init, v in check["variants"].items():
        if v["before"] is not None:
            cells = [fmt(v["before"][w][k], spec(k), missing="n/a") for w, k, _ in keys]
            rows.append([init, "pretrained U-Net (before)", *cells])
        cells = [fmt(v["after"][w][k][0], spec(k), pm=v["after"][w][k][1], missing="n/a") for w, k, _ in keys]
        rows.append([init, f"classifier's U-Net (after; {len(v['folds'])} folds)", *cells])
    lines = [
        "## Segmentation before and after fine-tuning",
        "",
        _seg_line(cfg) + " Scored on the simulated test set "
        f"(`{check['sim_data']}`, all predictions mapped to the sparse schema; mean IoU over its 4 classes)"
        + (
            f" and on the real cvat-lus clip (`{real}`: expert polygons, each line scored on the frames where it "
            "was drawn; `pleura.evaluate.real_seg`)"
            if real
            else " (no real labelled clip given: pass the cvat-lus folder for the real check)"
        )
        + ". Before: the pretrained U-Net the variant starts from (scratch has none); after: each fold's "
        "classifier (the checkpoint its predictions come from), mean ± std over folds. n/a: undefined (no pixel "
        "of the class predicted nor true).",
        "",
        markdown_table(["init", "model", *(h for _, _, h in keys)], rows),
    ]
    return lines


def _target_lines(t: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The issue's targets, stated as met or not from the measured means."""
    lines = ["Targets (video level, mean over folds):", ""]
    for init, row in t.items():
        ba, se = row["clip_balanced_accuracy"]["mean"], row["clip_covid_sensitivity"]["mean"]
        ok = lambda v, lim: "met" if v is not None and np.isfinite(v) and v >= lim else "not met"  # noqa: E731
        lines.append(f"- {init}: balanced accuracy {ba:.3f} (target 0.85: {ok(ba, 0.85)}), COVID-19 sensitivity "
                     f"{se:.3f} (target 0.90: {ok(se, 0.90)})")  # fmt: skip
    if "dense" in t and "scratch" in t:
        a, b = t["dense"]["clip_balanced_accuracy"]["mean"], t["scratch"]["clip_balanced_accuracy"]["mean"]
        lines.append(f"- dense-pretrained {'at least as good as' if a >= b else 'worse than'} scratch at video "
                     f"level ({a:.3f} vs {b:.3f}).")  # fmt: skip
    return lines


__all__ = ["FOUNDATION", "POCUS_INITS", "PocusExperimentConfig", "run_pocus"]
