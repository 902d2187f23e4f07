"""``pleura experiment label-efficiency``: how many labelled frames do dense and sparse labels need?

The seed paper's cost question. On the simulator, U-Nets are trained on nested subsets of one pool of labelled
frames (10, 30, 100, 300, 1000 by default), drawn by clip, with dense and with sparse labels and several seeds,
and scored in the sparse schema on one fixed held-out simulated test set (IoU and false-positive components per
frame, as ``dense-vs-sparse``). Every run gets the same number of optimizer steps, whatever its size, so a point
of the curve differs from the next in labels, not in compute.

With ``real`` (the ``cvat-lus`` fixture, or another CVAT task backup), the same is done within one real clip:
its annotations are imported, models are trained on subsets of its early labelled frames and scored (Dice of the
pleural line and A-lines) on its late ones.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pleura.atomic import write_json, write_text
from pleura.data import read_manifest, split_by_group
from pleura.data.annotations import AnnotationImportConfig, import_annotations
from pleura.evaluate.seg import evaluate_segmentation
from pleura.experiments.dense_vs_sparse import (
    LINE_CLASSES,
    SCHEMAS,
    DenseVsSparseConfig,
    newer,
    recorded_seconds,
    simulate_cached,
    summarise_runs,
    training_line,
)
from pleura.labels import DIAGNOSES
from pleura.report import fmt, markdown_table, mean_std
from pleura.simulate import SimulationConfig
from pleura.train.distributed import DistEnv
from pleura.train.seg import Progress, SegTrainConfig, SegTrainer

logger = logging.getLogger(__name__)

FIGURE = "figure_label_efficiency.png"
#: the cvat-lus project's label names (README of the fixture) onto the sparse schema; other names are ignored
REAL_LABELS = {"aline": "a_line", "bline": "b_line", "lungslidingpresent": "pleural_line", "pleura": "pleural_line"}
#: the project's diagnosis tags that pleura's diagnoses cover (a clip tagged so can be densified)
REAL_TAGS = {"d_normal": {"diagnosis": "normal"}, "d_pneumonia": {"diagnosis": "pneumonia"}}
REAL_CLASSES = ("pleural_line", "a_line")
CLASS_TITLES = {"pleural_line": "pleural line", "a_line": "A-line", "b_line": "B-line"}


@dataclass
class LabelEfficiencyConfig:
    """Settings of the study; the defaults are the measured CPU budget of ``docs/results/label-efficiency.md``."""

    sizes: tuple[int, ...] = (10, 30, 100, 300, 1000)  # labelled frames per run (validation clips included)
    seeds: tuple[int, ...] = (0, 1, 2)  # a seed draws its own nested subsets and initialises its own models
    frames: int = 2  # frames per simulated clip; a size is a whole number of clips
    pool_clips: int = 500  # simulated clips the subsets are drawn from (pool_clips x frames >= the largest size)
    test_clips: int = 40  # held-out simulated test clips, another simulation seed
    size: int = 96  # image side of the simulated frames
    steps: int = 100  # optimizer steps of every run, whatever its size (epochs = steps / steps per epoch)
    warmup: float = 0.1  # share of the steps in linear warm-up, then cosine decay to zero
    batch_size: int = 8
    lr: float = 3e-3
    width: int = 8  # U-Net width (first level channels)
    depth: int = 4
    checkpoint: str = "best"  # scored checkpoint: best (on the run's validation clips) or last
    data_seed: int = 1000  # simulation seed of the pool; the test set uses data_seed + 1
    style: str = "physics"  # simulator output style
    real: str | None = None  # cvat-lus folder or a CVAT task backup for the within-clip check; None skips it
    real_sizes: tuple[int, ...] = (5, 10, 20)  # early labelled frames per run in the real clip
    real_size: int = 128  # side of the imported real frames and masks
    real_steps: int = 100  # optimizer steps of every real run
    real_batch_size: int = 4
    real_test_from: float = 0.7  # test on labelled frames past this fraction of the clip's labelled span
    real_gap: int = 10  # video frames between the last training frame and the first test frame, at least
    real_segment: int = 10  # video frames per group: near-identical neighbours train or validate together
    init: str = ""  # a simulator-pretrained U-Net (train-seg run or model file) the real runs also start from

    def __post_init__(self) -> None:
        self.sizes = check_sizes(self.sizes, "--sizes")
        self.real_sizes = check_sizes(self.real_sizes, "--real-sizes")
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds needs at least one seed and no seed twice, got {self.seeds}")
        if self.frames < 1:
            raise ValueError(f"--frames must be at least 1, got {self.frames}")
        for n in self.sizes:
            if n % self.frames:
                raise ValueError(f"--sizes: {n} frames is not a whole number of clips of {self.frames} frames; "
                                 f"give multiples of {self.frames}")  # fmt: skip
            if n // self.frames < 2:
                raise ValueError(f"--sizes: {n} frames is {n // self.frames} clip; a run needs at least 2 clips "
                                 "(one is held out for validation)")  # fmt: skip
        pool = self.pool_clips * self.frames
        if self.sizes[-1] > pool:
            raise ValueError(
                f"--sizes: {self.sizes[-1]} frames is larger than the pool of {pool} simulated frames "
                f"({self.pool_clips} clips x {self.frames}); raise --pool-clips or drop the size"
            )
        for name in ("steps", "real_steps", "batch_size", "real_batch_size", "test_clips", "size", "real_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"--checkpoint must be best or last, got {self.checkpoint!r}")
        if not 0 < self.real_test_from < 1:
            raise ValueError(f"--real-test-from must be in (0, 1), got {self.real_test_from}")
        if self.real_gap < 0 or self.real_segment < 1:
            raise ValueError(f"real_gap >= 0 and real_segment >= 1 expected, got {self.real_gap}, {self.real_segment}")

    def base(self, batch_size: int | None = None) -> DenseVsSparseConfig:
        """The dense-vs-sparse settings these runs share (model, learning rate, batch, data)."""
        return DenseVsSparseConfig(
            seeds=self.seeds, frames=self.frames, size=self.size, batch_size=batch_size or self.batch_size,
            lr=self.lr, width=self.width, depth=self.depth, data_seed=self.data_seed, style=self.style,
        )  # fmt: skip


def check_sizes(sizes: Sequence[int], option: str) -> tuple[int, ...]:
    """``sizes`` as distinct positive integers in increasing order (a ValueError naming ``option`` otherwise)."""
    out = tuple(sorted(int(n) for n in sizes))
    if not out or out[0] < 1 or len(set(out)) != len(out):
        raise ValueError(f"{option} needs distinct frame counts of at least 1, got {tuple(sizes)}")
    return out


# ------------------------------------------------------------------------------------------------ subsets


def clip_order(rows: Sequence[dict[str, str]], seed: int, group: str = "clip_id") -> list[str]:
    """The pool's groups (clips) in the order seed ``seed`` draws them: shuffled within each diagnosis and dealt
    round-robin over the diagnoses, so every prefix is as balanced in diagnoses as it can be."""
    by_dx: dict[str, list[str]] = {}
    seen: set[str] = set()
    for r in rows:
        if r[group] not in seen:
            seen.add(r[group])
            by_dx.setdefault(r.get("diagnosis", ""), []).append(r[group])
    rng = np.random.default_rng([seed, 0x1ABE1])
    decks = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(by_dx.items())]
    decks = [decks[i] for i in rng.permutation(len(decks))]
    return [d[k] for k in range(max(map(len, decks), default=0)) for d in decks if k < len(d)]


def nested_subsets(
    rows: Sequence[dict[str, str]], sizes: Sequence[int], seed: int, group: str = "clip_id"
) -> dict[int, list[dict[str, str]]]:
    """For each size, the rows of the first groups of :func:`clip_order` that hold at least ``size`` frames.

    Groups are never split, so a subset may hold a few frames more than its size when groups differ in length;
    each subset contains every smaller one (nested), and rows keep the pool's order.

    Raises:
        ValueError: a size larger than the pool.
    """
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[group]] = counts.get(r[group], 0) + 1
    order, out = clip_order(rows, seed, group), {}
    for size in sorted(sizes):
        if size > len(rows):
            raise ValueError(f"size {size} is larger than the pool of {len(rows)} frames")
        taken, n = set(), 0
        for g in order:
            if n >= size:
                break
            taken.add(g)
            n += counts[g]
        out[size] = [r for r in rows if r[group] in taken]
    return out


def read_rows(data: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A manifest's columns and rows as the file holds them (strings, unparsed), to copy rows verbatim."""
    read_manifest(data)  # validates the manifest, one error line naming it
    with open(data / "manifest.csv", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), [dict(r) for r in reader]


