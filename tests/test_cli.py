"""The command line's guarantees: inputs are never written over, a batch survives bad names and bad files, a
full disk leaves nothing half-written, options are checked before any work (issue 12)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pleura import __version__
from pleura.cli import app
from pleura.data import read_manifest


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.fixture
def scans(sim_dataset: Path, tmp_path: Path) -> Path:
    """A folder of two simulated frames saved as PNG and JPEG."""
    folder = tmp_path / "scans"
    folder.mkdir()
    rows = read_manifest(sim_dataset)
    for row, name in zip(rows[:2], ("scan1.png", "scan2.jpg"), strict=True):
        Image.open(sim_dataset / row["image"]).convert("L").save(folder / name)
    return folder


def test_version():
    code, output = _run("--version")
    assert code == 0 and output.strip() == f"pleura {__version__}"


def test_predict_never_writes_over_its_inputs(bundle: Path, scans: Path):
    before = _digests(scans)
    code, output = _run("predict", scans, "--out", scans, "--model", bundle)
    assert code == 2 and "holds the input" in output
    code, output = _run("predict", scans, "--out", scans, "--model", bundle, "--overwrite")
    assert code == 2 and "holds the input" in output
    assert _digests(scans) == before


def test_predict_refuses_a_non_empty_out_and_replaces_it_whole(bundle: Path, scans: Path, tmp_path: Path):
    out = tmp_path / "pred"
    assert _run("predict", scans / "scan1.png", "--out", out, "--model", bundle)[0] == 0
    first = _digests(out)
    code, output = _run("predict", scans / "scan2.jpg", "--out", out, "--model", bundle)
    assert code == 2 and "not empty" in output and "--overwrite" in output
    assert _digests(out) == first  # the first run's tables are intact
    assert _run("predict", scans / "scan2.jpg", "--out", out, "--model", bundle, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["clips.csv", "frames.csv", "predictions.json", "scan2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "scans"]  # no staging folder left


def test_predict_out_that_is_a_file(bundle: Path, scans: Path, tmp_path: Path):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    code, output = _run("predict", scans, "--out", target, "--model", bundle)
    assert code == 2 and "exists and is not a folder" in output and "Traceback" not in output
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", ["study[/]x.png", "scan [copy].png", "[bold]red[/bold].png"])
def test_markup_in_file_names_is_printed_as_is(bundle: Path, scans: Path, tmp_path: Path, name: str):
    src = tmp_path / "odd"
    (src / Path(name).parent).mkdir(parents=True, exist_ok=True)
    (scans / "scan1.png").rename(src / name)
    (scans / "scan2.jpg").rename(src / "after.jpg")
    code, output = _run("predict", src / name, src / "after.jpg", "--out", tmp_path / "pred", "--model", bundle)
    assert code == 0, output
    assert f"{src / name}:" in output and "after.jpg:" in output
    assert (tmp_path / "pred" / "clips.csv").read_text().count("\n") == 3


def test_a_non_utf8_file_name_is_predicted_and_tabled(bundle: Path, scans: Path, tmp_path: Path):
    odd = os.fsencode(scans) + b"/caf\xe9.png"
    os.rename(os.fsencode(scans / "scan1.png"), odd)
    code, output = _run("predict", scans, "--out", tmp_path / "pred", "--model", bundle)
    assert code == 0, output
    table = (tmp_path / "pred" / "clips.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png" in table and "scan2.jpg" in table
    assert os.path.exists(odd)


def test_a_fifo_is_refused_and_the_rest_predicted(bundle: Path, scans: Path, tmp_path: Path):
    fifo = tmp_path / "stream.png"
    os.mkfifo(fifo)
    code, output = _run("predict", fifo, scans / "scan1.png", "--out", tmp_path / "pred", "--model", bundle)
    assert code == 1 and "stream.png: not a regular file" in output
    assert "predicted 1 of 2 files" in output


def test_a_full_disk_fails_one_file_cleanly_then_the_batch(
    bundle: Path, sim_dataset: Path, tmp_path: Path, monkeypatch
):
    """A full disk while a clip's video is written: that file fails with one line and leaves no partial clip; when
    the tables cannot be written either, the command fails with one line and leaves no output folder."""
    from pleura.data.synthetic import write_clip
    from pleura.infer import explain, report

    clip = tmp_path / "clip.mp4"
    frames = [np.asarray(Image.open(sim_dataset / r["image"]).convert("L")) for r in read_manifest(sim_dataset)[:4]]
    write_clip(clip, frames)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(explain.AnnotatedVideo, "add", full)
    out = tmp_path / "pred"
    code, output = _run("predict", clip, "--out", out, "--model", bundle, "--rate", "0")
    assert code == 1 and "No space left on device" in output and "Traceback" not in output
    assert not list(out.rglob("*.mp4")) and not list(out.rglob(".*"))
    monkeypatch.setattr(report, "write_text", full)
    code, output = _run("predict", clip, "--out", tmp_path / "pred2", "--model", bundle)
    assert code == 1 and "cannot write the predictions" in output and "No space left" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "pred"]


def test_a_run_folder_as_model_leaves_no_temporary_model(bundle: Path, scans: Path, tmp_path: Path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    stale = tmp / "pleura-model-abc-999999999"  # left by a killed run whose process is gone
    stale.mkdir()
    code, output = _run("predict", scans / "scan1.png", "--out", tmp_path / "pred", "--model", bundle.parent / "run")
    assert code == 0, output
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train-seg", "--out", "OUT", "--data", "DATA", "--batch-size", "0"], "--batch-size"),
        (["train-seg", "--out", "OUT", "--data", "DATA", "--epochs", "0"], "--epochs"),
        (["train-seg", "--out", "OUT", "--data", "FILE"], "is a file"),
        (["train-seg", "--out", "OUT", "--data", "DATA", "--lr", "0"], "--lr"),
        (["train-cls", "--out", "OUT", "--data", "DATA", "--folds", "0"], "--folds"),
        (["predict", "FILE", "--rate", "-1"], "--rate"),
        (["predict", "FILE", "--max-frames", "-5"], "--max-frames"),
        (["simulate", "--out", "OUT", "--n", "0"], "--n must be at least 1"),
        (["data", "import-pocus", "DATA", "--out", "OUT", "--rate", "0"], "--rate"),
        (["eval-cls", "--run", "DATA", "--n-boot", "0"], "--n-boot"),
    ],
)
def test_numeric_options_are_checked_before_any_work(tmp_path: Path, args: list[str], message: str):
    (tmp_path / "DATA").mkdir()
    (tmp_path / "FILE").write_text("x")
    names = {"OUT": tmp_path / "OUT", "DATA": tmp_path / "DATA", "FILE": tmp_path / "FILE"}
    code, output = _run(*[str(names.get(a, a)) for a in args])
    assert code == 2 and message in output
    assert not (tmp_path / "OUT").exists()


def test_a_photograph_gets_no_diagnosis_from_the_shipped_model(tmp_path: Path):
    """scikit-learn's sample photos got "pneumonia (0.76)" before (issue 12, defect 4): now no diagnosis at all."""
    import json

    from sklearn.datasets import load_sample_image

    for name in ("flower.jpg", "china.jpg"):
        Image.fromarray(load_sample_image(name)).save(tmp_path / name)
    code, output = _run("predict", tmp_path / "flower.jpg", tmp_path / "china.jpg", "--out", tmp_path / "pred")
    assert code == 0, output
    assert output.count("no diagnosis: not like lung ultrasound") == 2
    doc = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [f["diagnosis"] for f in doc["files"]] == [None, None]


