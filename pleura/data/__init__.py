"""Data: readers for real media, manifest datasets, geometry-aware augmentation and group-aware splits."""

from pleura.data.dataset import LUSDataset, image_size
from pleura.data.manifest import REQUIRED_COLUMNS, ManifestError, manifest_path, read_manifest
from pleura.data.readers import Frame, MediaInfo, ReadError, iter_frames, media_info, read_frames, sniff, to_gray_uint8
from pleura.data.splits import group_kfold, split_by_group
from pleura.data.transforms import (
    Compose,
    RandomBlur,
    RandomGain,
    RandomGamma,
    RandomHorizontalFlip,
    RandomScaleCrop,
    SpeckleNoise,
    Transform,
    default_augmentation,
    strong_augmentation,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "Compose",
    "Frame",
    "LUSDataset",
    "ManifestError",
    "MediaInfo",
    "RandomBlur",
    "RandomGain",
    "RandomGamma",
    "RandomHorizontalFlip",
    "RandomScaleCrop",
    "ReadError",
    "SpeckleNoise",
    "Transform",
    "default_augmentation",
    "group_kfold",
    "image_size",
    "iter_frames",
    "manifest_path",
    "media_info",
    "read_frames",
    "read_manifest",
    "sniff",
    "split_by_group",
    "strong_augmentation",
    "to_gray_uint8",
]
