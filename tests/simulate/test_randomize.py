"""Domain randomisation (``pleura simulate --randomize``, issue 14): reproducible, labels exact, default unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data.cleaning import ScanArea, fit_to_size
from pleura.labels import ANATOMY, SPARSE, Probe, convert
from pleura.simulate import SimulationConfig, write_dataset
from pleura.simulate import randomize as rz
from pleura.simulate.render import ClipRenderer
from pleura.simulate.scene import sample_scene

A = {name: i for i, name in enumerate(ANATOMY.names)}
runner = CliRunner()
# sha256 of the pixels of every image and mask (in manifest order) and of manifest.csv, for
# SimulationConfig(n=4, seed=11, size=64, frames=2, workers=1), written by the simulator of the commit before
# randomisation existed (33a464d). Pixels rather than PNG bytes, so a zlib version does not matter.
GOLDEN_DEFAULT = "084b915c400212c86b92dcdee321095b6a80bcb4e27d6adec8530cd4edef9117"


def pixels_digest(root: Path) -> str:
    """sha256 over the decoded images and masks of a dataset, in manifest order, and its manifest."""
    h = hashlib.sha256()
    with open(root / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("image", "mask_anatomy", "mask_dense", "mask_sparse"):
            h.update(np.ascontiguousarray(np.array(Image.open(root / row[key]))).tobytes())
    h.update((root / "manifest.csv").read_bytes())
    return h.hexdigest()


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but ``dataset.json`` (it records the worker count)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataset.json"
    }


def test_default_output_is_unchanged(tmp_path):
    write_dataset(SimulationConfig(n=4, seed=11, size=64, frames=2, workers=1), tmp_path / "a")
    assert pixels_digest(tmp_path / "a") == GOLDEN_DEFAULT
    assert "randomize" not in json.loads((tmp_path / "a" / "dataset.json").read_text())["config"]


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(tmp_path):
    base = dict(n=4, size=64, frames=2, randomize=True)
    write_dataset(SimulationConfig(seed=3, workers=1, **base), tmp_path / "a")
    write_dataset(SimulationConfig(seed=3, workers=2, **base), tmp_path / "b")
    write_dataset(SimulationConfig(seed=4, workers=1, **base), tmp_path / "c")
    write_dataset(SimulationConfig(seed=3, workers=1, **(base | {"randomize": False})), tmp_path / "plain")
    a, b, c, plain = (file_digests(tmp_path / k) for k in ("a", "b", "c", "plain"))
    assert a == b
    first = "images/clip000000_000.png"
    assert a[first] != c[first] and a[first] != plain[first]
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["config"]["randomize"] is True


def test_parameter_draws_stay_in_their_ranges_and_each_effect_is_sometimes_on_and_off():
    draws = [rz.sample_parameters(np.random.default_rng(i)) for i in range(300)]
    for p in draws:
        for name, (lo, hi) in rz.RANGES.items():
            values = p[name] if isinstance(p[name], list) else [p[name]]
            for v in values:
                assert lo <= v <= hi or v == rz.NEUTRAL.get(name), (name, v)
                if name in rz.INTEGER:
                    assert isinstance(v, int)
        assert len(p["fascia_depth"]) == p["layers"] and p["fascia_depth"] == sorted(p["fascia_depth"])
        assert len(p["tgc_offset"]) == rz.TGC_KNOTS
    for effect, key, off in [("tilt", "tilt", 0.0), ("gamma", "gamma", 1.0), ("text", "text_lines", 0),
                             ("crop", "crop_bottom", 0.0), ("chest_wall", "chest_wall", False)]:  # fmt: skip
        on = np.mean([p[key] != off for p in draws])
        assert abs(on - rz.PROBABILITIES[effect]) < 0.1, (effect, on)


@pytest.mark.parametrize("probe", [Probe.LINEAR, Probe.CURVILINEAR])
def test_randomised_scenes_use_the_wider_probe_ranges_and_keep_the_pleura_deep_enough(probe):
    floor = 12.0 if probe is Probe.CURVILINEAR else 4.0
    depths = []
    for i in range(40):
        rng = np.random.default_rng(i)
        params = rz.sample_parameters(rng) | {"tilt": 0.12}  # the steepest tilt
        scene = rz.randomize_scene(sample_scene(rng, "covid", probe, 128, settings=rz.PROBE_RANGES), params)
        ranges = rz.PROBE_RANGES[probe]
        assert ranges["freq_mhz"][0] <= scene.freq_mhz <= ranges["freq_mhz"][1]
        assert ranges["depth_mm"][0] <= scene.geometry.depth_mm <= ranges["depth_mm"][1]
        assert rz.RANGES["gain_db"][0] <= scene.gain_db <= rz.RANGES["gain_db"][1]
        assert abs(scene.extras["tilt"]) <= 0.12
        shallowest = scene.pleural_depth_mm - abs(scene.extras["tilt"]) * scene.lateral_mm / 2
        assert shallowest >= floor - 1e-6
        depths.append(scene.geometry.depth_mm)
    default_hi = 60.0 if probe is Probe.LINEAR else 160.0
    assert max(depths) > default_hi  # wider than the default settings


def test_every_scene_of_the_wider_ranges_can_be_drawn():
    # a shallow convex depth under a deep pleura once asked for an effusion thinner than its 6-mm minimum
    for i in range(400):
        rng = np.random.default_rng(i)
        for diagnosis in ("covid", "pneumonia", "normal"):
            for probe in (Probe.LINEAR, Probe.CURVILINEAR):
                scene = sample_scene(rng, diagnosis, probe, 128, settings=rz.PROBE_RANGES)
                rz.randomize_scene(scene, rz.sample_parameters(rng))
    scene, _, frames = rz.randomized_clip(1000, 220, "pneumonia", Probe.CURVILINEAR, size=64, frames=1)
    assert scene.effusion is not None and next(frames).image.shape == (64, 64)


def asymmetric_frame(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A narrow off-centre scan area holding an L-shaped bright 'pleural line' (image and anatomy agree)."""
    anatomy = np.full((size, size), A["outside_scan"], np.uint8)
    anatomy[0:80, 20:60] = A["soft_tissue"]
    anatomy[30:34, 31:52] = A["pleural_line_healthy"]  # long arm
    anatomy[34:50, 31:35] = A["pleural_line_healthy"]  # short arm, hanging down on the left
    image = np.where(anatomy == A["outside_scan"], 0.0, 0.2).astype(np.float32)
    image[anatomy == A["pleural_line_healthy"]] = 1.0
    return image, anatomy


