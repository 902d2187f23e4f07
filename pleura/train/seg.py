"""Segmentation training: a U-Net on a manifest dataset, dense or sparse labels.

Cross-entropy plus soft Dice with class weights, a validation split by clip, early stopping on
validation mean IoU. With ``adapt_data`` (unlabelled real frames) every step adds a self-training loss: the model
as it was at the start of the epoch (the teacher) labels a real frame where it is confident, and the model learns
those labels on a strongly re-intensified view of the frame (noisy-student / FixMatch-style consistency).
Everything else (AdamW and cosine schedule, torchrun, checkpoints, exact resume,
mixed precision on CUDA) is the shared loop in ``pleura.train.loop``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from pleura.data import (
    Compose,
    LUSDataset,
    RandomHorizontalFlip,
    RandomScaleCrop,
    default_augmentation,
    image_size,
    read_manifest,
    split_by_group,
    strong_augmentation,
)
from pleura.labels import get_schema
from pleura.metrics.segmentation import SegmentationMetrics
from pleura.models import PRETRAINED, UNet, UNetConfig
from pleura.models.config import nested_config
from pleura.train.distributed import DistEnv, all_reduce_sum
from pleura.train.loop import LoopConfig, Progress, Trainer, TrainError
from pleura.train.losses import class_weights, segmentation_loss
from pleura.train.samplers import StepStream, WeightedSampler
from pleura.train.selftrain import SelfTraining, check_adapt

__all__ = ["Progress", "SegTrainConfig", "SegTrainer", "TrainError", "check_frames", "scan_masks"]


@dataclass
class SegTrainConfig(LoopConfig):
    """Hyperparameters of ``train-seg``: the loss and schema here, the U-Net in ``model``, the loop's in ``LoopConfig``.

    Example:
        >>> SegTrainConfig(schema="sparse", model=UNetConfig(width=32, depth=4))
    """

    schema: str = "dense"  # label schema to learn: dense or sparse (sizes the model's head)
    dice_weight: float = 1.0  # loss = weighted CE + dice_weight * soft Dice
    class_weighting: str = "sqrt_inverse"  # none, inverse or sqrt_inverse pixel frequency
    model: UNetConfig = field(default_factory=UNetConfig)  # the U-Net; its classes and schema follow ``schema``
    init: str = ""  # start from: a shipped model's name, a train-seg run or a model file (a classifier's U-Net); ""
    data_weights: tuple[float, ...] = ()  # sampling weight of each dataset; () = in proportion to their frames
    adapt_data: str | None = None  # unlabelled real frames (manifest dataset): a self-training batch every step
    adapt_weight: float = 0.5  # loss = segmentation + adapt_weight * self-training loss on adapt_data
    adapt_threshold: float = 0.9  # the teacher's probability a pixel needs to become a pseudo-label

    def __post_init__(self) -> None:
        self.model = nested_config(UNetConfig, self.model, "SegTrainConfig.model")
        if self.adapt_data is not None:
            self.adapt_data = os.fspath(self.adapt_data)  # a Path is stored as its string (config.json, resume)
        check_adapt(self.adapt_weight, self.adapt_threshold, allow_zero=False)
        self.data_weights = tuple(float(w) for w in self.data_weights)
        if any(not math.isfinite(w) or w < 0 for w in self.data_weights) or (
            self.data_weights and sum(self.data_weights) <= 0
        ):
            raise ValueError(f"data weights should be non-negative numbers, not all 0, got {self.data_weights}")

    def model_config(self) -> UNetConfig:
        """The U-Net's configuration: ``model`` with one input channel and the schema's classes."""
        schema = get_schema(self.schema)
        return replace(self.model, in_channels=1, num_classes=schema.num_classes, schema=schema.name)


def check_frames(root: Path, size: tuple[int, int], option: str, what: str) -> list[dict[str, str]]:
    """The ``option`` folder is a manifest dataset (of ``what``) whose every frame has the training frames' ``size``
    (read from the image headers); returns its rows. The first frame that is not is named."""
    if not root.is_dir():
        raise TrainError(f"{root}: {option} is not a folder (a manifest dataset of {what})")
    rows = read_manifest(root)
    for row in rows:
        path = root / row["image"]
        try:
            with Image.open(path) as im:
                hw = (im.size[1], im.size[0])
        except OSError as e:
            raise TrainError(f"{path}: cannot read image ({e})") from None
        if hw != tuple(size):
            raise TrainError(
                f"{path}: {option} frames must have the training frames' size, {size[0]}x{size[1]}, but this one "
                f"is {hw[0]}x{hw[1]}; make them at that size (pleura simulate or data import-pocus --size {size[0]})"
            )
    return rows


def scan_masks(dataset: LUSDataset, num_classes: int) -> np.ndarray:
    """Read and validate every mask once (bad class index, size mismatch) and count class pixels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(dataset.read_mask(i).ravel(), minlength=num_classes)[:num_classes]
    return counts


