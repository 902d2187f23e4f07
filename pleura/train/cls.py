"""Reverse-transfer classification: a segmentation U-Net becomes a COVID-19 / pneumonia / normal classifier.

``--init dense:RUN`` or ``sparse:RUN`` starts from a ``train-seg`` run's best U-Net; ``scratch`` builds
the same architecture with random weights, so the three variants differ only in their start. Training
draws class-balanced batches, validates on held-out patients or clips, and stops early on validation
balanced accuracy; the loop itself (schedule, torchrun, checkpoints, resume) is ``pleura.train.loop``.
``train_kfold`` runs stratified group k-fold and writes every held-out frame's probabilities.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from pleura.atomic import write_text
from pleura.data import LUSDataset, default_augmentation, group_kfold, image_size, read_manifest, split_by_group
from pleura.labels import DENSE, DIAGNOSES, get_schema, recorded_schema
from pleura.metrics.classification import classification_metrics
from pleura.models import ClassifierConfig, ReverseTransferClassifier, UNet
from pleura.models.config import nested_config
from pleura.postprocess.biomarkers import frame_biomarkers
from pleura.postprocess.calibration import softmax
from pleura.train.distributed import DistEnv, all_gather_objects
from pleura.train.loop import LoopConfig, Progress, Trainer, TrainError
from pleura.train.losses import class_weights, segmentation_loss
from pleura.train.seg import scan_masks

INIT_KINDS = ("dense", "sparse", "scratch")
SCRATCH_SCHEMA = DENSE  # the schema a U-Net trained from scratch predicts (its classes size the head)


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

    def __post_init__(self) -> None:
        self.model = nested_config(ClassifierConfig, self.model, "ClsTrainConfig.model")
        if self.model.class_names != DIAGNOSES:
            raise ValueError(f"ClsTrainConfig.model.class_names should be {DIAGNOSES} (the manifest's diagnoses)")

    def init_kind(self) -> tuple[str, Path | None]:
        """``(kind, run folder)`` of ``init``, checked."""
        kind, _, run = self.init.partition(":")
        if kind not in INIT_KINDS or (kind == "scratch") != (run == ""):
            raise TrainError(f"--init {self.init!r}: expected dense:RUN, sparse:RUN or scratch")
        return kind, (Path(run) if run else None)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, sharded over ranks, reproducible from (seed, epoch).

    Each epoch draws as many items as the dataset holds, every class equally likely.
    """

    def __init__(self, labels: Sequence[int], env: DistEnv, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels, minlength=len(DIAGNOSES)).astype(float)
        weights = 1.0 / counts[self.labels]
        self.p = weights / weights.sum()
        self.env, self.seed, self.epoch = env, seed, 0
        self.per_rank = math.ceil(len(self.labels) / env.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch ``__iter__`` draws for (the loop calls it before each epoch), so every rank draws alike."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        draw = rng.choice(len(self.labels), size=self.per_rank * self.env.world_size, p=self.p)
        return iter(draw[self.env.rank :: self.env.world_size].tolist())


class ClsTrainer(Trainer):
    """Trains a reverse-transfer classifier on ``rows`` of a manifest dataset (one fold's training part)."""

    resume_keys = ("init", "model", "freeze_epochs", "aux_seg_weight", "seed", "batch_size", "epochs")
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
        aug = default_augmentation(self.seg_schema) if cfg.augment else None
        train = LUSDataset(self.data, self.seg_schema, transform=aug, rows=train_rows, seed=cfg.seed)
        val = LUSDataset(self.data, None, rows=val_rows)
        self.train_labels = [DIAGNOSES.index(r["diagnosis"]) for r in train_rows]
        self.seg_weights = None
        if self.seg_schema is not None:
            schema = get_schema(self.seg_schema)
            self.seg_weights = class_weights(scan_masks(train, schema.num_classes)).to(self.device)
        info = {"train_frames": len(train), "val_frames": len(val), "image_size": list(self.size)}
        return train, val, info

    def make_sampler(self, train: LUSDataset) -> Sampler:
        """The ``Trainer.make_sampler`` hook: a :class:`BalancedSampler`, so every diagnosis is drawn equally often."""
        return BalancedSampler(self.train_labels, self.env, seed=self.cfg.seed)

    def build_model(self) -> ReverseTransferClassifier:
        """The ``Trainer.build_model`` hook: a classifier on the ``--init`` run's best U-Net, or on a fresh one."""
        m = self.cfg.model
        head = {f.name: getattr(m, f.name) for f in fields(m) if f.name != "unet"}
        if self.init_run is not None:
            path = self.init_run / "best" / "model.safetensors"
            return ReverseTransferClassifier.from_segmentation_checkpoint(path, **head)
        s = SCRATCH_SCHEMA
        unet = UNet(replace(m.unet, in_channels=1, num_classes=s.num_classes, schema=s.name))
        return ReverseTransferClassifier(unet, **head)

    def ddp_kwargs(self) -> dict[str, Any]:
        """The ``Trainer.ddp_kwargs`` hook: ``find_unused_parameters`` when some parameters get no gradients."""
        # a frozen body, or a tap that skips the segmentation head, leaves parameters without gradients
        unused = self.cfg.model.tap in ("bottleneck", "decoder") and self.cfg.aux_seg_weight == 0
        return {"find_unused_parameters": self.cfg.freeze_epochs > 0 or unused}

    def make_optimizer(self, net: ReverseTransferClassifier) -> torch.optim.Optimizer:
        """The ``Trainer.make_optimizer`` hook: AdamW, the head at ``lr`` and the U-Net at ``lr * body_lr_factor``."""
        groups = [
            {"params": list(net.head_parameters()), "lr": self.cfg.lr},
            {"params": list(net.body_parameters()), "lr": self.cfg.lr * self.cfg.body_lr_factor},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)

    def on_epoch_start(self, epoch: int) -> None:
        """The ``Trainer.on_epoch_start`` hook: the U-Net stays frozen for the first ``freeze_epochs`` epochs."""
        self.net.freeze_body(epoch < self.cfg.freeze_epochs)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The ``Trainer.checkpoint_meta`` hook: the init, tap and class names, stored beside the weights."""
        return {"init": self.cfg.init, "tap": self.cfg.model.tap, "class_names": list(DIAGNOSES)}

    def train_step(self, batch: dict[str, Any]) -> float:
        """The ``Trainer.train_step`` hook: one step on cross-entropy (plus the auxiliary segmentation loss, if
        weighted); returns the loss.
        """
        x = batch["image"].to(self.device, non_blocking=True)
        y = torch.as_tensor(batch["label"], device=self.device)
        with self.autocast():
            logits, seg = self.model(x, with_segmentation=True)
        loss = F.cross_entropy(logits.float(), y)
        if self.seg_schema is not None:
            mask = batch["mask"].to(self.device, non_blocking=True)
            loss = loss + self.cfg.aux_seg_weight * segmentation_loss(seg, mask, self.seg_weights, dice_weight=1.0)
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
        return {
            "score": m["balanced_accuracy"],
            "loss": sum(p[2] for p in parts) / max(len(y_all), 1),
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_roc_auc": m["macro_roc_auc"],
        }


def check_labels(rows: Sequence[dict[str, str]], data: Path) -> None:
    """Every row's diagnosis is one the classifier knows, before any training starts."""
    unknown = sorted({r["diagnosis"] for r in rows} - set(DIAGNOSES))
    if unknown:
        raise TrainError(
            f"{data}: diagnosis label(s) {', '.join(map(repr, unknown))} unknown to the classifier "
            f"(knows {', '.join(DIAGNOSES)}); filter those rows out first"
        )


def check_init_run(run: Path, kind: str, size: tuple[int, int]) -> None:
    """The ``--init`` run exists, learned the named schema, and was trained on images of this size."""
    cfg_path = run / "config.json"
    if not (run / "best" / "model.safetensors").exists() or not cfg_path.exists():
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

    Every check (labels, groups per class, the ``--init`` run) runs before the first fold trains. With
    ``resume``, finished folds are kept and an interrupted fold continues from its ``last/`` checkpoint.
    """
    data, out = Path(data), Path(out)
    rows = read_manifest(data)
    check_labels(rows, data)
    kind, run = cfg.init_kind()
    if run is not None:
        check_init_run(run, kind, image_size(data, rows))
    splits = group_kfold(rows, folds=folds, seed=cfg.seed, group=cfg.group)
    from pleura.models.checkpoint import read_checkpoint

    summaries = []
    for k, (train_rows, test_rows) in enumerate(splits):
        fold_dir = out / f"fold{k}"
        if resume and (fold_dir / "test_predictions.csv").exists():
            summaries.append(json.loads((fold_dir / "summary.json").read_text()))
            continue
        trainer = ClsTrainer(cfg, data, fold_dir, env, rows=train_rows, progress=progress)
        summary = trainer.fit(resume=resume and (fold_dir / "config.json").exists(), overwrite=overwrite)
        if env.is_main:
            model, _ = read_checkpoint(fold_dir / "best")
            preds = predict_rows(model, data, test_rows)
            write_predictions(fold_dir / "test_predictions.csv", preds)
        summaries.append(summary)
    if env.is_main:
        write_text(out / "kfold.json", json.dumps({"folds": folds, "train": asdict(cfg), "data": str(data)}, indent=2))
    return summaries


def write_predictions(path: Path, preds: list[dict[str, Any]]) -> None:
    """Held-out predictions as CSV, atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(preds[0]) if preds else ["id"])
    writer.writeheader()
    writer.writerows(preds)
    write_text(path, buf.getvalue())
