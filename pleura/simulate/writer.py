"""Write a simulated manifest dataset: PNG images, one indexed-PNG mask per schema, ``manifest.csv``.

Clips are rendered in parallel worker processes straight to disk, so memory stays flat in the number
of frames. Everything goes to a hidden temporary folder beside the output, which replaces the output
only once complete: an interrupted or failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pleura import __version__
from pleura.atomic import staged_folder
from pleura.labels import DIAGNOSES, PROBES, SCHEMA_ORDER, SCHEMAS, Probe, convert
from pleura.parallel import parallel_map
from pleura.simulate.bands import thicken_lines
from pleura.simulate.randomize import randomized_clip
from pleura.simulate.render import ClipRenderer, Frame
from pleura.simulate.scene import Scene, sample_scene
from pleura.simulate.style import STYLES, apply_style

MIXED = "mixed"  # not a probe: clips alternate between the probes
PROBE_CHOICES = (*PROBES, MIXED)
MANIFEST_COLUMNS = [
    "id", "image", "mask_anatomy", "mask_dense", "mask_sparse", "diagnosis", "probe", "clip_id",
    "patient_id", "frame", "seed", "clip_index", "depth_mm", "pixel_mm", "pixel_mm_x", "radius_mm",
    "sector_deg", "width_mm", "freq_mhz", "fps", "pleural_depth_mm", "pleural_thickness_mm",
    "pleural_irregularity", "pleural_breaks", "n_ribs", "confluent_blines", "consolidation", "effusion",
    "n_alines", "n_blines", "source",
]  # fmt: skip


class SimulationError(ValueError):
    """Bad simulation settings or output folder; the message is one line meant for the user."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``n`` clips of ``frames`` frames each; diagnoses cycle through ``classes``."""

    n: int = 60  # clips; the dataset has n * frames images
    seed: int = 0  # clip i is drawn from SeedSequence([seed, i]): same seed, same bytes
    size: int = 256  # square image side in pixels
    probe: Probe | str = MIXED  # linear, curvilinear (or its alias convex), or mixed (alternating per clip)
    classes: tuple[str, ...] = DIAGNOSES
    frames: int = 1  # frames per clip; > 1 gives lung sliding and speckle decorrelation
    workers: int = 0  # processes; 0 means all cores
    style: str = "physics"  # output style (``pleura.simulate.style.STYLES``): physics, or pocus to look like POCUS
    # Label bands (issue 14): the pleural line and the A-lines labelled as bands this many pixels thick (at
    # ``size``), as experts draw them (``pleura.simulate.bands``); None: as thin as their echo (the default).
    line_label_px: float | None = None
    a_line_label_px: float | None = None  # None: the same as line_label_px
    # Domain randomisation (issue 14, ``pleura.simulate.randomize``): scanner, chest wall, display and export
    # varied per clip, labels transformed with the image. False: the plain simulator (the default).
    randomize: bool = False

    def __post_init__(self) -> None:
        if self.probe != MIXED:  # a probe named by an alias or in another case becomes the Probe
            with contextlib.suppress(ValueError):  # an unknown one stays as it is: validate() says so
                object.__setattr__(self, "probe", Probe.parse(self.probe))

    def validate(self) -> None:
        """Raise ``SimulationError`` for settings the simulator cannot honour."""
        if self.n < 1:
            raise SimulationError(f"--n must be at least 1 clip, got {self.n}")
        if self.size < 64:
            raise SimulationError(f"--size must be at least 64 pixels, got {self.size}")
        if self.size > 2048:
            raise SimulationError(f"--size must be at most 2048 pixels, got {self.size}")
        if self.frames < 1:
            raise SimulationError(f"--frames must be at least 1, got {self.frames}")
        if self.probe not in PROBE_CHOICES:
            raise SimulationError(f"unknown probe {str(self.probe)!r}; choose one of: {', '.join(PROBE_CHOICES)}")
        bad = [c for c in self.classes if c not in DIAGNOSES]
        if bad or not self.classes:
            raise SimulationError(
                f"unknown class(es) {', '.join(bad) or '(none given)'}; choose from: {', '.join(DIAGNOSES)}"
            )
        if len(set(self.classes)) != len(self.classes):
            raise SimulationError(f"--classes lists a class twice: {','.join(self.classes)}")
        if self.style not in STYLES:
            raise SimulationError(f"unknown style {self.style!r}; choose one of: {', '.join(STYLES)}")
        for name in ("line_label_px", "a_line_label_px"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.size / 4:
                raise SimulationError(f"--{name.replace('_', '-')} must be 1 to size/4 pixels, got {value}")
        if self.a_line_label_px is not None and self.line_label_px is None:
            raise SimulationError("--a-line-label-px needs --line-label-px")
        if self.workers < 0:
            raise SimulationError(f"--workers must be 0 (all cores) or more, got {self.workers}")

    def clip_setting(self, index: int) -> tuple[str, Probe]:
        """Diagnosis and probe of clip ``index``: balanced over classes, and over probes when mixed."""
        diagnosis = self.classes[index % len(self.classes)]
        probe = Probe.parse(self.probe) if self.probe != MIXED else PROBES[(index // len(self.classes)) % len(PROBES)]
        return diagnosis, probe


def simulate_clip(
    seed: int, index: int, diagnosis: str, probe: Probe | str, size: int = 256, frames: int = 1
) -> tuple[Scene, Iterator[Frame]]:
    """Scene and lazily rendered frames of clip ``index`` of a dataset with ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    scene = sample_scene(rng, diagnosis, probe, size)
    renderer = ClipRenderer(scene, rng)
    return scene, (renderer.render(t) for t in range(frames))


def _save_png(array: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    if palette is None:
        Image.fromarray(array, mode="L").save(path, compress_level=3)
    else:
        img = Image.fromarray(array, mode="P")
        img.putpalette(palette.flatten().tolist())
        img.save(path, compress_level=3)


def _write_clip(args: tuple[SimulationConfig, int, str]) -> list[dict[str, object]]:
    """Render clip ``index`` into ``root`` and return its manifest rows (runs in a worker)."""
    cfg, index, root_str = args
    root = Path(root_str)
    diagnosis, probe = cfg.clip_setting(index)
    randomizer = None
    if cfg.randomize:
        scene, randomizer, frames = randomized_clip(cfg.seed, index, diagnosis, probe, cfg.size, cfg.frames)
    else:
        scene, frames = simulate_clip(cfg.seed, index, diagnosis, probe, cfg.size, cfg.frames)
    clip_id = f"clip{index:06d}"
    rows = []
    for t, frame in enumerate(frames):
        fid = f"{clip_id}_{t:03d}"
        row: dict[str, object] = {"id": fid, "image": f"images/{fid}.png"}
        _save_png(apply_style(frame.image, cfg.style), root / "images" / f"{fid}.png")
        anatomy = thicken_lines(frame.anatomy, cfg.line_label_px, cfg.a_line_label_px)
        for name in SCHEMA_ORDER:
            rel = f"masks/{name}/{fid}.png"
            _save_png(convert(anatomy, "anatomy", name), root / rel, SCHEMAS[name].palette())
            row[f"mask_{name}"] = rel
        summary = scene.summary()
        if randomizer is not None:  # the export geometry changed the pixel size
            summary["pixel_mm"], summary["pixel_mm_x"] = (round(mm, 4) for mm in randomizer.pixel_mm)
        row.update(
            diagnosis=diagnosis, probe=probe, clip_id=clip_id, patient_id=clip_id, frame=t, seed=cfg.seed,
            clip_index=index, **summary, n_alines=frame.n_alines, n_blines=frame.n_blines, source="simulated",
        )  # fmt: skip
        rows.append(row)
    return rows


def dataset_config(cfg: SimulationConfig) -> dict[str, object]:
    """``cfg`` as ``dataset.json`` records it (and as a cache compares it): the label-band and randomisation
    settings only when set, so that a default run writes the same bytes as before they existed."""
    record = asdict(cfg)
    for name in ("line_label_px", "a_line_label_px"):
        if record[name] is None:
            del record[name]
    if not record["randomize"]:
        del record["randomize"]
    return record


def write_dataset(
    cfg: SimulationConfig,
    out: str | Path,
    overwrite: bool = False,
    gallery: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Simulate ``cfg`` into the folder ``out`` and return the manifest path.

    Args:
        cfg: what to simulate.
        out: output folder; must be empty or absent unless ``overwrite``.
        overwrite: replace a non-empty ``out`` (only once the new dataset is complete).
        gallery: also write ``gallery.png``, a contact sheet per diagnosis and probe.
        progress: called with the number of frames just written, for a progress bar.
    """
    cfg.validate()
    out = Path(out)
    subdirs = ["images", *(f"masks/{s}" for s in SCHEMA_ORDER)]
    with staged_folder(out, overwrite, subdirs, error=SimulationError) as tmp:
        workers = cfg.workers or os.cpu_count() or 1
        tasks = [(cfg, i, str(tmp)) for i in range(cfg.n)]
        with open(tmp / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for rows in parallel_map(_write_clip, tasks, workers):
                writer.writerows(rows)
                if progress is not None:
                    progress(len(rows))
        meta = {
            "pleura_version": __version__,
            "source": "simulated",
            "config": dataset_config(cfg),
            "schemas": {name: list(SCHEMAS[name].names) for name in SCHEMA_ORDER},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        if gallery:
            from pleura.viz import dataset_gallery

            dataset_gallery(tmp, tmp / "gallery.png")
    return out / "manifest.csv"
