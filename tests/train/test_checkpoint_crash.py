"""Checkpoints survive a kill at any point of a save: every rename (and every deletion) of a save is
made to fail in turn, and ``recover_checkpoint`` / ``fit(resume=True)`` must then end where an
uninterrupted run ends: the same weights, one ``metrics.jsonl`` line per epoch, no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from kit import Interrupt, simulated, strip_timing
from safetensors.torch import load_file

from pleura.models import UNet, UNetConfig
from pleura.models.checkpoint import MARKER, MODEL_FILE, CheckpointError, read_checkpoint, verify_checkpoint
from pleura.train import checkpoint as ckpt
from pleura.train.distributed import DistEnv
from pleura.train.seg import SegTrainConfig, SegTrainer

TINY = {"model": UNetConfig(width=4, depth=2), "batch_size": 4, "epochs": 3, "augment": True, "patience": 100}


class Killed(BaseException):
    """Stands for a kill -9: a BaseException, so no ``except Exception`` or ``except OSError`` can swallow it."""


class Faults:
    """Counts every rename/replace/rmtree while armed and 'kills' the process at the ``fail_at``-th one.

    ``os.replace``, ``os.rename``, ``Path.rename``, ``Path.replace`` and ``shutil.rmtree`` are all patched
    (the ``Path`` methods call the original ``os`` functions, so one call counts once). A failing rmtree first
    deletes half the folder's files, as a kill in the middle of the deletion would.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed, self.count, self.fail_at = False, 0, None
        self.calls: list[str] = []
        os_replace, os_rename, rmtree = os.replace, os.rename, shutil.rmtree

        def hit(what: str, path: Any) -> None:
            if not self.armed:
                return
            self.count += 1
            self.calls.append(f"{what} {Path(path).name}")
            if self.count == self.fail_at:
                if what == "rmtree" and Path(path).is_dir():
                    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                    for p in files[: len(files) // 2 + 1]:
                        p.unlink()
                raise Killed(f"killed at call {self.count}: {self.calls[-1]}")

        def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            hit("replace", src)
            os_replace(src, dst, *a, **k)

        def rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            hit("rename", src)
            os_rename(src, dst, *a, **k)

        def path_rename(self_: Path, target: Any) -> Path:
            hit("rename", self_)
            os_rename(self_, target)
            return Path(target)

        def path_replace(self_: Path, target: Any) -> Path:
            hit("replace", self_)
            os_replace(self_, target)
            return Path(target)

        def fake_rmtree(path: Any, *a: Any, **k: Any) -> None:
            hit("rmtree", path)
            rmtree(path, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(Path, "rename", path_rename)
        monkeypatch.setattr(Path, "replace", path_replace)
        monkeypatch.setattr(shutil, "rmtree", fake_rmtree)

    def run(self, fn: Callable[[], Any], fail_at: int | None, armed: bool = True) -> bool:
        """Call ``fn`` (armed from the start, or once something arms it); True when it was 'killed'."""
        self.armed, self.count, self.fail_at, self.calls = armed, 0, fail_at, []
        try:
            fn()
        except Killed:
            return True
        finally:
            self.armed = False
        return False


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ write_checkpoint + recover_checkpoint


def _model(seed: int) -> tuple[UNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(num_classes=4, width=4, depth=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 16, 16)).sum().backward()
    opt.step()
    return model, opt


def _save(folder: Path, epoch: int, model: UNet, opt: torch.optim.Optimizer) -> None:
    ckpt.write_checkpoint(folder, model, {"epoch": epoch}, opt, {"epoch": epoch, "log": [{"epoch": epoch}]})


def _assert_one_of(folder: Path, models: dict[int, UNet]) -> int:
    """``folder`` is a whole checkpoint of one of ``models`` (weights, optimizer and state agree)."""
    state = json.loads((folder / "state.json").read_text())
    epoch = state["epoch"]
    assert epoch in models and state["log"] == [{"epoch": epoch}]
    weights = load_file(str(folder / MODEL_FILE))
    want = models[epoch].state_dict()
    assert weights.keys() == want.keys() and all(torch.equal(weights[k], want[k]) for k in want)
    again, meta = read_checkpoint(folder)
    assert meta == {"epoch": epoch}
    assert ckpt.read_training_state(folder, torch.optim.AdamW(again.parameters()))["epoch"] == epoch
    return epoch


@pytest.mark.parametrize("first_save", [False, True], ids=["replace", "first"])
def test_write_checkpoint_killed_at_every_step_is_recovered(tmp_path, monkeypatch, first_save):
    faults = Faults(monkeypatch)
    (m1, o1), (m2, o2) = _model(1), _model(2)
    folder = tmp_path / "run" / "last"
    folder.parent.mkdir()
    models = {} if first_save else {1: m1}
    if not first_save:
        _save(folder, 1, m1, o1)
    probe = tmp_path / "probe" / "last"  # count the steps of one normal save
    shutil.copytree(folder.parent, probe.parent)
    assert not faults.run(lambda: _save(probe, 2, m2, o2), None)
    n = faults.count
    assert n >= (3 if first_save else 5), faults.calls  # two writes and the rename(s), at least
    seen = set()
    for k in range(1, n + 1):
        trial = tmp_path / f"k{k}" / "last"
        shutil.copytree(folder.parent, trial.parent)
        assert faults.run(lambda trial=trial: _save(trial, 2, m2, o2), k), f"no kill at step {k} of {n}"
        # a kill during recovery itself must be recoverable too
        m = 0
        while True:
            m += 1
            snap = tmp_path / f"k{k}r{m}" / "last"
            shutil.copytree(trial.parent, snap.parent)
            if not faults.run(lambda snap=snap: ckpt.recover_checkpoint(snap), m):
                break
            got = ckpt.recover_checkpoint(snap)
            assert _leftovers(snap.parent) == [], (k, m)
            if got is not None:
                _assert_one_of(snap, {**models, 2: m2})
        got = ckpt.recover_checkpoint(trial)
        assert _leftovers(trial.parent) == [], f"step {k} ({faults.calls[-1]}) left {_leftovers(trial.parent)}"
        if got is None:
            assert first_save and not trial.exists(), f"step {k}: the old checkpoint was lost"
            seen.add(None)
        else:
            assert got == trial
            seen.add(_assert_one_of(trial, {**models, 2: m2}))
        _save(trial, 3, m1, o1)  # and the next save works
        assert _assert_one_of(trial, {3: m1}) == 3 and _leftovers(trial.parent) == []
    assert 2 in seen  # a kill after the new checkpoint was finished keeps it


def test_a_half_written_temporary_folder_is_removed_never_promoted(tmp_path):
    model, opt = _model(1)
    run = tmp_path / "run"
    _save(run / "last", 1, model, opt)
    # a finished copy, then the same without its marker, or with a file cut short
    _save(tmp_path / "x" / "last", 2, *_model(2))
    unmarked = run / ".last.tmp-999"
    shutil.copytree(tmp_path / "x" / "last", unmarked)
    (unmarked / MARKER).unlink()
    cut = run / ".last.tmp-998"
    shutil.copytree(tmp_path / "x" / "last", cut)
    (cut / "optimizer.safetensors").write_bytes((cut / "optimizer.safetensors").read_bytes()[:-8])
    before = (run / "last" / MODEL_FILE).read_bytes()
    assert ckpt.recover_checkpoint(run / "last") == run / "last"
    assert _leftovers(run) == [] and (run / "last" / MODEL_FILE).read_bytes() == before

    # with last/ missing, neither is promoted: an unfinished copy is worth nothing
    shutil.rmtree(run / "last")
    for src, dst in ((tmp_path / "x" / "last", unmarked), (tmp_path / "x" / "last", cut)):
        shutil.copytree(src, dst)
    (unmarked / MARKER).unlink()
    (cut / "optimizer.safetensors").write_bytes(b"\0" * (cut / "optimizer.safetensors").stat().st_size)
    assert ckpt.recover_checkpoint(run / "last") is None
    assert not (run / "last").exists() and _leftovers(run) == []
    with pytest.raises(CheckpointError, match=r"\.last\.tmp-7: .*checkpoint\.json"):
        shutil.copytree(tmp_path / "x" / "last", run / ".last.tmp-7")
        (run / ".last.tmp-7" / MARKER).unlink()
        verify_checkpoint(run / ".last.tmp-7")


def test_reading_a_checkpoint_whose_save_was_cut_between_the_renames(tmp_path):
    model, opt = _model(1)
    run = tmp_path / "run"
    _save(run / "best", 1, model, opt)
    (run / "best").rename(run / ".best.tmp-5")  # as a kill between 'best -> .old' and '.tmp -> best' leaves it
    _, meta = read_checkpoint(run / "best")  # read-only: a reader never moves a trainer's files
    assert meta == {"epoch": 1} and (run / ".best.tmp-5").is_dir() and not (run / "best").exists()
    assert ckpt.recover_checkpoint(run / "best") == run / "best" and _leftovers(run) == []


# ------------------------------------------------------------------ fit(resume=True) after a kill


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these tiny models train dozens of times, and on a shared machine threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated(tmp_path_factory, "crash", n=6, seed=11, size=64, frames=1, workers=1)


@pytest.fixture(scope="module")
def straight(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    SegTrainer(SegTrainConfig(schema="dense", **TINY), tiny_data, run, DistEnv()).fit()
    return run


class ArmAt:
    """A progress reporter that arms ``faults`` for one epoch: its training, best/ and last/ saves and log."""

    def __init__(self, faults: Faults, epoch: int) -> None:
        self.faults, self.epoch = faults, epoch

    def start(self, description: str, total: int) -> None:
        if description.startswith(f"epoch {self.epoch}/"):
            self.faults.armed = True

    def advance(self, n: int, **info: float) -> None:
        pass

    def end_epoch(self, record: dict) -> None:
        if record["epoch"] == self.epoch:
            self.faults.armed = False


def _assert_same_run(run: Path, straight: Path, why: str) -> None:
    for name in ("last", "best"):
        a = load_file(str(straight / name / MODEL_FILE))
        b = load_file(str(run / name / MODEL_FILE))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{why}: {name}/ differs"
    rows = strip_timing(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3], f"{why}: metrics.jsonl epochs {[r['epoch'] for r in rows]}"
    assert rows == strip_timing(straight / "metrics.jsonl"), why
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3
    assert _leftovers(run) == [], f"{why}: left {_leftovers(run)}"


@pytest.mark.parametrize("epoch", [1, 2])
def test_resume_after_a_kill_at_every_step_of_an_epochs_saves(tiny_data, straight, tmp_path, monkeypatch, epoch):
    faults = Faults(monkeypatch)
    cfg = SegTrainConfig(schema="dense", **TINY)

    def fit(run: Path) -> None:
        SegTrainer(cfg, tiny_data, run, DistEnv(), progress=ArmAt(faults, epoch)).fit()

    assert not faults.run(lambda: fit(tmp_path / "probe"), None, armed=False)
    n = faults.count
    assert n >= 4, faults.calls  # last/ (at least two renames), the log, and for epoch 1 best/
    for k in range(1, n + 1):
        run = tmp_path / f"k{k}"
        assert faults.run(lambda run=run: fit(run), k, armed=False), f"no kill at step {k} of {n}"
        why = f"killed in epoch {epoch} at step {k}/{n} ({faults.calls[-1]})"
        SegTrainer(cfg, tiny_data, run, DistEnv()).fit(resume=True)
        _assert_same_run(run, straight, why)


def test_resume_after_a_kill_between_the_checkpoint_and_the_log(tiny_data, straight, tmp_path, monkeypatch):
    real = ckpt.write_checkpoint

    def write_then_die(folder: Path, *args: Any, **kwargs: Any) -> Path:
        out = real(folder, *args, **kwargs)
        if folder.name == "last" and (kwargs.get("state") or args[3])["epoch"] == 2:
            raise Killed("after last/ of epoch 2, before its metrics line")
        return out

    cfg = SegTrainConfig(schema="dense", **TINY)
    run = tmp_path / "run"
    monkeypatch.setattr(ckpt, "write_checkpoint", write_then_die)
    with pytest.raises(Killed):
        SegTrainer(cfg, tiny_data, run, DistEnv()).fit()
    monkeypatch.setattr(ckpt, "write_checkpoint", real)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the kill came before epoch 2's line
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')  # and a line torn by a kill is dropped too
    SegTrainer(cfg, tiny_data, run, DistEnv()).fit(resume=True)
    _assert_same_run(run, straight, "killed before epoch 2's metrics line")


KILL_SCRIPT = """
import os, sys
from pathlib import Path
import torch
from pleura.train.distributed import DistEnv
from pleura.models import UNetConfig
from pleura.train.seg import SegTrainConfig, SegTrainer

seen = 0
os_rename, os_replace = os.rename, os.replace

def die_at_second_promotion(src, dst, *a, real=None, **k):
    global seen
    if Path(src).name.startswith(".last.tmp-"):
        seen += 1
        if seen == 2:  # epoch 2's last/ is finished and set aside, not yet in place
            os._exit(137)
    return real(src, dst, *a, **k)

os.rename = lambda s, d, *a, **k: die_at_second_promotion(s, d, *a, real=os_rename, **k)
os.replace = lambda s, d, *a, **k: die_at_second_promotion(s, d, *a, real=os_replace, **k)
Path.rename = lambda self, t: (os.rename(self, t), Path(t))[1]
Path.replace = lambda self, t: (os.replace(self, t), Path(t))[1]
torch.set_num_threads(1)  # as in the straight run: the thread count changes the float sums
SegTrainer(SegTrainConfig(**{TINY!r}, schema="dense"), sys.argv[1], sys.argv[2], DistEnv()).fit()
"""


def test_resume_after_a_real_kill_between_the_two_renames(tiny_data, straight, tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(KILL_SCRIPT).replace("{TINY!r}", repr(TINY))
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_data), str(run)], capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr
    assert not (run / "last").exists()  # the state the defect report describes
    SegTrainer(SegTrainConfig(schema="dense", **TINY), tiny_data, run, DistEnv()).fit(resume=True)
    _assert_same_run(run, straight, "killed between the renames of epoch 2's last/")


@pytest.mark.slow
def test_torchrun_resume_restores_a_checkpoint_cut_between_the_renames(tiny_data, tmp_path, torchrun_cpu):
    run = tmp_path / "run"
    cfg = SegTrainConfig(
        schema="sparse", model=UNetConfig(width=4, depth=2), batch_size=2, epochs=2
    )  # as the command line below
    with pytest.raises(KeyboardInterrupt):
        SegTrainer(cfg, tiny_data, run, DistEnv(), progress=Interrupt(1)).fit()
    (run / "last").rename(run / ".last.tmp-4242")  # killed between 'last -> .old' and '.tmp -> last' ...
    (run / "metrics.jsonl").unlink()  # ... so epoch 1's line was never written
    torchrun_cpu(
        "train-seg", "--data", str(tiny_data), "--out", str(run), "--schema", "sparse",
        "--width", "4", "--depth", "2", "--batch-size", "2", "--epochs", "2", "--resume",
    )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] and summary["epochs_run"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "last" / "state.json").read_text())["epoch"] == 2 and _leftovers(run) == []