@pytest.mark.parametrize(
    "crop,stretch", [((0.0, 0.0, 0.0), 1.0), ((0.2, 0.1, 0.25), 1.0), ((0.0, 0.0, 0.0), 2.5), ((0.3, 0.2, 0.0), 0.6)]
)
def test_refit_moves_the_mask_with_the_image(crop, stretch):
    image, anatomy = asymmetric_frame()
    out, lab, (sy, sx) = rz.refit(image, anatomy, crop, stretch, 128)
    inside = lab != A["outside_scan"]
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    assert rows[0] == 0  # top-aligned, as cleaning fits real frames
    assert abs(cols[0] - (128 - cols[-1] - 1)) <= 1  # centred
    assert 128 in (rows[-1] + 1, cols[-1] + 1 - cols[0])  # the longer side fills the frame
    h, w = 80 * (1 - crop[0]), 40 * (1 - crop[1] - crop[2])
    assert (cols[-1] + 1 - cols[0]) / (rows[-1] + 1) == pytest.approx(w / h * stretch, rel=0.06)
    assert (out[~inside] == 0).all()
    line = lab == A["pleural_line_healthy"]
    assert line.any()
    assert out[line].mean() > 0.8 and out[inside & ~line].mean() < 0.35  # the label sits on the bright line
    ys, xs = np.nonzero(line)
    assert xs.min() < (cols[0] + cols[-1]) / 2  # the short arm stays on the left: not flipped
    assert ys[xs == xs.min()].max() > ys[xs == xs.max()].max()  # ... and it hangs down, not up
    assert sy == pytest.approx(h / (rows[-1] + 1), rel=0.05)
    assert sx == pytest.approx(w / (cols[-1] + 1 - cols[0]), rel=0.05)


def test_refit_without_crop_or_stretch_fits_as_real_frames_are_cleaned():
    image, anatomy = asymmetric_frame()
    out, lab, _ = rz.refit(image, anatomy, (0.0, 0.0, 0.0), 1.0, 128)
    inside = anatomy != A["outside_scan"]
    area = ScanArea(inside, (0, 80, 20, 60), Probe.LINEAR, 1.0, 1.0, 0.0)
    cleaned = fit_to_size(np.round(image * 255).astype(np.uint8), area, 128)
    assert np.abs(np.round(out * 255).astype(int) - cleaned.astype(int)).max() <= 1
    assert ((lab != A["outside_scan"]) == (cleaned > 0)).mean() > 0.995


def overlay_params(seed: int) -> dict:
    """A draw with text, ruler and markers all on."""
    return rz.sample_parameters(np.random.default_rng(seed)) | {"text_lines": 3, "ruler": True, "markers": 3}