def write_subset(pool: Path, columns: list[str], rows: Sequence[dict[str, str]], folder: Path) -> Path:
    """A manifest dataset at ``folder`` holding ``rows`` of ``pool``: its paths point into ``pool``, no image is
    copied. The manifest is rewritten only when it changes, so runs trained on it stay cached."""
    folder.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(pool.resolve(), folder.resolve())).as_posix()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: f"{rel}/{v}" if (c == "image" or c.startswith("mask_")) and v else v
                         for c, v in r.items()})  # fmt: skip
    path = folder / "manifest.csv"
    if not path.exists() or path.read_text() != buf.getvalue():
        write_text(path, buf.getvalue())
    return folder


# ------------------------------------------------------------------------------------------------ training


def step_schedule(n_train: int, steps: int, warmup_steps: int, batch_size: int, world_size: int = 1) -> dict[str, Any]:
    """Epochs that give at least ``steps`` optimizer steps on ``n_train`` frames, and the warm-up in epochs.

    Mirrors the loop's batching (``pleura.train.loop``: a final batch of one is dropped), so every size gets
    about the same number of steps; the steps actually run are ``epochs * steps_per_epoch``.
    """
    per_rank = math.ceil(n_train / world_size)
    drop = per_rank > batch_size and per_rank % batch_size == 1
    per_epoch = per_rank // batch_size if drop else math.ceil(per_rank / batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    return {"epochs": epochs, "steps_per_epoch": per_epoch, "steps": epochs * per_epoch,
            "warmup_epochs": warmup_steps / per_epoch}  # fmt: skip


