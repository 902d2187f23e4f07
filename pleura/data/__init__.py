"""Data: manifest datasets, geometry-aware augmentation and group-aware splits."""

from pleura.data.dataset import LUSDataset, image_size
from pleura.data.manifest import REQUIRED_COLUMNS, ManifestError, manifest_path, read_manifest
from pleura.data.splits import group_kfold, split_by_group
from pleura.data.transforms import (
    Compose,
    RandomGain,
    RandomGamma,
    RandomHorizontalFlip,
    RandomScaleCrop,
    SpeckleNoise,
    Transform,
    default_augmentation,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "Compose",
    "LUSDataset",
    "ManifestError",
    "RandomGain",
    "RandomGamma",
    "RandomHorizontalFlip",
    "RandomScaleCrop",
    "SpeckleNoise",
    "Transform",
    "default_augmentation",
    "group_kfold",
    "image_size",
    "manifest_path",
    "read_manifest",
    "split_by_group",
]