class SegTrainer(Trainer):
    """Trains a U-Net segmenter into a run folder.

    Example:
        >>> env = init_distributed()  # doctest: +SKIP
        >>> SegTrainer(SegTrainConfig(schema="dense", epochs=5), "data/sim", "runs/dense", env).fit()  # doctest: +SKIP
    """

    resume_keys = ("schema", "model", "init", "data_weights", "adapt_data", "adapt_weight", "adapt_threshold", "seed",
                   "batch_size", "epochs")  # fmt: skip
    kind = "segmentation"
    cfg: SegTrainConfig

    def __init__(
        self,
        cfg: SegTrainConfig,
        data: str | Path | Sequence[str | Path],
        out: str | Path,
        env: DistEnv,
        progress: Progress | None = None,
    ) -> None:
        sources = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
        if not sources:
            raise TrainError("train-seg needs at least one dataset (--data)")
        if cfg.data_weights and len(cfg.data_weights) != len(sources):
            raise TrainError(f"--data-weights gives {len(cfg.data_weights)} weights for {len(sources)} datasets")
        super().__init__(cfg, sources[0], out, env, progress)
        self.sources = sources
        self.selftrain = SelfTraining(cfg.adapt_weight, cfg.adapt_threshold) if cfg.adapt_data is not None else None
        self._adapt_batches: Iterator[dict[str, Any]] | None = None

    def setup(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        """The ``Trainer.setup`` hook: splits each dataset by clip and checks every mask, counting class pixels for
        the loss weights.

        Returns:
            The training and validation datasets (several datasets concatenated), and the model config, split
            and class statistics for ``config.json``.
        """
        cfg = self.cfg
        self.schema = get_schema(cfg.schema)
        aug = default_augmentation(cfg.schema) if cfg.augment else None
        trains, vals, size = [], [], None
        counts = np.zeros(self.schema.num_classes, dtype=np.int64)
        for src in self.sources:
            rows = read_manifest(src)
            if f"mask_{cfg.schema}" not in rows[0]:
                raise TrainError(
                    f"{src}: the manifest has no mask_{cfg.schema} column; these frames have no {cfg.schema} "
                    "masks (import with --densify for dense ones, or pick --schema)"
                )
            this = image_size(src, rows)
            if size is not None and this != size:
                raise TrainError(f"{src}: frames are {this[1]}x{this[0]} px but {self.sources[0]}'s are "
                                 f"{size[1]}x{size[0]}; datasets trained together need one size")  # fmt: skip
            size = this
            train_rows, val_rows = split_by_group(rows, cfg.val_fraction, seed=cfg.seed, group="clip_id")
            trains.append(LUSDataset(src, cfg.schema, transform=aug, rows=train_rows, seed=cfg.seed))
            vals.append(LUSDataset(src, cfg.schema, rows=val_rows))
            counts += scan_masks(trains[-1], self.schema.num_classes)  # validates every mask before training
            scan_masks(vals[-1], self.schema.num_classes)
        self.weights = class_weights(counts, cfg.class_weighting).to(self.device)
        self.source_sizes = [len(t) for t in trains]
        self.init_model = self._read_init() if cfg.init else None
        info = {
            "model": asdict(cfg.model_config()),
            "init": cfg.init if cfg.init in PRETRAINED else cfg.init and str(Path(cfg.init).resolve()),
            "train_frames": sum(self.source_sizes),
            "val_frames": sum(len(v) for v in vals),
            "image_size": list(size),
            "val_clips": sorted({r["clip_id"] for v in vals for r in v.rows}),
            "class_pixel_counts": counts.tolist(),
            "class_weights": self.weights.cpu().tolist(),
            "sources": [
                {"data": str(src.resolve()), "train_frames": len(t), "val_frames": len(v)}
                for src, t, v in zip(self.sources, trains, vals, strict=True)
            ],
        }
        if cfg.adapt_data is not None:
            info["adapt_data"] = self._setup_adapt_stream(Path(cfg.adapt_data), size)
        concat = (lambda parts: parts[0]) if len(trains) == 1 else ConcatDataset
        return concat(trains), concat(vals), info

    def _setup_adapt_stream(self, root: Path, size: tuple[int, int]) -> dict[str, Any]:
        """The ``adapt_data`` stream: every frame (no masks needed), flipped and zoomed as the teacher sees it, with
        a strong intensity view for the student. Returns facts for ``config.json``."""
        cfg = self.cfg
        rows = check_frames(root, size, "--adapt-data", "unlabelled real frames")
        weak = Compose([RandomHorizontalFlip(0.5), RandomScaleCrop(0.1)])
        frames = LUSDataset(root, None, transform=weak, rows=rows, seed=cfg.seed, strong=strong_augmentation())
        pin = self.device.type == "cuda"
        self.adapt_stream = StepStream(frames, cfg.seed, cfg.batch_size, self.env, cfg.workers, pin)
        clips = {r["clip_id"] for r in rows}
        return {"folder": str(root.resolve()), "frames": len(rows), "clips": len(clips)}

    def _read_init(self) -> UNet:
        """The ``init`` U-Net (a shipped model, a run's best checkpoint, or a model file; a classifier gives its
        U-Net); its architecture must be ``model``'s (``build_model`` replaces its head for another schema)."""
        from pleura.models import ReverseTransferClassifier, load_model, pretrained
        from pleura.models.checkpoint import read_checkpoint

        path = pretrained(self.cfg.init) if self.cfg.init in PRETRAINED else Path(self.cfg.init)
        if path.is_dir():
            model, _ = read_checkpoint(path / "best" if (path / "best").is_dir() else path)
        elif path.exists():
            model, _ = load_model(path)
        else:
            raise TrainError(f"--init {path}: no such run folder or model file")
        unet = model.unet if isinstance(model, ReverseTransferClassifier) else model
        if not isinstance(unet, UNet):
            raise TrainError(f"--init {path}: holds a {type(model).__name__}, not a U-Net or a classifier on one")
        want, have = self.cfg.model_config(), unet.config
        for key in ("in_channels", "width", "depth", "norm", "upsample"):
            if getattr(want, key) != getattr(have, key):
                raise TrainError(f"--init {path}: its U-Net has {key}={getattr(have, key)!r} but {key}="
                                 f"{getattr(want, key)!r} was asked; pass the init's architecture")  # fmt: skip
        return unet

    def make_sampler(self, train: Dataset) -> Sampler:
        """The ``Trainer.make_sampler`` hook: one dataset is shuffled as usual; several are mixed by ``data_weights``
        (each dataset's share of the draws), every frame of a dataset equally likely."""
        if len(self.sources) == 1:
            return super().make_sampler(train)
        shares = self.cfg.data_weights or tuple(float(n) for n in self.source_sizes)
        per_item = np.concatenate([np.full(n, w / n) for w, n in zip(shares, self.source_sizes, strict=True)])
        return WeightedSampler(per_item, self.env, seed=self.cfg.seed)

    def build_model(self) -> UNet:
        """The ``Trainer.build_model`` hook: a U-Net of ``cfg.model_config()``, or the ``init`` one."""
        want, unet = self.cfg.model_config(), self.init_model
        if unet is None:
            return UNet(want)
        if (unet.config.num_classes, unet.config.schema) != (want.num_classes, want.schema):
            unet.reset_head(want.num_classes, want.schema)  # another schema: a fresh head (seeded) on learnt features
        return unet

    def checkpoint_meta(self) -> dict[str, Any]:
        """The ``Trainer.checkpoint_meta`` hook: the label schema, stored beside the weights."""
        return {"schema": self.cfg.schema}

    def on_epoch_start(self, epoch: int) -> None:
        """The ``Trainer.on_epoch_start`` hook: with ``adapt_data``, the teacher becomes a frozen copy of the model as
        it starts the epoch (so a resumed run gets the same teacher from ``last/``), and the real-frame stream
        restarts at the optimizer steps taken so far."""
        if self.selftrain is None:
            return
        self.selftrain.start_epoch(self.net)
        self._adapt_batches = self.adapt_stream.batches(self.scheduler.last_epoch)

    def train_step(self, batch: dict[str, Any]) -> float:
        """The ``Trainer.train_step`` hook: one step on weighted cross-entropy plus soft Dice, plus ``adapt_weight``
        times the self-training loss on a batch of real frames when ``adapt_data`` is set; returns the loss.

        The real batch's student pass runs through the bare U-Net (``net``) beside the wrapped model's pass; both
        feed one backward, so under DistributedDataParallel each gradient is averaged over ranks once."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        real = next(self._adapt_batches) if self._adapt_batches is not None else None
        with self.autocast():
            logits = self.model(x)
            if real is not None and self.selftrain is not None:
                teacher_prob = self.selftrain.labels(real["image"].to(self.device))
                student = self.net(real["strong"].to(self.device, non_blocking=True))
        loss = segmentation_loss(logits, y, self.weights, self.cfg.dice_weight)
        if real is not None and self.selftrain is not None:
            loss = loss + self.selftrain.loss(student, teacher_prob, self.weights)
        self.step(loss)
        return float(loss.detach())

    def epoch_info(self) -> dict[str, Any]:
        """The ``Trainer.epoch_info`` hook: with ``adapt_data``, the epoch's mean self-training loss and the share of
        real pixels the teacher was confident enough to label."""
        return self.selftrain.info() if self.selftrain is not None else {}

    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict[str, Any]:
        """Validation loss and metrics, summed over ranks (every rank gets the same numbers)."""
        metrics = SegmentationMetrics(self.schema.num_classes, class_names=list(self.schema.names))
        loss_sum = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            x, y = batch["image"].to(self.device), batch["mask"].to(self.device)
            with self.autocast():
                logits = self.model(x)
            loss = segmentation_loss(logits, y, self.weights, self.cfg.dice_weight)
            loss_sum += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
            metrics.update(logits.argmax(1).cpu(), y.cpu())
        confusion = metrics.confusion
        if self.env.distributed:
            loss_sum = all_reduce_sum(loss_sum.to(self.device), self.env).cpu()
            confusion = all_reduce_sum(confusion.to(self.device), self.env).cpu()
        metrics.load_confusion(confusion)
        out = metrics.aggregate()
        return {
            "score": out["mean_iou"],
            "loss": float(loss_sum[0] / max(loss_sum[1], 1)),
            "mean_iou": out["mean_iou"],
            "mean_dice": out["mean_dice"],
            "iou": dict(zip(self.schema.names, out["iou"], strict=True)),
        }
