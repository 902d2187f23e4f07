"""The classic 2-D U-Net (Ronneberger et al., MICCAI 2015), built for speed on CPU.

One fixed composition: encoder (a block per level, max-pool between levels) -> bottleneck -> decoder
(up-sample, concatenate the skip, a block per level) -> 1x1 segmentation head. ``forward_features`` returns
every tap a downstream head needs (skips, bottleneck, last decoder features) and ``forward_head`` maps the
decoder features to logits, so a classifier head attaches without forking the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

NORMS: tuple[str, ...] = ("batch", "instance", "group", "none")
UPSAMPLES: tuple[str, ...] = ("transpose", "bilinear")
MAX_DEPTH = 6
# Levels this narrow run channels-last (NHWC). Measured on the 2-core CPU (oneDNN): a 3x3 conv's forward +
# backward at 16 channels, 256x256, batch 8 is ~1.8x faster in NHWC, while at 32-128 channels NCHW is 5-50%
# faster; NHWC for the 16-channel level only trains ~10% faster than all-NCHW or all-NHWC.
CHANNELS_LAST_MAX_WIDTH = 16


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; stored beside the weights so a checkpoint rebuilds its model.

    Example:
        >>> UNetConfig(num_classes=4, width=32, schema="sparse")
    """

    in_channels: int = 1  # B-mode frames are grey-scale
    num_classes: int = 8  # the dense schema's 8 classes (``get_schema("dense").num_classes``)
    width: int = 16  # channels at the first level, doubling per down-step; 64 is the paper's 64-...-1024
    depth: int = 4  # down-steps (max-pools); H and W must be divisible by 2**depth
    norm: str = "batch"  # batch | instance | group (8 groups or fewer) | none
    upsample: str = "transpose"  # transpose (learned 2x2, stride 2) | bilinear (1x1 conv, then bilinear x2)
    schema: str | None = None  # label schema the head predicts (e.g. "dense"); stored for checks by the caller

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} should be an integer >= 1, got {value!r}")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"UNetConfig.depth should be an integer in 1..{MAX_DEPTH}, got {self.depth!r}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm {self.norm!r} is unknown; choose one of: {', '.join(NORMS)}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"UNetConfig.upsample {self.upsample!r} is unknown; choose one of: {', '.join(UPSAMPLES)}")
        if self.schema is not None and not isinstance(self.schema, str):
            raise ValueError(f"UNetConfig.schema should be a schema name or None, got {self.schema!r}")

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


class UNetFeatures(NamedTuple):
    """What :meth:`UNet.forward_features` returns.

    Attributes:
        encoder: skip features, shallow to deep; level ``i`` is ``(B, width * 2**i, H / 2**i, W / 2**i)``.
        bottleneck: deepest features, ``(B, width * 2**depth, H / 2**depth, W / 2**depth)``.
        decoder: last decoder features, ``(B, width, H, W)``; the segmentation head's input.
    """

    encoder: list[Tensor]
    bottleneck: Tensor
    decoder: Tensor


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _memory_format(channels: int, max_width: int = CHANNELS_LAST_MAX_WIDTH) -> torch.memory_format:
    return torch.channels_last if channels <= max_width else torch.contiguous_format


class SkipConcatConv(nn.Conv2d):
    """Convolution of ``cat([skip, x], dim=1)`` that never builds the concatenation.

    The weight is the classic one, ``(out, C_skip + C_x, k, k)``; its two input-channel slices convolve ``skip``
    and ``x`` apart and the results are summed (the same map). Backward then keeps ``x`` instead of the
    concatenation and no copy is made: at width 16, batch 16, 256x256 the training peak drops by about 120 MB.
    """

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        """Convolution of ``cat([skip, x], dim=1)``: ``skip`` ``(B, C_skip, H, W)`` and ``x`` ``(B, C_x, H, W)`` give
        ``(B, out_channels, H, W)``.
        """
        c = skip.shape[1]
        out = self._conv_forward(skip, self.weight[:, :c], self.bias)
        return out.add_(self._conv_forward(x, self.weight[:, c:], None))


class ConvBlock(nn.Sequential):
    """two 3x3 convolutions, each followed by normalisation and ReLU.

    With ``concat=True`` the first one is a :class:`SkipConcatConv` and ``forward`` takes the ``skip`` too.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str, concat: bool = False) -> None:
        bias = norm == "none"  # a bias before a normalisation is cancelled by its mean subtraction
        first = SkipConcatConv if concat else nn.Conv2d
        super().__init__(
            first(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``; ``concat=True``: a ``(B, C_skip, H, W)`` skip joins first."""
        layers = iter(self)
        first = next(layers)
        x = first(x) if skip is None else first(skip, x)
        for layer in layers:
            x = layer(x)
        return x


class Up(nn.Module):
    """x2 up-sampling that halves the channels, concatenation with the skip, and a conv block."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, upsample: str) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:  # 1x1 conv at the coarse size, then bilinear: the same map as the other order, 4x cheaper
            self.up = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            )
        self.block = ConvBlock(2 * out_channels, out_channels, norm, concat=True)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Up-sample ``x`` ``(B, C, h, w)`` and join ``skip`` ``(B, C / 2, 2h, 2w)``: gives ``(B, C / 2, 2h, 2w)``."""
        x = self.up(x)  # (B, C, h, w) -> (B, C / 2, 2h, 2w)
        return self.block(x, skip=skip)  # conv of cat([skip, x]): (B, C, 2h, 2w) -> (B, C / 2, 2h, 2w)


