"""``pleura`` command line: a thin layer over the library that owns the terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pleura import __version__

if TYPE_CHECKING:
    from pleura.infer.predictor import Predictor

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lung-ultrasound AI toolkit.")
err = Console(stderr=True)


def shown(text: object) -> str:
    """A user string (a file name, an error naming one) as printable text (``pleura.atomic.printable``)."""
    from pleura.atomic import printable

    return printable(text)


def say(text: object, style: str = "") -> str:
    """``text`` escaped for rich, so markup-like names (``study[/]x.jpg``, ``scan [copy].jpg``) print as they are."""
    body = escape(shown(text))
    return f"[{style}]{body}[/]" if style else body


def fail(message: object, code: int = 2) -> None:
    """Print one clear error line and exit non-zero."""
    err.print(f"[bold red]error:[/] {say(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _positive(value: float | None) -> float | None:
    """Option callback: a number that must be above zero (a learning rate, a frame rate)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"should be a number > 0, got {value}")
    return value


DATASET = dict(exists=True, file_okay=False, dir_okay=True)  # a --data folder: checked before any work


def _ood_policy(value: str) -> str:
    """Option callback: an ``OODPolicy`` name (withhold or warn)."""
    from pleura.postprocess.ood import OODPolicy

    try:
        return str(OODPolicy.parse(value))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# Options several commands share, declared once.
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Batch size per process.", min=1)]
Processes = Annotated[int, typer.Option("--workers", help="Worker processes; 0 = all cores.", min=0)]


def progress_bar() -> Progress:
    """The progress bar every long command shows (on stderr)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _print_version(value: bool) -> None:
    """``pleura --version``: eager, so it answers before typer asks for a command."""
    if value:
        typer.echo(f"pleura {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Output folder (must be empty or absent unless --overwrite)."),
    n: int = typer.Option(60, "--n", help="Number of clips; the dataset has n x frames images."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files.", min=0),
    size: int = typer.Option(256, "--size", help="Image side in pixels (at least 64)."),
    probe: str = typer.Option("mixed", "--probe", help="linear, curvilinear or mixed."),
    classes: str = typer.Option("covid,pneumonia,normal", "--classes", help="Comma-separated diagnoses."),
    frames: int = typer.Option(1, "--frames", help="Frames per clip (lung sliding over a clip)."),
    workers: Processes = 0,
    style: str = typer.Option("physics", "--style", help="Output style: physics, or pocus (looks like POCUS clips)."),
    gallery: bool = typer.Option(False, "--gallery", help="Also write gallery.png, a contact sheet with overlays."),
    line_label_px: float | None = typer.Option(
        None, "--line-label-px", help="Label the pleural line (and A-lines) as bands this many px thick, as experts do."
    ),
    a_line_label_px: float | None = typer.Option(
        None, "--a-line-label-px", help="A-line band thickness in px (default: --line-label-px)."
    ),
    randomize: bool = typer.Option(
        False, "--randomize", help="Domain randomisation: vary scanner, chest wall, display and export per clip."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Simulate lung-ultrasound frames with anatomy, dense and sparse masks and a manifest."""
    import time

    from pleura.simulate import SimulationConfig, SimulationError, write_dataset

    cfg = SimulationConfig(
        n=n,
        seed=seed,
        size=size,
        probe=probe,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
        frames=frames,
        workers=workers,
        style=style,
        line_label_px=line_label_px,
        a_line_label_px=a_line_label_px,
        randomize=randomize,
    )
    try:
        cfg.validate()
    except SimulationError as e:
        fail(str(e))
    start = time.perf_counter()
    total = cfg.n * cfg.frames
    try:
        with progress_bar() as bar:
            task = bar.add_task("simulate", total=total, rate="")

            def step(k: int) -> None:
                bar.advance(task, k)
                done = bar.tasks[0].completed
                bar.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.0f} frames/s")

            manifest = write_dataset(cfg, out, overwrite=overwrite, gallery=gallery, progress=step)
    except SimulationError as e:
        fail(str(e))
    seconds = time.perf_counter() - start
    typer.echo(f"wrote {total} frames of {cfg.n} clips to {manifest.parent} in {seconds:.1f} s ({manifest})")
    if gallery:
        typer.echo(f"gallery: {manifest.parent / 'gallery.png'}")


