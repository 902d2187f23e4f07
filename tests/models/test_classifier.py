"""ReverseTransferClassifier: weight reuse, every tap, the bottleneck shortcut, freezing, save/load, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pleura.labels import DIAGNOSES
from pleura.models import (
    MODELS,
    ClassifierConfig,
    ReverseTransferClassifier,
    UNet,
    UNetConfig,
    create_model,
    load_model,
    save_model,
)
from pleura.models.classifier import TAPS

B, H, W = 4, 32, 32


def _unet(**fields) -> UNet:
    """A tiny U-Net with non-trivial BatchNorm statistics, as after segmentation training."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**{"width": 4, "depth": 2, "num_classes": 8, **fields}))
    with torch.no_grad():
        unet.train()(torch.randn(8, 1, H, W))
    return unet.eval()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, H, W, generator=g), torch.tensor([0, 1, 2, 0])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_built_from_a_module_reuses_it():
    unet = _unet()
    model = ReverseTransferClassifier(unet, tap="logits+decoder", num_classes=3)
    assert model.unet is unet
    assert model.config.unet == unet.config and model.config.class_names == DIAGNOSES
    assert {id(p) for p in model.body_parameters()} == {id(p) for p in unet.parameters()}
    head_ids = {id(p) for p in model.head_parameters()}
    assert head_ids and head_ids.isdisjoint(id(p) for p in unet.parameters())
    assert len(list(model.parameters())) == len(head_ids) + len(list(unet.parameters()))


def test_built_from_a_checkpoint_reuses_its_weights(tmp_path):
    unet = _unet()
    path = save_model(unet, tmp_path / "seg" / "best" / "model.safetensors", {"schema": "dense"})
    model = ReverseTransferClassifier.from_segmentation_checkpoint(path, tap="decoder", dropout=0.0)
    assert model.tap == "decoder" and model.config.dropout == 0.0 and not model.training
    assert model.config.unet == unet.config
    state = model.unet.state_dict()
    assert state.keys() == unet.state_dict().keys()
    for key, value in unet.state_dict().items():
        assert torch.equal(state[key], value), key
    x, _ = _batch()
    with torch.no_grad():
        _, seg = model.forward_with_segmentation(x)
        assert torch.equal(seg, unet(x))  # the same segmentation as the U-Net alone


def test_checkpoint_that_is_not_a_unet(tmp_path):
    path = save_model(ReverseTransferClassifier(_unet()), tmp_path / "cls.safetensors")
    with pytest.raises(ValueError, match=r"holds a ReverseTransferClassifier, expected a U-Net segmentation"):
        ReverseTransferClassifier.from_segmentation_checkpoint(path)


@pytest.mark.parametrize("tap", TAPS)
def test_each_tap_gives_class_logits_and_trains_the_head(tap):
    model = ReverseTransferClassifier(_unet(), tap=tap).train()
    x, y = _batch()
    logits, seg = model.forward_with_segmentation(x)
    assert logits.shape == (B, 3)
    assert (seg is None) == (tap == "bottleneck")
    if seg is not None:
        assert seg.shape == (B, 8, H, W)
    nn.functional.cross_entropy(logits, y).backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.unet.stem[0].weight.grad.abs().sum() > 0  # an unfrozen body learns too
    features = model.forward_features(x)
    assert len(features) == (2 if tap == "logits+decoder" else 1)
    assert model.forward_head(features, pre_logits=True).shape == (B, model.head.num_features)


def test_tap_contents():
    unet = _unet()
    x, _ = _batch()
    with torch.no_grad():
        ref = unet.forward_features(x)
        probs, decoder = ReverseTransferClassifier(unet).forward_features(x)
        assert torch.equal(decoder, ref.decoder)
        assert torch.allclose(probs, unet(x).softmax(1)) and torch.allclose(probs.sum(1), torch.ones(B, H, W))
        (bottleneck,) = ReverseTransferClassifier(unet, tap="bottleneck").forward_features(x)
        assert torch.equal(bottleneck, ref.bottleneck)  # the encoder-only path matches the U-Net's own


def test_bottleneck_tap_does_not_run_the_decoder(monkeypatch):
    model = ReverseTransferClassifier(_unet(), tap="bottleneck")

    def refuse(*args, **kwargs):
        raise AssertionError("the bottleneck tap ran the decoder")

    for module in [*model.unet.up, model.unet.head]:
        monkeypatch.setattr(module, "forward", refuse)
    x, _ = _batch()
    assert model(x).shape == (B, 3)
    assert model.forward_with_segmentation(x)[1] is None
    with pytest.raises(AssertionError, match="ran the decoder"):  # the patch is live
        ReverseTransferClassifier(model.unet, tap="decoder")(x)


