"""Label schemas (anatomy, dense, sparse), the mappings between them, and ``densify``.

Every mask in pleura is a 2-D ``uint8`` array of class indices into one of the schemas below.
The simulator writes the full ``anatomy`` truth; ``dense`` and ``sparse`` are the seed paper's two
labelling styles (Gare et al., ISBI 2021) and are derived from it by lookup tables, so
``to_sparse(to_dense(a))`` is always consistent.

Healthy versus unhealthy (pleural line, region below it) is a *frame-level* property decided by the
frame's diagnosis, as in the seed paper's dense annotation: every pleural-line pixel of a COVID-19 or
pneumonia frame is "unhealthy", every one of a normal frame "healthy". That is what makes
``densify(sparse, diagnosis)`` an exact inverse of ``to_sparse`` on simulated frames.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` (3.11+) for Python 3.10: members are ``str`` and print as their value."""

        def __str__(self) -> str:
            return str(self.value)


DIAGNOSES: tuple[str, ...] = ("covid", "pneumonia", "normal")

#: names real data gives a probe type, lower case -> pleura's value (the simulator's)
_PROBE_ALIASES = {"linear": "linear", "curvilinear": "curvilinear", "convex": "curvilinear"}


class Probe(StrEnum):
    """A probe type. The values are what manifests and JSON files hold; real data's ``convex`` is ``CURVILINEAR``.

    Members are strings (``Probe.LINEAR == "linear"``), so ``json.dumps`` and ``csv`` write the plain value.
    """

    LINEAR = "linear"
    CURVILINEAR = "curvilinear"

    @classmethod
    def parse(cls, text: str) -> Probe:
        """The probe that ``text`` names: ``linear``, ``curvilinear`` or ``convex`` (its alias), any case.

        Raises:
            ValueError: ``text`` names no probe; the message lists the valid values.
        """
        value = _PROBE_ALIASES.get(str(text).strip().lower())
        if value is None:
            raise ValueError(
                f"unknown probe {str(text)!r}; choose one of: {', '.join(cls)} (convex is read as curvilinear)"
            )
        return cls(value)


PROBES: tuple[Probe, ...] = tuple(Probe)  # linear, curvilinear: the order the simulator alternates them in


class SchemaName(StrEnum):
    """The label schemas, finest first: labels only coarsen along this order (``convert``)."""

    ANATOMY = "anatomy"
    DENSE = "dense"
    SPARSE = "sparse"


#: anatomy -> dense -> sparse: the one order of the schemas (mask folders and columns, ``convert``, datasets)
SCHEMA_ORDER: tuple[SchemaName, ...] = tuple(SchemaName)