class _EpochProgress:
    """Draws the trainer's progress: one bar per epoch and a line of metrics after it."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.task = bar, None

    def start(self, description: str, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total, rate="")

    def advance(self, n: int, **info: float) -> None:
        rate = " ".join(f"{k.replace('_per_s', '/s')} {v:.3g}" for k, v in info.items())
        self.bar.update(self.task, advance=n, rate=rate)

    def end_epoch(self, record: dict) -> None:
        text = (
            f"epoch {record['epoch']}: loss {record['train_loss']:.3f} / val {record['val_loss']:.3f}, "
            f"val score {record['val_score']:.3f}, {record['images_per_s']:.1f} img/s"
        )
        self.bar.console.print(text + (" *" if record.get("best") else ""), highlight=False, soft_wrap=True)


@app.command("train-seg")
def train_seg(
    data: list[Path] = typer.Option(
        ...,
        "--data",
        help="Manifest dataset folder (pleura simulate, data import-annotations); repeat to mix.",
        **DATASET,
    ),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    schema: str = typer.Option("dense", "--schema", help="dense or sparse labels."),
    data_weights: str = typer.Option(
        "", "--data-weights", help="Share of each --data in the draws, e.g. 0.5,0.5; default: by frame count."
    ),
    init: str = typer.Option(
        None,
        "--init",
        help="Start from this U-Net: a shipped model (foundation-sparse-w16-128), a train-seg run or a model file.",
    ),
    adapt_data: Path = typer.Option(
        None,
        "--adapt-data",
        help="Unlabelled real frames (e.g. data import-pocus) to self-train on: the epoch's starting model labels "
        "them where confident, the model learns them under strong intensity changes.",
        **DATASET,
    ),
    adapt_weight: float = typer.Option(
        0.5, "--adapt-weight", help="Weight of the self-training loss on --adapt-data.", callback=_positive
    ),
    adapt_threshold: float = typer.Option(
        0.9, "--adapt-threshold", help="Teacher probability a pixel needs to be a pseudo-label.", min=0.0, max=1.0
    ),
    epochs: int = typer.Option(30, "--epochs", help="Maximum epochs (early stopping may end sooner).", min=1),
    batch_size: BatchSize = 8,
    lr: float = typer.Option(2e-3, "--lr", help="Peak AdamW learning rate.", callback=_positive),
    width: int = typer.Option(16, "--width", help="U-Net channels at the first level (64 = classic).", min=1, max=256),
    depth: int = typer.Option(4, "--depth", help="U-Net down-steps.", min=1, max=6),
    patience: int = typer.Option(8, "--patience", help="Early stopping patience in epochs.", min=1),
    seed: int = typer.Option(0, "--seed", help="Seed of init, split, shuffling, augmentation.", min=0),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train without augmentation."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes.", min=0),
    device: Device = "auto",
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    overwrite: Overwrite = False,
) -> None:
    """Train a U-Net to segment A-lines, B-lines and the pleural line (also under torchrun)."""
    from pleura.data import ManifestError
    from pleura.models import UNetConfig
    from pleura.models.checkpoint import CheckpointError
    from pleura.train.distributed import cleanup, init_distributed
    from pleura.train.seg import SegTrainConfig, SegTrainer, TrainError

    try:
        try:
            weights = tuple(float(w) for w in data_weights.split(",") if w.strip())
        except ValueError:
            fail(f"--data-weights must be comma-separated numbers, got {data_weights!r}")
        cfg = SegTrainConfig(
            schema=schema, epochs=epochs, batch_size=batch_size, lr=lr, model=UNetConfig(width=width, depth=depth),
            patience=patience, seed=seed, augment=not no_augment, workers=workers, device=device,
            init=init or "", data_weights=weights, adapt_data=adapt_data, adapt_weight=adapt_weight,
            adapt_threshold=adapt_threshold,
        )  # fmt: skip
        cfg.model_config()
        env = init_distributed(device)
    except (KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    try:
        with progress_bar() as bar:
            summary = SegTrainer(cfg, data, out, env, progress=_EpochProgress(bar)).fit(
                resume=resume, overwrite=overwrite
            )
    except (TrainError, ManifestError, CheckpointError, ValueError) as e:
        fail(str(e))
    finally:
        cleanup(env)
    if env.is_main:
        typer.echo(
            f"best val mean IoU {summary['best_val_score']:.4f} at epoch {summary['best_epoch']} "
            f"({summary['epochs_run']} epochs, {summary['seconds']:.0f} s); run: {out}"
        )


@app.command("eval-seg")
def eval_seg(
    run: Path = typer.Option(..., "--run", help="Run folder of train-seg.", **DATASET),
    data: Path = typer.Option(..., "--data", help="Manifest dataset to score on.", **DATASET),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    schema: str = typer.Option(None, "--schema", help="Refuse a checkpoint of another schema."),
) -> None:
    """Score a segmentation run: per-class IoU, Dice, precision, recall and false positives."""
    from pleura.evaluate.seg import evaluate_segmentation

    try:
        result = evaluate_segmentation(run, data, checkpoint=checkpoint, schema=schema)
    except ValueError as e:
        fail(str(e))
    typer.echo((run / "eval.md").read_text())
    typer.echo(f"wrote {run / 'eval.json'} and {run / 'eval.md'} ({result['frames']} frames)")


@app.command("train-cls")
def train_cls(
    data: Path = typer.Option(..., "--data", help="Manifest dataset folder.", **DATASET),
    out: Path = typer.Option(..., "--out", help="Run folder to write (one fold* subfolder per fold)."),
    init: str = typer.Option("scratch", "--init", help="dense, sparse (with --init-run) or scratch."),
    init_run: Path = typer.Option(
        None,
        "--init-run",
        help="What a dense or sparse --init starts from: a train-seg run, a model file or a shipped "
        "segmentation model (foundation-sparse-w16-128).",
    ),
    folds: int = typer.Option(
        5, "--folds", help="Stratified group k-fold by --group; 1: no test fold, one model on all the data.", min=1
    ),
    group: str = typer.Option("patient_id", "--group", help="Column grouping frames: patient_id or clip_id."),
    tap: str = typer.Option("logits+decoder", "--tap", help="logits, decoder, logits+decoder or bottleneck."),
    freeze_epochs: int = typer.Option(0, "--freeze-epochs", help="Epochs on a frozen U-Net before unfreezing.", min=0),
    aux_seg_weight: float = typer.Option(0.0, "--aux-seg-weight", help="Auxiliary segmentation loss weight.", min=0.0),
    seg_data: Path = typer.Option(
        None, "--seg-data", help="Simulated frames with masks: a segmentation batch beside every step.", **DATASET
    ),
    seg_weight: float = typer.Option(
        0.5, "--seg-weight", help="Weight of the --seg-data segmentation loss.", callback=_positive
    ),
    adapt_weight: float = typer.Option(
        0.0, "--adapt-weight", help="Self-training of the segmentation on the training frames (0: none).", min=0.0
    ),
    adapt_threshold: float = typer.Option(
        0.9, "--adapt-threshold", help="Teacher probability a pixel needs to be a pseudo-label.", min=0.0, max=1.0
    ),
    epochs: int = typer.Option(20, "--epochs", help="Maximum epochs per fold.", min=1),
    batch_size: BatchSize = 8,
    lr: float = typer.Option(
        1e-3, "--lr", help="Peak learning rate of the head (the U-Net gets 0.1x).", callback=_positive
    ),
    patience: int = typer.Option(
        8, "--patience", help="Early stopping patience (validation balanced accuracy).", min=1
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of init, folds, sampling, augmentation.", min=0),
    device: Device = "auto",
    resume: bool = typer.Option(False, "--resume", help="Keep finished folds, continue an interrupted one."),
    overwrite: Overwrite = False,
) -> None:
    """Reverse transfer: train a COVID-19 / pneumonia / normal classifier from a segmentation U-Net, k-fold."""
    from pleura.models import ClassifierConfig
    from pleura.train.cls import ClsTrainConfig, train_kfold
    from pleura.train.distributed import cleanup, init_distributed

    if init_run is not None:  # --init dense --init-run RUN; the old --init dense:RUN is still read
        if ":" in init or init == "scratch":
            fail(f"--init-run goes with --init dense or --init sparse, got --init {init!r}")
        from pleura.models import PRETRAINED

        if str(init_run) not in PRETRAINED and not init_run.exists():
            fail(f"--init-run {init_run}: does not exist (a train-seg run, a model file or: {', '.join(PRETRAINED)})")
        init = f"{init}:{init_run}"
    try:
        cfg = ClsTrainConfig(
            init=init, model=ClassifierConfig(tap=tap), freeze_epochs=freeze_epochs, aux_seg_weight=aux_seg_weight,
            seg_data=str(seg_data) if seg_data is not None else None, seg_weight=seg_weight, adapt_weight=adapt_weight,
            adapt_threshold=adapt_threshold, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
            group=group, device=device,
        )  # fmt: skip
        env = init_distributed(device)
    except ValueError as e:
        fail(str(e))
    try:
        with progress_bar() as bar:
            train_kfold(
                cfg, data, out, env, folds=folds, progress=_EpochProgress(bar), overwrite=overwrite, resume=resume
            )
    except ValueError as e:
        fail(str(e))
    finally:
        cleanup(env)
    if env.is_main:
        if folds == 1:
            typer.echo(f"trained one model on all the data into {out}; bundle it with: pleura export model {out} "
                       "--out MODEL.safetensors --calibration KFOLD_RUN")  # fmt: skip
        else:
            typer.echo(f"trained {folds} folds into {out}; score them with: pleura eval-cls --run {out}")


@app.command("eval-cls")
def eval_cls(
    run: Path = typer.Option(..., "--run", help="Run folder of train-cls.", **DATASET),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals.", min=1),
) -> None:
    """Score a k-fold classification run at frame and clip level, with bootstrap intervals."""
    from pleura.evaluate.cls import evaluate_classification

    try:
        evaluate_classification(run, n_boot=n_boot)
    except ValueError as e:
        fail(str(e))
    typer.echo((run / "eval.md").read_text())


def _default_model() -> Path:
    """The shipped default model (package data), as the default of every ``--model``."""
    from pleura.models import pretrained

    return pretrained()


DEFAULT_MODEL = _default_model()


@app.command("eval-model")
def eval_model(
    data: Path = typer.Option(..., "--data", help="Labelled manifest dataset the model never saw.", **DATASET),
    out: Path = typer.Option(..., "--out", help="Folder for predictions, eval.json, eval.md and figures."),
    model: Path = typer.Option(DEFAULT_MODEL, "--model", help="Model file (pleura export model)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals.", min=1),
    overwrite: Overwrite = False,
    engine: str = typer.Option("onnx", "--engine", help="onnx (what predict ships, the default) or torch."),
) -> None:
    """External validation: score a model file on another labelled dataset (calibration and OOD included)."""
    from pleura.evaluate.external import evaluate_model

    if not model.is_file():
        fail(f"{model}: model file not found; pass --model FILE (pleura export model writes one)")
    try:
        evaluate_model(model, data, out, n_boot=n_boot, overwrite=overwrite, engine=engine)
    except (ValueError, OSError) as e:
        fail(str(e))
    typer.echo((out / "eval.md").read_text())


data_app = typer.Typer(no_args_is_help=True, help="Bring real data in: import datasets into manifest folders.")
app.add_typer(data_app, name="data")


@data_app.command("import-pocus")
def import_pocus_cmd(
    src: Path = typer.Argument(
        ..., help="The POCUS folder (manifest.csv and class folders), e.g. ../shared/data/pocus.", **DATASET
    ),
    out: Path = typer.Option(..., "--out", help="Output dataset folder (must be empty or absent unless --overwrite)."),
    rate: float = typer.Option(3.0, "--rate", help="Frames sampled per second of clip.", callback=_positive),
    max_per_clip: int = typer.Option(30, "--max-per-clip", help="At most this many frames per clip.", min=1),
    size: int = typer.Option(256, "--size", help="Side of the square cleaned frames, in pixels.", min=32, max=2048),
    include_other: bool = typer.Option(False, "--include-other", help="Also import viral and uncertain files."),
    workers: Processes = 0,
    overwrite: Overwrite = False,
) -> None:
    """Import the POCUS lung-ultrasound dataset: sample, clean and resize frames into a manifest dataset."""
    import time

    from pleura.data.pocus import PocusError, PocusImportConfig, import_pocus, read_source_manifest, select_files

    cfg = PocusImportConfig(rate=rate, max_per_clip=max_per_clip, size=size, include_other=include_other,
                            workers=workers)  # fmt: skip
    start = time.perf_counter()
    try:
        cfg.validate()
        total = len(select_files(read_source_manifest(src), cfg))
        with progress_bar() as bar:
            task = bar.add_task("import", total=total, rate="")
            report = import_pocus(src, out, cfg, overwrite=overwrite, progress=lambda k: bar.advance(task, k))
    except PocusError as e:
        fail(str(e))
    for file, error in report.failed:
        err.print(f"[yellow]skipped[/] {file}: {error}", highlight=False, soft_wrap=True)
    per_class = ", ".join(f"{k} {v}" for k, v in report.per_class.items())
    typer.echo(
        f"imported {report.frames} frames ({per_class}) from {report.files - len(report.failed)} of {report.files} "
        f"files into {out} in {time.perf_counter() - start:.1f} s; {len(report.failed)} failed, "
        f"{report.excluded} left out (classes outside the task)"
    )


@data_app.command("import-annotations")
def import_annotations_cmd(
    src: Path = typer.Argument(
        ...,
        help="The export: a CVAT task backup folder, annotations.xml, a COCO .json, a folder of Labelme .json "
        "files or of mask PNGs (or a .zip of one).",
        exists=True,
    ),
    fmt: str = typer.Option(
        ..., "--format", help="cvat (task backup), cvat-xml (CVAT for images/video 1.1), coco, labelme or masks."
    ),
    labels: Path = typer.Option(
        ...,
        "--labels",
        exists=True,
        dir_okay=False,
        help='Label map, JSON (YAML only when PyYAML is installed): {"schema": "sparse", "labels": {"aline": '
        '"a_line", "lungslidingpresent": "pleural_line"}, "priority": ["pleural_line", "b_line", "a_line"], '
        '"tags": {"d_normal": {"diagnosis": "normal"}}}; "colors"/"values" for mask PNGs.',
    ),
    out: Path = typer.Option(..., "--out", help="Output dataset folder (must be empty or absent unless --overwrite)."),
    schema: str = typer.Option(None, "--schema", help="sparse, dense or anatomy (default: the map's, else sparse)."),
    densify: bool = typer.Option(
        False, "--densify", help="Also write dense masks from sparse ones with each frame's diagnosis (tags or --meta)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Refuse label or tag names the map lacks (default: warn)."),
    size: int = typer.Option(256, "--size", help="Side of the square cleaned frames and masks.", min=32, max=2048),
    thickness: str = typer.Option(
        "3px", "--thickness", help="Polyline width and point size: 3px (frame pixels) or 1.0mm (DICOM pixel spacing)."
    ),
    meta: Path = typer.Option(
        None,
        "--meta",
        exists=True,
        dir_okay=False,
        help="CSV with clip and some of diagnosis,patient_id,probe,clip_id (clip_id: the clip a still image is from).",
    ),
    media: Path = typer.Option(None, "--media", exists=True, help="The video file or media folder, if not beside SRC."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (one clip each); 0 = all cores.", min=0),
    clip_pattern: str = typer.Option(
        "auto",
        "--clip-pattern",
        help="Still images' clip from their names, kept together in splits: auto (clip7_000012 -> clip7), none "
        "(one clip each), or a regex with a (?P<clip>...) group.",
    ),
    overwrite: Overwrite = False,
) -> None:
    """Import labels from CVAT, COCO, Labelme or mask PNGs: cleaned labelled frames and aligned masks."""
    import time

    from pleura.data.annotations import AnnotationError, AnnotationImportConfig, import_annotations

    cfg = AnnotationImportConfig(
        format=fmt, schema=schema, densify=densify, strict=strict, size=size, thickness=thickness, workers=workers,
        clip_pattern=clip_pattern,
    )  # fmt: skip
    start = time.perf_counter()
    bar, tasks = progress_bar(), []

    def advance(k: int, total: int) -> None:  # the bar appears once every check has passed
        if not tasks:
            bar.start()
            tasks.append(bar.add_task("import", total=total, rate=""))
        bar.advance(tasks[0], k)

    try:
        cfg.validate()
        report = import_annotations(src, out, labels, cfg, media=media, meta=meta, overwrite=overwrite,
                                    progress=advance)  # fmt: skip
    except AnnotationError as e:
        bar.stop()
        fail(str(e))
    bar.stop()
    for line in report.warnings:
        err.print(f"[yellow]warning[/] {say(line)}", highlight=False, soft_wrap=True)
    for _, line in report.failed:
        err.print(f"[yellow]skipped[/] {say(line)}", highlight=False, soft_wrap=True)
    per_class = ", ".join(f"{k} {v}" for k, v in report.per_class.items()) or "background only"
    typer.echo(
        f"imported {report.frames} frames ({per_class}) of {report.clips} clip(s) into {out} in "
        f"{time.perf_counter() - start:.1f} s; {len(report.failed)} skipped, {len(report.warnings)} warning(s)"
    )


experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that reproduce and test the seed paper's claims.")
app.add_typer(experiment_app, name="experiment")


def _seed_list(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` as a tuple of distinct integers (one error line otherwise)."""
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"--seeds must be comma-separated integers, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        fail(f"--seeds needs at least one seed and no seed twice, got {text!r}")
    return seeds