def run_config(
    base: SegTrainConfig, data: Path, steps: int, warmup_steps: int, world_size: int
) -> tuple[SegTrainConfig, dict[str, Any]]:
    """``base`` with the epochs and warm-up of a fixed step budget on ``data``'s training part (split by clip
    as the trainer splits it), and no early stopping."""
    rows = read_manifest(data)
    train, val = split_by_group(rows, base.val_fraction, seed=base.seed, group="clip_id")
    plan = step_schedule(len(train), steps, warmup_steps, base.batch_size, world_size)
    cfg = replace(base, epochs=plan["epochs"], warmup_epochs=plan["warmup_epochs"], patience=plan["epochs"] + 1)
    return cfg, {**plan, "train_frames": len(train), "val_frames": len(val)}


def run_done(run: Path, cfg: SegTrainConfig, data: Path) -> bool:
    """A finished run of the same configuration on the current subset, so a rerun reuses it."""
    try:
        saved = json.loads((run / "config.json").read_text())["train"]
        return saved == json.loads(json.dumps(asdict(cfg))) and newer(run / "summary.json", data / "manifest.csv")
    except (OSError, KeyError, ValueError):
        return False


def evaluated(run: Path, test: Path, checkpoint: str) -> dict[str, Any]:
    """``evaluate_segmentation`` of ``run`` on ``test``, or its ``eval.json`` when that is newer than both."""
    ev = run / "eval.json"
    if newer(ev, run / "summary.json", test / "manifest.csv"):
        try:
            e = json.loads(ev.read_text())
            if e.get("data") == str(test.resolve()) and e.get("checkpoint") == checkpoint:
                return e
        except ValueError:
            pass
    return evaluate_segmentation(run, test, checkpoint=checkpoint)


class RunProgress:
    """A trainer's progress under its run's name: the bar of every epoch, the metrics line of the last only."""

    def __init__(self, inner: Progress | None, name: str, epochs: int) -> None:
        self.inner, self.name, self.epochs = inner, name, epochs

    def start(self, description: str, total: int) -> None:
        """A training epoch begins: shown with the run's name."""
        if self.inner is not None:
            self.inner.start(f"{self.name} {description}", total)

    def advance(self, n: int, **info: float) -> None:
        """Steps done: passed on."""
        if self.inner is not None:
            self.inner.advance(n, **info)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """An epoch ended: passed on for the run's last epoch only (a 10-frame run has a hundred epochs)."""
        if self.inner is not None and record["epoch"] >= self.epochs:
            self.inner.end_epoch(record)


def train_cached(
    run: Path, base: SegTrainConfig, data: Path, steps: int, warmup: float, env: DistEnv, progress: Progress | None
) -> dict[str, Any]:
    """Train ``run`` on ``data`` at a fixed step budget (``warmup``: the share of it warming up) unless a finished
    run of the same settings is there; returns the schedule (epochs, steps, train and validation frames)."""
    cfg, plan = run_config(base, data, steps, round(warmup * steps), env.world_size)
    if not run_done(run, cfg, data):
        logger.info("training %s (%d epochs, %d steps)", run, plan["epochs"], plan["steps"])
        SegTrainer(cfg, data, run, env, progress=RunProgress(progress, run.name, cfg.epochs)).fit(overwrite=True)
    return plan


# ------------------------------------------------------------------------------------------------ the study


