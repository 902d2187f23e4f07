"""UNet: one shared tester over several configs, plus config validation, the registry and the classic widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pleura.labels import get_schema
from pleura.models import MODELS, UNet, UNetConfig, UNetFeatures, create_model
from pleura.models.unet import SkipConcatConv

# (config fields, input H x W): every norm and up-sampling mode, depth 1..4, odd-but-valid sizes, and
# widths that put some, all or none of the levels in channels-last.
CASES = [
    (dict(norm="batch", upsample="transpose", depth=2, width=4), (48, 80)),
    (dict(norm="instance", upsample="bilinear", depth=3, width=8), (48, 80)),
    (dict(norm="group", upsample="transpose", depth=4, width=8), (48, 80)),
    (dict(norm="none", upsample="bilinear", depth=2, width=6, in_channels=3, num_classes=4), (20, 28)),
    (dict(norm="batch", upsample="bilinear", depth=1, width=32, num_classes=1), (18, 10)),
]
IDS = [f"{c['norm']}-{c['upsample']}-d{c['depth']}-w{c['width']}-{h}x{w}" for c, (h, w) in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[UNet, torch.Tensor]:
    """A seeded model and a batch of 2 inputs for one config."""
    fields, (h, w) = request.param
    torch.manual_seed(0)
    model = UNet(UNetConfig(**fields))
    x = torch.randn(2, model.config.in_channels, h, w)
    return model, x


class TestModel:
    """The shared model tester: every check runs on every config in ``CASES``."""

    def test_output_shape(self, case):
        model, x = case
        logits = model(x)
        assert logits.shape == (2, model.config.num_classes, *x.shape[-2:])
        assert logits.dtype == x.dtype and torch.isfinite(logits).all()

    def test_backward_reaches_every_parameter(self, case):
        model, x = case
        model(x).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"

    def test_forward_is_features_then_head(self, case):
        model, x = case
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model.forward_head(model.forward_features(x).decoder))

    def test_feature_shapes_match_feature_channels(self, case):
        model, x = case
        c, (h, w) = model.config, x.shape[-2:]
        feats = model.forward_features(x)
        assert isinstance(feats, UNetFeatures)
        assert len(feats.encoder) == c.depth == len(model.feature_channels["encoder"])
        for i, skip in enumerate(feats.encoder):  # shallow to deep
            assert skip.shape == (2, c.width * 2**i, h // 2**i, w // 2**i)
            assert skip.shape[1] == model.feature_channels["encoder"][i]
        deep = 2**c.depth
        assert feats.bottleneck.shape == (2, model.feature_channels["bottleneck"], h // deep, w // deep)
        assert model.feature_channels["bottleneck"] == c.width * deep
        assert feats.decoder.shape == (2, model.feature_channels["decoder"], h, w)
        assert model.feature_channels["decoder"] == c.width

    def test_invalid_size_says_size_and_nearest_valid(self, case):
        model, x = case
        m = 2**model.config.depth
        h, w = x.shape[-2:]
        bad = torch.zeros(1, model.config.in_channels, h + 1, w)
        nearest = h if m > 2 else h + 2  # 1 px off rounds back unless that is half a step (m == 2)
        with pytest.raises(
            ValueError,
            match=rf"divisible by {m}, got {h + 1}x{w}; the nearest valid size is {nearest}x{w} .*{h + m}x{w}",
        ):
            model(bad)

    def test_wrong_channels_says_expected_layout(self, case):
        model, x = case
        bad = torch.zeros(2, model.config.in_channels + 1, *x.shape[-2:])
        with pytest.raises(ValueError, match=rf"\(B, {model.config.in_channels}, H, W\), got shape"):
            model(bad)

    def test_eval_mode_is_deterministic(self, case):
        model, x = case
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))

    def test_reset_head(self, case):
        model, x = case
        model.reset_head(3, schema="other")
        assert model.config.num_classes == 3 and model.config.schema == "other"
        assert model(x).shape == (2, 3, *x.shape[-2:])


def test_defaults_predict_the_dense_schema():
    config = UNetConfig()
    assert config.num_classes == get_schema("dense").num_classes
    assert (config.in_channels, config.width, config.depth, config.norm, config.upsample) == (
        1,
        16,
        4,
        "batch",
        "transpose",
    )


def test_classic_channel_counts_at_width_64():
    """Width 64, depth 4 is the paper's 64-128-256-512-1024 (inspected, not run)."""
    model = UNet(width=64, depth=4, num_classes=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    encoder = [(c.in_channels, c.out_channels) for c in convs[:10]]
    assert encoder == [
        *[(1, 64), (64, 64)],
        *[(64, 128), (128, 128)],
        *[(128, 256), (256, 256)],
        *[(256, 512), (512, 512)],
        *[(512, 1024), (1024, 1024)],  # bottleneck
    ]
    ups = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert ups == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    decoder = [(c.in_channels, c.out_channels) for c in convs[10:]]
    assert decoder == [(1024, 512), (512, 512), (512, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
    assert (model.head.in_channels, model.head.out_channels, model.head.kernel_size) == (64, 2, (1, 1))
    assert model.feature_channels == {"encoder": [64, 128, 256, 512], "bottleneck": 1024, "decoder": 64}


def test_convs_before_a_norm_have_no_bias():
    model = UNet(width=4, depth=2, norm="batch")
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert m.bias is None, name


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_classes=0), r"num_classes should be an integer >= 1, got 0"),
        (dict(width=2.5), r"width should be an integer >= 1, got 2.5"),
        (dict(depth=0), r"depth should be an integer in 1..6, got 0"),
        (dict(depth=7), r"depth should be an integer in 1..6, got 7"),
        (dict(norm="layer"), r"norm 'layer' is unknown; choose one of: batch, instance, group, none"),
        (dict(upsample="nearest"), r"upsample 'nearest' is unknown; choose one of: transpose, bilinear"),
        (dict(schema=3), r"schema should be a schema name or None, got 3"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**fields)


def test_overrides_apply_on_top_of_config():
    model = UNet(UNetConfig(width=4, depth=2), num_classes=3)
    assert (model.config.width, model.config.depth, model.config.num_classes) == (4, 2, 3)


def test_registry():
    assert MODELS["unet"] == (UNet, UNetConfig) and list(MODELS) == ["unet", "reverse_transfer"]
    model = create_model("unet", width=4, depth=2, num_classes=4, schema="sparse")
    assert isinstance(model, UNet) and model.config == UNetConfig(width=4, depth=2, num_classes=4, schema="sparse")
    with pytest.raises(KeyError, match=r"unknown model 'resnet'; choose one of: unet"):
        create_model("resnet")
    with pytest.raises(TypeError, match=r"no field\(s\) \['widht'\]; valid fields: in_channels, num_classes"):
        create_model("unet", widht=4)


@pytest.mark.parametrize("bias", [False, True])
def test_skip_concat_conv_equals_conv_of_the_concatenation(bias):
    torch.manual_seed(0)
    conv = SkipConcatConv(6, 5, 3, padding=1, bias=bias)
    skip, x = torch.randn(2, 2, 8, 12), torch.randn(2, 4, 8, 12)
    expected = nn.functional.conv2d(torch.cat([skip, x], dim=1), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(skip, x), expected)
