"""Reverse-transfer classification: a segmentation U-Net becomes a COVID-19 / pneumonia / normal classifier.

``--init dense:RUN`` or ``sparse:RUN`` starts from a ``train-seg`` run's best U-Net; ``scratch`` builds
the same architecture with random weights, so the three variants differ only in their start. Training
draws class-balanced batches, validates on held-out patients or clips, and stops early on validation
balanced accuracy; the loop itself (schedule, torchrun, checkpoints, resume) is ``pleura.train.loop``.
``train_kfold`` runs stratified group k-fold and writes every held-out frame's probabilities.

``--seg-data DIR`` keeps the segmentation alive while the classifier learns on frames without masks (issue 14):
every classification step also draws a batch of simulated frames with masks from ``DIR`` (a manifest dataset,
e.g. from ``pleura simulate``) and adds ``seg_weight`` times the segmentation loss of ``train-seg`` (weighted
cross-entropy plus soft Dice, class weights from that set's pixel counts) of the classifier's U-Net on them.
The segmentation batches come from an endless stream of seeded shuffles of the set (``samplers.StepStream``); the
batch of optimizer step ``s`` on rank ``r`` is a function of ``(seed, s, r)`` alone, so a resumed run draws the
same batches and torchrun ranks draw disjoint ones. They normalise with their own BatchNorm statistics but do not
move the running ones, which keep describing the classification frames the model is used on. A held-out part of
the set (split by clip, as ``train-seg`` splits it) is scored every epoch (``val_seg_*`` in ``metrics.jsonl``),
and the best epoch's scores go into ``summary.json`` (``segmentation``).

``--adapt-weight W`` adapts the segmentation to the real frames themselves, which have no masks (issue 14): once the
U-Net is unfrozen, the U-Net as it starts each epoch labels the step's real frames where it is confident, and the
U-Net learns those labels on a strongly re-intensified view of them (``selftrain.py``, as ``train-seg
--adapt-data``). Only a fold's training frames are ever used, so its held-out patients stay unseen.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset

from pleura.atomic import write_json, write_text
from pleura.data import (
    LUSDataset,
    default_augmentation,
    group_kfold,
    image_size,
    read_manifest,
    split_by_group,
    strong_augmentation,
)
from pleura.labels import DENSE, DIAGNOSES, SPARSE, convert, get_schema, recorded_schema
from pleura.metrics.classification import classification_metrics
from pleura.metrics.segmentation import SegmentationMetrics
from pleura.models import ClassifierConfig, ReverseTransferClassifier, UNet
from pleura.models.config import nested_config
from pleura.postprocess.biomarkers import frame_biomarkers
from pleura.postprocess.calibration import softmax
from pleura.report import csv_text
from pleura.train.distributed import DistEnv, all_gather_objects, all_reduce_sum
from pleura.train.loop import LoopConfig, Progress, Trainer, TrainError
from pleura.train.losses import class_weights, segmentation_loss
from pleura.train.samplers import StepStream, WeightedSampler
from pleura.train.seg import check_frames, scan_masks
from pleura.train.selftrain import SelfTraining, check_adapt

INIT_KINDS = ("dense", "sparse", "scratch")
SCRATCH_SCHEMA = DENSE  # the schema a U-Net trained from scratch predicts (its classes size the head)
TORCH_RNG_TAG = 15  # the same for the per-epoch seed of torch's generator (the head's dropout)


@dataclass
class ClsTrainConfig(LoopConfig):
    """Hyperparameters of ``train-cls``: the start and schedule here, the classifier in ``model``, the loop's in
    ``LoopConfig``.

    Example:
        >>> ClsTrainConfig(init="dense:runs/dense", model=ClassifierConfig(tap="bottleneck"))
    """

    init: str = "scratch"  # dense:RUN, sparse:RUN (a train-seg run) or scratch
    model: ClassifierConfig = field(default_factory=ClassifierConfig)  # head and tap; its U-Net is used for scratch
    freeze_epochs: int = 0  # epochs training the head on a frozen U-Net before unfreezing it
    body_lr_factor: float = 0.1  # the U-Net's learning rate relative to the head's
    group: str = "patient_id"  # column that groups frames for validation splits and folds
    epochs: int = 20  # maximum epochs per fold (train-cls's default; the loop's is 30)
    lr: float = 1e-3  # peak learning rate of the head
    aux_seg_weight: float = 0.0  # weight of an auxiliary segmentation loss (needs masks; keeps maps meaningful)
    seg_data: str | None = None  # simulated frames with masks (manifest dataset): a segmentation batch every step
    seg_weight: float = 0.5  # weight of seg_data's segmentation loss: loss = cls + seg_weight * segmentation
    adapt_weight: float = 0.0  # self-training of the U-Net on the batch's own real frames (selftrain.py); 0: none
    adapt_threshold: float = 0.9  # the teacher's probability a pixel needs to become a pseudo-label

    def __post_init__(self) -> None:
        self.model = nested_config(ClassifierConfig, self.model, "ClsTrainConfig.model")
        if self.model.class_names != DIAGNOSES:
            raise ValueError(f"ClsTrainConfig.model.class_names should be {DIAGNOSES} (the manifest's diagnoses)")
        if self.seg_data is not None:
            self.seg_data = os.fspath(self.seg_data)  # a Path is stored as its string (config.json, resume checks)
            w = self.seg_weight
            if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                raise ValueError(f"seg_weight should be a number > 0 with seg_data, got {self.seg_weight!r}")
        check_adapt(self.adapt_weight, self.adapt_threshold, allow_zero=True)

    def init_kind(self) -> tuple[str, Path | None]:
        """``(kind, run folder)`` of ``init``, checked."""
        kind, _, run = self.init.partition(":")
        if kind not in INIT_KINDS or (kind == "scratch") != (run == ""):
            raise TrainError(f"--init {self.init!r}: expected dense:RUN, sparse:RUN or scratch")
        return kind, (Path(run) if run else None)


class BalancedSampler(WeightedSampler):
    """Class-balanced sampling with replacement, sharded over ranks, reproducible from (seed, epoch).

    Each epoch draws as many items as the dataset holds, every class equally likely (a ``WeightedSampler`` whose
    item weights are one over their class's count).
    """

    def __init__(self, labels: Sequence[int], env: DistEnv, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels, minlength=len(DIAGNOSES)).astype(float)
        super().__init__(1.0 / counts[self.labels], env, seed)


@contextmanager
def running_stats_kept(module: torch.nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with their batch's statistics (in training mode) but leave their
    running statistics as they are (momentum 0), for a batch from another domain than the one served."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class ClsTrainer(Trainer):
    """Trains a reverse-transfer classifier on ``rows`` of a manifest dataset (one fold's training part)."""

    resume_keys = ("init", "model", "freeze_epochs", "aux_seg_weight", "seg_data", "seg_weight", "adapt_weight",
                   "adapt_threshold", "seed", "batch_size", "epochs")  # fmt: skip
    kind = "classification"
    cfg: ClsTrainConfig

    def __init__(
        self,
        cfg: ClsTrainConfig,
        data: str | Path,
        out: str | Path,
        env: DistEnv,
        rows: Sequence[dict[str, str]] | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(cfg, data, out, env, progress)
        self.rows = list(rows) if rows is not None else read_manifest(self.data)
        self.seg_stream: StepStream | None = None  # the --seg-data stream, set up by setup()
        self.seg_val_loader: DataLoader | None = None
        self._seg_batches: Iterator[dict[str, Any]] | None = None
        self._seg_losses: list[float] = []
        self.selftrain = SelfTraining(cfg.adapt_weight, cfg.adapt_threshold) if cfg.adapt_weight > 0 else None
        self._adapt: SelfTraining | None = None  # self.selftrain on the epochs that self-train (U-Net unfrozen)

    def setup(self) -> tuple[LUSDataset, LUSDataset, dict[str, Any]]:
        """The ``Trainer.setup`` hook: checks labels and the ``--init`` run, splits ``rows`` by ``group``.

        Returns:
            The training and validation datasets, and frame counts and image size for ``config.json``.
        """
        cfg = self.cfg
        check_labels(self.rows, self.data)
        self.kind_, self.init_run = cfg.init_kind()
        self.size = image_size(self.data, self.rows)
        if self.init_run is not None:
            check_init_run(self.init_run, self.kind_, self.size)
        train_rows, val_rows = split_by_group(self.rows, cfg.val_fraction, seed=cfg.seed, group=cfg.group)
        # the auxiliary segmentation learns the schema the U-Net predicts (dense for scratch)
        seg_schema = self.kind_ if self.kind_ != "scratch" else SCRATCH_SCHEMA.name
        self.seg_schema = seg_schema if cfg.aux_seg_weight > 0 else None
        if self.seg_schema is not None and cfg.model.tap == "bottleneck":
            raise TrainError("--aux-seg-weight needs a tap that runs the decoder; the bottleneck tap does not")
        if cfg.seg_data is not None and cfg.model.tap == "bottleneck":
            raise TrainError("--seg-data needs a tap that runs the decoder; the bottleneck tap does not")
        if self.selftrain is not None and cfg.model.tap == "bottleneck":
            raise TrainError("--adapt-weight needs a tap that runs the decoder; the bottleneck tap does not")
        aug = default_augmentation(self.seg_schema) if cfg.augment else None
        strong = strong_augmentation() if self.selftrain is not None else None  # the student's view of each frame
        train = LUSDataset(self.data, self.seg_schema, transform=aug, rows=train_rows, seed=cfg.seed, strong=strong)
        val = LUSDataset(self.data, None, rows=val_rows)
        self.train_labels = [DIAGNOSES.index(r["diagnosis"]) for r in train_rows]
        self.seg_weights = None
        if self.seg_schema is not None:
            schema = get_schema(self.seg_schema)
            self.seg_weights = class_weights(scan_masks(train, schema.num_classes)).to(self.device)
        info: dict[str, Any] = {"train_frames": len(train), "val_frames": len(val), "image_size": list(self.size)}
        if cfg.seg_data is not None:
            info["seg_data"] = self._setup_seg_stream(Path(cfg.seg_data), seg_schema)
        return train, val, info

    def _setup_seg_stream(self, root: Path, schema_name: str) -> dict[str, Any]:
        """The ``--seg-data`` stream and its held-out part: checked (frame size, every mask), split by clip as
        ``train-seg`` splits it, class weights from the training part's pixels. Returns facts for ``config.json``."""
        cfg = self.cfg
        rows = check_frames(root, self.size, "--seg-data", "simulated frames with masks")
        train_rows, val_rows = split_by_group(rows, cfg.val_fraction, seed=cfg.seed, group="clip_id")
        aug = default_augmentation(schema_name) if cfg.augment else None
        seg_train = LUSDataset(root, schema_name, transform=aug, rows=train_rows, seed=cfg.seed)
        seg_val = LUSDataset(root, schema_name, rows=val_rows)
        self.stream_schema = get_schema(schema_name)
        counts = scan_masks(seg_train, self.stream_schema.num_classes)  # validates every mask before training
        scan_masks(seg_val, self.stream_schema.num_classes)
        self.stream_weights = class_weights(counts).to(self.device)
        pin = self.device.type == "cuda"
        self.seg_stream = StepStream(seg_train, cfg.seed, cfg.batch_size, self.env, cfg.workers, pin)
        shard = Subset(seg_val, list(range(self.env.rank, len(seg_val), self.env.world_size)))
        self.seg_val_loader = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                                         pin_memory=pin)  # fmt: skip
        return {
            "folder": str(root.resolve()),
            "schema": schema_name,
            "train_frames": len(seg_train),
            "val_frames": len(seg_val),
            "class_pixel_counts": counts.tolist(),
            "class_weights": self.stream_weights.cpu().tolist(),
        }

    def make_sampler(self, train: LUSDataset) -> Sampler:
        """The ``Trainer.make_sampler`` hook: a :class:`BalancedSampler`, so every diagnosis is drawn equally often."""
        return BalancedSampler(self.train_labels, self.env, seed=self.cfg.seed)

    def build_model(self) -> ReverseTransferClassifier:
        """The ``Trainer.build_model`` hook: a classifier on the ``--init`` run's best U-Net, or on a fresh one."""
        m = self.cfg.model
        head = {f.name: getattr(m, f.name) for f in fields(m) if f.name != "unet"}
        if self.init_run is not None:
            path = init_weights(self.init_run)
            return ReverseTransferClassifier.from_segmentation_checkpoint(path, **head)
        s = SCRATCH_SCHEMA
        unet = UNet(replace(m.unet, in_channels=1, num_classes=s.num_classes, schema=s.name))
        return ReverseTransferClassifier(unet, **head)

    def ddp_kwargs(self) -> dict[str, Any]:
        """The ``Trainer.ddp_kwargs`` hook: ``find_unused_parameters`` when some parameters get no gradients."""
        # a frozen body, or a tap that skips the segmentation head, leaves parameters without gradients
        seg = self.cfg.aux_seg_weight > 0 or self.cfg.seg_data is not None or self.selftrain is not None
        unused = self.cfg.model.tap in ("bottleneck", "decoder") and not seg
        return {"find_unused_parameters": self.cfg.freeze_epochs > 0 or unused}

    def make_optimizer(self, net: ReverseTransferClassifier) -> torch.optim.Optimizer:
        """The ``Trainer.make_optimizer`` hook: AdamW, the head at ``lr`` and the U-Net at ``lr * body_lr_factor``."""
        groups = [
            {"params": list(net.head_parameters()), "lr": self.cfg.lr},
            {"params": list(net.body_parameters()), "lr": self.cfg.lr * self.cfg.body_lr_factor},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)

    def on_epoch_start(self, epoch: int) -> None:
        """The ``Trainer.on_epoch_start`` hook: the U-Net stays frozen for the first ``freeze_epochs`` epochs; the
        ``--seg-data`` stream restarts at the optimizer step the epoch starts with (none while the U-Net is
        frozen: its segmentation loss could not change anything). With ``--seg-data``, torch's generator (the head's
        dropout, the data loaders' base seeds) is seeded from ``(seed, epoch)``, so a resumed run draws what the
        straight one did."""
        self.net.freeze_body(epoch < self.cfg.freeze_epochs)
        if self.seg_stream is not None:  # runs without --seg-data draw as before (their figures stay reproducible)
            torch.manual_seed(int(np.random.default_rng([self.cfg.seed, TORCH_RNG_TAG, epoch]).integers(2**62)))
        self._seg_losses = []
        self._seg_batches = None
        if self.seg_stream is not None and not self.net.body_frozen:
            self._seg_batches = self.seg_stream.batches(self.scheduler.last_epoch)  # the optimizer steps so far
        self._adapt = None if self.net.body_frozen else self.selftrain
        if self._adapt is not None:
            self._adapt.start_epoch(self.net.unet)

    def epoch_info(self) -> dict[str, Any]:
        """The ``Trainer.epoch_info`` hook: the epoch's mean ``--seg-data`` loss (``train_seg_loss``; None while
        the U-Net was frozen) and, when self-training, its ``adapt_loss`` and ``adapt_kept``."""
        info = self._adapt.info() if self._adapt is not None else {}
        if self.seg_stream is None:
            return info
        return {"train_seg_loss": float(np.mean(self._seg_losses)) if self._seg_losses else None, **info}

    def checkpoint_meta(self) -> dict[str, Any]:
        """The ``Trainer.checkpoint_meta`` hook: the init, tap and class names, stored beside the weights."""
        return {"init": self.cfg.init, "tap": self.cfg.model.tap, "class_names": list(DIAGNOSES)}

    def train_step(self, batch: dict[str, Any]) -> float:
        """The ``Trainer.train_step`` hook: one step on cross-entropy, plus the auxiliary segmentation loss (if
        weighted), ``seg_weight`` times the segmentation loss of the step's ``--seg-data`` batch, and ``adapt_weight``
        times the self-training loss on the batch's own frames; returns the loss.

        The ``--seg-data`` batch runs through the bare U-Net (``net.unet``) beside the wrapped model's pass; both
        feed one backward, so under DistributedDataParallel every parameter's gradient (the sum of both paths) is
        averaged over ranks once.
        """
        x = batch["image"].to(self.device, non_blocking=True)
        y = torch.as_tensor(batch["label"], device=self.device)
        stream = next(self._seg_batches) if self._seg_batches is not None else None
        with self.autocast():
            logits, seg = self.model(x, with_segmentation=True)
            if stream is not None:
                with running_stats_kept(self.net.unet):
                    stream_logits = self.net.unet(stream["image"].to(self.device, non_blocking=True))
            if self._adapt is not None:  # teacher: the frames as the classifier sees them
                teacher_prob = self._adapt.labels(x)
                with running_stats_kept(self.net.unet):
                    student = self.net.unet(batch["strong"].to(self.device, non_blocking=True))
        loss = F.cross_entropy(logits.float(), y)
        if self.seg_schema is not None:
            mask = batch["mask"].to(self.device, non_blocking=True)
            loss = loss + self.cfg.aux_seg_weight * segmentation_loss(seg, mask, self.seg_weights, dice_weight=1.0)
        if stream is not None:
            mask = stream["mask"].to(self.device, non_blocking=True)
            seg_loss = segmentation_loss(stream_logits, mask, self.stream_weights, dice_weight=1.0)
            self._seg_losses.append(float(seg_loss.detach()))
            loss = loss + self.cfg.seg_weight * seg_loss
        if self._adapt is not None:  # student: a strongly re-intensified view of them
            weights = self.stream_weights if stream is not None else None
            loss = loss + self._adapt.loss(student, teacher_prob, weights)
        self.step(loss)
        return float(loss.detach())

    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict[str, Any]:
        """Frame-level metrics over every rank's share; the score is balanced accuracy."""
        probs, labels, losses = [], [], []
        for batch in loader:
            x = batch["image"].to(self.device)
            with self.autocast():
                logits = self.model(x).float()
            y = torch.as_tensor(batch["label"], device=self.device)
            losses.append(float(F.cross_entropy(logits, y, reduction="sum")))
            probs.append(logits.softmax(1).cpu().numpy())
            labels.append(y.cpu().numpy())
        parts = all_gather_objects(
            (
                np.concatenate(probs) if probs else np.zeros((0, 3)),
                np.concatenate(labels) if labels else [],
                sum(losses),
            ),
            self.env,
        )
        prob = np.concatenate([p[0] for p in parts])
        y_all = np.concatenate([np.asarray(p[1], dtype=int) for p in parts])
        m = classification_metrics(y_all, prob)
        out = {
            "score": m["balanced_accuracy"],
            "loss": sum(p[2] for p in parts) / max(len(y_all), 1),
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_roc_auc": m["macro_roc_auc"],
        }
        if self.seg_val_loader is not None:
            out.update(self._validate_segmentation(self.seg_val_loader))
        return out

    @torch.no_grad()
    def _validate_segmentation(self, loader: DataLoader) -> dict[str, Any]:
        """The U-Net's segmentation of the held-out ``--seg-data`` frames, summed over ranks: ``seg_loss``,
        ``seg_mean_iou`` (its own schema) and the pleural-line and A-line Dice (mapped to sparse)."""
        self._seg_batches = None  # the epoch's stream is done: let its workers go
        name = self.stream_schema.name
        own = SegmentationMetrics(self.stream_schema.num_classes, class_names=list(self.stream_schema.names))
        sparse = SegmentationMetrics(SPARSE.num_classes, class_names=list(SPARSE.names))
        loss_sum = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            x, y = batch["image"].to(self.device), batch["mask"].to(self.device)
            with self.autocast():
                logits = self.net.unet(x)
            loss = segmentation_loss(logits, y, self.stream_weights, dice_weight=1.0)
            loss_sum += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
            pred, truth = logits.argmax(1).cpu().numpy().astype(np.uint8), y.cpu().numpy().astype(np.uint8)
            own.update(pred, truth)
            sparse.update(convert(pred, name, "sparse"), convert(truth, name, "sparse"))
        confusions = [own.confusion, sparse.confusion]
        if self.env.distributed:
            loss_sum = all_reduce_sum(loss_sum.to(self.device), self.env).cpu()
            confusions = [all_reduce_sum(c.to(self.device), self.env).cpu() for c in confusions]
        own.load_confusion(confusions[0])
        sparse.load_confusion(confusions[1])
        dice = sparse.aggregate()["dice"]
        return {
            "seg_loss": float(loss_sum[0] / max(loss_sum[1], 1)),
            "seg_mean_iou": own.aggregate()["mean_iou"],
            "seg_pleural_line_dice": dice[SPARSE.index("pleural_line")],
            "seg_a_line_dice": dice[SPARSE.index("a_line")],
        }

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """``Trainer.fit``; with ``--seg-data`` the summary also holds the best epoch's held-out segmentation
        scores (``segmentation``), the checkpoint ``best/`` keeps."""
        summary = super().fit(resume=resume, overwrite=overwrite)
        if self.cfg.seg_data is None or not self.env.is_main:
            return summary
        best: dict[str, Any] = {}
        for line in (self.out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("epoch") == summary["best_epoch"]:
                best = record
        summary["segmentation"] = {
            "data": self.cfg.seg_data,
            "epoch": summary["best_epoch"],
            **{k.removeprefix("val_seg_"): v for k, v in best.items() if k.startswith("val_seg_")},
        }
        write_json(self.out / "summary.json", summary)
        return summary


def check_labels(rows: Sequence[dict[str, str]], data: Path) -> None:
    """Every row's diagnosis is one the classifier knows, before any training starts."""
    unknown = sorted({r["diagnosis"] for r in rows} - set(DIAGNOSES))
    if unknown:
        raise TrainError(
            f"{data}: diagnosis label(s) {', '.join(map(repr, unknown))} unknown to the classifier "
            f"(knows {', '.join(DIAGNOSES)}); filter those rows out first"
        )


def init_weights(run: Path) -> Path:
    """The U-Net weights an ``--init-run`` names: a shipped model's name (``foundation-sparse-w16-128``), a
    segmentation model file, or a ``train-seg`` run folder (its best checkpoint)."""
    from pleura.models import PRETRAINED, pretrained

    if str(run) in PRETRAINED:
        return pretrained(str(run))
    return run if run.is_file() else run / "best" / "model.safetensors"


def check_init_run(run: Path, kind: str, size: tuple[int, int]) -> None:
    """The ``--init`` run (or model) exists, learned the named schema, and was trained on images of this size."""
    weights = init_weights(run)
    if weights != run / "best" / "model.safetensors":  # a model file: its sidecar holds the schema and size
        sidecar = weights.with_suffix(".json")
        if not weights.exists() or not sidecar.exists():
            raise TrainError(f"{run}: no such model file or train-seg run")
        info = json.loads(sidecar.read_text())
        cfg_path, meta = sidecar, info.get("metadata", {})
        info = {"train": {"schema": meta.get("schema") or info.get("config", {}).get("schema")},
                "image_size": meta.get("image_size")}  # fmt: skip
    else:
        cfg_path = run / "config.json"
        if not weights.exists() or not cfg_path.exists():
            raise TrainError(f"{run}: not a train-seg run (no best/model.safetensors and config.json)")
        info = json.loads(cfg_path.read_text())
    schema = info.get("train", {}).get("schema")
    if schema != kind:
        raise TrainError(f"{cfg_path}: --init {kind}:{run} names a {kind} run, but this run learned {schema!r} labels")
    seg_size = tuple(info.get("image_size") or ())
    if seg_size and seg_size != size:
        raise TrainError(
            f"{cfg_path}: the run was trained on {seg_size[0]}x{seg_size[1]} images but this dataset has "
            f"{size[0]}x{size[1]}; pretrain on the same size"
        )


@torch.no_grad()
def predict_rows(
    model: torch.nn.Module, data: Path, rows: Sequence[dict[str, str]], batch_size: int = 16
) -> list[dict[str, Any]]:
    """Class probabilities of each row's frame, with its ids, true label and the biomarkers read from the
    model's own segmentation (the explanation of the diagnosis), through the one prediction path
    (``pleura.infer.batch``) on the model as it is (eager PyTorch, no folding: the same numbers as training)."""
    from pleura.infer.batch import predict_dataset
    from pleura.infer.engine import TorchEngine

    schema = recorded_schema(model.unet.config.schema, type(model).__name__)
    engine = TorchEngine(model, image_size=image_size(data, rows)[0], optimize=False)
    out = []
    for batch, pred in predict_dataset(engine, data, rows, batch_size=batch_size):
        prob = softmax(pred.logits)
        for i in range(len(prob)):
            markers = frame_biomarkers(pred.labels[i], schema).to_dict()
            out.append(
                {
                    "id": batch["id"][i],
                    "clip_id": batch["clip_id"][i],
                    "patient_id": batch["patient_id"][i],
                    "probe": batch["probe"][i],
                    "label": int(batch["label"][i]),
                    **{f"p_{name}": float(prob[i, k]) for k, name in enumerate(DIAGNOSES)},
                    **{f"bm_{k}": v for k, v in markers.items()},
                }
            )
    return out


def train_kfold(
    cfg: ClsTrainConfig,
    data: str | Path,
    out: str | Path,
    env: DistEnv,
    folds: int = 5,
    progress: Progress | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Stratified group k-fold: train on k-1 folds, predict the held-out one into ``RUN/fold{k}/``.

    ``folds=1`` has no test fold: one model on all the rows (``RUN/fold0/``, its validation split by ``cfg.group``
    still picks the epoch), the way a model to ship is trained after a k-fold run measured the recipe.
    Every check (labels, groups per class, the ``--init`` run) runs before the first fold trains. With
    ``resume``, finished folds are kept and an interrupted fold continues from its ``last/`` checkpoint.
    """
    data, out = Path(data), Path(out)
    rows = read_manifest(data)
    check_labels(rows, data)
    kind, run = cfg.init_kind()
    if run is not None:
        check_init_run(run, kind, image_size(data, rows))
    if cfg.seg_data is not None:
        check_frames(Path(cfg.seg_data), image_size(data, rows), "--seg-data", "simulated frames with masks")
    if folds < 1:
        raise ValueError(f"folds should be at least 1 (1: no test fold, all the data), got {folds}")
    splits = [(list(rows), [])] if folds == 1 else group_kfold(rows, folds=folds, seed=cfg.seed, group=cfg.group)
    from pleura.models.checkpoint import read_checkpoint

    summaries = []
    for k, (train_rows, test_rows) in enumerate(splits):
        fold_dir = out / f"fold{k}"
        if resume and (fold_dir / "test_predictions.csv").exists():
            summaries.append(json.loads((fold_dir / "summary.json").read_text()))
            continue
        trainer = ClsTrainer(cfg, data, fold_dir, env, rows=train_rows, progress=progress)
        summary = trainer.fit(resume=resume and (fold_dir / "config.json").exists(), overwrite=overwrite)
        if env.is_main and test_rows:
            model, _ = read_checkpoint(fold_dir / "best")
            preds = predict_rows(model, data, test_rows)
            write_predictions(fold_dir / "test_predictions.csv", preds)
        summaries.append(summary)
    if env.is_main:
        write_text(out / "kfold.json", json.dumps({"folds": folds, "train": asdict(cfg), "data": str(data)}, indent=2))
    return summaries


def write_predictions(path: Path, preds: list[dict[str, Any]]) -> None:
    """Held-out predictions as CSV, atomically."""
    write_text(path, csv_text(preds, None if preds else ["id"]))
