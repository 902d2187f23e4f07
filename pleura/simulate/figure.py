"""A figure of plain against domain-randomised simulated frames (``docs/randomized.png``).

python -m pleura.simulate.figure --figure docs/randomized.png --real /tmp/cvat-lus128
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pleura.labels import Probe
from pleura.simulate.randomize import randomized_clip


def comparison_figure(
    path: str | Path, seed: int = 0, clips: int = 4, size: int = 128, real: str | Path | None = None
) -> Path:
    """Draw plain against randomised frames of the same clips (same seed, index, diagnosis and probe), each with
    its sparse labels as ``--line-label-px 8 --a-line-label-px 10.5`` draws them, and optionally the first frame
    of a real dataset (``real``: a manifest dataset with sparse masks, e.g. the imported cvat-lus clip)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pleura.labels import SPARSE, convert
    from pleura.simulate.bands import expert_bands, thicken_lines
    from pleura.simulate.writer import simulate_clip
    from pleura.viz import overlay, save_figure

    def sparse(anatomy: np.ndarray) -> np.ndarray:
        return convert(thicken_lines(anatomy, *expert_bands(size)), "anatomy", "sparse")

    settings = [("normal", Probe.LINEAR), ("covid", Probe.CURVILINEAR), ("pneumonia", Probe.LINEAR),
                ("covid", Probe.LINEAR), ("normal", Probe.CURVILINEAR), ("pneumonia", Probe.CURVILINEAR)]  # fmt: skip
    panels: list[tuple[str, list[np.ndarray]]] = []
    for i in range(clips):
        diagnosis, probe = settings[i % len(settings)]
        plain = next(simulate_clip(seed, i, diagnosis, probe, size, 1)[1])
        rand = next(randomized_clip(seed, i, diagnosis, probe, size, 1)[2])
        panels.append((f"{diagnosis}, {probe}", [
            plain.image, overlay(plain.image, sparse(plain.anatomy), SPARSE),
            rand.image, overlay(rand.image, sparse(rand.anatomy), SPARSE),
        ]))  # fmt: skip
    if real is not None:
        from pleura.data import read_manifest

        row = read_manifest(real)[0]
        image = np.asarray(Image.open(Path(real) / row["image"]).convert("L"))
        mask = np.asarray(Image.open(Path(real) / row["mask_sparse"]))
        blank = np.zeros_like(image)
        panels.append((f"real: {Path(real).name}", [image, overlay(image, mask, SPARSE), blank, blank]))
    titles = ["plain", "plain, sparse labels", "randomised", "randomised, sparse labels"]
    fig, axes = plt.subplots(len(panels), 4, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for r, (label, images) in enumerate(panels):
        for c, img in enumerate(images):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], color="white", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, color="white", fontsize=8)
    fig.suptitle(
        "pleura simulate, plain vs --randomize (same seed, clip, diagnosis and probe): "
        "yellow pleural line, blue A-lines, red B-lines",
        color="white",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    """``python -m pleura.simulate.figure --figure PATH``: draw ``comparison_figure`` (docs/randomized.png)."""
    import argparse

    ap = argparse.ArgumentParser(description="Plain against randomised simulated frames, as a figure.")
    ap.add_argument("--figure", type=Path, required=True, help="PNG to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--real", type=Path, default=None, help="a manifest dataset with sparse masks to show beside")
    args = ap.parse_args()
    print(comparison_figure(args.figure, args.seed, args.clips, args.size, args.real))


if __name__ == "__main__":
    main()
