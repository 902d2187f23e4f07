"""Engines: run a model on a batch of frames and return NumPy arrays, in PyTorch or in ONNX Runtime.

Both engines take ``x``, float32 ``(B, in_channels, H, W)``, and return ``(logits, seg_logits)``:
``logits`` ``(B, K)`` class logits (``None`` for a segmentation-only U-Net) and ``seg_logits``
``(B, C, H, W)`` (``None`` for a classifier with the ``bottleneck`` tap, which never runs the decoder).
``engine.run(x)`` returns an :class:`EngineOutput` that adds ``features`` ``(B, F)``, the classifier head's
pooled features from the same pass (what the out-of-distribution detector reads; ``None`` for a U-Net or
an ONNX file exported without them).
They expose ``class_names`` (the classifier's diagnoses, or the segmentation classes of a U-Net whose
schema is known), ``seg_class_names``, ``schema`` and ``image_size``, so a caller resizes and labels frames
without knowing which engine runs.

Example:
    >>> engine = make_engine("model.onnx")  # or make_engine(model), make_engine(model, engine="onnx")
    >>> logits, seg_logits = engine(frames)
    >>> logits, seg_logits, features = engine.run(frames)

ONNX Runtime's telemetry is turned off (``ORT_DISABLE_TELEMETRY=1`` unless the caller set it, before it is
imported; it would otherwise write ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from pleura.infer.export import (
    FORMAT,
    INPUT_NAME,
    _seg_class_names,
    _unet_of,
    import_onnxruntime,
    onnx_bytes,
    prepare_for_inference,
)
from pleura.models.classifier import ReverseTransferClassifier

ENGINES: tuple[str, ...] = ("torch", "onnx")
FRAME_PARALLEL_MIN_SIDE = 256  # OnnxEngine runs batches of frames this large (or larger) one frame per thread
Outputs = tuple[np.ndarray | None, np.ndarray | None]


class EngineOutput(NamedTuple):
    """What ``engine.run(x)`` returns: NumPy float32 arrays, or ``None`` where the model has no such output."""

    logits: np.ndarray | None  # (B, K) class logits; None for a segmentation-only U-Net
    seg_logits: np.ndarray | None  # (B, C, H, W) segmentation logits; None for the bottleneck tap
    features: np.ndarray | None  # (B, F) the classifier head's pooled features (its linear layer's input)


class Engine:
    """What the engines share: the model's labels and input size, and the input check."""

    class_names: tuple[str, ...] | None  # names of ``logits``' columns (a U-Net: its segmentation classes)
    seg_class_names: tuple[str, ...] | None  # names of ``seg_logits``' channels, when the schema is known
    schema: str | None  # the segmentation label schema (e.g. "dense"), if the model records it
    image_size: int  # frames are resized to image_size x image_size before the call
    in_channels: int
    size_multiple: int  # H and W must be multiples of this (2**depth)
    source: nn.Module | None = None  # the PyTorch model behind the engine, if known (the bottleneck tap's decoder)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"engine input should be (B, {self.in_channels}, H, W), got shape {x.shape}")
        if x.shape[2] % self.size_multiple or x.shape[3] % self.size_multiple:
            raise ValueError(f"engine input H and W should be multiples of {self.size_multiple}, got {x.shape[2:]}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, x: np.ndarray) -> EngineOutput:
        """Class logits, segmentation logits and the head's pooled features of a batch, from one pass."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> Outputs:
        """``(logits, seg_logits)`` of a batch (``run`` without the features)."""
        out = self.run(x)
        return out.logits, out.seg_logits


class TorchEngine(Engine):
    """Run a ``UNet`` or ``ReverseTransferClassifier`` in PyTorch, on the device its parameters are on.

    Args:
        model: the model (not modified: the engine runs :func:`~pleura.infer.prepare_for_inference`'s copy,
            BatchNorm folded into the convolutions).
        image_size: the frame size the model expects (the model itself takes any multiple of ``2**depth``).
        amp: on CUDA, run under autocast in this dtype; ``None`` means bfloat16 where supported, else float16.
            Ignored on CPU, where float32 is both the fastest and the exact choice.
        optimize: ``False`` runs an eval-mode copy of the model as it is (for comparisons).

    Runs in ``torch.inference_mode``, every level channels-last (faster forward-only on CPU's oneDNN and on
    CUDA's tensor cores).
    """

    def __init__(
        self, model: nn.Module, *, image_size: int = 256, amp: torch.dtype | None = None, optimize: bool = True
    ) -> None:
        unet = _unet_of(model)
        self.device = next(model.parameters()).device
        self.model = prepare_for_inference(model) if optimize else _eval_copy(model)
        self.source = self.model
        self.with_classifier = isinstance(model, ReverseTransferClassifier)
        self.seg_class_names = _tuple(_seg_class_names(unet))
        self.class_names = tuple(model.config.class_names) if self.with_classifier else self.seg_class_names
        self.schema = unet.config.schema
        self.image_size = image_size
        self.in_channels = unet.config.in_channels
        self.size_multiple = unet.size_multiple
        self.amp: torch.dtype | None = None
        if self.device.type == "cuda":
            self.amp = amp or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    def run(self, x: np.ndarray) -> EngineOutput:
        """Class logits, segmentation logits and pooled features of a ``(B, C, H, W)`` batch, from one pass.

        A U-Net alone gives only the segmentation logits (``logits`` and ``features`` are ``None``).
        """
        batch = torch.from_numpy(self._check(x)).to(self.device, non_blocking=True)
        amp = torch.autocast(self.device.type, self.amp) if self.amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            if self.with_classifier:
                logits, seg, features = self.model.forward_with_features(batch)
            else:
                logits, seg, features = None, self.model(batch), None
        return EngineOutput(_numpy(logits), _numpy(seg), _numpy(features))


class OnnxEngine(Engine):
    """Run a file written by :func:`~pleura.infer.export_onnx` in ONNX Runtime (CPU).

    Args:
        path: the ``.onnx`` file (or its bytes); its ``metadata_props`` give the labels and input size.
        threads: intra-op threads; ``None`` means every core (``os.cpu_count()``).
        providers: ONNX Runtime execution providers; ``None`` means ``["CPUExecutionProvider"]``.
        frame_parallel: run a batch of several frames as single-frame calls, ``threads`` at a time, each
            on one thread (a second, single-threaded session); ``False`` runs the batch in one call;
            ``None`` (default) chooses by frame size: frame-parallel from ``FRAME_PARALLEL_MIN_SIDE`` pixels.

    The sessions use every graph optimisation (``ORT_ENABLE_ALL``: constant folding, Conv + Add + ReLU
    fusion and the blocked NCHWc convolution layout on x86). A single frame runs on all ``threads``
    (lowest latency). For a batch of large frames, one frame per core keeps each core's activations in its
    own cache and needs no synchronisation between operators, where a batched call splits every operator
    across the cores; small frames fit the cache either way and batch better (``benchmarks/bench_infer.py``
    on the 2-core machine, batch 8: 1.14-1.24x the frames/s of one call at 256x256, 0.85-0.91x at 128x128).
    """

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        threads: int | None = None,
        providers: list[str] | None = None,
        frame_parallel: bool | None = None,
    ) -> None:
        ort = import_onnxruntime()
        what = "the ONNX bytes" if isinstance(path, bytes) else str(path)
        if not isinstance(path, bytes):
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: ONNX model not found")
            path = str(path)
        self.threads = threads or os.cpu_count() or 1
        providers = providers or ["CPUExecutionProvider"]

        def session(threads: int) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            return ort.InferenceSession(path, options, providers=providers)

        self.session = session(self.threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{what}: not a pleura ONNX export (metadata format {meta.get('format')!r}); use export_onnx"
            )
        if frame_parallel is None:
            frame_parallel = int(meta["image_size"]) >= FRAME_PARALLEL_MIN_SIDE
        parallel = frame_parallel and self.threads > 1 and providers == ["CPUExecutionProvider"]
        self._single = session(1) if parallel else None  # run concurrently, one frame per thread
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pleura-onnx") if parallel else None
        self.metadata = dict(meta)
        self.config = json.loads(meta["config"])
        self.outputs: list[str] = json.loads(meta["outputs"])
        self.with_classifier = meta["architecture"] == "reverse_transfer"
        self.class_names = _tuple(json.loads(meta["class_names"]))
        self.seg_class_names = _tuple(json.loads(meta["seg_class_names"]))
        self.schema = meta["schema"] or None
        self.image_size = int(meta["image_size"])
        self.in_channels = int(meta["in_channels"])
        unet_config = self.config["unet"] if self.with_classifier else self.config
        self.size_multiple = 2 ** int(unet_config["depth"])
        self.input_name = meta.get("input", INPUT_NAME)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = super()._check(x)
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"this ONNX model takes {self.image_size}x{self.image_size} frames, got {x.shape[2:]}")
        return x

    def run(self, x: np.ndarray) -> EngineOutput:
        """Class logits, segmentation logits and pooled features of a ``(B, C, S, S)`` batch (``S`` the image size).

        A batch of several frames runs frame-parallel when the engine was built so; outputs the export lacks
        are ``None``.
        """
        x = self._check(x)
        if self._pool is None or len(x) == 1:
            results = self.session.run(self.outputs, {self.input_name: x})
        else:  # ONNX Runtime releases the GIL in run(), so the calls overlap
            single, name = self._single, self.input_name
            frames = list(self._pool.map(lambda i: single.run(self.outputs, {name: x[i : i + 1]}), range(len(x))))
            results = [np.concatenate(parts) for parts in zip(*frames, strict=True)]
        got = dict(zip(self.outputs, results, strict=True))
        return EngineOutput(got.get("logits"), got.get("seg_logits"), got.get("features"))


def make_engine(
    model_or_path: nn.Module | str | os.PathLike, engine: str | None = None, *, image_size: int = 256, **kwargs
) -> Engine:
    """An engine for a model, a ``.safetensors`` checkpoint (``save_model``'s) or an ``.onnx`` export.

    Args:
        model_or_path: a ``UNet`` / ``ReverseTransferClassifier``, or a path to one saved or exported.
        engine: ``"torch"`` or ``"onnx"``; ``None`` means ``"onnx"`` for an ``.onnx`` file, else ``"torch"``.
            ``"onnx"`` for a model or checkpoint exports it in memory first (needs ``onnx``, ``onnxruntime``),
            with the pooled-features output, so both engines give ``run(x).features``.
        image_size: frame size for a model or checkpoint (an ONNX file records its own).
        **kwargs: passed to the engine (``threads`` for ONNX Runtime, ``amp`` for PyTorch).

    Example:
        >>> engine = make_engine("runs/cls/best/model.safetensors", engine="onnx")
    """
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    model = model_or_path
    if not isinstance(model, nn.Module):
        path = Path(model_or_path)
        if path.suffix == ".onnx":
            if engine == "torch":
                raise ValueError(f"{path}: an ONNX export runs in ONNX Runtime only; use engine='onnx' or a checkpoint")
            return OnnxEngine(path, **kwargs)
        from pleura.models import load_model

        model, _ = load_model(path)
    if (engine or "torch") == "torch":
        return TorchEngine(model, image_size=image_size, **kwargs)
    engine = OnnxEngine(onnx_bytes(model, image_size=image_size, features=True), **kwargs)
    engine.source = model.eval()
    return engine


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def _tuple(names: list[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.float().contiguous().cpu().numpy()
