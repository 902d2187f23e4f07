"""Inference copies of pleura models and their export to ONNX.

:func:`prepare_for_inference` returns an eval-mode copy computing the same function faster: BatchNorm folded
into the convolution before it, each skip-concatenating convolution's weight split once into its two input
slices (contiguous) instead of sliced on every call, and every level channels-last. :func:`export_onnx`
writes that copy as a self-describing ONNX file: the model's JSON config, pleura version, class names and
schema sit in the file's ``metadata_props``, so :class:`pleura.infer.OnnxEngine` needs nothing else. With
``features=True`` a classifier's graph also outputs the head's pooled features (``features``, after
``logits`` and ``seg_logits``), which the out-of-distribution detector reads; ``make_engine`` exports so.

The export uses torch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and gives
a flat graph of Conv / Relu / Add / MaxPool / ConvTranspose nodes that ONNX Runtime fuses (Conv + Add + Relu)
and runs in its blocked NCHWc layout. The channel softmax the classifier head reads is written as
``exp(x - max) / sum`` over axis 1: ONNX Runtime's ``Softmax`` on a non-last axis transposes the tensor twice
and took about a third of a width-8 classifier's time at 256x256.

Example:
    >>> from pleura.infer import export_onnx
    >>> export_onnx(model, "model.onnx", image_size=256, verify=True)
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn

from pleura.atomic import write_bytes
from pleura.models.classifier import ReverseTransferClassifier
from pleura.models.unet import SkipConcatConv, UNet

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read when onnxruntime is imported; a caller's value wins

FORMAT = "pleura-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
VERIFY_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| accepted by ``verify=True``
INPUT_NAME = "image"


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, with its telemetry off: it writes a usage database under
    ``~/.cache/Microsoft/DeveloperTools/`` at import unless ``ORT_DISABLE_TELEMETRY`` is set (done above, when
    pleura.infer is imported first), and sends session events unless ``disable_telemetry_events`` is called."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    if os.environ.get("ORT_DISABLE_TELEMETRY", "1") not in ("0", ""):
        ort.disable_telemetry_events()
    return ort


# ----------------------------------------------------------------------------------------------- inference copy


def _weight_format(weight: Tensor) -> torch.memory_format:
    """The layout ``weight`` is stored in (the U-Net keeps its narrow levels channels-last)."""
    if weight.ndim == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class SplitSkipConv(SkipConcatConv):
    """A :class:`SkipConcatConv` whose weight is split once into the skip's slice and the other input's.

    Same map, ``conv(skip, W[:, :c]) + conv(x, W[:, c:]) + b``; the slices are contiguous tensors made at
    construction (a per-call slice of a channels-last weight is not contiguous, so oneDNN repacks it on every
    call), and the exported graph holds two constant weights instead of a shape-dependent Slice.
    """

    def __init__(self, conv: SkipConcatConv, skip_channels: int) -> None:
        w = conv.weight
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        if not 0 < skip_channels < conv.in_channels:
            raise ValueError(f"skip_channels should be in 1..{conv.in_channels - 1}, got {skip_channels}")
        fmt = _weight_format(w)
        self.skip_channels = skip_channels
        with torch.no_grad():
            self.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
            if conv.bias is not None:
                self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
            self.weight_skip = nn.Parameter(w[:, :skip_channels].contiguous(memory_format=fmt), requires_grad=False)
            self.weight_x = nn.Parameter(w[:, skip_channels:].contiguous(memory_format=fmt), requires_grad=False)

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        """Convolution of ``cat([skip, x], dim=1)``: ``skip`` ``(B, C_skip, H, W)`` and ``x`` ``(B, C_x, H, W)`` give
        ``(B, out_channels, H, W)``.
        """
        out = self._conv_forward(skip, self.weight_skip, self.bias)
        return out.add_(self._conv_forward(x, self.weight_x, None))


def _fold_batchnorm(root: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a convolution into it; returns the count.

    The BatchNorm is removed from its container (``ConvBlock``, the head's ``ModuleList``), whose ``forward``
    iterates what it holds, so the map is unchanged and the exported graph has no Identity nodes in its place.
    """
    folded = 0
    for parent in list(root.modules()):
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules.get(a), parent._modules.get(b)
            if not (type(conv) in (nn.Conv2d, SkipConcatConv) and type(bn) is nn.BatchNorm2d):
                continue
            if bn.running_mean is None or bn.running_var is None:  # track_running_stats=False: batch statistics
                continue
            fmt = _weight_format(conv.weight)
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)  # a deep copy of ``conv``: its class kept
            fused.weight = nn.Parameter(fused.weight.detach().contiguous(memory_format=fmt), requires_grad=False)
            parent._modules[a] = fused
            del parent._modules[b]
            folded += 1
    return folded