def test_ood_warn_gives_a_marked_diagnosis_where_every_frame_is_out_of_distribution(tmp_path: Path):
    """``--ood warn`` (for lung ultrasound from a scanner unlike the training frames) gives the photograph a diagnosis,
    marked as not to be trusted in the line and the JSON; a policy that does not exist is refused
    before any work."""
    import json

    from sklearn.datasets import load_sample_image

    from pleura.infer.predictor import Predictor

    Image.fromarray(load_sample_image("flower.jpg")).save(tmp_path / "flower.jpg")
    code, output = _run("predict", tmp_path / "flower.jpg", "--ood", "warn", "--out", tmp_path / "pred")
    assert code == 0, output
    assert "but every frame is out of distribution: do not trust it" in output
    doc = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    (file,) = doc["files"]
    assert file["diagnosis"] in ("covid", "pneumonia", "normal") and file["ood_frames"] == len(file["frames"]) == 1
    result = Predictor("pocus-foundation-w16-128", ood_policy="warn").predict(tmp_path / "flower.jpg")
    assert result.all_ood and result.diagnosis == file["diagnosis"]
    withheld = Predictor("pocus-foundation-w16-128").predict(tmp_path / "flower.jpg")
    assert withheld.all_ood and withheld.diagnosis is None
    assert withheld.probabilities == pytest.approx(result.probabilities)
    code, output = _run("predict", tmp_path / "flower.jpg", "--ood", "maybe", "--out", tmp_path / "bad")
    assert code == 2 and "unknown OOD policy 'maybe'; choose one of: withhold, warn" in output
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="unknown OOD policy"):
        Predictor("pocus-foundation-w16-128", ood_policy="ignore")