@dataclass(frozen=True)
class LabelClass:
    """One class of a schema: a snake_case name and an RGB display colour."""

    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Schema:
    """A named, ordered list of classes; a class's position is its index in masks."""

    name: str
    classes: tuple[LabelClass, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in index order."""
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (the segmentation channels)."""
        return len(self.classes)

    def index(self, name: str) -> int:
        """Index of the class called ``name``; raises ``KeyError`` listing the valid names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"schema {self.name!r} has no class {name!r}; classes: {', '.join(self.names)}") from None

    def palette(self) -> np.ndarray:
        """``(num_classes, 3)`` uint8 RGB colours, for indexed PNGs and overlays."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    def check(self, mask: np.ndarray, source: str = "mask") -> None:
        """Raise ``ValueError`` naming ``source`` if ``mask`` holds an index this schema lacks."""
        top = int(mask.max()) if mask.size else 0
        if top >= self.num_classes:
            raise ValueError(
                f"{source}: class index {top} is not in schema {self.name!r} "
                f"(valid 0..{self.num_classes - 1}: {', '.join(self.names)})"
            )


def _schema(name: str, *classes: tuple[str, tuple[int, int, int]]) -> Schema:
    return Schema(name, tuple(LabelClass(n, c) for n, c in classes))


ANATOMY = _schema(
    "anatomy",
    ("outside_scan", (0, 0, 0)),
    ("soft_tissue", (90, 60, 40)),
    ("fascia", (200, 160, 80)),
    ("rib", (255, 255, 255)),
    ("rib_shadow", (60, 60, 90)),
    ("pleural_line_healthy", (0, 220, 0)),
    ("pleural_line_unhealthy", (255, 0, 255)),
    ("a_line", (0, 160, 255)),
    ("b_line", (255, 40, 40)),
    ("lung_healthy", (0, 90, 60)),
    ("lung_unhealthy", (140, 40, 110)),
    ("consolidation", (255, 150, 0)),
    ("effusion", (0, 230, 230)),
)

DENSE = _schema(
    "dense",
    ("background", (0, 0, 0)),
    ("a_line", (0, 160, 255)),
    ("b_line", (255, 40, 40)),
    ("pleural_line_healthy", (0, 220, 0)),
    ("pleural_line_unhealthy", (255, 0, 255)),
    ("below_pleura_healthy", (0, 90, 60)),
    ("below_pleura_unhealthy", (140, 40, 110)),
    ("outside_scan", (40, 40, 40)),
)

SPARSE = _schema(
    "sparse",
    ("background", (0, 0, 0)),
    ("a_line", (0, 160, 255)),
    ("b_line", (255, 40, 40)),
    ("pleural_line", (255, 255, 0)),
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (ANATOMY, DENSE, SPARSE)}
if tuple(SCHEMAS) != SCHEMA_ORDER:  # a programming error in this module, caught at import time
    raise RuntimeError(f"SCHEMAS {tuple(SCHEMAS)} are not in SCHEMA_ORDER {SCHEMA_ORDER}")


def get_schema(name: str | SchemaName | Schema) -> Schema:
    """Look a schema up by name (a ``SchemaName`` or its text); a ``Schema`` is returned as it is.

    Raises:
        KeyError: no schema has that name; the message lists the valid names.
    """
    if isinstance(name, Schema):
        return name
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema {str(name)!r}; choose one of: {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def recorded_schema(name: str | None, source: str | Path) -> Schema:
    """The schema a model records (``UNetConfig.schema``), refusing a model that records none.

    There is no default: a model without a schema is not taken for a dense one.

    Args:
        name: the recorded schema name, or ``None``/``""`` when the model records none.
        source: the model's file (or what else names the model) for the message.

    Raises:
        ValueError: the model records no schema (one line naming ``source``).
        KeyError: the recorded name is no schema.
    """
    if not name:
        raise ValueError(
            f"{source}: the model records no label schema; it is not a pleura segmentation model, "
            "or was saved without one"
        )
    return get_schema(name)


def _lut(src: Schema, dst: Schema, mapping: dict[str, str]) -> np.ndarray:
    missing = set(src.names) - set(mapping)
    if missing:  # a programming error in this module, caught at import time
        raise RuntimeError(f"mapping {src.name}->{dst.name} lacks {sorted(missing)}")
    return np.array([dst.index(mapping[n]) for n in src.names], dtype=np.uint8)


ANATOMY_TO_DENSE = _lut(
    ANATOMY,
    DENSE,
    {
        "outside_scan": "outside_scan",
        "soft_tissue": "background",
        "fascia": "background",
        "rib": "background",
        "rib_shadow": "background",
        "pleural_line_healthy": "pleural_line_healthy",
        "pleural_line_unhealthy": "pleural_line_unhealthy",
        "a_line": "a_line",
        "b_line": "b_line",
        "lung_healthy": "below_pleura_healthy",
        "lung_unhealthy": "below_pleura_unhealthy",
        "consolidation": "below_pleura_unhealthy",
        "effusion": "below_pleura_unhealthy",
    },
)

DENSE_TO_SPARSE = _lut(
    DENSE,
    SPARSE,
    {
        "background": "background",
        "a_line": "a_line",
        "b_line": "b_line",
        "pleural_line_healthy": "pleural_line",
        "pleural_line_unhealthy": "pleural_line",
        "below_pleura_healthy": "background",
        "below_pleura_unhealthy": "background",
        "outside_scan": "background",
    },
)


def to_dense(anatomy_mask: np.ndarray) -> np.ndarray:
    """Map an ``anatomy`` mask to the ``dense`` schema."""
    return ANATOMY_TO_DENSE[anatomy_mask]


def to_sparse(dense_mask: np.ndarray) -> np.ndarray:
    """Map a ``dense`` mask to the ``sparse`` schema."""
    return DENSE_TO_SPARSE[dense_mask]


def convert(mask: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Map a mask from schema ``src`` to schema ``dst`` along anatomy -> dense -> sparse."""
    order = SCHEMA_ORDER
    if src not in order or dst not in order or order.index(dst) < order.index(src):
        raise ValueError(f"cannot map {str(src)!r} to {str(dst)!r}: labels only coarsen along {' -> '.join(order)}")
    steps = {"anatomy": to_dense, "dense": to_sparse}
    for name in order[order.index(src) : order.index(dst)]:
        mask = steps[name](mask)
    return mask


def densify(
    sparse_mask: np.ndarray,
    diagnosis: str,
    beam_rc: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Rebuild a ``dense`` mask from a ``sparse`` one and the frame's diagnosis.

    Pixels on a scan line below the deepest pleural-line pixel of that line become the region below
    the pleura (unless already A- or B-line); pleural-line and below-pleura pixels are healthy for a
    ``normal`` frame and unhealthy otherwise. Scan lines without a pleural line (rib shadows) stay
    background.

    Args:
        sparse_mask: ``(H, W)`` mask in the sparse schema.
        diagnosis: one of ``DIAGNOSES``.
        beam_rc: per-pixel ``(row, col)`` beam indices, ``-1`` outside the scan, for curvilinear frames
            (``ProbeGeometry.beam_index()``); ``None`` means image rows and columns are the scan lines
            (linear probe).
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; choose one of: {', '.join(DIAGNOSES)}")
    if sparse_mask.ndim != 2:
        raise ValueError(f"sparse_mask should be 2-D (H, W), got shape {sparse_mask.shape}")
    SPARSE.check(sparse_mask, "sparse_mask")
    healthy = diagnosis == "normal"
    if beam_rc is None:
        h, w = sparse_mask.shape
        rows, cols = np.indices((h, w))
    else:
        rows, cols = beam_rc
        if rows.shape != sparse_mask.shape:
            raise ValueError(f"beam_rc shape {rows.shape} differs from mask shape {sparse_mask.shape}")
    inside = cols >= 0
    pleural = sparse_mask == SPARSE.index("pleural_line")
    ncols = int(cols.max()) + 1 if inside.any() else 0
    deepest = np.full(ncols + 1, np.iinfo(np.int32).max, dtype=np.int64)  # last slot: outside pixels
    has = pleural & inside
    bottom = np.full(ncols + 1, -1, dtype=np.int64)
    np.maximum.at(bottom, cols[has], rows[has])
    deepest[bottom >= 0] = bottom[bottom >= 0]
    col_idx = np.where(inside, cols, ncols)
    below = inside & (rows > deepest[col_idx]) & (sparse_mask == SPARSE.index("background"))

    dense = np.zeros_like(sparse_mask, dtype=np.uint8)
    dense[sparse_mask == SPARSE.index("a_line")] = DENSE.index("a_line")
    dense[sparse_mask == SPARSE.index("b_line")] = DENSE.index("b_line")
    dense[pleural] = DENSE.index("pleural_line_healthy" if healthy else "pleural_line_unhealthy")
    dense[below] = DENSE.index("below_pleura_healthy" if healthy else "below_pleura_unhealthy")
    if beam_rc is not None:
        dense[~inside] = DENSE.index("outside_scan")
    return dense