def test_overlays_are_drawn_on_the_image_and_never_labelled():
    rng = np.random.default_rng(5)
    params = overlay_params(5)
    scene = rz.randomize_scene(sample_scene(rng, "normal", Probe.LINEAR, 96, settings=rz.PROBE_RANGES), params)
    frame = ClipRenderer(scene, rng).render(0)
    randomizer = rz.FrameRandomizer(params, scene, 96, np.random.default_rng(0))
    out = randomizer(frame)
    crop = (params["crop_bottom"], *params["crop_side"])
    _, expected, _ = rz.refit(np.zeros((96, 96), np.float32), frame.anatomy, crop, randomizer.stretch, 96)
    np.testing.assert_array_equal(out.anatomy, expected)  # the mask is the anatomy's, overlays or not
    assert randomizer.overlay is not None and (randomizer.overlay > 0.5).sum() > 20
    burned = randomizer.overlay > 0.99
    assert burned.sum() > 5
    assert np.abs(out.image[burned].astype(int) - np.round(randomizer.level[burned] * 255)).max() <= 2
    again = randomizer(ClipRenderer(scene, np.random.default_rng(1)).render(0))  # other speckle, same overlay
    assert np.abs(again.image[burned].astype(int) - out.image[burned].astype(int)).max() <= 3
    assert (again.image != out.image).mean() > 0.3


def test_a_lines_stay_at_multiples_of_the_pleural_depth_and_the_chest_wall_is_background():
    checked = 0
    for index in range(12):
        _, _, frames = rz.randomized_clip(21, index, "normal", Probe.LINEAR, size=128, frames=1)
        frame = next(frames)
        sparse = convert(frame.anatomy, "anatomy", "sparse")
        pleural = np.isin(frame.anatomy, [A["pleural_line_healthy"], A["pleural_line_unhealthy"]])
        a_line = frame.anatomy == A["a_line"]
        for x in np.flatnonzero(pleural.any(axis=0) & a_line.any(axis=0)):
            p = np.flatnonzero(pleural[:, x]).mean() + 0.5
            # the first A-line run below the pleura
            rows = np.flatnonzero(a_line[:, x])
            first = rows[: np.argmax(np.diff(np.r_[rows, 10**6]) > 1) + 1].mean() + 0.5
            assert first / p == pytest.approx(2.0, abs=0.25), (index, x)
            checked += 1
        top = np.argmax(pleural, axis=0)
        for x in np.flatnonzero(pleural.any(axis=0)):
            assert not np.isin(sparse[: top[x], x], [SPARSE.index("a_line"), SPARSE.index("pleural_line")]).any()
    assert checked > 100


def test_manifest_reports_the_pixel_size_after_the_export_geometry(tmp_path):
    write_dataset(SimulationConfig(n=6, seed=8, size=64, frames=1, workers=1, randomize=True), tmp_path / "r")
    with open(tmp_path / "r" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    linear = [row for row in rows if row["probe"] == "linear"]
    assert linear
    for row in linear:  # a linear field's height is its depth, less what the export cropped at the bottom
        mask = np.array(Image.open(tmp_path / "r" / row["mask_anatomy"]))
        height = np.flatnonzero((mask != A["outside_scan"]).any(axis=1)).size * float(row["pixel_mm"])
        depth = float(row["depth_mm"])
        assert depth * (1 - rz.RANGES["crop_bottom"][1]) * 0.97 <= height <= depth * 1.03


def test_cli_randomize_flag(tmp_path):
    args = ["simulate", "--n", "2", "--size", "64", "--seed", "4", "--workers", "1"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "p")])
    rand = runner.invoke(app, [*args, "--out", str(tmp_path / "r"), "--randomize"])
    assert plain.exit_code == 0 and rand.exit_code == 0, rand.output
    assert json.loads((tmp_path / "r" / "dataset.json").read_text())["config"]["randomize"] is True
    p, r = file_digests(tmp_path / "p"), file_digests(tmp_path / "r")
    assert p.keys() == r.keys() and p["images/clip000000_000.png"] != r["images/clip000000_000.png"]


def test_a_scene_whose_chest_wall_is_above_the_frame_renders():
    """Regression: clip 367 of seed 1000 at 96 px (a linear probe with the pleura at the skin) asked for a negative
    number of chest-wall rows and crashed the plain simulator."""
    from pleura.simulate.writer import SimulationConfig, simulate_clip

    diagnosis, probe = SimulationConfig(n=500, seed=1000, size=96, frames=2).clip_setting(367)
    _, frames = simulate_clip(1000, 367, diagnosis, probe, 96, 2)
    assert [f.image.shape for f in frames] == [(96, 96), (96, 96)]
