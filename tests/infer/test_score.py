"""``pleura score``: zones from file names or a map, the 12- and 14-zone schemes, the exam table, total and chest
map, and bad input (unknown, duplicate or missing zones, unreadable clips) listed while the rest is scored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data.synthetic import write_clip
from pleura.infer.exam import SCHEMES, assign_zones, read_zone_map, score_exam, write_exam
from pleura.infer.predictor import ClipResult, Predictor
from pleura.simulate import simulate_clip


def _run(*args: object) -> tuple[int, str]:
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-zone exam of simulated clips named by zone, with bad input: a duplicate zone (R2), a name with no zone
    (notes.mp4), an unknown zone (R9), a corrupt clip (L4), and missing zones (R5, R6, L5, L6)."""
    root = tmp_path_factory.mktemp("exam") / "exam"
    root.mkdir()
    names = ["R1", "R2", "r2_again", "R3", "R4", "L1", "exam7-L2", "L3", "notes", "R9"]
    for k, name in enumerate(names):
        _, frames = simulate_clip(
            5, k, ("normal", "covid", "pneumonia")[k % 3], ("linear", "curvilinear")[k % 2], 96, 3
        )
        write_clip(root / f"{name}.mp4", [np.pad(f.image, ((8, 8), (16, 16))) for f in frames])
    (root / "L4.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    return root


def test_schemes_have_the_published_zone_counts():
    assert len(SCHEMES["14"]) == 14 and len(SCHEMES["12"]) == 12
    regions = [z.region for z in SCHEMES["14"] if z.side == "right"]
    assert regions.count("posterior") == 3 and regions.count("lateral") == 2 and regions.count("anterior") == 2
    assert SCHEMES["12"][4].label == "right posterior upper" and SCHEMES["14"][13].name == "L7"


def test_zone_names_are_read_from_file_names(tmp_path: Path):
    files = [Path(n) for n in ("R1.mp4", "exam3_l2.avi", "R01-b.mp4", "R7.mp4", "L1_R2.mp4", "BR3.mp4", "scan.mp4")]
    zones, unknown = assign_zones(files, "14")
    assert zones == {"R1": [Path("R1.mp4"), Path("R01-b.mp4")], "L2": [Path("exam3_l2.avi")], "R7": [Path("R7.mp4")]}
    problems = dict(unknown)
    assert "two zone names (L1, R2)" in problems[Path("L1_R2.mp4")]
    assert "no zone name (R1..R7, L1..L7)" in problems[Path("BR3.mp4")]  # a letter before R: not a zone token
    assert "no zone name" in problems[Path("scan.mp4")]
    zones, unknown = assign_zones([Path("R7.mp4")], "12")
    assert not zones and "unknown zone 'R7' for the 12-zone scheme" in unknown[0][1]
    with pytest.raises(ValueError, match="unknown zone scheme"):
        assign_zones(files, "13")


def test_a_zone_map_names_the_zones(tmp_path: Path):
    root = tmp_path / "exam"
    files = [root / "a" / "clip 1.mp4", root / "clip2.mp4", root / "clip3.mp4"]
    zones, unknown = assign_zones(files, "12", {"a/clip 1.mp4": "r1", "clip2.mp4": "L6"}, root=root)
    assert zones == {"R1": [files[0]], "L6": [files[1]]}
    assert unknown == [(files[2], f"{files[2]}: not in the zone map")]
    good = tmp_path / "map.json"
    good.write_text('{"x.mp4": "R1"}')
    assert read_zone_map(good) == {"x.mp4": "R1"}
    for text, message in (("{", "not JSON"), ('["R1"]', "JSON object"), ('{"x.mp4": 3}', "JSON object")):
        good.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_zone_map(good)


def test_score_exam_lists_bad_input_and_scores_the_rest(tmp_path: Path):
    files = [Path(f"/exam/{n}.mp4") for n in ("R1", "R2", "R3", "R3b", "L1", "L2", "L3", "X", "L4")]
    scores = {"R1": 2, "R2": 0, "L1": 3, "L2": None}

    def scorer(path: Path) -> tuple[int | None, str]:
        if path.stem == "L3":
            raise ValueError(f"{path}: cannot decode")
        return scores.get(path.stem, 1), "rule" if scores.get(path.stem, 1) is not None else "no pleural line"

    result = score_exam(files, scorer, "12")
    status = {z.zone: z.status for z in result.zones}
    assert status["R1"] == status["R2"] == status["L1"] == status["L4"] == "scored"
    assert status["R3"] == "duplicate" and status["L3"] == "failed" and status["L2"] == "not scored"
    assert status["R4"] == status["R5"] == status["L6"] == "missing"
    assert result.total == 2 + 0 + 3 + 1 and len(result.scored) == 4 and result.max_total == 36
    text = "\n".join(result.problems)
    assert "R3: duplicate zone" in text and "cannot decode" in text and "X.mp4: the file name holds no zone" in text
    assert "R4 (right lateral lower): missing" in text and "L2: /exam/L2.mp4: no pleural line" in text

    written = write_exam(result, tmp_path / "out", "demo")
    assert [p.name for p in written] == ["score.json", "score.csv", "score.md", "chest_map.png"]
    doc = json.loads((tmp_path / "out" / "score.json").read_text())
    assert doc["total"] == 6 and doc["zones_scored"] == 4 and doc["complete"] is False and len(doc["zones"]) == 12
    with open(tmp_path / "out" / "score.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and rows[0] == {"zone": "R1", "label": "right anterior upper", "status": "scored",
                                           "file": "/exam/R1.mp4", "score": "2", "rule": "rule"}  # fmt: skip
    md = (tmp_path / "out" / "score.md").read_text()
    assert "Total **6** of 12 over 4 scored zones" in md and "incomplete: only 4 of 12" in md
    assert Image.open(tmp_path / "out" / "chest_map.png").size[0] > 400

    nothing = score_exam([Path("/exam/R1.mp4")], lambda p: (None, "no pleural line found"), "14")
    assert nothing.total is None and nothing.to_dict()["total"] is None


def test_score_cli_on_simulated_clips_named_by_zone(exam: Path, tmp_path: Path):
    """The shipped model through the command: every bad input listed on stderr and in the table, the rest read;
    the exit status says whether any zone could be scored."""
    out = tmp_path / "score"
    code, output = _run("score", exam, "--scheme", "12", "--out", out)
    doc = json.loads((out / "score.json").read_text())
    assert code == (0 if doc["zones_scored"] else 1), output
    for text in ("R2: duplicate zone", "notes.mp4: the file name holds no zone", "unknown zone 'R9'", "L4.mp4",
                 "R5 (right posterior upper): missing"):  # fmt: skip
        assert text in output and any(text in p for p in doc["problems"]), text
    status = {z["zone"]: z["status"] for z in doc["zones"]}
    assert status["L4"] == "failed" and status["R2"] == "duplicate" and status["L6"] == "missing"
    assert {status[z] for z in ("R1", "R3", "R4", "L1", "L2", "L3")} <= {"scored", "not scored"}  # all were read
    assert sorted(p.name for p in out.iterdir()) == ["chest_map.png", "score.csv", "score.json", "score.md"]


def test_score_cli_totals_the_scored_zones(exam: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The command's success path, with each clip's severity fixed by its name (the shipped model finds no pleural
    line on these simulated clips, so it scores none of them)."""
    fixed = {"R1": 1, "R3": 2, "R4": 0, "L1": 3, "exam7-L2": 1, "L3": 2}

    def predict(self: Predictor, path: Path, *args: object, **kw: object) -> ClipResult:
        if Path(path).stem not in fixed:
            raise ValueError(f"{path}: not in this test's table")
        s = fixed[Path(path).stem]
        return ClipResult(str(path), {}, None, {}, severity=s, severity_rule=f"{s}: fixed by the test")

    monkeypatch.setattr(Predictor, "predict", predict)
    out = tmp_path / "score"
    code, output = _run("score", exam, "--scheme", "12", "--out", out)
    assert code == 0, output
    assert "total 9 over 6 of 12 zones (12-zone scheme)" in output
    assert "R2: duplicate zone" in output  # still listed
    md = (out / "score.md").read_text()
    assert "Total **9** of 18 over 6 scored zones" in md and "| L1 | left anterior upper | 3 | scored |" in md
    zmap = tmp_path / "zones.json"
    zmap.write_text(json.dumps({"R1.mp4": "L7", "L3.mp4": "R1"}))
    code, output = _run("score", exam, "--zones", zmap, "--out", tmp_path / "mapped")
    doc = json.loads((tmp_path / "mapped" / "score.json").read_text())
    assert code == 0 and doc["scheme"] == "14" and doc["total"] == 3  # L7 <- R1.mp4 (1), R1 <- L3.mp4 (2)
    assert {z["zone"]: z["score"] for z in doc["zones"] if z["score"] is not None} == {"L7": 1, "R1": 2}


def test_score_cli_takes_a_segmentation_unet(exam: Path, tmp_path: Path):
    """Severity needs the masks only: the shipped segmentation foundation, by name, scores an exam (it has no
    diagnosis head, which predict would refuse)."""
    out = tmp_path / "score"
    code, output = _run("score", exam, "--scheme", "12", "--model", "foundation-sparse-w16-128", "--out", out)
    doc = json.loads((out / "score.json").read_text())
    assert code == (0 if doc["zones_scored"] else 1), output
    assert "no diagnosis head" not in output and len(doc["zones"]) == 12
    assert {z["status"] for z in doc["zones"] if z["zone"] in ("R1", "R3", "L1")} <= {"scored", "not scored"}


def test_score_cli_bad_options(exam: Path, tmp_path: Path):
    code, output = _run("score", exam, "--scheme", "13", "--out", tmp_path / "a")
    assert code == 2 and "--scheme should be one of 14, 12" in output
    bad = tmp_path / "zones.json"
    bad.write_text("{not json")
    code, output = _run("score", exam, "--zones", bad, "--out", tmp_path / "b")
    assert code == 2 and "zones.json: the zone map is not JSON" in output
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _run("score", empty, "--out", tmp_path / "c")
    assert code == 2 and "holds no image" in output
    code, output = _run("score", exam, "--out", exam / "inside")
    assert code == 2 and "overlap" in output
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))
