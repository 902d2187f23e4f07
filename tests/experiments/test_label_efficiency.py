"""``experiment label-efficiency``: nested subsets by clip, a fixed step budget, cached stages, the report and
figure, the real within-clip check (on a synthetic CVAT task; the cvat-lus fixture where present), bad sizes."""

from __future__ import annotations

import csv
import inspect
import json
import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data import read_manifest
from pleura.data.synthetic import write_clip
from pleura.experiments.label_efficiency import (
    FIGURE,
    LabelEfficiencyConfig,
    find_task,
    import_real,
    nested_subsets,
    run_label_efficiency,
    split_clip,
    step_schedule,
)
from pleura.train.distributed import DistEnv

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = next(
    (p for p in (ROOT.parent / "shared" / "data" / "cvat-lus", Path("/work/shared/data/cvat-lus")) if p.is_dir()),
    ROOT.parent / "shared" / "data" / "cvat-lus",
)
TINY = dict(sizes=(2, 4), seeds=(0,), frames=1, pool_clips=5, test_clips=2, size=64, width=4, depth=2, steps=3,
            warmup=0.2)  # fmt: skip


def pool_rows(clips: int = 30, frames: int = 2) -> list[dict[str, str]]:
    dx = ("covid", "pneumonia", "normal")
    return [{"id": f"c{c}_f{f}", "clip_id": f"c{c}", "diagnosis": dx[c % 3]}
            for c in range(clips) for f in range(frames)]  # fmt: skip


def ids(folder: Path) -> set[str]:
    return {r["id"] for r in read_manifest(folder)}


# ------------------------------------------------------------------------------------------------ pure parts


def test_subsets_are_nested_whole_clips_balanced_and_seeded() -> None:
    rows = pool_rows()
    per_seed = {seed: nested_subsets(rows, (6, 10, 30), seed) for seed in (0, 1)}
    for subsets in per_seed.values():
        assert [len(subsets[n]) for n in (6, 10, 30)] == [6, 10, 30]
        sets = [{r["id"] for r in subsets[n]} for n in (6, 10, 30)]
        assert sets[0] < sets[1] < sets[2]  # nested
        for rows_n in subsets.values():  # whole clips: every frame of a chosen clip is in
            clips = {r["clip_id"] for r in rows_n}
            assert len(rows_n) == 2 * len(clips)
        assert sorted(r["diagnosis"] for r in subsets[6]) == sorted(["covid", "pneumonia", "normal"] * 2)
    assert {r["id"] for r in per_seed[0][10]} != {r["id"] for r in per_seed[1][10]}  # a seed draws its own
    assert nested_subsets(rows, (6,), 0) == {6: per_seed[0][6]}  # the same seed, the same subset
    with pytest.raises(ValueError, match="size 61 is larger than the pool of 60 frames"):
        nested_subsets(rows, (61,), 0)


def test_a_fixed_step_budget_whatever_the_size() -> None:
    small, large = step_schedule(6, 150, 15, 8), step_schedule(800, 150, 15, 8)
    assert (small["epochs"], small["steps"], small["warmup_epochs"]) == (150, 150, 15.0)
    assert (large["steps_per_epoch"], large["epochs"], large["steps"]) == (100, 2, 200)  # whole epochs: >= 150
    assert step_schedule(9, 10, 0, 8)["steps_per_epoch"] == 1  # a last batch of one is dropped, as the loop does
    assert step_schedule(20, 10, 0, 8, world_size=2)["steps_per_epoch"] == 2  # 10 frames per rank


