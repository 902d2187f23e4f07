"""The simulator's ground truth obeys the physics and the label rules, frame by frame."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pleura.labels import ANATOMY, DENSE, densify, to_dense, to_sparse
from pleura.simulate import ClipRenderer, ProbeGeometry, sample_scene

A = {n: i for i, n in enumerate(ANATOMY.names)}
PLEURA = [A["pleural_line_healthy"], A["pleural_line_unhealthy"]]


def frames(root: Path) -> list[dict]:
    """Every frame of a dataset with its arrays and geometry."""
    out = []
    with open(root / "manifest.csv") as fh:
        for row in csv.DictReader(fh):
            item = dict(row)
            item["img"] = np.array(Image.open(root / row["image"]))
            for s in ("anatomy", "dense", "sparse"):
                item[s] = np.array(Image.open(root / row[f"mask_{s}"]))
            item["geom"] = ProbeGeometry.from_row(row, item["img"].shape[0])
            out.append(item)
    return out


@pytest.fixture(scope="module")
def all_frames(sim_dataset: Path) -> list[dict]:
    return frames(sim_dataset)


def per_beam_line(item: dict):
    """Yield, per beam line, the beam rows and anatomy labels of the pixels on it."""
    rows, cols = item["geom"].beam_index()
    lab = item["anatomy"]
    inside = cols >= 0
    order = np.argsort(cols[inside], kind="stable")
    c_sorted = cols[inside][order]
    r_sorted = rows[inside][order]
    l_sorted = lab[inside][order]
    splits = np.flatnonzero(np.diff(c_sorted)) + 1
    yield from zip(np.split(r_sorted, splits), np.split(l_sorted, splits), strict=True)


def test_dataset_covers_every_diagnosis_and_probe(all_frames):
    seen = {(f["diagnosis"], f["probe"]) for f in all_frames}
    assert seen == {(d, p) for d in ("covid", "pneumonia", "normal") for p in ("linear", "curvilinear")}


def test_a_lines_lie_at_whole_multiples_of_the_pleural_depth_on_the_beam_grid():
    """Exact check on the full-resolution truth before scan conversion, both probes."""
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, ("normal", "covid")[seed % 4 // 2], ("linear", "curvilinear")[seed % 2], 128)
        renderer = ClipRenderer(scene, rng)
        renderer.render(0)
        lab, dz = renderer.beam_labels, scene.geometry.dz_mm
        for col in lab.T:
            pl, al = np.flatnonzero(np.isin(col, PLEURA)), np.flatnonzero(col == A["a_line"])
            if pl.size == 0 or al.size == 0:
                continue
            pleura_mm = ((pl.min() + pl.max()) / 2 + 0.5) * dz
            for run in np.split(al, np.flatnonzero(np.diff(al) > 1) + 1):
                if run.max() == col.size - 1:
                    continue  # cut by the bottom of the field
                ratio = ((run.min() + run.max()) / 2 + 0.5) * dz / pleura_mm
                k = round(ratio)
                assert k >= 2 and abs(ratio - k) <= (k + 1) * dz / pleura_mm, (seed, ratio)
                checked += 1
    assert checked > 500


def test_a_lines_lie_at_whole_multiples_of_the_pleural_depth_in_images(all_frames):
    checked = 0
    for item in (f for f in all_frames if f["probe"] == "linear"):
        dz = item["geom"].dz_mm
        for r, lb in per_beam_line(item):
            pl, al = r[np.isin(lb, PLEURA)], r[lb == A["a_line"]]
            if pl.size == 0 or al.size == 0:
                continue
            pleura_mm = (0.5 * (pl.min() + pl.max()) + 0.5) * dz
            # each A-line band on this line: split rows into contiguous runs
            al = np.unique(al)
            for run in np.split(al, np.flatnonzero(np.diff(al) > 2) + 1):
                ratio = (0.5 * (run.min() + run.max()) + 0.5) * dz / pleura_mm
                assert round(ratio) >= 2, (item["id"], ratio)
                # both centres are seen through pixels; the error of the pleura's grows k-fold
                tol = (round(ratio) + 1) * item["geom"].pixel_mm[0] / pleura_mm
                assert abs(ratio - round(ratio)) <= tol, (item["id"], ratio, tol)
                checked += 1
    assert checked > 50


def test_b_lines_run_from_the_pleural_line_to_the_bottom(all_frames):
    lines = 0
    for item in all_frames:
        for r, lb in per_beam_line(item):
            b = lb == A["b_line"]
            if not b.any():
                continue
            pl = r[np.isin(lb, PLEURA)]
            assert pl.size, f"{item['id']}: B-line on a scan line without pleura"
            below = r > pl.max()
            assert b[below].all(), f"{item['id']}: B-line interrupted below the pleura"
            assert not b[~below].any(), f"{item['id']}: B-line above the pleura"
            assert r[b].max() == r.max(), f"{item['id']}: B-line stops short of the bottom"
            lines += 1
    assert lines > 20


def test_linear_b_lines_reach_the_last_image_row(all_frames):
    found = 0
    for item in (f for f in all_frames if f["probe"] == "linear"):
        cols = np.flatnonzero((item["anatomy"] == A["b_line"]).any(axis=0))
        for c in cols:
            assert item["anatomy"][-1, c] == A["b_line"]
            found += 1
    assert found > 0


def test_no_artifact_above_the_pleural_line(all_frames):
    for item in all_frames:
        for r, lb in per_beam_line(item):
            art = np.isin(lb, [A["a_line"], A["b_line"]])
            if art.any():
                pl = r[np.isin(lb, PLEURA)]
                assert pl.size and r[art].min() > pl.max(), item["id"]


def test_sparse_is_the_mapping_of_dense_and_dense_of_anatomy(all_frames):
    for item in all_frames:
        np.testing.assert_array_equal(item["dense"], to_dense(item["anatomy"]))
        np.testing.assert_array_equal(item["sparse"], to_sparse(item["dense"]))


def test_densify_of_sparse_reproduces_the_simulators_dense_mask(all_frames):
    for item in all_frames:
        beam = item["geom"].beam_index() if item["probe"] == "curvilinear" else None
        rebuilt = densify(item["sparse"], item["diagnosis"], beam_rc=beam)
        mismatch = (rebuilt != item["dense"]).sum()
        assert mismatch == 0, f"{item['id']} ({item['probe']}): {mismatch} pixels differ"


def test_curvilinear_outside_the_sector_is_outside_scan_and_black(all_frames):
    curv = [f for f in all_frames if f["probe"] == "curvilinear"]
    assert curv
    for item in curv:
        outside = ~item["geom"].inside
        assert outside.mean() > 0.1
        assert (item["anatomy"][outside] == A["outside_scan"]).all()
        assert (item["img"][outside] == 0).all()
        assert (item["anatomy"][~outside] != A["outside_scan"]).all()
        assert (item["dense"][outside] == DENSE.index("outside_scan")).all()
    for item in (f for f in all_frames if f["probe"] == "linear"):
        assert not (item["anatomy"] == A["outside_scan"]).any()


def test_normal_scenes_carry_no_unhealthy_class(all_frames):
    bad = [A[n] for n in ("pleural_line_unhealthy", "lung_unhealthy", "consolidation", "effusion")]
    normals = [f for f in all_frames if f["diagnosis"] == "normal"]
    assert normals
    for item in normals:
        assert not np.isin(item["anatomy"], bad).any(), item["id"]
        assert int(item["n_blines"]) <= 2
    for item in (f for f in all_frames if f["diagnosis"] != "normal"):
        assert not np.isin(item["anatomy"], [A["pleural_line_healthy"], A["lung_healthy"]]).any()


def test_the_bat_sign_ribs_shadow_to_the_bottom(all_frames):
    ribbed = 0
    for item in all_frames:
        lab = item["anatomy"]
        if not (lab == A["rib"]).any():
            continue
        ribbed += 1
        shadow = lab == A["rib_shadow"]
        # rib shadows are dark: well below the lung's mean brightness
        assert item["img"][shadow].mean() < 0.6 * item["img"][lab == A["soft_tissue"]].mean()
    assert ribbed >= 6


def test_manifest_counts_match_the_masks(all_frames):
    for item in all_frames:
        has_b = (item["anatomy"] == A["b_line"]).any()
        assert (int(item["n_blines"]) > 0) == has_b, item["id"]
        assert (int(item["n_alines"]) > 0) == (item["anatomy"] == A["a_line"]).any(), item["id"]
        if item["consolidation"] != "none":
            assert (item["anatomy"] == A["consolidation"]).any(), item["id"]