def test_init_run_is_a_structured_option_and_the_old_form_still_works(tmp_path: Path, monkeypatch):
    """``--init dense --init-run RUN`` and ``--init dense:RUN`` give the same config; misuse is one line."""
    from pleura.train import cls

    seen = []
    monkeypatch.setattr(cls, "train_kfold", lambda cfg, *a, **k: seen.append(cfg.init))
    (tmp_path / "data").mkdir()
    (tmp_path / "seg").mkdir()
    base = ["train-cls", "--data", tmp_path / "data", "--out", tmp_path / "out"]
    assert _run(*base, "--init", "dense", "--init-run", tmp_path / "seg")[0] == 0
    assert _run(*base, "--init", f"dense:{tmp_path / 'seg'}")[0] == 0
    assert seen == [f"dense:{tmp_path / 'seg'}"] * 2
    code, output = _run(*base, "--init", "scratch", "--init-run", tmp_path / "seg")
    assert code == 2 and "--init-run goes with --init dense or --init sparse" in output
    code, output = _run(*base, "--init", "dense", "--init-run", tmp_path / "missing")
    assert code == 2 and "does not exist" in output


def test_cli_defaults_are_the_config_defaults():
    """A default lives in the config dataclass (a nested model config included); the command line's defaults must
    be the same values."""
    from pleura.data.pocus import PocusImportConfig
    from pleura.experiments.dense_vs_sparse import DenseVsSparseConfig
    from pleura.simulate import SimulationConfig
    from pleura.train.cls import ClsTrainConfig
    from pleura.train.seg import SegTrainConfig

    commands = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    groups = {c.name or c.callback.__name__: c.callback for g in app.registered_groups
              for c in g.typer_instance.registered_commands}  # fmt: skip
    pairs = [
        (commands["train-seg"], SegTrainConfig(), {"no_augment", "data_weights", "init"}),  # parsed from text
        (commands["train-cls"], ClsTrainConfig(), {"folds", "init_run"}),
        (commands["simulate"], SimulationConfig(), {"probe", "classes"}),
        (groups["import-pocus"], PocusImportConfig(), set()),
        (groups["dense-vs-sparse"], DenseVsSparseConfig(), set()),
    ]
    checked = 0
    for callback, config, skip in pairs:
        defaults = _config_defaults(config)
        for name, param in _cli_defaults(callback).items():
            if name in defaults and name not in skip:
                if name == "seeds" and isinstance(param, str):
                    param = tuple(int(x) for x in param.split(","))
                expected = defaults[name]
                assert param == expected, f"{type(config).__name__}.{name}: CLI {param!r} != config {expected!r}"
                checked += 1
    assert checked >= 26


def _config_defaults(config) -> dict:
    """A config's field values by name, the fields of nested configs (``model``, ``model.unet``) included; the
    outer config's own fields win."""
    from dataclasses import fields, is_dataclass

    out: dict = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            out = {**_config_defaults(value), **out}
        else:
            out[f.name] = value
    return out


def _cli_defaults(callback) -> dict:
    """A command's option defaults, by parameter name (typer options or Annotated defaults)."""
    import inspect

    out = {}
    for name, p in inspect.signature(callback).parameters.items():
        default = p.default
        out[name] = getattr(default, "default", default)
    return out