def test_bad_sizes_are_refused_with_one_line(tmp_path: Path) -> None:
    for kw, msg in [
        ({"sizes": (2, 400)}, "--sizes: 400 frames is larger than the pool of 5 simulated frames"),
        ({"sizes": (3,), "frames": 2, "pool_clips": 4}, "3 frames is not a whole number of clips of 2 frames"),
        ({"sizes": (1, 4)}, "1 frames is 1 clip; a run needs at least 2 clips"),
        ({"sizes": (2, 2)}, "--sizes needs distinct frame counts"),
        ({"sizes": ()}, "--sizes needs distinct frame counts"),
        ({"real_sizes": (0, 5)}, "--real-sizes needs distinct frame counts of at least 1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            LabelEfficiencyConfig(**{**TINY, **kw})
    result = CliRunner().invoke(
        app, ["experiment", "label-efficiency", "--out", str(tmp_path / "o"), "--sizes", "10,30,100,300,2000"]
    )
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "error:" in lines[0], result.output
    assert "2000 frames is larger than the pool of 1000 simulated frames" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before any work
    result = CliRunner().invoke(app, ["experiment", "label-efficiency", "--out", str(tmp_path / "o"), "--sizes", "a"])
    assert result.exit_code == 2 and "--sizes must be comma-separated integers" in result.output


def test_cli_defaults_are_the_config_defaults() -> None:
    callback = next(c.callback for g in app.registered_groups for c in g.typer_instance.registered_commands
                    if c.name == "label-efficiency")  # fmt: skip
    config = LabelEfficiencyConfig()
    own = {f.name for f in fields(config)}
    checked = 0
    for name, p in inspect.signature(callback).parameters.items():
        default = getattr(p.default, "default", p.default)
        if name not in own or name in ("real", "init"):  # None on the command line is None or "" in the config
            continue
        if name in ("sizes", "seeds", "real_sizes"):
            default = tuple(int(x) for x in default.split(","))
        assert default == getattr(config, name), name
        checked += 1
    assert checked >= 12


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LabelEfficiencyConfig, dict]:
    out = tmp_path_factory.mktemp("le") / "study"
    cfg = LabelEfficiencyConfig(**TINY)
    return out, cfg, run_label_efficiency(out, cfg, DistEnv())


@pytest.mark.slow
def test_report_figure_nesting_and_cache(study: tuple[Path, LabelEfficiencyConfig, dict]) -> None:
    out, cfg, results = study
    report = (out / "report.md").read_text()
    assert "**a fixed budget of 3 optimizer steps per run**" in report and "Not run (no `--real`" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    assert (out / FIGURE).stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["simulated"].keys() == {"2", "4"}
    for n in ("2", "4"):
        for schema in ("dense", "sparse"):
            cell = results["simulated"][n]["table"][schema]
            assert len(cell["mean_iou"]["values"]) == 1 and 0 <= cell["mean_iou"]["mean"] <= 1
            assert cell["fp_components_per_frame"]["mean"] >= 0
            assert {p["steps"] for p in results["simulated"][n]["schedule"][schema]} == {3}  # the same budget
        assert f"| {n} |" in report
    small, large = ids(out / "subsets" / "seed0" / "n2"), ids(out / "subsets" / "seed0" / "n4")
    assert len(small) == 2 and len(large) == 4 and small < large  # nested
    assert large <= ids(out / "data" / "pool")
    assert json.loads((out / "runs" / "dense-n4-seed0" / "config.json").read_text())["train_frames"] == 3  # 1 validates
    # a rerun reuses the data, the runs and their evaluations
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")} | {
        p: p.stat().st_mtime_ns for p in out.glob("subsets/*/*/manifest.csv")
    }
    before = json.loads((out / "results.json").read_text())["simulated"]
    run_label_efficiency(out, cfg, DistEnv())
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "results.json").read_text())["simulated"] == before
    # a changed budget retrains (the cache is keyed by the settings)
    changed = replace(cfg, sizes=(2,), steps=4)
    run_label_efficiency(out, changed, DistEnv())
    assert (out / "runs" / "dense-n2-seed0" / "summary.json").stat().st_mtime_ns > stamps[
        out / "runs" / "dense-n2-seed0" / "summary.json"
    ]


