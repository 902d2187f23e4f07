"""``LUSDataset``: frames of a manifest dataset as tensors, read lazily, with reproducible augmentation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pleura.data.manifest import ManifestError, manifest_path, read_manifest
from pleura.data.transforms import Transform
from pleura.labels import DIAGNOSES, SCHEMA_ORDER, Schema, SchemaName, convert, get_schema

logger = logging.getLogger(__name__)


class LUSDataset(Dataset):
    """Frames of a manifest dataset, one item per manifest row.

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1]; ``mask`` int64 ``(H, W)`` class
    indices in ``schema`` (absent when ``schema`` is None); ``label`` the index of the diagnosis in
    ``DIAGNOSES`` (-1 when it is none of them); and the strings ``id``, ``clip_id``, ``patient_id``,
    ``probe`` (``""`` when the manifest has no probe column).

    Files are read on access, never all at once. Where the manifest has no ``mask_<schema>`` value for a
    row, the mask is derived from a finer one (``mask_anatomy`` or ``mask_dense``) with
    ``pleura.labels.convert``.

    The transform's generator is ``np.random.default_rng([seed, epoch, index])``, so an item's
    augmentation depends only on those three numbers and not on DataLoader workers or order. Call
    ``set_epoch`` before iterating each epoch (with ``persistent_workers=False``, the default, so the
    workers see the new epoch).

    Args:
        root: the dataset folder or its ``manifest.csv``; relative paths in the manifest resolve against
            the folder.
        schema: mask schema (a ``Schema``, or its name: ``"anatomy"``, ``"dense"``, ``"sparse"``) or ``None`` for
            images only.
        transform: called as ``transform(image, mask, rng)`` on numpy arrays, e.g.
            ``pleura.data.default_augmentation(schema)``.
        rows: a subset of ``read_manifest(root)`` rows (e.g. one part of ``split_by_group``); all rows
            when ``None``.
        seed: base seed of the per-item augmentation.
        strong: a second, stronger transform applied on top of ``transform``'s result (image only); the item
            then also holds it as ``strong`` (a student's view of the teacher's ``image``, for self-training).

    Example:
        >>> rows = read_manifest("data/sim")  # doctest: +SKIP
        >>> train_rows, val_rows = split_by_group(rows)  # doctest: +SKIP
        >>> ds = LUSDataset("data/sim", "dense", default_augmentation("dense"), rows=train_rows)  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        torch.Size([1, 256, 256])
    """

    def __init__(
        self,
        root: str | Path,
        schema: str | SchemaName | Schema | None = "dense",
        transform: Transform | None = None,
        rows: Sequence[dict[str, str]] | None = None,
        seed: int = 0,
        strong: Transform | None = None,
    ) -> None:
        self.csv_path = manifest_path(root)
        self.root = self.csv_path.parent
        self.rows = list(rows) if rows is not None else read_manifest(self.csv_path)
        self.schema = get_schema(schema) if schema is not None else None
        self.transform, self.strong = transform, strong
        self.seed = seed
        self.epoch = 0
        self._mask_columns = self._find_mask_columns()

    def _find_mask_columns(self) -> list[tuple[str, str]]:
        """``(column, source schema)`` pairs that can give a mask in ``self.schema``, best first."""
        if self.schema is None or not self.rows:
            return []
        target = self.schema.name
        # a mask can be derived from any schema before its own in SCHEMA_ORDER
        sources = [target, *reversed(SCHEMA_ORDER[: SCHEMA_ORDER.index(target)])]
        columns = set().union(*(r.keys() for r in self.rows))
        found = [(f"mask_{s}", s) for s in sources if f"mask_{s}" in columns]
        if not found:
            wanted = " or ".join(f"mask_{s}" for s in sources)
            raise ManifestError(
                f"{self.csv_path}: no {wanted} column for schema {target!r}; "
                f"add one, choose another schema, or pass schema=None to load images only"
            )
        return found

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the augmentation of every item."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        image_path = self.root / row["image"]
        image = _read_image(image_path, self._where(row))
        mask = None if self.schema is None else self._read_mask(row, image_path, image.shape, self.schema.name)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.transform is not None:
            image, mask = self.transform(image, mask, rng)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],  # (1, H, W)
            "label": DIAGNOSES.index(row["diagnosis"]) if row["diagnosis"] in DIAGNOSES else -1,
            "id": row["id"],
            "clip_id": row["clip_id"],
            "patient_id": row.get("patient_id") or row["clip_id"],
            "probe": row.get("probe", ""),
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))  # (H, W)
        if self.strong is not None:  # drawn after ``transform`` from the same generator
            view, _ = self.strong(image, None, rng)
            item["strong"] = torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32))[None]
        return item

    def read_mask(self, index: int) -> np.ndarray:
        """The validated ``(H, W)`` mask of item ``index`` in the dataset's schema, without augmentation.

        Reads only the image header for its size, so scanning every mask of a dataset (to validate it
        or count class pixels) is cheap.
        """
        if self.schema is None:
            raise ValueError("this dataset has schema=None: it loads images only")
        row = self.rows[index]
        image_path = self.root / row["image"]
        try:
            with Image.open(image_path) as im:
                shape = (im.size[1], im.size[0])
        except FileNotFoundError:
            raise ManifestError(f"{image_path}: image file not found ({self._where(row)})") from None
        except OSError as e:
            raise ManifestError(f"{image_path}: cannot read image ({e}) ({self._where(row)})") from None
        return self._read_mask(row, image_path, shape, self.schema.name)

    def _where(self, row: dict[str, str]) -> str:
        return f"row id {row['id']!r} of {self.csv_path}"

    def _read_mask(self, row: dict[str, str], image_path: Path, shape: tuple[int, ...], target: str) -> np.ndarray:
        """Read the row's mask, check it against its schema and the image size, and map it to ``target``."""
        found = next(((c, s) for c, s in self._mask_columns if row.get(c)), None)
        if found is None:
            names = ", ".join(c for c, _ in self._mask_columns)
            raise ManifestError(f"{self._where(row)}: empty {names}; give the row a mask or pass schema=None")
        column, source = found
        path = self.root / row[column]
        try:
            with Image.open(path) as im:
                mask = np.array(im)
        except FileNotFoundError:
            raise ManifestError(f"{path}: mask file not found ({self._where(row)}, column {column})") from None
        except OSError as e:
            raise ManifestError(f"{path}: cannot read mask ({e}); expected an indexed PNG of class indices") from None
        if mask.ndim != 2:
            raise ManifestError(
                f"{path}: mask has shape {mask.shape}; expected a single-channel (H, W) indexed PNG of class indices"
            )
        if mask.shape != shape:
            raise ManifestError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
                f"{shape[1]}x{shape[0]}; a mask must match its image pixel for pixel"
            )
        get_schema(source).check(mask, source=str(path))
        if source != target:
            mask = convert(mask, source, target)
        return mask


def _read_image(path: Path, where: str) -> np.ndarray:
    """Read a grayscale image as float32 ``(H, W)`` in [0, 1]; other modes are converted to 8-bit L."""
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                logger.debug("%s: converting mode %s to L", path, im.mode)
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise ManifestError(f"{path}: image file not found ({where})") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read image ({e}); expected a grayscale PNG ({where})") from None


def image_size(root: str | Path, rows: Sequence[dict[str, str]]) -> tuple[int, int]:
    """``(H, W)`` of the first row's image, read from its header only."""
    path = Path(root) / rows[0]["image"]
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as e:
        raise ManifestError(f"{path}: cannot read image ({e})") from None
