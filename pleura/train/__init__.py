"""Training: loops, losses, checkpoints and distributed helpers."""
