"""Crash safety of every staged output: a failure injected at each file write and each rename leaves either the
old complete output or the new complete output, and no staging folder (issue 12).

Each producer is run once to count its writes and renames, then once per count with the k-th failing.
Training checkpoints have their own test in ``tests/train/test_checkpoint_crash.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data import read_manifest

Producer = Callable[[Path, int], None]  # writes output ``out`` in version 0 (old) or 1 (new)


class InjectedError(OSError):
    """The failure the test injects (a full disk at the k-th write or rename)."""


def _hooks(monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> list[str]:
    """Count every rename, replace and open-for-writing; raise ``InjectedError`` at call ``fail_at``."""
    calls: list[str] = []
    real = {"replace": os.replace, "rename": os.rename, "Path.rename": Path.rename, "open": builtins.open}

    def hit(kind: str) -> None:
        calls.append(kind)
        if fail_at is not None and len(calls) == fail_at:
            raise InjectedError(28, f"No space left on device (injected at {kind} {fail_at})")

    def replace(a, b, **kw):  # type: ignore[no-untyped-def]
        hit("replace")
        return real["replace"](a, b, **kw)

    def rename(a, b, **kw):  # type: ignore[no-untyped-def]
        hit("rename")
        return real["rename"](a, b, **kw)

    def path_rename(self, target):  # type: ignore[no-untyped-def]
        hit("Path.rename")
        return real["Path.rename"](self, target)

    def open_(file, mode="r", *args, **kw):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+") and not str(file).endswith(".pyc"):
            hit("open")
        return real["open"](file, mode, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(Path, "rename", path_rename)
    monkeypatch.setattr(builtins, "open", open_)
    return calls


def _digests(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def _check(
    produce: Producer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stable: Callable[[Path], dict | None],
    complete_batch: Callable[[Path], bool] = lambda out: False,
) -> int:
    """Run the injection loop; ``stable`` summarises an output folder by what must not vary between runs, and
    ``complete_batch`` accepts the complete output of a batch whose failing item was reported and left out."""
    out = tmp_path / "out"
    produce(tmp_path / "ref0", 0)
    produce(tmp_path / "ref1", 1)
    versions = [stable(tmp_path / "ref0"), stable(tmp_path / "ref1")]
    assert versions[0] != versions[1]
    with monkeypatch.context() as m:
        calls = _hooks(m, None)
        produce(tmp_path / "count", 1)
    total = len(calls)
    assert total >= 2
    for k in range(1, total + 1):
        produce(out, 0)
        with monkeypatch.context() as m:
            _hooks(m, k)
            with pytest.raises((InjectedError, SystemExit, ValueError, OSError)):
                produce(out, 1)
        assert stable(out) in versions or complete_batch(out), f"a half-written output after call {k} of {total} failed"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"staging folders left after a failure at call {k}: {leftovers}"
    return total


def test_simulate_output_is_old_or_new(tmp_path, monkeypatch):
    from pleura.simulate import SimulationConfig, write_dataset

    def produce(out: Path, version: int) -> None:
        write_dataset(SimulationConfig(n=2, size=64, seed=version, workers=1), out, overwrite=True)

    assert _check(produce, tmp_path, monkeypatch, _digests) >= 3


def test_import_pocus_output_is_old_or_new(fake_pocus, tmp_path, monkeypatch):
    from pleura.data.pocus import PocusImportConfig, import_pocus, read_source_manifest, select_files

    cfg = PocusImportConfig(size=64, workers=1, max_per_clip=2)
    files = [r["file"] for r in select_files(read_source_manifest(fake_pocus), cfg)][:3]

    def produce(out: Path, version: int) -> None:
        import_pocus(fake_pocus, out, cfg, overwrite=True, files=files[: 2 + version])

    _check(produce, tmp_path, monkeypatch, _digests)


def _predict_cli(*args: str) -> None:
    res = CliRunner().invoke(app, list(args))
    if res.exit_code:
        raise SystemExit(res.exit_code)


def _tables(folder: Path) -> dict | None:
    """The outputs of predict that do not vary between runs (the PNG panels carry a timing-free but
    float-rendered figure; their presence is what matters)."""
    if not folder.exists():
        return None
    names = sorted(p.name for p in folder.iterdir())
    return {"names": names, "clips": (folder / "clips.csv").read_text()}


@pytest.mark.slow
def test_predict_output_is_old_or_new(bundle, sim_dataset, tmp_path, monkeypatch):
    frames = [sim_dataset / r["image"] for r in read_manifest(sim_dataset)[:2]]
    src = tmp_path / "src"
    src.mkdir()
    for k, f in enumerate(frames):
        Image.fromarray(np.asarray(Image.open(f).convert("L"))).save(src / f"scan{k}.png")

    def produce(out: Path, version: int) -> None:
        inputs = [str(src / "scan0.png")] + ([str(src / "scan1.png")] if version else [])
        _predict_cli("predict", *inputs, "--model", str(bundle), "--out", str(out), "--overwrite")

    def complete_batch(out: Path) -> bool:
        """Every file in the tables has its panel, and the tables agree: one input failed and was left out."""
        doc = json.loads((out / "predictions.json").read_text())
        names = [Path(f["path"]).stem for f in doc["files"]]
        rows = (out / "clips.csv").read_text().splitlines()[1:]
        return len(rows) == len(names) >= 1 and all((out / f"{n}.png").is_file() for n in names)

    _check(produce, tmp_path, monkeypatch, _tables, complete_batch)


@pytest.mark.slow
def test_eval_model_output_is_old_or_new(bundle, sim_dataset, tmp_path, monkeypatch):
    from pleura.evaluate.external import evaluate_model

    def produce(out: Path, version: int) -> None:
        evaluate_model(bundle, sim_dataset, out, n_boot=5 + version * 5, overwrite=True)

    def stable(folder: Path) -> dict | None:
        if not folder.exists():
            return None
        return {"names": sorted(p.name for p in folder.rglob("*")), "json": (folder / "eval.json").read_text()}

    _check(produce, tmp_path, monkeypatch, stable)
