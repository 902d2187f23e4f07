"""The epoch loop every pleura trainer shares: one code path for 1 process or torchrun.

A task (segmentation, classification) subclasses ``Trainer`` and fills in a few hooks: its datasets, its
model, one optimizer step, and validation. The loop owns the rest: the run folder, AdamW with warm-up and
cosine decay (``torch.optim.lr_scheduler.LambdaLR``), DistributedDataParallel, BatchNorm statistics kept equal
over ranks, early stopping on the task's validation score, ``metrics.jsonl`` (one line per epoch, rank 0
only), ``best/`` and ``last/`` checkpoints that survive a kill at any point (``pleura.train.checkpoint``;
``last/`` carries the metrics log too), exact ``resume`` (every random choice derives from ``(seed, epoch,
index)``), and ``summary.json`` with a digest of every rank's weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from pleura import __version__
from pleura.atomic import finite, write_json, write_text
from pleura.models.checkpoint import read_checkpoint
from pleura.train import checkpoint as ckpt
from pleura.train.distributed import DistEnv, all_gather_objects, state_digest, sync_buffers

logger = logging.getLogger(__name__)
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")  # written atomically (pleura.atomic) into RUN/


@dataclass
class LoopConfig:
    """Settings every trainer shares; task configs extend it. Stored in ``RUN/config.json``."""

    epochs: int = 30  # maximum epochs; early stopping may end sooner
    batch_size: int = 8  # per process: under torchrun the effective batch is N times this
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    patience: int = 8  # epochs without a better validation score before stopping
    val_fraction: float = 0.2  # share of groups (per diagnosis) held out for validation
    seed: int = 0  # seeds model init, split, shuffling and augmentation
    augment: bool = True  # geometry-respecting augmentation of training frames
    workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision (used on CUDA only)
    device: str = "auto"  # auto (CUDA if present), cpu or cuda

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        """The config from a dict (e.g. ``config.json``'s ``train``), ignoring keys that are not fields of ``cls``.

        Runs written before the model config was nested kept its fields (``width``, ``depth``...) at the top
        level; they are gathered into ``model`` so such a run still resumes.
        """
        own = {f.name: f for f in fields(cls)}
        d = dict(d)
        factory = own["model"].default_factory if "model" in own else None
        if callable(factory) and "model" not in d:
            legacy = _legacy_fields(factory(), d, set(own))
            if legacy:
                d["model"] = legacy
        return cls(**{k: v for k, v in d.items() if k in own})


def _legacy_fields(config: Any, d: dict[str, Any], taken: set[str]) -> dict[str, Any]:
    """The fields of ``config`` (and of the configs nested in it) that ``d`` holds at its top level, as
    ``config``'s nested dict; names in ``taken`` belong to the outer config."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            sub = _legacy_fields(value, d, taken)
            if sub:
                out[f.name] = sub
        elif f.name in d and f.name not in taken:
            out[f.name] = d[f.name]
    return out


def _plain(value: Any) -> Any:
    """A config value as ``config.json`` holds it (a nested dataclass as its dict), for comparisons."""
    return json.loads(json.dumps(asdict(value) if is_dataclass(value) else value))


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total``: linear warm-up over ``warmup`` steps
    (``(step + 1) / warmup``), then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class Progress(Protocol):
    """What a trainer tells its caller; the CLI draws a progress bar from it."""

    def start(self, description: str, total: int) -> None:
        """A phase of ``total`` steps begins (a training epoch, or an experiment stage), shown as ``description``."""

    def advance(self, n: int, **info: float) -> None:
        """``n`` more steps are done; ``info`` holds numbers to show beside them (e.g. ``loss``, ``images_per_s``)."""

    def end_epoch(self, record: dict[str, Any]) -> None:
        """A training epoch ended; ``record`` is its line of ``metrics.jsonl`` (losses, ``val_score``, ``best``)."""


class _Silent:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int, **info: float) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        pass


class TrainError(ValueError):
    """A run that cannot start; the message names the file or option and the fix."""