def _train_step(model: ReverseTransferClassifier, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = _batch(seed)
    logits, seg = model.forward_with_segmentation(x)
    loss = nn.functional.cross_entropy(logits, y % model.config.num_classes)
    if seg is not None:  # an auxiliary segmentation loss must not reach a frozen body either
        loss = loss + seg.square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_freeze_body_fixes_weights_and_batchnorm_statistics():
    model = ReverseTransferClassifier(_unet())
    model.train()
    model.freeze_body()
    model.train()  # must not put the frozen BatchNorm layers back into training mode
    assert model.body_frozen and model.training and model.head.training
    assert not any(m.training for m in model.unet.modules())
    assert not any(p.requires_grad for p in model.body_parameters())
    body, head = _snapshot(model.unet), _snapshot(model.head)
    assert any("running_mean" in k for k in body) and any("running_var" in k for k in head)
    _train_step(model, seed=2)
    for key, value in model.unet.state_dict().items():
        assert torch.equal(value, body[key]), f"frozen body changed: {key}"
    changed = [k for k, v in model.head.state_dict().items() if not torch.equal(v, head[k])]
    assert any(k.endswith("weight") for k in changed) and any("running_mean" in k for k in changed)

    model.freeze_body(False)
    assert not model.body_frozen and model.unet.training and all(p.requires_grad for p in model.body_parameters())
    _train_step(model, seed=3)
    state = model.unet.state_dict()
    assert not torch.equal(state["stem.0.weight"], body["stem.0.weight"])
    assert not torch.equal(state["stem.1.running_mean"], body["stem.1.running_mean"])


def test_freeze_in_eval_mode_and_eval_after_freeze():
    model = ReverseTransferClassifier(_unet()).eval()
    model.freeze_body()
    model.freeze_body(False)
    assert not model.unet.training  # unfreezing restores the model's own mode: eval
    model.freeze_body()
    model.eval()
    model.train()
    assert model.head.training and not model.unet.training


@pytest.mark.parametrize(
    ("unet_fields", "fields"),
    [
        (dict(), dict()),
        (dict(norm="group", upsample="bilinear"), dict(tap="logits", head_width=8, dropout=0.0)),
        (dict(depth=3), dict(tap="bottleneck", num_classes=2, class_names=("covid", "other"))),
    ],
    ids=["default", "logits-group-norm", "bottleneck-2-classes"],
)
def test_save_load_round_trip(tmp_path, unet_fields, fields):
    model = ReverseTransferClassifier(_unet(**unet_fields), **fields)
    _train_step(model.train(), seed=4)  # head BatchNorm statistics and weights away from their init
    model.eval()
    path = save_model(model, tmp_path / "cls" / "model.safetensors", {"epoch": 1})
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["architecture"] == "reverse_transfer"
    assert record["config"]["unet"] == model.unet.config.to_dict()
    loaded, metadata = load_model(path)
    assert isinstance(loaded, ReverseTransferClassifier) and metadata == {"epoch": 1} and not loaded.training
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x, _ = _batch(5)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_registry_and_create_model():
    assert MODELS["reverse_transfer"] == (ReverseTransferClassifier, ClassifierConfig)
    model = create_model("reverse_transfer", tap="logits", unet={"width": 4, "depth": 2, "num_classes": 4})
    assert model.config.unet == UNetConfig(width=4, depth=2, num_classes=4)
    assert model(torch.zeros(1, 1, H, W)).shape == (1, 3)
    built = ReverseTransferClassifier(ClassifierConfig(tap="logits", unet=UNetConfig(width=4, depth=2)))
    assert built.tap == "logits" and built.unet.config.width == 4


def test_reset_classifier():
    model = ReverseTransferClassifier(_unet())
    model.reset_classifier(2, class_names=("covid", "other"))
    assert model(torch.zeros(1, 1, H, W)).shape == (1, 2) and model.config.class_names == ("covid", "other")
    with pytest.raises(ValueError, match=r"pass class_names with 4 names"):
        model.reset_classifier(4)


def test_unknown_tap_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"tap 'encoder' is unknown; choose one of: logits, decoder, logits\+decoder"):
        ReverseTransferClassifier(_unet(), tap="encoder")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_classes=2), r"class_names should be 2 distinct names"),
        (dict(dropout=1.0), r"dropout should be a number in \[0, 1\)"),
        (dict(head_width=0), r"head_width should be an integer >= 1"),
        (dict(unet={"widht": 4}), r"unet has unknown fields \['widht'\]"),
    ],
    ids=["names", "dropout", "width", "unet-field"],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(**fields)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"has no field\(s\) \['taps'\]; valid fields: num_classes, tap"):
        ReverseTransferClassifier(_unet(), taps="logits")
    with pytest.raises(TypeError, match=r"should be a pleura UNet"):
        ReverseTransferClassifier(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"UNet input should be \(B, 1, H, W\)"):
        ReverseTransferClassifier(_unet(), tap="bottleneck")(torch.zeros(1, 3, H, W))


def test_checkpoint_without_its_sidecar_is_named(tmp_path: Path):
    path = save_model(_unet(), tmp_path / "m.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.json: model config not found"):
        ReverseTransferClassifier.from_segmentation_checkpoint(path)
