"""Segmentation training: a U-Net on a manifest dataset, dense or sparse labels.

Cross-entropy plus soft Dice with class weights, AdamW with warm-up and a cosine schedule, a validation
split by clip, early stopping on validation mean IoU, mixed precision on CUDA, and the same code under
``torchrun`` (DistributedDataParallel, a distributed sampler, metrics summed over ranks, only rank 0
writing). All randomness derives from ``(seed, epoch, index)``, so ``resume`` continues an interrupted
run to the same weights as an uninterrupted one.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``best/`` and ``last/``
checkpoints (safetensors + JSON, replaced atomically) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pleura import __version__
from pleura.atomic import finite, write_json, write_text
from pleura.data import LUSDataset, default_augmentation, read_manifest, split_by_group
from pleura.evaluate.metrics import SegmentationMetrics
from pleura.labels import get_schema
from pleura.models import UNet, UNetConfig
from pleura.train import checkpoint as ckpt
from pleura.train.distributed import DistEnv, all_gather_objects, all_reduce_sum, state_digest, sync_buffers
from pleura.train.losses import class_weights, segmentation_loss

logger = logging.getLogger(__name__)


@dataclass
class SegTrainConfig:
    """Hyperparameters of ``train-seg``; stored in ``RUN/config.json``."""

    schema: str = "dense"  # label schema to learn: dense or sparse
    epochs: int = 30  # maximum epochs; early stopping may end sooner
    batch_size: int = 8  # per process: under torchrun the effective batch is N times this
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    dice_weight: float = 1.0  # loss = weighted CE + dice_weight * soft Dice
    class_weighting: str = "sqrt_inverse"  # none, inverse or sqrt_inverse pixel frequency
    patience: int = 8  # epochs without a better validation mean IoU before stopping
    val_fraction: float = 0.2  # share of clips (per diagnosis) held out for validation
    seed: int = 0  # seeds model init, split, shuffling and augmentation
    width: int = 16  # U-Net channels at the first level (64 = the classic U-Net)
    depth: int = 4  # U-Net down-steps
    norm: str = "batch"  # normalisation: batch, instance, group or none
    upsample: str = "transpose"  # decoder up-sampling: transpose or bilinear
    augment: bool = True  # geometry-respecting augmentation of training frames
    workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision (used on CUDA only)
    device: str = "auto"  # auto (CUDA if present), cpu or cuda

    def model_config(self) -> UNetConfig:
        schema = get_schema(self.schema)
        return UNetConfig(
            in_channels=1,
            num_classes=schema.num_classes,
            width=self.width,
            depth=self.depth,
            norm=self.norm,
            upsample=self.upsample,
            schema=schema.name,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegTrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Progress(Protocol):
    """What the trainer tells its caller; the CLI draws a progress bar from it."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, n: int, **info: float) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int, **info: float) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        pass


class TrainError(ValueError):
    """A run that cannot start; the message names the file or option and the fix."""