def run_label_efficiency(
    out: str | Path, cfg: LabelEfficiencyConfig, env: DistEnv, progress: Progress | None = None
) -> dict[str, Any]:
    """Simulate a pool and a test set, train both schemas on nested subsets for every seed at one step budget,
    score them in the sparse schema; then the real within-clip check when ``cfg.real`` is set. Writes
    ``report.md``, ``results.json`` and ``figure_label_efficiency.png`` into ``out``; stages are cached there."""
    out = Path(out)
    start = time.perf_counter()
    real_task = find_task(Path(cfg.real)) if cfg.real else None  # a bad --real fails before any work
    out.mkdir(parents=True, exist_ok=True)
    common = {"size": cfg.size, "frames": cfg.frames, "probe": "mixed", "style": cfg.style}
    pool = simulate_cached(out / "data" / "pool", SimulationConfig(n=cfg.pool_clips, seed=cfg.data_seed, **common))
    test = simulate_cached(out / "data" / "test", SimulationConfig(n=cfg.test_clips, seed=cfg.data_seed + 1, **common))
    columns, rows = read_rows(pool)
    base = cfg.base()
    evals: dict[int, dict[str, list[dict[str, Any]]]] = {n: {s: [] for s in SCHEMAS} for n in cfg.sizes}
    plans: dict[int, dict[str, list[dict[str, Any]]]] = {n: {s: [] for s in SCHEMAS} for n in cfg.sizes}
    runs: list[Path] = []
    for seed in cfg.seeds:
        for n, subset in nested_subsets(rows, cfg.sizes, seed).items():
            data = write_subset(pool, columns, subset, out / "subsets" / f"seed{seed}" / f"n{n}")
            for schema in SCHEMAS:
                run = out / "runs" / f"{schema}-n{n}-seed{seed}"
                plan = train_cached(run, base.train_config(schema, seed), data, cfg.steps, cfg.warmup, env,
                                    progress)  # fmt: skip
                plans[n][schema].append({**plan, "frames": len(subset)})
                evals[n][schema].append(evaluated(run, test, cfg.checkpoint))
                runs.append(run)
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "pool_frames": len(rows),
        "test_frames": len(read_manifest(test)),
        "simulated": summarise_sizes(evals, plans),
    }
    results["targets"] = frames_to_reach(results["simulated"], cfg.sizes)
    results["real"] = run_real(out / "real", real_task, cfg, env, progress) if real_task is not None else None
    real_runs = [Path(r) for r in (results["real"] or {}).get("runs", [])]
    results.update(
        runs=[str(r) for r in runs],
        training_s={
            "simulated": recorded_seconds(runs),
            **({"real clip": recorded_seconds(real_runs)} if real_runs else {}),
        },
        seconds=time.perf_counter() - start,
    )
    efficiency_figure(results, out / FIGURE)
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_markdown(results))
    return results


def _cell(values: Sequence[Any]) -> dict[str, Any]:
    """Per-seed values with their mean and standard deviation (``report.mean_std``)."""
    m, s = mean_std(values)
    return {"values": list(values), "mean": m, "std": s}


def fp_total(e: dict[str, Any]) -> float | None:
    """False-positive components per frame of all line classes together, from one evaluation (None if unknown)."""
    vals = [e["false_positives"][c]["fp_components_per_frame"] for c in LINE_CLASSES]
    return None if any(v is None for v in vals) else float(sum(vals))