def cvat_task(root: Path, n: int = 24, tags: bool = False) -> Path:
    """A CVAT task backup of a synthetic screen clip: an A-line and a pleural-line polygon on every 2nd frame."""
    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    frames = []
    for _ in range(n):
        f = np.zeros((240, 320), np.uint8)
        f[30:210, 90:250] = rng.integers(30, 110, (180, 160))
        f[60:64, 100:240] = 220  # pleural line
        f[120:124, 100:240] = 160  # A-line
        f[5:15, 10:80] = 255  # burnt-in text
        frames.append(f)
    write_clip(root / "data" / "clip.mp4", frames, fps=10)

    def poly(label: str, frame: int, y: int) -> dict:
        pts = [100, y - 3, 240, y - 3, 240, y + 6, 100, y + 6]
        return {"type": "polygon", "occluded": False, "z_order": 0, "points": pts, "frame": frame, "group": 0,
                "source": "manual", "attributes": [], "label": label}  # fmt: skip

    shapes = [p for k in range(0, n, 2) for p in (poly("aline", k, 121), poly("lungslidingpresent", k, 61))]
    tag = [{"frame": k, "label": "d_normal", "group": 0, "source": "manual", "attributes": []} for k in range(0, n, 2)]
    task = {"name": "synthetic", "labels": [{"name": x} for x in ("aline", "lungslidingpresent", "d_normal")],
            "data": {"start_frame": 0, "stop_frame": n - 1, "chunk_type": "imageset"}}  # fmt: skip
    (root / "task.json").write_text(json.dumps(task))
    (root / "annotations.json").write_text(json.dumps([{"version": 0, "tags": tag if tags else [], "shapes": shapes,
                                                         "tracks": []}]))  # fmt: skip
    lines = [{"version": "1.1"}, {"type": "video"}, {"properties": {"name": "clip.mp4", "resolution": [320, 240],
                                                                     "length": n}}]  # fmt: skip
    (root / "data" / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.mark.slow
def test_real_within_clip_early_frames_train_late_frames_test(
    study: tuple[Path, LabelEfficiencyConfig, dict], tmp_path: Path
) -> None:
    out, cfg, _ = study
    task = cvat_task(tmp_path / "shared" / "task_9", tags=True)
    assert find_task(tmp_path / "shared") == task
    real = replace(cfg, real=str(tmp_path / "shared"), real_sizes=(2, 4), real_size=64, real_steps=2, real_gap=2,
                   real_segment=2, init=str(out / "runs" / "sparse-n4-seed0"))  # fmt: skip
    stamp = (out / "runs" / "sparse-n4-seed0" / "summary.json").stat().st_mtime_ns
    results = run_label_efficiency(out, real, DistEnv())
    assert (out / "runs" / "sparse-n4-seed0" / "summary.json").stat().st_mtime_ns == stamp  # simulated: cached
    r = results["real"]
    clip = r["clips"]["clip"]
    # labelled frames 0, 2, ..., 22; the test span starts at 0.7 x 22 = 15.4; the pool ends 2 frames before it
    assert clip["test_frames"] == [16, 18, 20, 22] and clip["pool_frames"] == [0, 2, 4, 6, 8, 10, 12]
    assert r["schemas"] == ["sparse", "dense"]  # every frame is tagged d_normal: densify is allowed
    assert set(r["table"]) == {"sparse", "dense", "sparse-init", "dense-init"}
    for variant in r["table"].values():
        assert set(variant) == {"2", "4"} and variant["2"]["frames"] == [2]
        for c in ("pleural_line_dice", "a_line_dice"):
            assert 0 <= variant["4"][c]["mean"] <= 1
    test_ids = ids(out / "real" / "test")
    for n in (2, 4):
        sub = ids(out / "real" / "subsets" / "seed0" / f"n{n}")
        assert len(sub) == n and not sub & test_ids
    assert ids(out / "real" / "subsets" / "seed0" / "n2") < ids(out / "real" / "subsets" / "seed0" / "n4")
    init = json.loads((out / "real" / "runs" / "sparse-init-n2-seed0" / "config.json").read_text())
    assert init["init"] == str((out / "runs" / "sparse-n4-seed0").resolve())
    report = (out / "report.md").read_text()
    assert "## Real clip, within the clip" in report and "| 4 | 4 | dense-init |" in report
    with pytest.raises(ValueError, match=r"--real-sizes: 8 frames is larger than the 7 early labelled frames"):
        run_label_efficiency(out, replace(real, real_sizes=(2, 8)), DistEnv())
    with pytest.raises(ValueError, match="no CVAT task backup"):
        run_label_efficiency(out, replace(real, real=str(tmp_path)), DistEnv())


@pytest.mark.skipif(not (FIXTURE / "task_195" / "task.json").is_file(), reason=f"cvat-lus fixture not at {FIXTURE}")
def test_the_cvat_lus_clip_splits_into_early_and_late_frames(tmp_path: Path) -> None:
    data = import_real(find_task(FIXTURE), tmp_path / "real", 64)
    rows = read_manifest(data)
    assert len(rows) == 39 and {r["diagnosis"] for r in rows} == {"unknown"}  # no tag: sparse only
    assert "mask_dense" not in rows[0]
    with open(data / "manifest.csv", newline="") as fh:
        raw = list(csv.DictReader(fh))
    pool, test, info = split_clip(raw, LabelEfficiencyConfig())
    clip = next(iter(info.values()))
    assert len(pool) == 21 and len(test) == 16
    assert max(clip["pool_frames"]) + 10 < min(clip["test_frames"]) == 120
    assert import_real(find_task(FIXTURE), tmp_path / "real", 64) == data  # reused