def scan_masks(dataset: LUSDataset, num_classes: int) -> np.ndarray:
    """Read and validate every mask once (bad class index, size mismatch) and count class pixels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(dataset.read_mask(i).ravel(), minlength=num_classes)[:num_classes]
    return counts


class SegTrainer:
    """Trains a U-Net segmenter into a run folder.

    Example:
        >>> env = init_distributed()  # doctest: +SKIP
        >>> SegTrainer(SegTrainConfig(schema="dense", epochs=5), "data/sim", "runs/dense", env).fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: SegTrainConfig,
        data: str | Path,
        out: str | Path,
        env: DistEnv,
        progress: Progress | None = None,
    ) -> None:
        self.cfg, self.env = cfg, env
        self.data, self.out = Path(data), Path(out)
        self.progress = progress if (progress is not None and env.is_main) else _Silent()
        self.schema = get_schema(cfg.schema)
        self.device = env.device
        self.use_amp = cfg.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------ setup
    def _datasets(self) -> tuple[LUSDataset, LUSDataset]:
        rows = read_manifest(self.data)
        train_rows, val_rows = split_by_group(rows, self.cfg.val_fraction, seed=self.cfg.seed, group="clip_id")
        aug = default_augmentation(self.cfg.schema) if self.cfg.augment else None
        train = LUSDataset(self.data, self.cfg.schema, transform=aug, rows=train_rows, seed=self.cfg.seed)
        val = LUSDataset(self.data, self.cfg.schema, rows=val_rows)
        return train, val

    def _loaders(self, train: LUSDataset, val: LUSDataset) -> tuple[DataLoader, DataLoader, DistributedSampler]:
        env, bs = self.env, self.cfg.batch_size
        sampler = DistributedSampler(
            train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=self.cfg.seed
        )
        per_rank = len(sampler)
        drop_last = per_rank > bs and per_rank % bs == 1  # a batch of one breaks BatchNorm
        pin = self.device.type == "cuda"
        train_loader = DataLoader(
            train, batch_size=bs, sampler=sampler, num_workers=self.cfg.workers, drop_last=drop_last, pin_memory=pin
        )
        shard = Subset(val, list(range(env.rank, len(val), env.world_size)))  # exact, no padding
        val_loader = DataLoader(shard, batch_size=bs, shuffle=False, num_workers=self.cfg.workers, pin_memory=pin)
        return train_loader, val_loader, sampler

    def _prepare_run_folder(self, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an existing run unless asked; check a resumed run matches the request."""
        cfg_path = self.out / "config.json"
        if resume:
            if not (self.out / "last").is_dir() or not cfg_path.exists():
                raise TrainError(f"{self.out}: nothing to resume (no last/ checkpoint and config.json)")
            old = json.loads(cfg_path.read_text())["train"]
            for key in ("schema", "width", "depth", "norm", "upsample", "seed", "batch_size", "epochs"):
                if old.get(key) != getattr(self.cfg, key):
                    raise TrainError(
                        f"{cfg_path}: the run was trained with {key}={old.get(key)!r} but {key}="
                        f"{getattr(self.cfg, key)!r} was requested; resume with the same settings"
                    )
            return
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                raise TrainError(f"{self.out}: run folder is not empty; pass --resume to continue it or --overwrite")
            if self.env.is_main:
                shutil.rmtree(self.out)

    # ------------------------------------------------------------------ steps
    def lr_at(self, step: int, total: int, warmup: int) -> float:
        """Learning rate at optimizer step ``step``: linear warm-up, then cosine to zero."""
        if step < warmup:
            return self.cfg.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimizer step on a batch; returns the loss."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(x)
        loss = segmentation_loss(logits, y, self.weights, self.cfg.dice_weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, Any]:
        """Validation loss and metrics, summed over ranks (every rank gets the same numbers)."""
        self.model.eval()
        metrics = SegmentationMetrics(self.schema.num_classes, class_names=list(self.schema.names))
        loss_sum = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            x = batch["image"].to(self.device)
            y = batch["mask"].to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = self.model(x)
            loss = segmentation_loss(logits, y, self.weights, self.cfg.dice_weight)
            loss_sum += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
            metrics.update(logits.argmax(1).cpu(), y.cpu())
        confusion = metrics.confusion.clone()
        if self.env.distributed:
            loss_sum = all_reduce_sum(loss_sum.to(self.device), self.env).cpu()
            confusion = all_reduce_sum(confusion.to(self.device), self.env).cpu()
        metrics.load_confusion(confusion)
        out = metrics.aggregate()
        out["loss"] = float(loss_sum[0] / max(loss_sum[1], 1))
        return out

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train (or continue) the run; returns the summary written to ``summary.json``."""
        cfg, env = self.cfg, self.env
        self._prepare_run_folder(resume, overwrite)
        train_ds, val_ds = self._datasets()
        counts = scan_masks(train_ds, self.schema.num_classes)
        scan_masks(val_ds, self.schema.num_classes)
        self.weights = class_weights(counts, cfg.class_weighting).to(self.device)
        train_loader, val_loader, sampler = self._loaders(train_ds, val_ds)

        torch.manual_seed(cfg.seed)
        net = UNet(cfg.model_config()).to(self.device)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0}
        if resume:
            resumed, _ = ckpt.read_checkpoint(self.out / "last", map_location=self.device)
            net.load_state_dict(resumed.state_dict())
            state = ckpt.read_training_state(self.out / "last", self.optimizer, map_location=self.device)
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        self.model = (
            DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if env.distributed
            else net
        )
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            run_info = {
                "pleura_version": __version__,
                "train": asdict(cfg),
                "model": asdict(cfg.model_config()),
                "data": str(self.data.resolve()),
                "train_frames": len(train_ds),
                "val_frames": len(val_ds),
                "val_clips": sorted({r["clip_id"] for r in val_ds.rows}),
                "class_pixel_counts": counts.tolist(),
                "class_weights": self.weights.cpu().tolist(),
                "world_size": env.world_size,
            }
            write_json(self.out / "config.json", run_info)
            self._truncate_log(state["epoch"])

        steps_per_epoch = len(train_loader)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        start_time = time.perf_counter()
        record: dict[str, Any] = {}
        for epoch in range(state["epoch"], cfg.epochs):
            if state["bad_epochs"] >= cfg.patience:
                break
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            self.model.train()
            self.progress.start(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            for batch in train_loader:
                lr = self.lr_at(state["step"], total_steps, warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self.train_step(batch)
                state["step"] += 1
                seen += len(batch["image"]) * env.world_size
                loss_sum += loss
                self.progress.advance(1, loss=loss, images_per_s=seen / (time.perf_counter() - t0))
            sync_buffers(net, env)
            train_seconds = time.perf_counter() - t0
            val = self.evaluate(val_loader)
            improved = val["mean_iou"] > state["best"] + 1e-9
            if improved:
                state.update(best=val["mean_iou"], best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(steps_per_epoch, 1),
                "val_loss": val["loss"],
                "val_mean_iou": val["mean_iou"],
                "val_mean_dice": val["mean_dice"],
                "val_iou": dict(zip(self.schema.names, val["iou"], strict=True)),
                "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": seen / train_seconds,
                "epoch_seconds": time.perf_counter() - t0,
                "best": improved,
            }
            if env.is_main:
                meta = {
                    "schema": cfg.schema,
                    "epoch": epoch + 1,
                    "val_mean_iou": val["mean_iou"],
                    "kind": "segmentation",
                }
                if improved:
                    ckpt.write_checkpoint(self.out / "best", net, meta)
                if self.use_amp:
                    state["scaler"] = self.scaler.state_dict()
                ckpt.write_checkpoint(self.out / "last", net, meta, self.optimizer, state)
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(finite(record)) + "\n")
            self.progress.end_epoch(record)

        summary = self._summary(net, state, record, time.perf_counter() - start_time)
        if env.is_main:
            write_json(self.out / "summary.json", summary)
        return summary

    def _truncate_log(self, epochs_kept: int) -> None:
        """Drop log lines of epochs after the checkpoint a resumed run continues from."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["epoch"] <= epochs_kept]
        write_text(path, "".join(ln + "\n" for ln in kept))

    def _summary(self, net: torch.nn.Module, state: dict[str, Any], last: dict[str, Any], seconds: float) -> dict:
        digests = all_gather_objects(state_digest(net), self.env)
        rank_metrics = all_gather_objects(last.get("val_mean_iou"), self.env)
        return {
            "schema": self.cfg.schema,
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"] + 1,
            "best_val_mean_iou": state["best"],
            "stopped_early": state["epoch"] < self.cfg.epochs,
            "seconds": seconds,
            "world_size": self.env.world_size,
            "rank_digests": digests,
            "ranks_identical": len(set(digests)) == 1,
            "rank_val_mean_iou": rank_metrics,
        }