def summarise_sizes(
    evals: dict[int, dict[str, list[dict[str, Any]]]], plans: dict[int, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Per size: dense-vs-sparse's summary (per class IoU and false positives, mean and std over seeds), the
    false-positive components of all classes, the paired dense-minus-sparse differences, and the schedules."""
    out: dict[str, Any] = {}
    for n, by_schema in evals.items():
        s = summarise_runs(by_schema)
        for schema, items in by_schema.items():
            s["table"][schema]["fp_components_per_frame"] = _cell([fp_total(e) for e in items])
        diffs = {}
        for key in ("mean_iou", "fp_components_per_frame"):
            d, sp = s["table"]["dense"][key]["values"], s["table"]["sparse"][key]["values"]
            pairs = [a - b for a, b in zip(d, sp, strict=True) if a is not None and b is not None]
            diffs[key] = {**_cell(pairs), "dense_higher": int(sum(x > 0 for x in pairs)),
                          "dense_lower": int(sum(x < 0 for x in pairs)), "seeds": len(pairs)}  # fmt: skip
        s["paired_totals"] = diffs
        s["schedule"] = {schema: p for schema, p in plans[n].items()}
        out[str(n)] = s
    return out


def frames_to_reach(sim: dict[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    """The smallest size whose mean reaches a target, per schema: mean IoU at 90% and 95% of the best mean IoU
    measured, and false-positive components per frame at 1.5x and 1.1x the lowest measured (None: not reached)."""

    def means(schema: str, key: str) -> list[float]:
        return [sim[str(n)]["table"][schema][key]["mean"] for n in sizes]

    iou = {s: means(s, "mean_iou") for s in SCHEMAS}
    fp = {s: means(s, "fp_components_per_frame") for s in SCHEMAS}
    finite = lambda xs: [x for x in xs if x is not None and np.isfinite(x)]  # noqa: E731
    best_iou = max(finite(iou["dense"] + iou["sparse"]), default=float("nan"))
    low_fp = min(finite(fp["dense"] + fp["sparse"]), default=float("nan"))
    out: dict[str, Any] = {"best_mean_iou": best_iou, "lowest_fp_components_per_frame": low_fp, "rows": []}
    for label, key, target, higher in (
        ("mean IoU >= 90% of the best", "mean_iou", 0.9 * best_iou, True),
        ("mean IoU >= 95% of the best", "mean_iou", 0.95 * best_iou, True),
        ("FP components / frame <= 1.5x the lowest", "fp_components_per_frame", 1.5 * low_fp, False),
        ("FP components / frame <= 1.1x the lowest", "fp_components_per_frame", 1.1 * low_fp, False),
    ):
        got = {}
        for s in SCHEMAS:
            vals = iou[s] if key == "mean_iou" else fp[s]
            hit = [n for n, v in zip(sizes, vals, strict=True) if v is not None and np.isfinite(v)
                   and (v >= target - 1e-12 if higher else v <= target + 1e-12)]  # fmt: skip
            got[s] = hit[0] if hit else None
        out["rows"].append({"target": label, "value": target, **got})
    return out


# ------------------------------------------------------------------------------------------------ the real clip


def find_task(path: Path) -> Path:
    """The CVAT task backup at ``path``: the folder itself when it holds ``task.json``, else its one subfolder
    that does (``cvat-lus/task_195``)."""
    if not path.is_dir():
        raise ValueError(f"--real {path}: no such folder")
    if (path / "task.json").is_file():
        return path
    tasks = sorted(p for p in path.iterdir() if (p / "task.json").is_file())
    if len(tasks) != 1:
        what = "no CVAT task backup (task.json)" if not tasks else f"{len(tasks)} task backups; pass one"
        raise ValueError(f"--real {path}: {what} in the folder or its subfolders")
    return tasks[0]


def import_real(task: Path, root: Path, size: int) -> Path:
    """The task imported (sparse masks; dense ones too when every frame has a diagnosis densify accepts) into
    ``root/data``, reused when an import of the same task and size is there."""
    data = root / "data"
    stamp = data / "import.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("source_path") == str(task.resolve()) and info.get("config", {}).get("size") == size:
            return data
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.json"
    write_text(labels, json.dumps({"schema": "sparse", "labels": REAL_LABELS, "tags": REAL_TAGS}, indent=2))
    icfg = AnnotationImportConfig(format="cvat", size=size, workers=1)
    import_annotations(task, data, labels, icfg, overwrite=True)
    if all(r["diagnosis"] in DIAGNOSES for r in read_manifest(data)):
        import_annotations(task, data, labels, replace(icfg, densify=True), overwrite=True)
    return data


def split_clip(rows: Sequence[dict[str, str]], cfg: LabelEfficiencyConfig) -> tuple[list[dict], list[dict], dict]:
    """Early (training pool) and late (test) labelled frames of each clip: test from ``real_test_from`` of the
    clip's labelled span, the pool ending at least ``real_gap`` video frames before; the pool's rows get their
    clip's ``real_segment``-frame segment as ``clip_id`` (the original is kept in ``source_clip_id``)."""
    by_clip: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_clip.setdefault(r["clip_id"], []).append(r)
    pool, test, info = [], [], {}
    for clip, items in sorted(by_clip.items()):
        frames = [int(r["frame"]) for r in items]
        lo, hi = min(frames), max(frames)
        cut = lo + cfg.real_test_from * (hi - lo)
        early = [r for r in items if int(r["frame"]) < cut - cfg.real_gap]
        late = [r for r in items if int(r["frame"]) >= cut]
        pool += [{**r, "clip_id": f"{clip}-s{int(r['frame']) // cfg.real_segment:04d}", "source_clip_id": clip}
                 for r in early]  # fmt: skip
        test += late
        info[clip] = {
            "labelled": len(items), "pool": len(early), "test": len(late),
            "pool_frames": [int(r["frame"]) for r in early], "test_frames": [int(r["frame"]) for r in late],
        }  # fmt: skip
    return pool, test, info


def run_real(root: Path, task: Path, cfg: LabelEfficiencyConfig, env: DistEnv, progress: Progress | None) -> dict:
    """The within-clip check: import, split early/late, train on nested subsets of the early frames (from
    scratch, and from ``cfg.init`` when given) for every seed, score Dice and IoU on the late frames."""
    data = import_real(task, root, cfg.real_size)
    columns, rows = read_rows(data)
    schemas = [s for s in ("sparse", "dense") if f"mask_{s}" in columns]
    pool_rows, test_rows, clips = split_clip(rows, cfg)
    if not test_rows or not pool_rows:
        raise ValueError(f"{task}: the split leaves {len(pool_rows)} training and {len(test_rows)} test frames; "
                         "change --real-test-from or the gap")  # fmt: skip
    if cfg.real_sizes[-1] > len(pool_rows):
        raise ValueError(f"--real-sizes: {cfg.real_sizes[-1]} frames is larger than the {len(pool_rows)} early "
                         f"labelled frames of {task} (the training pool); drop the size")  # fmt: skip
    subsets = {seed: nested_subsets(pool_rows, cfg.real_sizes, seed) for seed in cfg.seeds}
    for seed, by_n in subsets.items():
        for n, subset in by_n.items():
            if len({r["clip_id"] for r in subset}) < 2:
                raise ValueError(
                    f"--real-sizes: {n} frames fall in one segment of {cfg.real_segment} video frames (seed {seed}); "
                    "a run needs 2 segments (one validates): give a larger size"
                )
    test = write_subset(data, columns, test_rows, root / "test")
    base = cfg.base(cfg.real_batch_size)
    variants = [(s, "") for s in schemas] + ([(s, cfg.init) for s in schemas] if cfg.init else [])
    table: dict[str, dict[str, Any]] = {}
    runs: list[str] = []
    for schema, init in variants:
        name = schema + ("-init" if init else "")
        per: dict[int, dict[str, list[Any]]] = {}
        for seed in cfg.seeds:
            for n, subset in subsets[seed].items():
                folder = root / "subsets" / f"seed{seed}" / f"n{n}"
                sub = write_subset(data, [*columns, "source_clip_id"], subset, folder)
                run = root / "runs" / f"{name}-n{n}-seed{seed}"
                tcfg = replace(base.train_config(schema, seed), init=init)
                plan = train_cached(run, tcfg, sub, cfg.real_steps, cfg.warmup, env, progress)
                e = evaluated(run, test, cfg.checkpoint)
                sm = e["sparse_metrics"]
                cell = per.setdefault(n, {"frames": [], "train_frames": [], "steps": []})
                cell["frames"].append(len(subset))
                cell["train_frames"].append(plan["train_frames"])
                cell["steps"].append(plan["steps"])
                for c in REAL_CLASSES:
                    i = sm["class_names"].index(c)
                    cell.setdefault(f"{c}_dice", []).append(sm["dice"][i])
                    cell.setdefault(f"{c}_iou", []).append(sm["iou"][i])
                cell.setdefault("fp_components_per_frame", []).append(fp_total(e))
                runs.append(str(run))
        table[name] = {
            str(n): {k: (v if k in ("frames", "train_frames", "steps") else _cell(v)) for k, v in cell.items()}
            for n, cell in sorted(per.items())
        }
    return {
        "task": str(task),
        "frames": len(rows),
        "pool_frames": len(pool_rows),
        "test_frames": len(test_rows),
        "clips": clips,
        "schemas": schemas,
        "diagnoses": sorted({r["diagnosis"] for r in rows}),
        "init": cfg.init,
        "table": table,
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------ report


def efficiency_figure(results: dict[str, Any], path: Path) -> Path:
    """Mean IoU and false-positive components per frame against labelled frames (log x), dense and sparse,
    mean and standard deviation over seeds; a third panel with the real clip's Dice when it was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from pleura.viz import save_figure

    cfg, sim, real = results["config"], results["simulated"], results["real"]
    sizes = [int(n) for n in sim]
    fig, axes = plt.subplots(1, 3 if real else 2, figsize=(13.5 if real else 9, 3.6))
    colours = {"dense": "#2a9d8f", "sparse": "#e76f51"}
    for ax, key, label in zip(
        axes, ("mean_iou", "fp_components_per_frame"),
        ("mean IoU (sparse schema)", "false-positive components / frame"), strict=False,
    ):  # fmt: skip
        for k, schema in enumerate(SCHEMAS):
            cells = [sim[str(n)]["table"][schema][key] for n in sizes]
            m = [np.nan if c["mean"] is None else c["mean"] for c in cells]
            s = [0 if c["std"] is None or not np.isfinite(c["std"]) else c["std"] for c in cells]
            xs = [n * (1.03 if k else 1 / 1.03) for n in sizes]  # side by side, so the bars do not hide each other
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, color=colours[schema], label=f"{schema} labels")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("labelled training frames")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if real:
        ax = axes[2]
        styles = {"pleural_line": "-", "a_line": "--"}
        for k, (variant, rows) in enumerate(real["table"].items()):
            ns = [int(n) for n in rows]
            colour = plt.get_cmap("tab10")(k)
            for c in REAL_CLASSES:
                m = [np.nan if rows[str(n)][f"{c}_dice"]["mean"] is None else rows[str(n)][f"{c}_dice"]["mean"]
                     for n in ns]  # fmt: skip
                s = [rows[str(n)][f"{c}_dice"]["std"] or 0 for n in ns]
                ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, ls=styles[c], color=colour,
                            label=f"{CLASS_TITLES[c]} ({variant})")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ns = sorted({int(n) for rows in real["table"].values() for n in rows})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("labelled early frames of the clip")
        ax.set_title(f"real clip, late frames: Dice ({real['test_frames']} test frames)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"label efficiency (simulated {cfg['size']} px test set, {_count(len(cfg['seeds']), 'seed')}, "
        f"{cfg['steps']} steps per run; mean ± std)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, facecolor="white")


def passes(size_summary: dict[str, Any]) -> str:
    """How many times a run of this size draws each training frame (its epochs), over schemas and seeds."""
    epochs = sorted({p["epochs"] for plans in size_summary["schedule"].values() for p in plans})
    return "-".join(map(str, (epochs[0], epochs[-1]) if len(epochs) > 1 else epochs)) if epochs else "n/a"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _m(cell: dict[str, Any], spec: str = ".3f") -> str:
    return fmt(cell["mean"], spec, pm=cell["std"])


def report_markdown(results: dict[str, Any]) -> str:
    """The study's report: setup, the table per size and schema, frames to reach targets, paired differences,
    the real clip's table, the figure and the limits."""
    cfg, sim = results["config"], results["simulated"]
    sizes = [int(n) for n in sim]
    lines = [
        "# Label efficiency: how many labelled frames do dense and sparse labels need?",
        "",
        f"**Simulated data** (pleura's B-mode simulator, exact labels, style `{cfg['style']}`). A pool of "
        f"{results['pool_frames']} frames ({cfg['pool_clips']} clips of {cfg['frames']}); for each seed a random "
        "order of its clips (shuffled within each diagnosis, dealt in turn) gives **nested subsets**: the first "
        f"clips holding {', '.join(map(str, sizes))} frames, so each subset contains the smaller ones and no clip "
        "is split. Each subset is trained with dense and with sparse labels (same frames, seed and budget); the "
        "trainer holds out clips of it for validation (20% per diagnosis, at least one clip per diagnosis that "
        "has two), so the labelled frames include the validation frames. Test: "
        f"{results['test_frames']} frames of {cfg['test_clips']} other clips, scored in the sparse schema. "
        f"{cfg['size']}x{cfg['size']} px; U-Net width {cfg['width']}, depth {cfg['depth']}; batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}; **a fixed budget of {cfg['steps']} optimizer steps per run** "
        f"(epochs = steps / steps per epoch, rounded up; warm-up {cfg['warmup']:.0%} of them, then cosine decay; no "
        f"early stopping), scored at the `{cfg['checkpoint']}` checkpoint; seeds "
        f"{', '.join(map(str, cfg['seeds']))}. Mean ± standard deviation over seeds (a seed changes both the "
        "subset and the initialisation). " + training_line(results),
        "",
    ]
    cells = []
    for n in sizes:
        s = sim[str(n)]
        for schema in SCHEMAS:
            t, plan = s["table"][schema], s["schedule"][schema]
            tv = f"{plan[0]['train_frames']}/{plan[0]['val_frames']}" if len(plan) else "n/a"
            if len({(p["train_frames"], p["val_frames"]) for p in plan}) > 1:
                tv += " (varies)"
            cells.append([str(n), tv, schema, _m(t["mean_iou"]),
                          *(_m(t[f"{c}_iou"]) for c in ("pleural_line", "a_line", "b_line")),
                          _m(t["fp_components_per_frame"]), str(plan[0]["steps"]) if plan else "n/a"])  # fmt: skip
    lines.append(markdown_table(
        ["frames", "train/val", "labels", "mean IoU", "pleural line IoU", "A-line IoU", "B-line IoU",
         "FP components / frame", "steps"], cells,
    ))  # fmt: skip
    lines += [
        "",
        "IoU per class and the mean IoU over background and the three line classes, in the sparse schema; FP "
        "components / frame: predicted connected components of a line class that touch no true pixel of it, all "
        "three classes together, per test frame (per class in `results.json`).",
        "",
        "## Frames needed to reach a target",
        "",
    ]
    tg = results["targets"]
    lines.append(markdown_table(
        ["target", "value", "dense labels", "sparse labels"],
        [[r["target"], fmt(r["value"]), *(f"{r[s]}" if r[s] is not None else f"not within {sizes[-1]}"
                                           for s in SCHEMAS)] for r in tg["rows"]],
    ))  # fmt: skip
    lines += [
        "",
        f"Targets are relative to the best mean IoU measured ({fmt(tg['best_mean_iou'])}) and the lowest false-"
        f"positive rate measured ({fmt(tg['lowest_fp_components_per_frame'])} components / frame); a size counts "
        "when the mean over seeds reaches the target (spreads are in the table above).",
        "",
        "## Dense minus sparse, paired by seed",
        "",
    ]
    rows = []
    for n in sizes:
        d = sim[str(n)]["paired_totals"]
        rows.append([
            str(n), fmt(d["mean_iou"]["mean"], "+.3f", pm=d["mean_iou"]["std"]),
            f"{d['mean_iou']['dense_higher']} of {d['mean_iou']['seeds']}",
            fmt(d["fp_components_per_frame"]["mean"], "+.3f", pm=d["fp_components_per_frame"]["std"]),
            f"{d['fp_components_per_frame']['dense_lower']} of {d['fp_components_per_frame']['seeds']}",
        ])  # fmt: skip
    lines.append(markdown_table(
        ["frames", "Δ mean IoU", "seeds dense higher", "Δ FP components / frame", "seeds dense lower"], rows
    ))  # fmt: skip
    lines += ["", "![label efficiency](" + FIGURE + ")", ""]
    lines += real_markdown(results["real"], cfg)
    lines += [
        "## Limits",
        "",
        "- The curve is **simulated**: exact labels, one simulator, one test distribution. It says how the two "
        "label schemas compare as the labelled set grows, not how many real frames a clinic must label.",
        f"- **Small budget**: {cfg['size']} px frames, a width-{cfg['width']} U-Net and {cfg['steps']} steps per "
        f"run. The step budget is the same at every size, so a large set is seen few times: a run on {sizes[-1]} "
        f"frames trains {passes(sim[str(sizes[-1])])} epoch(s), one on {sizes[0]} frames "
        f"{passes(sim[str(sizes[0])])}. The top of the curve is limited by compute as well as by labels; a longer "
        "budget may lift it.",
        f"- {_count(len(cfg['seeds']), 'seed')}; the small sizes have few validation frames, so their best "
        "checkpoint is chosen on little evidence.",
        "",
    ]
    return "\n".join(lines)


def real_markdown(real: dict[str, Any] | None, cfg: dict[str, Any]) -> list[str]:
    """The report's section on the real clip (or a line saying it was skipped)."""
    if real is None:
        return ["## Real clip", "", "Not run (no `--real` folder given; e.g. `--real ../shared/data/cvat-lus`).", ""]
    clip_lines = [
        f"`{c}`: {v['labelled']} labelled frames; training pool: video frames {v['pool_frames'][0]}-"
        f"{v['pool_frames'][-1]} ({v['pool']} frames); test: frames {v['test_frames'][0]}-{v['test_frames'][-1]} "
        f"({v['test']} frames)"
        for c, v in real["clips"].items()
        if v["pool"] and v["test"]
    ]
    dense = (
        "Dense labels were trained too (the clip has a diagnosis)."
        if "dense" in real["schemas"]
        else f"Sparse labels only: the clip carries no diagnosis tag (diagnosis: {', '.join(real['diagnoses'])}), "
        "so its sparse labels cannot be densified."
    )
    lines = [
        "## Real clip, within the clip",
        "",
        f"`{real['task']}` imported with `pleura.data.annotations` at {cfg['real_size']} px (A-line and pleural-"
        f"line polygons; `lungslidingpresent` marks the pleural line). " + "; ".join(clip_lines) + ". Frames "
        f"closer than {cfg['real_gap']} video frames to the test span are left out; the training frames are "
        f"grouped in segments of {cfg['real_segment']} video frames (near-identical neighbours stay together, "
        "both in the nested subsets and in the trainer's validation split). "
        f"{cfg['real_steps']} steps per run, batch {cfg['real_batch_size']}; seeds "
        f"{', '.join(map(str, cfg['seeds']))}. {dense}"
        + (f" `-init` runs start from `{real['init']}` (a simulator-pretrained U-Net)." if real["init"] else ""),
        "",
    ]
    rows = []
    for variant, by_n in real["table"].items():
        for n, c in by_n.items():
            fr = sorted(set(c["frames"]))
            rows.append([n, "-".join(map(str, (fr[0], fr[-1]) if len(fr) > 1 else fr)), variant,
                         *(_m(c[f"{k}_dice"]) for k in REAL_CLASSES), *(_m(c[f"{k}_iou"]) for k in REAL_CLASSES),
                         _m(c["fp_components_per_frame"])])  # fmt: skip
    lines.append(markdown_table(
        ["size", "frames", "model", "pleural line Dice", "A-line Dice", "pleural line IoU", "A-line IoU",
         "FP components / frame"], rows,
    ))  # fmt: skip
    lines += [
        "",
        f"One clip, {real['test_frames']} test frames from the same patient and scan: a check that the loop runs "
        "on real labels and of how fast the scores move with a few frames, not a measure of generalisation.",
        "",
    ]
    return lines