def _split_skip_convs(model: nn.Module, unet: UNet) -> int:
    """Replace each ``SkipConcatConv`` by a :class:`SplitSkipConv`; the split is read from one tiny forward."""
    skip_channels: dict[nn.Module, int] = {}
    convs = [m for m in model.modules() if type(m) is SkipConcatConv]
    if not convs:
        return 0

    def record(module: nn.Module, args: tuple) -> None:  # a pre-hook's return value would replace the arguments
        skip_channels[module] = int(args[0].shape[1])

    hooks = [m.register_forward_pre_hook(record) for m in convs]
    try:
        p = next(model.parameters())
        side = 2 * unet.size_multiple  # the bottleneck 2x2: instance norm needs more than one element
        with torch.inference_mode():
            model(torch.zeros(1, unet.config.in_channels, side, side, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    for parent in list(model.modules()):
        for name, child in parent._modules.items():
            if child in skip_channels:
                parent._modules[name] = SplitSkipConv(child, skip_channels[child])
    return len(skip_channels)


def _unet_of(model: nn.Module) -> UNet:
    if isinstance(model, ReverseTransferClassifier):
        return model.unet
    if isinstance(model, UNet):
        return model
    raise TypeError(f"expected a pleura UNet or ReverseTransferClassifier, got a {type(model).__name__}")


def prepare_for_inference(model: nn.Module, channels_last: bool | None = True) -> nn.Module:
    """An eval-mode copy of ``model`` (a ``UNet`` or ``ReverseTransferClassifier``) that computes the same faster.

    BatchNorm is folded into the preceding convolution, skip-concatenating convolutions get pre-split
    weights (:class:`SplitSkipConv`), and with ``channels_last`` every level runs channels-last (NHWC; the
    training default keeps only the narrow levels so), with ``False`` every level NCHW (what the ONNX export
    traces), with ``None`` as the model has it. Gradients are off. The copy is for inference only: its
    structure is no longer the one ``save_model`` / ``load_model`` expect, so keep the original for saving.
    """
    _unet_of(model)  # type check
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    unet = _unet_of(out)
    _fold_batchnorm(out)
    _split_skip_convs(out, unet)
    if channels_last is not None:
        unet.set_channels_last(unet.feature_channels["bottleneck"] if channels_last else 0)  # all levels or none
        if isinstance(out, ReverseTransferClassifier):
            out.head.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return out


# ----------------------------------------------------------------------------------------------- ONNX export


class _WithSegmentation(nn.Module):
    """``forward(x) -> (class logits, segmentation logits)`` of a classifier, as a plain tuple for export."""

    def __init__(self, model: ReverseTransferClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, seg = self.model.forward_with_segmentation(x)
        return logits, seg.contiguous()


class _ClassLogits(nn.Module):
    """``forward(x) -> class logits`` (the ``bottleneck`` tap has no segmentation output)."""

    def __init__(self, model: ReverseTransferClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _WithFeatures(nn.Module):
    """``forward(x) -> (class logits[, segmentation logits], pooled features)``: the outputs above plus the
    head's pooled features (``forward_with_features``), which the OOD detector reads, from the same pass."""

    def __init__(self, model: ReverseTransferClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        logits, seg, pooled = self.model.forward_with_features(x)
        return (logits, pooled) if seg is None else (logits, seg.contiguous(), pooled)


class _Segmentation(nn.Module):
    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).contiguous()


MAX_SPLIT_SOFTMAX = 32  # channel counts up to this get the Split + elementwise Max / Sum softmax


def _softmax_symbolic(g, x, dim, dtype=None):
    """``aten::softmax`` as ``exp(x - max) / sum``; ONNX Runtime's own Softmax is slow on these shapes.

    With a known, small channel count the max and the sum are elementwise over the channel slices (Split,
    then variadic Max / Sum): 1.3 ms on a (1, 8, 256, 256) tensor on one core, against 2.3 ms with
    ReduceMax / ReduceSum over axis 1 and 13 ms with ``Softmax``.
    """
    from torch.onnx import symbolic_helper  # the TorchScript exporter's helpers (public alias)

    dim = symbolic_helper._get_const(dim, "i", "dim")
    channels = symbolic_helper._get_tensor_dim_size(x, dim)

    def channel_slices(t):
        if channels == 1:
            return [t]
        sizes = g.op("Constant", value_t=torch.ones(channels, dtype=torch.int64))
        return list(g.op("Split", t, sizes, axis_i=dim, outputs=channels))

    if isinstance(channels, int) and 1 <= channels <= MAX_SPLIT_SOFTMAX:
        e = g.op("Exp", g.op("Sub", x, g.op("Max", *channel_slices(x))))
        return g.op("Div", e, g.op("Sum", *channel_slices(e)))
    axes = g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64))
    peak = g.op("ReduceMax", x, axes_i=[dim], keepdims_i=1)  # ReduceMax takes axes as an attribute until opset 18
    e = g.op("Exp", g.op("Sub", x, peak))
    return g.op("Div", e, g.op("ReduceSum", e, axes, keepdims_i=1))


@contextlib.contextmanager
def _decomposed_softmax(opset: int) -> Iterator[None]:
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    if opset < 13 or opset >= 18:  # ReduceSum's axes input exists from 13; ReduceMax's attribute ends at 18
        yield
        return
    register_custom_op_symbolic("aten::softmax", _softmax_symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic("aten::softmax", opset)


def _architecture(model: nn.Module) -> str:
    from pleura.models import MODELS

    names = [name for name, (cls, _) in MODELS.items() if type(model) is cls]
    if not names:
        raise TypeError(f"cannot export a {type(model).__name__}; expected a UNet or ReverseTransferClassifier")
    return names[0]


def _seg_class_names(unet: UNet) -> list[str] | None:
    from pleura.labels import SCHEMAS

    schema = SCHEMAS.get(unet.config.schema or "")
    if schema is None or schema.num_classes != unet.config.num_classes:
        return None
    return list(schema.names)


def model_metadata(model: nn.Module, image_size: int, outputs: list[str], opset: int) -> dict[str, str]:
    """The ``metadata_props`` written into an exported file (every value a string; JSON where structured)."""
    from pleura import __version__

    unet = _unet_of(model)
    classifier = isinstance(model, ReverseTransferClassifier)
    seg_names = _seg_class_names(unet)
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "pleura_version": __version__,
        "architecture": _architecture(model),
        "config": json.dumps(model.config.to_dict()),
        "class_names": json.dumps(list(model.config.class_names) if classifier else seg_names),
        "seg_class_names": json.dumps(seg_names),
        "schema": unet.config.schema or "",
        "image_size": str(image_size),
        "in_channels": str(unet.config.in_channels),
        "input": INPUT_NAME,
        "outputs": json.dumps(outputs),
        "opset": str(opset),
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: int = 256,
    opset: int = DEFAULT_OPSET,
    verify: bool = False,
    optimize: bool = True,
    features: bool = False,
) -> Path:
    """Write ``model`` (a ``ReverseTransferClassifier`` or ``UNet``) to ``path`` as ONNX, atomically.

    Args:
        model: the model to export; it is not modified (an eval-mode copy is exported).
        path: output file (``.onnx``); its folder is created if missing.
        image_size: the frames' height and width (fixed in the graph; the batch axis is dynamic). A multiple
            of ``2**depth``.
        opset: ONNX opset version (13 to 17 get the fast softmax; 17 is tested).
        verify: also run the file in ONNX Runtime on a random batch of 2 and raise ``RuntimeError`` if any
            output differs from PyTorch's (the original ``model`` in eval mode) by more than ``1e-4``.
        optimize: export :func:`prepare_for_inference`'s copy (BatchNorm folded, split skip convolutions);
            ``False`` exports the modules as they are.
        features: a classifier's graph also outputs ``features`` ``(B, F)``, the head's pooled features (the
            input of its last linear layer) that the out-of-distribution detector reads; same pass, no extra cost.

    Returns:
        The path written. Input: ``image`` ``(B, in_channels, image_size, image_size)`` float32. Outputs:
        ``logits`` ``(B, K)`` and ``seg_logits`` ``(B, C, H, W)`` for a classifier (``logits`` only for the
        ``bottleneck`` tap), then ``features`` if asked for; ``seg_logits`` for a U-Net; the metadata
        (:func:`model_metadata`) names them.

    Example:
        >>> export_onnx(model, "exports/model.onnx", image_size=256, verify=True)
    """
    data = onnx_bytes(model, image_size=image_size, opset=opset, optimize=optimize, features=features)
    if verify:
        verify_onnx(model, data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
    return path


def onnx_bytes(
    model: nn.Module,
    *,
    image_size: int = 256,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    features: bool = False,
) -> bytes:
    """The serialised, checked ONNX model :func:`export_onnx` writes (metadata included); ``features`` adds a
    classifier's pooled features as the last output (ignored for a U-Net, which has no head)."""
    import onnx

    unet = _unet_of(model)
    arch = _architecture(model)
    m = unet.size_multiple
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < m or image_size % m:
        raise ValueError(f"image_size should be a positive multiple of {m} (2**depth), got {image_size!r}")
    # NCHW throughout: ONNX is NCHW, and the trace then holds no layout changes.
    body = prepare_for_inference(model, channels_last=False) if optimize else copy.deepcopy(model).eval()
    body = body.to("cpu", torch.float32)
    if isinstance(model, ReverseTransferClassifier):
        outputs = ["logits"] if model.tap == "bottleneck" else ["logits", "seg_logits"]
        if features:
            wrapper, outputs = _WithFeatures(body), [*outputs, "features"]
        else:
            wrapper = _ClassLogits(body) if model.tap == "bottleneck" else _WithSegmentation(body)
    else:
        wrapper, outputs = _Segmentation(body), ["seg_logits"]
    wrapper.eval()
    example = torch.zeros(1, unet.config.in_channels, image_size, image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _decomposed_softmax(opset), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on the Python shape checks, the legacy exporter's notice
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = f"pleura {arch} ({', '.join(outputs)}); metadata_props describe the model"
    del proto.metadata_props[:]
    for key, value in model_metadata(model, image_size, outputs, opset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def verify_onnx(
    model: nn.Module, data: bytes | str | os.PathLike, batch: int = 2, tolerance: float = VERIFY_TOLERANCE
) -> float:
    """Run an export of ``model`` in ONNX Runtime on a random batch and compare with PyTorch.

    Returns:
        The largest absolute difference over the outputs; ``RuntimeError`` if it exceeds ``tolerance``.
    """
    ort = import_onnxruntime()
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    image_size, outputs = int(meta["image_size"]), json.loads(meta["outputs"])
    unet = _unet_of(model)
    x = torch.randn(batch, unet.config.in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model).eval().to("cpu", torch.float32)
    with torch.inference_mode():
        if isinstance(model, ReverseTransferClassifier):
            logits, seg, pooled = reference.forward_with_features(x)
            expected = [logits] if seg is None else [logits, seg]
            if "features" in outputs:
                expected.append(pooled)
        else:
            expected = [reference(x)]
    got = session.run(outputs, {INPUT_NAME: x.numpy()})
    worst = 0.0
    for name, want, have in zip(outputs, expected, got, strict=True):
        want = want.float().numpy()
        if want.shape != have.shape:
            raise RuntimeError(f"ONNX output {name!r} has shape {have.shape}, PyTorch gives {want.shape}")
        diff = float(np.abs(want - have).max())
        if not diff <= tolerance:
            raise RuntimeError(
                f"ONNX Runtime and PyTorch differ on {name!r} by {diff:.3g} (tolerance {tolerance:g}); "
                f"the export is not faithful: report it with the model's config"
            )
        worst = max(worst, diff)
    return worst
