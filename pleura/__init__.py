"""pleura: lung-ultrasound AI toolkit (segmentation, dense/sparse labels, reverse transfer, simulator)."""

__version__ = "0.1.0"
