"""Reverse transfer: a diagnostic classifier (COVID-19 / pneumonia / normal) on a segmentation U-Net.

The seed paper (Gare et al., ISBI 2021) turns a segmentation-trained U-Net into a frame classifier but publishes
no head design, so the head here is an explicit option set. The U-Net is kept whole as ``self.unet`` (the same
module, its weights reused) and a head is attached to one of four taps:

- ``logits+decoder`` (default): ``cat([softmax(segmentation logits), last decoder features])``;
- ``logits``: the softmax of the segmentation logits only;
- ``decoder``: the last decoder features only;
- ``bottleneck``: the deepest encoder features, the encoder-only head of segmentation-models-pytorch; the decoder
  is not run.

Full-resolution taps go through two stride-2 3x3 conv blocks (conv, norm, ReLU); every tap then gets global
average and max pooling (concatenated), dropout and a linear layer. ``forward_with_segmentation`` returns the
segmentation of the same pass, to explain a diagnosis or to add an auxiliary segmentation loss.

Example:
    >>> model = ReverseTransferClassifier.from_segmentation_checkpoint("runs/seg/best/model.safetensors")
    >>> model.freeze_body()  # train the head only; BatchNorm statistics of the U-Net stay as they are
    >>> class_logits, seg_logits = model.forward_with_segmentation(frames)  # (B, 3), (B, 8, H, W)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from pleura.labels import DIAGNOSES
from pleura.models.config import nested_config
from pleura.models.unet import SkipConcatConv, UNet, UNetConfig, _norm

TAPS: tuple[str, ...] = ("logits", "decoder", "logits+decoder", "bottleneck")
HEAD_BLOCKS = 2  # stride-2 conv blocks on a full-resolution tap: 256x256 -> 64x64 before pooling


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :class:`ReverseTransferClassifier`; stored beside the weights (the U-Net's nested).

    Example:
        >>> ClassifierConfig(tap="bottleneck", unet=UNetConfig(width=16, depth=4))
    """

    num_classes: int = 3  # diagnoses to predict, ``len(class_names)``
    tap: str = "logits+decoder"  # logits | decoder | logits+decoder | bottleneck: what the head reads
    head_width: int = 32  # channels of the head's conv blocks (the bottleneck tap has none: pooling only)
    dropout: float = 0.2  # dropout before the linear layer, on the pooled features
    unet: UNetConfig = field(default_factory=UNetConfig)  # the body's config; taken from the module when given
    class_names: tuple[str, ...] = DIAGNOSES  # name of each output, in order (``pleura.labels.DIAGNOSES``)

    def __post_init__(self) -> None:
        for name in ("num_classes", "head_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClassifierConfig.{name} should be an integer >= 1, got {value!r}")
        if self.tap not in TAPS:
            raise ValueError(f"ClassifierConfig.tap {self.tap!r} is unknown; choose one of: {', '.join(TAPS)}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"ClassifierConfig.dropout should be a number in [0, 1), got {self.dropout!r}")
        self.unet = nested_config(UNetConfig, self.unet, "ClassifierConfig.unet")
        if isinstance(self.class_names, list):  # as read back from JSON
            self.class_names = tuple(self.class_names)
        names = self.class_names
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"ClassifierConfig.class_names should be a tuple of non-empty strings, got {names!r}")
        if len(names) != self.num_classes or len(set(names)) != len(names):
            raise ValueError(
                f"ClassifierConfig.class_names should be {self.num_classes} distinct names (num_classes), got "
                f"{names!r}; pass class_names together with num_classes, e.g. ('covid', 'other')"
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of the fields, the U-Net's config nested under ``"unet"``."""
        return asdict(self)


def _channel_softmax(x: Tensor) -> Tensor:
    """``x.softmax(dim=1)``; a channels-last ``x`` is done over the last dimension of its NHWC view.

    PyTorch's softmax over dim 1 of a channels-last tensor is slower and returns NCHW, which the head's
    channels-last convolution then converts back; this keeps the layout (about 1.3 ms less per 256x256 frame).
    """
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).softmax(dim=-1).permute(0, 3, 1, 2)
    return x.softmax(dim=1)