def _study(run: Callable[..., dict], out: Path, make_config: Callable[[], object], device: str) -> None:
    """Run a study (``run(out, cfg, env, progress=...)``) with a progress bar, then print its report; the
    config is made inside, so its checks become one error line like the run's."""
    from pleura.train.distributed import init_distributed

    try:
        cfg = make_config()
        env = init_distributed(device)
        with progress_bar() as bar:
            results = run(out, cfg, env, progress=_EpochProgress(bar))
    except ValueError as e:
        fail(str(e))
    typer.echo((out / "report.md").read_text())
    typer.echo(f"report: {out / 'report.md'} ({results['seconds'] / 60:.1f} min)")


@experiment_app.command("dense-vs-sparse")
def dense_vs_sparse(
    out: Path = typer.Option(..., "--out", help="Experiment folder (data, runs, report.md, figures)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated training seeds."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs per model (the same for both schemas).", min=1),
    train_clips: int = typer.Option(90, "--train-clips", help="Simulated training clips.", min=2),
    test_clips: int = typer.Option(60, "--test-clips", help="Simulated test clips.", min=1),
    size: int = typer.Option(128, "--size", help="Image side in pixels.", min=32, max=2048),
    width: int = typer.Option(16, "--width", help="U-Net width.", min=1, max=256),
    train_data: Path = typer.Option(
        None,
        "--train-data",
        help="Your dataset with dense and sparse masks (import --densify) to train on.",
        **DATASET,
    ),
    test_data: Path = typer.Option(None, "--test-data", help="Your dataset to score on (other clips).", **DATASET),
    device: Device = "auto",
) -> None:
    """Train dense- and sparse-label U-Nets on the same data and compare their false positives.

    Simulated by default; --train-data and --test-data run it on your own imported labels instead.
    """
    from pleura.experiments.dense_vs_sparse import DenseVsSparseConfig, run_experiment

    seed_list = _seed_list(seeds)
    config = partial(DenseVsSparseConfig, seeds=seed_list, epochs=epochs, train_clips=train_clips,
                     test_clips=test_clips, size=size, width=width,
                     train_data=str(train_data) if train_data else None,
                     test_data=str(test_data) if test_data else None)  # fmt: skip
    _study(run_experiment, out, config, device)


def _size_list(text: str, option: str) -> tuple[int, ...]:
    """``--sizes 10,30,100`` as a tuple of integers (one error line otherwise; the config checks the values)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")


@experiment_app.command("label-efficiency")
def label_efficiency(
    out: Path = typer.Option(..., "--out", help="Experiment folder (data, subsets, runs, report.md, figure)."),
    sizes: str = typer.Option("10,30,100,300,1000", "--sizes", help="Labelled frames per run, whole clips."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (each draws its own nested subsets)."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps of every run, whatever its size.", min=1),
    size: int = typer.Option(96, "--size", help="Image side of the simulated frames.", min=32, max=2048),
    width: int = typer.Option(8, "--width", help="U-Net width.", min=1, max=256),
    depth: int = typer.Option(4, "--depth", help="U-Net depth.", min=1, max=8),
    frames: int = typer.Option(2, "--frames", help="Frames per simulated clip.", min=1),
    pool_clips: int = typer.Option(500, "--pool-clips", help="Simulated clips the subsets are drawn from.", min=2),
    test_clips: int = typer.Option(40, "--test-clips", help="Held-out simulated test clips.", min=1),
    data_seed: int = typer.Option(1000, "--data-seed", help="Simulation seed of the pool (the test set: +1)."),
    batch_size: BatchSize = 8,
    real: Path = typer.Option(
        None,
        "--real",
        help="cvat-lus folder or a CVAT task backup: the within-clip check (skipped without).",
        exists=True,
        file_okay=False,
    ),
    real_sizes: str = typer.Option("5,10,20", "--real-sizes", help="Early labelled frames per real run."),
    real_size: int = typer.Option(128, "--real-size", help="Side of the imported real frames.", min=32, max=2048),
    real_steps: int = typer.Option(100, "--real-steps", help="Optimizer steps of every real run.", min=1),
    init: Path = typer.Option(
        None,
        "--init",
        help="A simulator-pretrained U-Net (train-seg run or model file) real runs also start from.",
        exists=True,
    ),
    device: Device = "auto",
) -> None:
    """How many labelled frames do dense and sparse labels need? A curve on the simulator, and within a real clip.

    Every run gets the same number of optimizer steps; subsets are nested and drawn by clip.
    """
    from pleura.experiments.label_efficiency import LabelEfficiencyConfig, run_label_efficiency

    config = partial(LabelEfficiencyConfig, sizes=_size_list(sizes, "--sizes"), seeds=_seed_list(seeds), steps=steps,
                     size=size, width=width, depth=depth, frames=frames, pool_clips=pool_clips, test_clips=test_clips,
                     data_seed=data_seed, batch_size=batch_size, real=str(real) if real else None,
                     real_sizes=_size_list(real_sizes, "--real-sizes"), real_size=real_size, real_steps=real_steps,
                     init=str(init) if init else "")  # fmt: skip
    _study(run_label_efficiency, out, config, device)


@experiment_app.command("pocus")
def pocus_experiment(
    data: Path = typer.Option(
        ...,
        "--data",
        help="POCUS folder (e.g. ../shared/data/pocus), or a dataset made by data import-pocus.",
        **DATASET,
    ),
    out: Path = typer.Option(Path("runs/pocus"), "--out", help="Experiment folder (stages are cached there)."),
    quick: bool = typer.Option(False, "--quick", help="A smoke-sized run (minutes)."),
    full: bool = typer.Option(False, "--full", help="The larger run for a GPU (256 px, width 16, 30 epochs)."),
    style: str = typer.Option("physics", "--style", help="Simulator style of the pretraining data: physics or pocus."),
    width: int = typer.Option(
        None, "--width", help="U-Net width (first level channels); default: the budget's.", min=1, max=256
    ),
    inits: str = typer.Option(
        "dense,sparse,scratch",
        "--inits",
        help="Variants to train, comma-separated: dense, sparse (pretrained here), scratch, foundation (the shipped "
        "segmentation foundation, its own width).",
    ),
    seg_weight: float = typer.Option(
        0.5, "--seg-weight", help="Segmentation loss on the simulated frames while fine-tuning (0: none).", min=0.0
    ),
    adapt_weight: float = typer.Option(
        0.0,
        "--adapt-weight",
        help="Self-training of the segmentation on each fold's training frames while fine-tuning (0: none).",
        min=0.0,
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the pretraining, the folds' training and the splits.", min=0),
    max_per_clip: int = typer.Option(
        None, "--max-per-clip", help="Frames kept per clip (3 per second); default: the budget's.", min=1
    ),
    epochs: int = typer.Option(None, "--epochs", help="Classifier epochs per fold; default: the budget's.", min=1),
    freeze_epochs: int = typer.Option(
        None, "--freeze-epochs", help="Of those, epochs with the U-Net frozen; default: the budget's.", min=0
    ),
    cvat_lus: Path = typer.Option(
        None,
        "--cvat-lus",
        help="Real clip with expert masks for the segmentation check (a CVAT backup such as ../shared/data/cvat-lus, "
        "or a dataset with sparse masks); none: no real check.",
        **DATASET,
    ),
    device: Device = "auto",
) -> None:
    """Simulator-pretrained reverse transfer on real POCUS frames, against scratch, with 5-fold by patient."""
    from dataclasses import replace

    from pleura.experiments.pocus import PocusExperimentConfig, run_pocus

    if quick and full:
        fail("--quick and --full exclude each other")
    base = PocusExperimentConfig.quick() if quick else PocusExperimentConfig.full() if full else PocusExperimentConfig()

    def config() -> PocusExperimentConfig:  # replace() runs the configs' checks (__post_init__) on the new values
        seg = replace(base.seg, style=style, width=width if width is not None else base.seg.width, seeds=(seed,))
        budget = {k: v for k, v in (("max_per_clip", max_per_clip), ("cls_epochs", epochs),
                                    ("freeze_epochs", freeze_epochs)) if v is not None}  # fmt: skip
        return replace(base, seg=seg, inits=tuple(i.strip() for i in inits.split(",") if i.strip()),
                       seg_weight=seg_weight, adapt_weight=adapt_weight, seed=seed, **budget)  # fmt: skip

    _study(partial(run_pocus, data, real_seg=cvat_lus), out, config, device)


@app.command()
def reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", help="Output folder (stages are cached there)."),
    quick: bool = typer.Option(False, "--quick", help="The 10-minute CPU budget (one seed, 3 folds)."),
    seeds: str = typer.Option(
        None, "--seeds", help="Comma-separated seeds (default 0,1,2; --quick: 0). Cached seeds are reused."
    ),
    device: Device = "auto",
) -> None:
    """The seed paper end to end on simulated data: segmentation, dense vs sparse, reverse transfer, report."""
    from dataclasses import replace

    from pleura.experiments.reproduce import ReproduceConfig, run_reproduce

    cfg = ReproduceConfig.quick() if quick else ReproduceConfig.full()
    if seeds is not None:
        cfg = replace(cfg, seg=replace(cfg.seg, seeds=_seed_list(seeds)))
    _study(run_reproduce, out, lambda: cfg, device)


export_app = typer.Typer(no_args_is_help=True, help="Export trained models: one predictor file, or ONNX.")
app.add_typer(export_app, name="export")


@export_app.command("model")
def export_model_cmd(
    run: Path = typer.Argument(..., help="A train-cls run: one fold folder, or a k-fold run (its best fold)."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors; its .json is written beside)."),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        help="For a run with no test fold (trained on all the data): a k-fold run of the same recipe whose pooled "
        "held-out predictions fit the temperature.",
        **DATASET,
    ),
) -> None:
    """Bundle a trained classifier with its temperature calibration and OOD statistics into one model file."""
    from pleura.infer.bundle import export_bundle

    try:
        path, meta = export_bundle(run, out, calibration=calibration)
    except (ValueError, OSError) as e:
        fail(str(e))
    t = meta["temperature"]
    typer.echo(f"wrote {path} (+ {path.with_suffix('.json').name}) from {meta['source_run']}; temperature {t:.3f}")


@export_app.command("onnx")
def export_onnx_cmd(
    model: Path = typer.Option(..., "--model", help="A model file (.safetensors) to export."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    size: int = typer.Option(
        0, "--size", help="Frame size; 0 = the size the model file records (else 256).", min=0, max=4096
    ),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare ONNX Runtime with PyTorch (max diff 1e-4)."),
) -> None:
    """Export a model to ONNX with a dynamic batch axis, checked against PyTorch in ONNX Runtime."""
    from pleura.infer import export_onnx
    from pleura.models import load_model

    try:
        net, meta = load_model(model)
        side = size or int((meta.get("image_size") or [256])[0])
        export_onnx(net, out, image_size=side, verify=check)
    except (ValueError, OSError, RuntimeError) as e:
        fail(str(e))
    typer.echo(
        f"wrote {out} ({side}x{side}, dynamic batch" + (", outputs match PyTorch within 1e-4)" if check else ")")
    )


MEDIA_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".mp4", ".avi", ".mov", ".mpeg", ".mpg",
                  ".mkv", ".webm", ".dcm", ".dicom", ""}  # fmt: skip


def _inputs(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named, and the media files inside folders named (recursively, sorted), without hidden folders and
    earlier prediction outputs; with the problems of the paths that cannot be read (missing, not a regular file)."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not (f.parent / "predictions.json").is_file()
            )  # fmt: skip
            if not found:
                problems.append((p, f"{p}: folder holds no image, clip or DICOM file"))
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists() or p.is_symlink():
            problems.append((p, f"{p}: not a regular file or a folder (a FIFO, socket, device or broken link)"))
        else:
            problems.append((p, f"{p}: no such file or folder"))
    return files, problems


def _checked_inputs(
    inputs: list[Path], out: Path, overwrite: bool, model: Path
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The readable files of ``inputs`` and the failed ones (each printed as one line), once every check that
    stops a batch before any work passed: something to read, an ``--out`` that holds no input and may be written,
    an existing model."""
    from pleura.atomic import check_output

    files, failed = _inputs(inputs)
    if not files:  # nothing to do: a usage error, each path's problem named
        for _, problem in failed[:-1]:
            err.print(f"[bold red]error:[/] {say(problem)}", highlight=False, soft_wrap=True)
        fail(failed[-1][1])
    inside = [f for f in files if f.resolve().is_relative_to(out.resolve())]
    if inside:
        fail(f"{out}: the output folder holds the input {inside[0]}; choose another --out (inputs are never replaced)")
    try:
        check_output(out, overwrite)
    except ValueError as e:
        fail(str(e))
    if not model.exists():
        fail(f"{model}: model not found; pass --model FILE (the shipped ones: pleura.models.PRETRAINED)")
    _problem_lines(failed)
    return files, failed


@contextlib.contextmanager
def _model_file(model: Path) -> Iterator[Path]:
    """The model file to load: ``model`` itself, or a train-cls run bundled on the fly into a private temporary
    folder that is removed afterwards, also after a failure (and, for runs that were killed, by the next call)."""
    if not model.is_dir():
        yield model
        return
    from pleura.atomic import remove_stale
    from pleura.infer.bundle import export_bundle

    remove_stale(Path(tempfile.gettempdir()), "pleura-model-*")
    with tempfile.TemporaryDirectory(prefix="pleura-model-", suffix=f"-{os.getpid()}") as tmp:
        path, _ = export_bundle(model, Path(tmp) / "model.safetensors")
        yield path


def _segmenting_predictor(stack: contextlib.ExitStack, model: Path, **options: Any) -> Predictor:
    """A ``Predictor`` that needs no diagnosis head (``segment``, ``score``): a train-seg run read as it is, a
    train-cls run bundled first (removed when ``stack`` closes), a model file as it is; one error line otherwise."""
    from pleura.infer.predictor import Predictor, segmentation_run

    try:
        path = model if segmentation_run(model) is not None else stack.enter_context(_model_file(model))
        return Predictor(path, require_diagnosis=False, **options)
    except (ValueError, OSError, KeyError) as e:
        fail(f"{model}: {e}" if str(model) not in str(e) else str(e))


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Images, clips, DICOM files or folders of them."),
    model: Path = typer.Option(
        DEFAULT_MODEL,
        "--model",
        help="Model file (pleura export model), a train-cls run or a shipped model's name; default: the shipped one.",
    ),
    out: Path = typer.Option(
        Path("predictions"), "--out", help="Output folder (must be empty or absent unless --overwrite)."
    ),
    engine: str = typer.Option("onnx", "--engine", help="onnx (ONNX Runtime, faster on a CPU) or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the torch engine runs."),
    rate: float = typer.Option(
        10.0, "--rate", help="Frames per second predicted from clips; 0 = every frame.", min=0.0
    ),
    max_frames: int = typer.Option(0, "--max-frames", help="At most this many frames per file; 0 = all.", min=0),
    tta: bool = typer.Option(
        False, "--tta", help="Average each frame's probabilities with its left-right mirror's (2x the inference)."
    ),
    ood: str = typer.Option(
        "withhold",
        "--ood",
        help="A file whose every frame is out of distribution: withhold its diagnosis, or warn (give it, marked).",
        callback=_ood_policy,
    ),
    video: bool = typer.Option(True, "--video/--no-video", help="Write an annotated MP4 per clip."),
    overwrite: Overwrite = False,
) -> None:
    """Diagnose images and clips: calibrated probabilities, biomarkers, OOD flags, overlays (JSON, CSV, PNG, MP4).

    The output folder is written under a temporary name and renamed when complete; it never holds an input.
    """
    from pleura.atomic import staged_folder
    from pleura.data.readers import ReadError
    from pleura.infer.predictor import Predictor, model_source, no_diagnosis_message, segmentation_run
    from pleura.infer.report import PredictionWriter

    model = model_source(model)  # a shipped model's name: its file
    files, failed = _checked_inputs(inputs, out, overwrite, model)
    if segmentation_run(model) is not None:  # a train-seg run: no diagnosis head, refused before any work
        fail(no_diagnosis_message(model))
    total, unreadable = len(files) + len(failed), len(failed)
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(_model_file(model))
            predictor = Predictor(path, engine=engine, rate=rate or None, max_frames=max_frames or None, device=device,
                                  tta=tta, ood_policy=ood)  # fmt: skip
        except (ValueError, OSError, KeyError) as e:
            fail(f"{model}: {e}" if str(model) not in str(e) else str(e))
        try:
            with staged_folder(out, overwrite=overwrite) as tmp:
                writer = PredictionWriter(tmp, predictor, video=video)
                with progress_bar() as bar:
                    task = bar.add_task("predict", total=len(files), rate="")
                    for f in files:
                        try:
                            result = writer.predict(f)
                            verdict = (
                                f"{result.diagnosis} ({result.probabilities[result.diagnosis]:.2f})"
                                if result.diagnosis
                                else "no diagnosis: not like lung ultrasound"
                            )
                            if result.diagnosis and result.all_ood:
                                verdict += " but every frame is out of distribution: do not trust it"
                            line = (
                                f"{f}: {verdict}, {len(result.frames)} frames, {result.ood_frames} out of distribution"
                            )
                            bar.console.print(say(line), highlight=False, soft_wrap=True)
                        except (ReadError, ValueError, OSError) as e:
                            failed.append((f, str(e)))
                            problem = str(e) if str(f) in str(e) else f"{f}: {e}"
                            err.print(f"[yellow]failed[/] {say(problem)}", highlight=False, soft_wrap=True)
                        bar.advance(task)
                writer.close()
        except (ValueError, OSError) as e:  # the output folder or the tables: nothing is left half-written
            fail(str(e) if isinstance(e, ValueError) else f"{out}: cannot write the predictions ({e.strerror or e})", 1)
    done = len(files) - (len(failed) - unreadable)
    typer.echo(shown(f"predicted {done} of {total} files into {out}"))
    if failed:
        names = ", ".join(shown(f) for f, _ in failed)
        err.print(f"[bold red]error:[/] {len(failed)} input(s) failed: {say(names)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def serve(
    model: Path = typer.Option(DEFAULT_MODEL, "--model", help="Model file (pleura export model); default: shipped."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; not loopback: needs --allow-remote."),
    port: int = typer.Option(8000, "--port", help="Port to listen on.", min=1, max=65535),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Let --host be an address other machines reach (no login: anyone there can)."
    ),
    max_upload_mb: float = typer.Option(500.0, "--max-upload-mb", help="Largest upload in MB.", callback=_positive),
    workers: int = typer.Option(1, "--workers", help="Prediction threads, 1 or 2 (one model in memory).", min=1, max=2),
    queue: int = typer.Option(4, "--queue", help="Requests that may wait beyond the running ones (503 past).", min=0),
    keep: float = typer.Option(900.0, "--keep", help="Seconds a result's downloads are kept.", callback=_positive),
    engine: str = typer.Option("onnx", "--engine", help="onnx (ONNX Runtime, faster on a CPU) or torch."),
    rate: float = typer.Option(10.0, "--rate", help="Frames per second predicted from clips; 0 = all frames.", min=0.0),
    tta: bool = typer.Option(False, "--tta", help="Average each frame's probabilities with its mirror's, as predict."),
    ood: str = typer.Option(
        "withhold", "--ood", help="All frames out of distribution: withhold or warn, as predict.", callback=_ood_policy
    ),
) -> None:
    """A local web app: drop images, clips or DICOM files, see the diagnosis, segmentation, biomarkers and score."""
    from pleura.serve import ServeConfig, is_loopback
    from pleura.serve import serve as run_server

    if not is_loopback(host) and not allow_remote:
        fail(f"--host {host} lets other machines reach the app, which has no login; add --allow-remote to do so")
    if not model.is_file():
        fail(f"{model}: model file not found; pass --model FILE (pleura export model writes one)")
    cfg = ServeConfig(model=model, host=host, port=port, max_upload_mb=max_upload_mb, workers=workers, queue=queue,
                      keep_s=keep, engine=engine, rate=rate or None, tta=tta, ood=ood)  # fmt: skip

    def announce() -> None:  # once the model has loaded: a refused model never shows an address
        if not is_loopback(host):
            err.print(
                f"[bold yellow]warning:[/] listening on {say(host)}: anyone who can reach this machine can upload "
                "files and read results (no login, no TLS)",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
        shown_host = f"[{host}]" if ":" in host else host
        err.print(
            f"pleura serve: http://{say(shown_host)}:{port}/ (model {say(model.name)}); research software, not a "
            "medical device; Ctrl-C stops it",
            highlight=False, soft_wrap=True,
        )  # fmt: skip

    try:
        run_server(cfg, on_ready=announce)
    except (ValueError, OSError, KeyError) as e:
        fail(f"{model}: {e}" if str(model) not in str(e) and "model" not in str(e) else str(e))


def _problem_lines(failed: list[tuple[Path, str]], label: str = "failed") -> None:
    """Print each ``(path, problem)`` as one yellow line on stderr."""
    for _, problem in failed:
        err.print(f"[yellow]{label}[/] {say(problem)}", highlight=False, soft_wrap=True)


@app.command()
def segment(
    inputs: list[Path] = typer.Argument(..., help="Images, clips, DICOM files or folders of them."),
    model: Path = typer.Option(
        DEFAULT_MODEL,
        "--model",
        help="Model file (pleura export model, or a U-Net's), a train-cls or train-seg run, or a shipped model's "
        "name (foundation-sparse-w16-128); default: the shipped one.",
    ),
    out: Path = typer.Option(
        Path("segmentation"), "--out", help="Output folder (must be empty or absent unless --overwrite)."
    ),
    schema: str = typer.Option(None, "--schema", help="Mask schema: the model's (default) or a coarser one (sparse)."),
    pixel_mm: float = typer.Option(
        None, "--pixel-mm", help="mm per input pixel where a file states none (DICOM: its own).", callback=_positive
    ),
    engine: str = typer.Option("onnx", "--engine", help="onnx (ONNX Runtime, faster on a CPU) or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the torch engine runs."),
    rate: float = typer.Option(
        10.0, "--rate", help="Frames per second segmented from clips; 0 = every frame.", min=0.0
    ),
    max_frames: int = typer.Option(0, "--max-frames", help="At most this many frames per file; 0 = all.", min=0),
    video: bool = typer.Option(True, "--video/--no-video", help="Write an overlay MP4 per clip."),
    export_labels: str = typer.Option(
        None, "--export-labels", help="Also write the masks as editable labels: cvat, coco or labelme (in labels/)."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Segment images and clips: per-frame masks at the input's resolution, overlays with a legend, biomarkers.

    Writes a folder per input (masks/frame_<index>.png, overlay.png or overlay.mp4, biomarkers.json and .csv)
    and segment.json, clips.csv for the batch; the output folder is staged and never holds an input. A
    segmentation U-Net (train-seg) segments too; its files carry no diagnosis.
    """
    from pleura.atomic import staged_folder
    from pleura.data.annotations import AnnotationError, ExportFormat
    from pleura.data.readers import ReadError
    from pleura.infer.predictor import model_source
    from pleura.infer.segment import SegmentWriter, target_schema

    if export_labels is not None:
        try:
            export_labels = ExportFormat.parse(export_labels)
        except (AnnotationError, ValueError) as e:
            fail(f"--export-labels: {e}")
    model = model_source(model)  # a shipped model's name: its file
    files, failed = _checked_inputs(inputs, out, overwrite, model)
    total, unreadable = len(files) + len(failed), len(failed)
    with contextlib.ExitStack() as stack:
        predictor = _segmenting_predictor(stack, model, engine=engine, rate=rate or None,
                                          max_frames=max_frames or None, device=device)  # fmt: skip
        try:
            target_schema(predictor.schema, schema)
        except ValueError as e:
            fail(f"--schema: {e}")
        try:
            with staged_folder(out, overwrite=overwrite) as tmp:
                writer = SegmentWriter(tmp, predictor, schema=schema, video=video, pixel_mm=pixel_mm)
                with progress_bar() as bar:
                    task = bar.add_task("segment", total=len(files), rate="")
                    for f in files:
                        try:
                            r = writer.segment(f)
                            severity = "not scored" if r.severity is None else f"severity {r.severity}"
                            line = f"{f}: {len(r.frames)} frames, {severity} ({r.severity_rule})"
                            bar.console.print(say(line), highlight=False, soft_wrap=True)
                        except (ReadError, ValueError, OSError) as e:
                            failed.append((f, str(e) if str(f) in str(e) else f"{f}: {e}"))
                            _problem_lines(failed[-1:])
                        bar.advance(task)
                if export_labels is not None and writer.results:
                    report = writer.export_labels(export_labels, final_out=out)
                    for media, problem in report.failed:
                        failed.append((Path(media), problem))
                        _problem_lines(failed[-1:], "not exported")
                    for folder in report.folders:
                        typer.echo(shown(f"labels of {folder['media']}; import them with: {folder['import']}"))
                writer.close(failed)
        except (ValueError, OSError) as e:  # the output folder or the tables: nothing is left half-written
            fail(str(e) if isinstance(e, ValueError) else f"{out}: cannot write the masks ({e.strerror or e})", 1)
    done = len(files) - (len(failed) - unreadable)
    typer.echo(shown(f"segmented {done} of {total} files into {out}"))
    if failed:
        names = ", ".join(shown(f) for f, _ in failed)
        err.print(f"[bold red]error:[/] {len(failed)} input(s) failed: {say(names)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def score(
    exam: Path = typer.Argument(
        ..., help="Exam folder: one clip per zone, named by zone (R1.mp4 ... L7.mp4).", **DATASET
    ),
    out: Path = typer.Option(
        Path("score"), "--out", help="Output folder (must be empty or absent unless --overwrite)."
    ),
    scheme: str = typer.Option("14", "--scheme", help="Zone scheme: 14 (Soldati 2020) or 12 zones."),
    zones: Path = typer.Option(
        None, "--zones", help="JSON file mapping file names to zones, for other names.", exists=True, dir_okay=False
    ),
    model: Path = typer.Option(
        DEFAULT_MODEL,
        "--model",
        help="Model file, shipped model name, train-cls or train-seg run (a U-Net scores too); default: shipped.",
    ),
    engine: str = typer.Option("onnx", "--engine", help="onnx (ONNX Runtime, faster on a CPU) or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the torch engine runs."),
    rate: float = typer.Option(10.0, "--rate", help="Frames per second scored from clips; 0 = every frame.", min=0.0),
    max_frames: int = typer.Option(0, "--max-frames", help="At most this many frames per clip; 0 = all.", min=0),
    overwrite: Overwrite = False,
) -> None:
    """Score an exam: the LUS severity (0-3, Soldati 2020) of every zone, the total, a chest map (CSV, MD, JSON, PNG).

    Unknown, duplicate or missing zones and unreadable clips are listed and the rest is scored; the exit status
    is non-zero only when no zone could be scored.
    """
    from pleura.atomic import check_output, staged_folder
    from pleura.infer.exam import SCHEMES, ZoneResult, read_zone_map, score_exam, write_exam
    from pleura.infer.predictor import model_source

    if scheme not in SCHEMES:
        fail(f"--scheme should be one of {', '.join(SCHEMES)}, got {scheme!r}")
    files, failed = _inputs([exam])
    if not files:
        fail(failed[-1][1])
    if exam.resolve().is_relative_to(out.resolve()) or out.resolve().is_relative_to(exam.resolve()):
        fail(f"{out}: the output folder and the exam folder {exam} overlap; choose another --out")
    try:
        check_output(out, overwrite)
        zone_map = read_zone_map(zones) if zones is not None else None
    except ValueError as e:
        fail(str(e))
    model = model_source(model)  # a shipped model's name: its file
    if not model.exists():
        fail(f"{model}: model not found; pass --model FILE (the shipped ones: pleura.models.PRETRAINED)")
    with contextlib.ExitStack() as stack:  # severity needs the masks only: a segmentation U-Net scores too
        predictor = _segmenting_predictor(stack, model, engine=engine, rate=rate or None,
                                          max_frames=max_frames or None, device=device)  # fmt: skip

        def score_clip(clip: Path) -> tuple[int | None, str]:
            r = predictor.predict(clip, keep_labels=False)
            return r.severity, r.severity_rule

        try:
            with staged_folder(out, overwrite=overwrite) as tmp, progress_bar() as bar:
                task = bar.add_task("score", total=len(files), rate="")

                def step(clip: Path, z: ZoneResult) -> None:
                    bar.advance(task)
                    said = f"{z.score} ({z.rule})" if z.score is not None else z.rule
                    text = f"{z.zone}: {said}" if str(clip) in said else f"{z.zone}: {clip}: {said}"
                    bar.console.print(say(text), highlight=False, soft_wrap=True)

                result = score_exam(files, score_clip, scheme, zone_map, root=exam, progress=step)
                bar.update(task, completed=len(files))  # files that name no zone were never predicted
                write_exam(result, tmp, title=shown(exam.name))
        except (ValueError, OSError) as e:
            fail(str(e) if isinstance(e, ValueError) else f"{out}: cannot write the score ({e.strerror or e})", 1)
    for problem in result.problems:
        err.print(f"[yellow]problem[/] {say(problem)}", highlight=False, soft_wrap=True)
    n = len(result.scored)
    if result.total is None:
        fail(f"{exam}: no zone could be scored ({len(result.problems)} problems, listed in {out / 'score.md'})", 1)
    typer.echo(shown(f"total {result.total} over {n} of {len(result.zones)} zones ({scheme}-zone scheme); wrote {out}"))


def main() -> None:
    """Entry point of the ``pleura`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