class Trainer:
    """Epoch loop with hooks. Subclasses implement ``setup``, ``build_model``, ``train_step`` and
    ``validate``; they may override ``make_sampler``, ``make_optimizer``, ``on_epoch_start`` and ``epoch_info``.

    Attributes a subclass can use: ``cfg``, ``env``, ``device``, ``use_amp``, ``model`` (DDP-wrapped when
    distributed), ``net`` (the bare module), ``optimizer``, ``scaler``.
    """

    resume_keys: tuple[str, ...] = ("seed", "batch_size", "epochs")  # must match to resume a run
    kind = "model"  # written into checkpoint metadata

    def __init__(
        self, cfg: LoopConfig, data: str | Path, out: str | Path, env: DistEnv, progress: Progress | None = None
    ) -> None:
        self.cfg, self.env = cfg, env
        self.data, self.out = Path(data), Path(out)
        self.progress = progress if (progress is not None and env.is_main) else _Silent()
        self.device = env.device
        self.use_amp = cfg.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------ hooks
    def setup(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        """Train and validation datasets (validated), and facts for ``config.json``."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """The model to train, on the CPU; called after seeding, so every rank builds the same one."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimizer step (use ``self.step(loss)``); returns the loss."""
        raise NotImplementedError

    def validate(self, loader: DataLoader) -> dict[str, Any]:
        """Validation metrics summed over ranks; must hold ``score`` (higher is better) and ``loss``."""
        raise NotImplementedError

    def make_sampler(self, train: Dataset) -> Sampler:
        """Sampler of training items for this rank; set_epoch is called on it each epoch."""
        return DistributedSampler(
            train, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=True, seed=self.cfg.seed
        )

    def make_optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW over ``net``'s parameters at ``lr`` and ``weight_decay``; override it for parameter groups."""
        return torch.optim.AdamW(net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (e.g. to freeze or unfreeze a body)."""

    def ddp_kwargs(self) -> dict[str, Any]:
        """Extra arguments of DistributedDataParallel (e.g. ``find_unused_parameters``)."""
        return {}

    def epoch_info(self) -> dict[str, Any]:
        """Extra numbers of the epoch just trained for its ``metrics.jsonl`` line (e.g. a second loss); called
        after the epoch's steps, before validation."""
        return {}

    # ------------------------------------------------------------------ helpers
    def autocast(self) -> torch.autocast:
        """Mixed-precision context (float16) for forward passes; disabled unless ``use_amp`` (AMP on CUDA)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp)

    def step(self, loss: torch.Tensor) -> None:
        """Backward and optimizer step, through the grad scaler (a pass-through without AMP)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """Learning-rate multiplier at optimizer step ``step`` (:func:`warmup_cosine`)."""
        return warmup_cosine(step, total, warmup)

    def make_scheduler(self, total: int, warmup: int, step: int) -> LambdaLR:
        """The learning-rate schedule: ``LambdaLR`` of :meth:`lr_factor` over the optimizer's groups, positioned
        at optimizer step ``step`` (0 for a new run; a resumed run's count), so it is recomputed from the step
        a checkpoint records rather than stored. Each group's base rate is its rate from ``make_optimizer``."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base  # LambdaLR's base rate, whatever rate a resumed optimizer state last held
        return LambdaLR(self.optimizer, lambda s: self.lr_factor(s, total, warmup), last_epoch=step - 1)

    def _loaders(self, train: Dataset, val: Dataset) -> tuple[DataLoader, DataLoader, Sampler]:
        env, bs = self.env, self.cfg.batch_size
        sampler = self.make_sampler(train)
        per_rank = len(sampler)  # type: ignore[arg-type]
        drop_last = per_rank > bs and per_rank % bs == 1  # a batch of one breaks BatchNorm
        pin = self.device.type == "cuda"
        workers = self.cfg.workers
        train_loader = DataLoader(
            train, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=drop_last, pin_memory=pin
        )
        shard = Subset(val, list(range(env.rank, len(val), env.world_size)))  # type: ignore[arg-type]
        val_loader = DataLoader(shard, batch_size=bs, shuffle=False, num_workers=workers, pin_memory=pin)
        return train_loader, val_loader, sampler

    def _prepare_run_folder(self, resume: bool, overwrite: bool) -> bool:
        """Refuse to clobber an existing run unless asked; check a resumed run matches the request and undo a
        save a kill cut short. True when there is a ``last/`` checkpoint to continue from."""
        cfg_path = self.out / "config.json"
        if resume:
            if not cfg_path.exists():
                raise TrainError(f"{self.out}: nothing to resume (no config.json; start the run without --resume)")
            old = type(self.cfg).from_dict(json.loads(cfg_path.read_text())["train"])
            for key in self.resume_keys:
                was, now = _plain(getattr(old, key)), _plain(getattr(self.cfg, key))
                if was != now:
                    raise TrainError(
                        f"{cfg_path}: the run was trained with {key}={was!r} but {key}={now!r} was requested; "
                        "resume with the same settings"
                    )
            if self.env.is_main:
                self._recover_run_folder()
            if self.env.distributed:
                dist.barrier()  # every rank reads last/ only once rank 0 has restored it
            if not (self.out / "last").is_dir():
                logger.warning("%s: no last/ checkpoint yet (killed in the first epoch); starting at epoch 1", self.out)
                return False
            return True
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                raise TrainError(f"{self.out}: run folder is not empty; pass --resume to continue it or --overwrite")
            if self.env.is_main:
                shutil.rmtree(self.out)
        return False

    def _recover_run_folder(self) -> None:
        """Restore ``last/`` and ``best/`` after a save a kill cut short, and drop temporary files of the run's
        own atomic writes, so a resumed run starts from whole files only (rank 0, before the others read)."""
        for name in ("last", "best"):
            ckpt.recover_checkpoint(self.out / name)
        prefixes = tuple(f".{name}." for name in RUN_FILES)
        for path in self.out.iterdir():
            if path.is_file() and path.name.startswith(prefixes) and path.name.endswith(".tmp"):
                logger.info("%s: deleting a temporary file a killed write left", path)
                path.unlink(missing_ok=True)

    def _restore_log(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Rewrite ``metrics.jsonl`` to exactly the epochs the resumed checkpoint covers, one line each, from the
        log its ``state.json`` carries: a line a kill lost is put back, a later or torn one dropped."""
        path = self.out / "metrics.jsonl"
        records = state.get("log")
        if records is None:  # a checkpoint saved before the log moved into state.json: keep the file's lines
            records, seen = [], set()
            for line in path.read_text().splitlines() if path.exists() else []:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn by a kill
                epoch = rec.get("epoch") if isinstance(rec, dict) else None
                if isinstance(epoch, int) and epoch <= state["epoch"] and epoch not in seen:
                    records.append(rec)
                    seen.add(epoch)
            records.sort(key=lambda r: r["epoch"])
            if len(records) < state["epoch"]:
                logger.warning("%s: lines of %d epochs are lost", path, state["epoch"] - len(records))
        self._write_log(records)
        return records

    def _write_log(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` atomically by one JSON line per record (a kill leaves the old or the new file)."""
        write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train (or continue) the run; returns the summary written to ``summary.json``."""
        cfg, env = self.cfg, self.env
        has_last = self._prepare_run_folder(resume, overwrite)
        train_ds, val_ds, info = self.setup()
        train_loader, val_loader, sampler = self._loaders(train_ds, val_ds)

        torch.manual_seed(cfg.seed)
        self.net = net = self.build_model().to(self.device)
        self.optimizer = self.make_optimizer(net)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0}
        if has_last:
            resumed, _ = read_checkpoint(self.out / "last", map_location=self.device)
            net.load_state_dict(resumed.state_dict())
            state = ckpt.read_training_state(self.out / "last", self.optimizer, map_location=self.device)
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        self.model = (
            DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None, **self.ddp_kwargs()
            )
            if env.distributed
            else net
        )
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            run_info = {"pleura_version": __version__, "train": asdict(cfg), "data": str(self.data.resolve())}
            write_json(self.out / "config.json", {**run_info, **info, "world_size": env.world_size})
            if resume:
                state["log"] = self._restore_log(state)  # the checkpoint carries its log: metrics.jsonl follows it
        state.setdefault("log", [])

        steps_per_epoch = len(train_loader)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.scheduler = self.make_scheduler(total_steps, warmup, state["step"])
        start_time = time.perf_counter()
        record: dict[str, Any] = {}
        for epoch in range(state["epoch"], cfg.epochs):
            if state["bad_epochs"] >= cfg.patience:
                break
            sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            if hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)
            self.on_epoch_start(epoch)
            self.model.train()
            self.progress.start(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            lr = self.optimizer.param_groups[0]["lr"]
            for batch in train_loader:
                lr = self.optimizer.param_groups[0]["lr"]  # this step's, set by the scheduler
                loss = self.train_step(batch)
                with warnings.catch_warnings():
                    # the grad scaler skips the optimizer step of a batch whose gradients overflowed (often the
                    # first under AMP); the schedule still counts the step, as it always has
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
                    self.scheduler.step()  # the next step's rate
                state["step"] += 1
                seen += len(batch["image"]) * env.world_size
                loss_sum += loss
                self.progress.advance(1, loss=loss, images_per_s=seen / (time.perf_counter() - t0))
            sync_buffers(net, env)
            train_seconds = time.perf_counter() - t0
            extra = self.epoch_info()
            self.model.eval()
            val = self.validate(val_loader)
            improved = val["score"] > state["best"] + 1e-9
            if improved:
                state.update(best=val["score"], best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(steps_per_epoch, 1),
                **extra,
                **{f"val_{k}": v for k, v in val.items()},
                "lr": lr,  # the rate of the epoch's last step
                "images_per_s": seen / train_seconds,
                "epoch_seconds": time.perf_counter() - t0,
                "best": improved,
            }
            state["log"].append(finite(record))  # saved in last/ with the weights, so a kill cannot part them
            if env.is_main:
                meta = {"kind": self.kind, "epoch": epoch + 1, "val_score": val["score"], **self.checkpoint_meta()}
                if improved:
                    ckpt.write_checkpoint(self.out / "best", net, meta)
                if self.use_amp:
                    state["scaler"] = self.scaler.state_dict()
                ckpt.write_checkpoint(self.out / "last", net, meta, self.optimizer, state)
                self._write_log(state["log"])
            self.progress.end_epoch(record)

        summary = self._summary(net, state, record, time.perf_counter() - start_time)
        if env.is_main:
            write_json(self.out / "summary.json", summary)
        return summary

    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra metadata stored beside the weights (e.g. the label schema)."""
        return {}

    def _summary(self, net: torch.nn.Module, state: dict[str, Any], last: dict[str, Any], seconds: float) -> dict:
        digests = all_gather_objects(state_digest(net), self.env)
        rank_scores = all_gather_objects(last.get("val_score"), self.env)
        return {
            "kind": self.kind,
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"] + 1,
            "best_val_score": state["best"],
            "stopped_early": state["epoch"] < self.cfg.epochs,
            "seconds": seconds,
            "world_size": self.env.world_size,
            "rank_digests": digests,
            "ranks_identical": len(set(digests)) == 1,
            "rank_val_score": rank_scores,
            **self.checkpoint_meta(),
        }