class UNet(nn.Module):
    """2-D U-Net: encoder -> bottleneck -> decoder -> 1x1 segmentation head.

    Args:
        config: a :class:`UNetConfig`; ``None`` means the defaults.
        **overrides: fields of :class:`UNetConfig` (e.g. ``width=32``), applied on top of ``config``.

    Levels with at most ``CHANNELS_LAST_MAX_WIDTH`` channels keep their weights and activations channels-last
    (NHWC), the others NCHW; shapes are unaffected, but tensors from those levels (the logits, ``decoder``) are
    not ``is_contiguous()`` in the NCHW sense, so call ``.contiguous()`` before ``.view`` or raw-buffer export.

    Example:
        >>> model = UNet(UNetConfig(num_classes=8, width=16, depth=4))
        >>> logits = model(torch.zeros(2, 1, 256, 256))  # (2, 8, 256, 256)
        >>> feats = model.forward_features(torch.zeros(2, 1, 256, 256))
        >>> feats.decoder.shape, feats.bottleneck.shape  # (2, 16, 256, 256), (2, 256, 16, 16)
    """

    def __init__(self, config: UNetConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            config = UNetConfig(**{**config.to_dict(), **overrides})
        self.config = config
        c = config
        widths = [c.width * 2**i for i in range(c.depth + 1)]  # channels per level, shallow to deep
        self.stem = ConvBlock(c.in_channels, widths[0], c.norm)
        self.down = nn.ModuleList(ConvBlock(widths[i], widths[i + 1], c.norm) for i in range(c.depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], c.norm, c.upsample) for i in reversed(range(c.depth)))
        self.head = nn.Conv2d(widths[0], c.num_classes, 1)
        self.feature_channels = {"encoder": widths[:-1], "bottleneck": widths[-1], "decoder": widths[0]}
        self._formats = [_memory_format(w) for w in widths]  # per level, shallow to deep
        self._init_weights()
        # Weights of channels-last levels are stored NHWC too, so even the 1-channel input runs NHWC there.
        for i, fmt in enumerate(self._formats[:-1]):
            level = [self.stem if i == 0 else self.down[i - 1], self.up[c.depth - 1 - i]]
            for module in level + ([self.head] if i == 0 else []):
                module.to(memory_format=fmt)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_channels_last(self, max_width: int) -> None:
        """Lay levels with at most ``max_width`` channels out channels-last (NHWC), the others NCHW; same map.

        The constructor's ``CHANNELS_LAST_MAX_WIDTH`` suits training on CPU. Forward-only, oneDNN's NHWC
        convolutions are faster at every width here, so ``pleura.infer`` makes every level channels-last.
        """
        c = self.config
        self._formats = [_memory_format(c.width * 2**i, max_width) for i in range(c.depth + 1)]
        for i, fmt in enumerate(self._formats):
            level = [self.stem if i == 0 else self.down[i - 1]]
            level += [self.up[c.depth - 1 - i]] if i < c.depth else []
            level += [self.head] if i == 0 else []
            for module in level:
                module.to(memory_format=fmt)

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``2**depth``)."""
        return 2**self.config.depth

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not ``(B, in_channels, H, W)`` with H, W multiples of ``2**depth``."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"UNet input should be (B, {c.in_channels}, H, W), got shape {tuple(x.shape)}")
        m = self.size_multiple
        h, w = x.shape[-2:]
        if h % m or w % m:
            near_h, near_w = (max(m, (s + m // 2) // m * m) for s in (h, w))  # halves round up
            pad_h, pad_w = (-(-s // m) * m for s in (h, w))
            raise ValueError(
                f"UNet with depth {c.depth} needs H and W divisible by {m}, got {h}x{w}; "
                f"the nearest valid size is {near_h}x{near_w} (resize to it, or pad up to {pad_h}x{pad_w})"
            )

    def forward_encoder(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Encoder skips (shallow to deep) and bottleneck of ``x`` ``(B, in_channels, H, W)``, without the decoder."""
        self.check_input(x)
        fmt = self._formats
        x = self.stem(x.contiguous(memory_format=fmt[0]))  # (B, width, H, W)
        skips = []
        for i, block in enumerate(self.down):
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2).contiguous(memory_format=fmt[i + 1])
            x = block(x)  # (B, C, h, w) -> (B, 2C, h / 2, w / 2)
        return skips, x

    def forward_features(self, x: Tensor) -> UNetFeatures:
        """Encoder, bottleneck and decoder features of ``x`` ``(B, in_channels, H, W)``; see :class:`UNetFeatures`."""
        skips, bottleneck = self.forward_encoder(x)
        x = bottleneck
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)  # (B, C, h, w) -> (B, C / 2, 2h, 2w)
        return UNetFeatures(encoder=skips, bottleneck=bottleneck, decoder=x)

    def forward_head(self, decoder_features: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)`` from the last decoder features ``(B, width, H, W)``."""
        return self.head(decoder_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)`` of a batch of frames ``x`` ``(B, in_channels, H, W)``."""
        return self.forward_head(self.forward_features(x).decoder)

    def reset_head(self, num_classes: int, schema: str | None = None) -> None:
        """Replace the segmentation head with a fresh one for ``num_classes`` classes (e.g. dense -> sparse)."""
        self.config = UNetConfig(**{**self.config.to_dict(), "num_classes": num_classes, "schema": schema})
        head = nn.Conv2d(self.config.width, num_classes, 1)
        self.head = head.to(self.head.weight.device, self.head.weight.dtype, memory_format=self._formats[0])
