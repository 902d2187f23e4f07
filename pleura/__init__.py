"""pleura: lung-ultrasound AI toolkit (segmentation, dense/sparse labels, reverse transfer, simulator)."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["ClipResult", "FrameResult", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    """``pleura.Predictor`` and its result types, imported on first use (they pull in torch)."""
    if name in ("Predictor", "ClipResult", "FrameResult"):
        from pleura.infer import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'pleura' has no attribute {name!r}")
