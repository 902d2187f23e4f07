"""Segmentation training: a U-Net on a manifest dataset, dense or sparse labels.

Cross-entropy plus soft Dice with class weights, a validation split by clip, early stopping on
validation mean IoU; everything else (AdamW and cosine schedule, torchrun, checkpoints, exact resume,
mixed precision on CUDA) is the shared loop in ``pleura.train.loop``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pleura.data import LUSDataset, default_augmentation, image_size, read_manifest, split_by_group
from pleura.labels import get_schema
from pleura.metrics.segmentation import SegmentationMetrics
from pleura.models import UNet, UNetConfig
from pleura.models.config import nested_config
from pleura.train.distributed import all_reduce_sum
from pleura.train.loop import LoopConfig, Progress, Trainer, TrainError
from pleura.train.losses import class_weights, segmentation_loss

__all__ = ["Progress", "SegTrainConfig", "SegTrainer", "TrainError", "scan_masks"]


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

    def __post_init__(self) -> None:
        self.model = nested_config(UNetConfig, self.model, "SegTrainConfig.model")

    def model_config(self) -> UNetConfig:
        """The U-Net's configuration: ``model`` with one input channel and the schema's classes."""
        schema = get_schema(self.schema)
        return replace(self.model, in_channels=1, num_classes=schema.num_classes, schema=schema.name)


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

    resume_keys = ("schema", "model", "seed", "batch_size", "epochs")
    kind = "segmentation"
    cfg: SegTrainConfig

    def setup(self) -> tuple[LUSDataset, LUSDataset, dict[str, Any]]:
        """The ``Trainer.setup`` hook: splits the manifest by clip and checks every mask, counting class pixels for
        the loss weights.

        Returns:
            The training and validation datasets, and the model config, split and class statistics for
            ``config.json``.
        """
        cfg = self.cfg
        self.schema = get_schema(cfg.schema)
        rows = read_manifest(self.data)
        train_rows, val_rows = split_by_group(rows, cfg.val_fraction, seed=cfg.seed, group="clip_id")
        aug = default_augmentation(cfg.schema) if cfg.augment else None
        train = LUSDataset(self.data, cfg.schema, transform=aug, rows=train_rows, seed=cfg.seed)
        val = LUSDataset(self.data, cfg.schema, rows=val_rows)
        counts = scan_masks(train, self.schema.num_classes)  # validates every mask before training
        scan_masks(val, self.schema.num_classes)
        self.weights = class_weights(counts, cfg.class_weighting).to(self.device)
        info = {
            "model": asdict(cfg.model_config()),
            "train_frames": len(train),
            "val_frames": len(val),
            "image_size": list(image_size(self.data, rows)),
            "val_clips": sorted({r["clip_id"] for r in val.rows}),
            "class_pixel_counts": counts.tolist(),
            "class_weights": self.weights.cpu().tolist(),
        }
        return train, val, info

    def build_model(self) -> UNet:
        """The ``Trainer.build_model`` hook: a U-Net of ``cfg.model_config()``."""
        return UNet(self.cfg.model_config())

    def checkpoint_meta(self) -> dict[str, Any]:
        """The ``Trainer.checkpoint_meta`` hook: the label schema, stored beside the weights."""
        return {"schema": self.cfg.schema}

    def train_step(self, batch: dict[str, Any]) -> float:
        """The ``Trainer.train_step`` hook: one step on weighted cross-entropy plus soft Dice; returns the loss."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.model(x)
        loss = segmentation_loss(logits, y, self.weights, self.cfg.dice_weight)
        self.step(loss)
        return float(loss.detach())

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
