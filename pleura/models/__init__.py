"""Segmentation models, the reverse-transfer classifier, a registry to build them by name, and safetensors save/load.

Example:
    >>> from pleura.models import create_model, save_model, load_model
    >>> model = create_model("unet", num_classes=8, width=16, schema="dense")
    >>> save_model(model, "model.safetensors", {"epoch": 0})
    >>> model, metadata = load_model("model.safetensors")
"""

from __future__ import annotations

from dataclasses import fields
from importlib import resources
from pathlib import Path

from torch import nn

from pleura.models.classifier import ClassifierConfig, ReverseTransferClassifier
from pleura.models.io import load_model, save_model
from pleura.models.unet import UNet, UNetConfig, UNetFeatures

# name -> (model class, its config dataclass); the model is built as ``cls(config_cls(**kwargs))``.
MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),
    "reverse_transfer": (ReverseTransferClassifier, ClassifierConfig),  # config nests the U-Net's under "unet"
}


PRETRAINED: dict[str, str] = {  # name -> what it is; the files live in pleura/models/pretrained/ (package data)
    "pocus-foundation-w16-128": "width-16 reverse-transfer classifier from the segmentation foundation, 128 px, "
    "trained on POCUS with the segmentation kept (the default)",
    "pocus-dense-w4-128": "width-4 reverse-transfer classifier, 128 px, trained on POCUS (the fastest)",
    "pocus-dense-w8-128": "width-8 reverse-transfer classifier, 128 px, trained on POCUS",
    "foundation-sparse-w16-128": "width-16 sparse segmentation U-Net, 128 px, trained on randomised simulated frames "
    "(train-seg --init foundation-sparse-w16-128 fine-tunes it; not a predict model)",
}
DEFAULT_PRETRAINED = "pocus-foundation-w16-128"


def pretrained(name: str = DEFAULT_PRETRAINED) -> Path:
    """Path of a model file shipped inside the package (``load_model`` and ``pleura.Predictor`` take it).

    Read through ``importlib.resources``, so it works from a source checkout and from an installed wheel.

    Example:
        >>> model, meta = load_model(pretrained())  # the default, pocus-foundation-w16-128
    """
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; choose one of: {', '.join(PRETRAINED)}")
    path = Path(str(resources.files("pleura.models") / "pretrained" / f"{name}.safetensors"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped model file is missing from this installation of pleura")
    return path


def create_model(name: str, **config_kwargs) -> nn.Module:
    """Build the model registered as ``name`` from fields of its config dataclass.

    Args:
        name: a key of ``MODELS`` (``"unet"``, ``"reverse_transfer"``).
        **config_kwargs: fields of the config (see :class:`UNetConfig`, :class:`ClassifierConfig`).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    model_cls, config_cls = MODELS[name]
    valid = [f.name for f in fields(config_cls)]
    unknown = sorted(set(config_kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field(s) {unknown}; valid fields: {', '.join(valid)}")
    return model_cls(config_cls(**config_kwargs))


__all__ = [
    "DEFAULT_PRETRAINED",
    "MODELS",
    "PRETRAINED",
    "ClassifierConfig",
    "ReverseTransferClassifier",
    "UNet",
    "UNetConfig",
    "UNetFeatures",
    "create_model",
    "load_model",
    "pretrained",
    "save_model",
]
