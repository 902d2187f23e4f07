"""Pictures people look at: label overlays, heat maps, annotated panels and the dataset gallery (contact sheet).

Low in the layers (beside ``data`` and ``models``) so that the simulator's gallery, the evaluation figures
(``pleura.evaluate.figures``) and the annotated output of ``predict`` (``pleura.infer.report``) share them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pleura.atomic import write_bytes
from pleura.labels import SCHEMA_ORDER, SCHEMAS, Schema, get_schema

# Classes drawn without colour in overlays: the image shows them better than a tint.
UNTINTED = {"background", "soft_tissue", "outside_scan", "lung_healthy", "below_pleura_healthy"}


def overlay(image: np.ndarray, mask: np.ndarray, schema: Schema, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over a grayscale ``(H, W)`` uint8 image; returns ``(H, W, 3)`` uint8."""
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    colours = schema.palette().astype(np.float32)[mask]
    tint = ~np.isin(mask, [i for i, n in enumerate(schema.names) if n in UNTINTED])
    rgb[tint] = (1 - alpha) * rgb[tint] + alpha * colours[tint]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def save_figure(fig: object, path: str | Path, dpi: int = 110, facecolor: str = "black") -> Path:
    """Save a matplotlib figure atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", facecolor=facecolor)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return write_bytes(path, buf.getvalue())


def sign_count(row: dict[str, str]) -> int:
    """How many distinct signs a simulated frame shows, so the gallery picks telling examples."""
    return (
        2 * (row.get("consolidation") == "lobar")
        + (row.get("consolidation") == "subpleural")
        + (row.get("effusion") == "1")
        + (row.get("confluent_blines") == "1")
        + (row.get("n_blines", "0") not in ("", "0"))
        + (row.get("n_alines", "0") not in ("", "0"))
        + (row.get("n_ribs", "0") not in ("", "0"))
    )


def dataset_gallery(root: str | Path, path: str | Path, schemas: tuple[str, ...] = SCHEMA_ORDER) -> Path:
    """Contact sheet of a manifest dataset: one row per (probe, diagnosis), the image and its overlays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from pleura.data.manifest import read_manifest

    root = Path(root)
    picks: dict[tuple[str, str], dict[str, str]] = {}
    for row in read_manifest(root):
        key = (row.get("probe", ""), row["diagnosis"])
        if str(row.get("frame", "0")) == "0" and (key not in picks or sign_count(row) > sign_count(picks[key])):
            picks[key] = row
    keys = sorted(picks)
    cols = 1 + len(schemas)
    fig, axes = plt.subplots(len(keys), cols, figsize=(2.4 * cols, 2.5 * len(keys) + 1.2), squeeze=False)
    fig.patch.set_facecolor("black")
    for r, key in enumerate(keys):
        row = picks[key]
        image = np.array(Image.open(root / row["image"]).convert("L"))
        panels = [("image", np.repeat(image[..., None], 3, axis=2))]
        for name in schemas:
            mask = np.array(Image.open(root / row[f"mask_{name}"]))
            panels.append((name, overlay(image, mask, get_schema(name))))
        for c, (title, rgb) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{key[1]} / {key[0]}" if c == 0 else title
            ax.set_title(label, color="white", fontsize=9)
    handles = [
        Patch(color=np.array(c.color) / 255, label=c.name) for c in SCHEMAS["anatomy"].classes if c.name not in UNTINTED
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False, labelcolor="white")
    fig.suptitle("pleura simulated lung ultrasound (simulated data)", color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_figure(fig, path)


def heat(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A red-yellow heat map of ``cam`` over the grey frame, (H, W, 3) uint8."""
    grey = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    colour = np.stack([np.clip(2 * cam, 0, 1), np.clip(2 * cam - 1, 0, 1), np.zeros_like(cam)], axis=2) * 255
    w = alpha * cam[..., None]
    return np.clip((1 - w) * grey + w * colour, 0, 255).astype(np.uint8)


def annotated_panel(
    image: np.ndarray, labels: np.ndarray, schema: str | Schema, title: str, cam: np.ndarray | None = None
) -> np.ndarray:
    """Frame | segmentation overlay | class-activation map (when given), with a title bar; (H+18, nW, 3)."""
    panels = [np.repeat(image[..., None], 3, axis=2), overlay(image, labels, get_schema(schema))]
    if cam is not None:
        panels.append(heat(image, cam))
    row = np.concatenate(panels, axis=1)
    canvas = Image.new("RGB", (row.shape[1], row.shape[0] + 18))
    canvas.paste(Image.fromarray(row), (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(255, 255, 255))
    return np.asarray(canvas)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as PNG atomically."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())
