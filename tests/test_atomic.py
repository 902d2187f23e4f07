"""Atomic outputs: staged folders survive a failure at every write and rename, and a killed run's leftovers are
cleaned (issue 12, defects 1 and 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pleura import atomic
from pleura.atomic import printable, remove_stale, staged_folder


def _dead_pid() -> int:
    """The id of a process that has ended (reaped), so no live process has it for the test's duration."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(out: Path, version: str, overwrite: bool = True) -> None:
    with staged_folder(out, overwrite=overwrite) as tmp:
        for name in ("a.txt", "b.txt"):
            atomic.write_text(tmp / name, version)


def _state(out: Path) -> str | None:
    """Which complete output ``out`` holds: a version name, or ``None`` if absent; fails on a mixed or partial one."""
    if not out.exists():
        return None
    texts = {p.read_text() for p in out.iterdir()}
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"], "half-written output"
    assert len(texts) == 1, "output mixes two runs"
    return texts.pop()


def _count_calls(monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> list[str]:
    """Count (and at call ``fail_at`` fail) every rename, replace and write the staged output makes."""
    calls: list[str] = []
    real_replace, real_rename, real_path_rename = os.replace, os.rename, Path.rename

    def hook(kind: str) -> None:
        calls.append(kind)
        if fail_at is not None and len(calls) == fail_at:
            raise OSError(28, "No space left on device (injected)")

    def replace(a, b):  # type: ignore[no-untyped-def]
        hook("replace")
        return real_replace(a, b)

    def rename(a, b):  # type: ignore[no-untyped-def]
        hook("rename")
        return real_rename(a, b)

    def path_rename(self, target):  # type: ignore[no-untyped-def]
        hook("Path.rename")
        return real_path_rename(self, target)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(Path, "rename", path_rename)
    return calls


def test_a_failure_at_any_write_or_rename_leaves_the_old_or_the_new_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, "old")
    with monkeypatch.context() as m:
        calls = _count_calls(m, None)
        _write(out, "new")
    total = len(calls)
    assert total >= 4  # two file writes and two folder renames at least
    for k in range(1, total + 1):
        _write(out, "old")
        with monkeypatch.context() as m:
            _count_calls(m, k)
            with pytest.raises(OSError, match="injected"):
                _write(out, "new")
        assert _state(out) in ("old", "new"), k
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], f"leftovers after failing call {k}"


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    """Killed after ``out -> .out.old-PID`` and before ``.partial -> out``: the next run puts the old output back."""
    out = tmp_path / "out"
    _write(out, "old")
    pid = _dead_pid()
    out.rename(tmp_path / f".out.old-{pid}")
    (tmp_path / f".out.partial-{pid}").mkdir()
    with pytest.raises(ValueError, match="not empty"):  # the old output is back, so it is protected again
        _write(out, "new", overwrite=False)
    assert _state(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_partial_folders_of_dead_processes_are_removed(tmp_path):
    """A run killed with SIGKILL leaves ``.out.partial-PID`` behind; the next run removes it, a live run's stays."""
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f".out.partial-{dead}").mkdir()
    (tmp_path / f".out.partial-{alive}").mkdir()
    _write(tmp_path / "out", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.partial-{alive}", "out"]
    assert remove_stale(tmp_path, ".out.partial-*") == []


def test_simulate_removes_what_a_killed_run_left(tmp_path):
    """``pleura simulate`` killed with SIGKILL leaves its staging folder; a later run cleans it."""
    out = tmp_path / "sim"
    script = (
        "import os, signal\n"
        "from pleura.simulate import SimulationConfig, write_dataset\n"
        "def killed(k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"write_dataset(SimulationConfig(n=3, size=64, workers=1), {str(out)!r}, progress=killed)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -9
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".sim.partial"]
    from pleura.simulate import SimulationConfig, write_dataset

    write_dataset(SimulationConfig(n=3, size=64, workers=1), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]


def test_printable_keeps_valid_names_and_escapes_undecodable_bytes():
    assert printable("scan [copy].png") == "scan [copy].png"
    assert printable("caf\u00e9.png") == "caf\u00e9.png"
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name on a UTF-8 file system
    assert printable(name) == "caf\\xe9.png"
    printable(name).encode("utf-8")  # writable to a UTF-8 table


def test_written_files_follow_the_umask(tmp_path):
    """Outputs are readable as any file the user writes (mkstemp alone would make them 0600)."""
    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "table.csv", "a,b\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