class ClassifierHead(nn.Module):
    """stride-2 conv blocks -> global average and max pooling -> dropout -> linear.

    The input comes in parts (e.g. softmax and decoder features) that the first convolution reads as their
    channel concatenation without building it (:class:`~pleura.models.unet.SkipConcatConv`).
    """

    def __init__(
        self, in_channels: tuple[int, ...], num_classes: int, width: int, blocks: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        if blocks == 0 and len(in_channels) > 1:
            raise ValueError(f"a head without conv blocks reads one tensor, got {len(in_channels)} parts")
        bias = norm == "none"  # a bias before a normalisation is cancelled by its mean subtraction
        layers: list[nn.Module] = []
        channels = sum(in_channels)
        for i in range(blocks):
            conv = SkipConcatConv if i == 0 and len(in_channels) > 1 else nn.Conv2d
            layers += [
                conv(channels, width, 3, stride=2, padding=1, bias=bias),
                _norm(norm, width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.blocks = nn.ModuleList(layers)
        self.num_features = 2 * channels  # average and max pooled
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.blocks.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, parts: tuple[Tensor, ...], pre_logits: bool = False) -> Tensor:
        """Logits ``(B, num_classes)``, or the pooled features ``(B, num_features)`` with ``pre_logits``."""
        layers = iter(self.blocks)
        first = next(layers, None)
        if first is None:
            x = parts[0]
        else:
            x = first(*parts) if isinstance(first, SkipConcatConv) else first(parts[0])  # (B, C, H/2, W/2)
            for layer in layers:
                x = layer(x)  # after each block: (B, width, h / 2, w / 2)
        x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, C, h, w) -> (B, 2C)
        return x if pre_logits else self.fc(self.dropout(x))


class ReverseTransferClassifier(nn.Module):
    """A segmentation U-Net with a diagnostic head attached to one of its taps (see the module docstring).

    Args:
        unet: the segmentation body; it is held as ``self.unet`` (the same module, so its weights are reused,
            not copied). A :class:`ClassifierConfig` in its place (as ``load_model`` and ``create_model`` pass
            it) builds a fresh U-Net from ``config.unet``.
        config: head options; ``None`` means the defaults. Its ``unet`` field is taken from the module.
        **overrides: fields of :class:`ClassifierConfig` (e.g. ``tap="bottleneck"``), on top of ``config``.

    With the ``bottleneck`` tap the decoder and segmentation head get no gradients: freeze the body or use
    ``find_unused_parameters=True`` under DistributedDataParallel.

    Example:
        >>> unet = UNet(UNetConfig(width=16, depth=4))
        >>> model = ReverseTransferClassifier(unet, tap="logits+decoder", num_classes=3)
        >>> model(torch.zeros(2, 1, 256, 256)).shape  # (2, 3)
    """

    def __init__(
        self, unet: UNet | ClassifierConfig | None = None, config: ClassifierConfig | None = None, **overrides
    ) -> None:
        super().__init__()
        if isinstance(unet, ClassifierConfig):
            if config is not None:
                raise TypeError("pass the ClassifierConfig once: as the first argument or as config=, not both")
            unet, config = None, unet
        if unet is not None and not isinstance(unet, UNet):
            raise TypeError(f"unet should be a pleura UNet (or a ClassifierConfig), got a {type(unet).__name__}")
        valid = [f.name for f in fields(ClassifierConfig)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"ClassifierConfig has no field(s) {unknown}; valid fields: {', '.join(valid)}")
        if unet is not None:
            overrides["unet"] = unet.config  # the module is the truth about the body
        config = replace(config if config is not None else ClassifierConfig(), **overrides)
        if unet is None:
            unet = UNet(config.unet)
        self.unet = unet
        self._config = config
        self._body_frozen = False
        self.head = self._make_head(config.num_classes)

    @property
    def config(self) -> ClassifierConfig:
        """The head's options with the body's current config (what ``save_model`` stores)."""
        return replace(self._config, unet=self.unet.config)

    @property
    def tap(self) -> str:
        """What the head reads: one of ``TAPS``."""
        return self._config.tap

    def _make_head(self, num_classes: int) -> ClassifierHead:
        c, u = self._config, self.unet.config
        parts = {
            "logits": (u.num_classes,),
            "decoder": (self.unet.feature_channels["decoder"],),
            "logits+decoder": (u.num_classes, self.unet.feature_channels["decoder"]),
            "bottleneck": (self.unet.feature_channels["bottleneck"],),
        }[c.tap]
        blocks = 0 if c.tap == "bottleneck" else HEAD_BLOCKS
        return ClassifierHead(parts, num_classes, c.head_width, blocks, u.norm, c.dropout)

    def _run(self, x: Tensor, segmentation: bool) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """The head's input parts and, if asked for (and not the bottleneck tap), the segmentation logits."""
        if self.tap == "bottleneck":
            return (self.unet.forward_encoder(x)[1],), None  # the decoder is never run
        decoder = self.unet.forward_features(x).decoder  # (B, width, H, W)
        seg_logits = self.unet.forward_head(decoder) if segmentation or "logits" in self.tap else None
        if self.tap == "decoder":
            return (decoder,), seg_logits
        probs = _channel_softmax(seg_logits)  # (B, seg classes, H, W)
        return ((probs,) if self.tap == "logits" else (probs, decoder)), seg_logits

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """The tapped features of ``x`` ``(B, in_channels, H, W)``: the head's input.

        Returns:
            ``(softmax(seg logits), decoder)`` for ``logits+decoder`` (the head reads their channel
            concatenation), else one tensor: ``(B, seg classes, H, W)``, ``(B, width, H, W)`` or the bottleneck
            ``(B, width * 2**depth, H / 2**depth, W / 2**depth)``.
        """
        return self._run(x, segmentation=False)[0]

    def forward_head(self, features: tuple[Tensor, ...], pre_logits: bool = False) -> Tensor:
        """Class logits ``(B, num_classes)`` from ``forward_features``' output; pooled features with ``pre_logits``."""
        return self.head(features, pre_logits=pre_logits)

    def forward(self, x: Tensor, with_segmentation: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """Class logits ``(B, num_classes)`` of a batch of frames ``x`` ``(B, in_channels, H, W)``.

        With ``with_segmentation=True`` it returns ``forward_with_segmentation(x)`` instead, so that a
        DistributedDataParallel wrapper (which only hooks ``forward``) can train both outputs.
        """
        if with_segmentation:
            return self.forward_with_segmentation(x)
        return self.forward_head(self.forward_features(x))

    def forward_with_segmentation(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Class logits ``(B, num_classes)`` and segmentation logits ``(B, seg classes, H, W)`` from one pass.

        The segmentation is ``None`` for the ``bottleneck`` tap, which does not run the decoder.
        """
        parts, seg_logits = self._run(x, segmentation=True)
        return self.forward_head(parts), seg_logits

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Class logits, segmentation logits (``None`` for the ``bottleneck`` tap) and the head's pooled features
        ``(B, head.num_features)``, the input of its linear layer, from one pass (the OOD detector reads them)."""
        parts, seg_logits = self._run(x, segmentation=True)
        pooled = self.forward_head(parts, pre_logits=True)
        return self.head.fc(self.head.dropout(pooled)), seg_logits, pooled

    def reset_classifier(self, num_classes: int, class_names: tuple[str, ...] | None = None) -> None:
        """Replace the final linear layer with a fresh one for ``num_classes`` outputs named ``class_names``."""
        if class_names is None and num_classes != self._config.num_classes:
            raise ValueError(
                f"reset_classifier({num_classes}) changes the number of classes from {self._config.num_classes}; "
                f"pass class_names with {num_classes} names too"
            )
        names = tuple(class_names) if class_names is not None else self._config.class_names
        self._config = replace(self._config, num_classes=num_classes, class_names=names)
        fc = nn.Linear(self.head.num_features, num_classes)
        self.head.fc = fc.to(self.head.fc.weight.device, self.head.fc.weight.dtype)

    def body_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the U-Net (for an optimiser group with its own learning rate)."""
        return self.unet.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the classification head."""
        return self.head.parameters()

    @property
    def body_frozen(self) -> bool:
        """Whether :meth:`freeze_body` froze the U-Net."""
        return self._body_frozen

    def freeze_body(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the U-Net: no gradients, and its BatchNorm statistics fixed (eval mode).

        While frozen, ``model.train()`` leaves the U-Net in eval mode, so an optimiser step changes neither its
        weights nor its running statistics. Unfreezing restores gradients and the model's own mode.
        """
        self._body_frozen = frozen
        for p in self.unet.parameters():
            p.requires_grad_(not frozen)
            if frozen:
                p.grad = None  # a stale gradient would still move the weights (momentum, weight decay)
        self.unet.train(self.training and not frozen)

    def train(self, mode: bool = True) -> ReverseTransferClassifier:
        """Set training mode; a frozen U-Net stays in eval mode."""
        super().train(mode)
        if self._body_frozen:
            self.unet.eval()
        return self

    @classmethod
    def from_segmentation_checkpoint(
        cls,
        path: str | os.PathLike,
        tap: str = "logits+decoder",
        num_classes: int = 3,
        map_location: str | torch.device = "cpu",
        **overrides,
    ) -> ReverseTransferClassifier:
        """Build a classifier on a U-Net saved by ``save_model`` (e.g. ``RUN/best/model.safetensors``).

        Args:
            path: the U-Net's ``.safetensors`` file (or its ``.json`` sidecar).
            tap: one of ``TAPS``.
            num_classes: diagnoses to predict; pass ``class_names`` too when it is not 3.
            map_location: device to put the model on.
            **overrides: other fields of :class:`ClassifierConfig` (``head_width``, ``dropout``, ``class_names``).

        Returns:
            The classifier, in eval mode like ``load_model``'s models; its U-Net holds the file's weights.

        Example:
            >>> model = ReverseTransferClassifier.from_segmentation_checkpoint("runs/seg/best/model.safetensors")
        """
        from pleura.models.io import load_model

        unet, _ = load_model(path, map_location=map_location)
        if not isinstance(unet, UNet):
            raise ValueError(
                f"{path}: holds a {type(unet).__name__}, expected a U-Net segmentation checkpoint (architecture "
                f"'unet', as train-seg writes to RUN/best/model.safetensors); load a saved classifier with load_model"
            )
        model = cls(unet, tap=tap, num_classes=num_classes, **overrides)
        return model.to(map_location).eval()
