"""buffers/durable.py: a replaced file is wholly old or wholly new, and both the file and its directory are fsynced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hilrl.buffers import durable
from hilrl.buffers.durable import atomic_path, atomic_write, replace_dir


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """The paths fsynced, in order (os.fsync still runs)."""
    seen: list[Path] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", record)
    return seen


def test_atomic_write_replaces_the_file_and_fsyncs_it_then_its_directory(tmp_path: Path, fsynced: list[Path]) -> None:
    target = tmp_path / "commit.json"
    target.write_text("old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commit.json"]  # no temporary file left
    # the temporary file's data, then the directory that holds the rename
    assert fsynced == [tmp_path / "commit.json.tmp", tmp_path]


def test_atomic_path_renames_only_a_finished_file(tmp_path: Path, fsynced: list[Path]) -> None:
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    assert fsynced == []
    with atomic_path(target) as tmp:
        assert tmp == tmp_path / "weights.safetensors.tmp"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]
    assert fsynced == [tmp, tmp_path]


def test_replace_dir_fsyncs_every_file_and_replaces_an_old_directory(tmp_path: Path, fsynced: list[Path]) -> None:
    old = tmp_path / "step-1"
    old.mkdir()
    (old / "stale").write_text("x")
    new = tmp_path / ".tmp-step-1"
    new.mkdir()
    (new / "td3.json").write_text("{}")
    (new / "DONE").write_text("complete\n")
    replace_dir(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["DONE", "td3.json"] and not new.exists()
    assert sorted(p.name for p in fsynced[:2]) == ["DONE", "td3.json"]
    assert fsynced[2:] == [new, tmp_path]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "acked.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
