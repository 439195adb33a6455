"""Durable file replacement: after a crash (or power loss) a file is either wholly old or wholly new.

Every file we replace in place (the store's commit, the learner's published weights and state,
checkpoints, the actor's outbox batches and its acknowledged sequence number) goes through
`atomic_write` (or `atomic_path` when a library writes the file itself): write a temporary file
next to it, flush and fsync it, rename it over the target, fsync the directory so the rename
itself survives. `replace_dir` does the same for a directory of such files (a checkpoint).
Temporary files end in ``.tmp``; a crash can leave one behind, never a torn target.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """The temporary name `path` is written under before the rename (`name.ext.tmp`, same directory)."""
    return path.with_name(path.name + TMP_SUFFIX)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path`: temporary file, flush + fsync, rename, fsync the directory. When writing
    fails (e.g. a full disk) the temporary file is removed and `path` is untouched."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)  # closed here; atomic_path fsyncs it before the rename


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a file name (e.g. safetensors' `save_file`): yields the temporary path to
    write; when the block ends without an exception, fsyncs it, renames it onto `path` and fsyncs the
    directory (as `atomic_write`). On an exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def replace_dir(tmp: Path, path: Path) -> None:
    """Make the finished directory `tmp` durable and move it to `path` (replacing any old one): fsync
    every file in it and the directory itself, rename, fsync the parent."""
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_replace(source: Path, path: Path) -> None:
    """Make `path` durably name the same (already durable) file as `source` without writing its bytes again: a
    hard link under the temporary name, renamed over `path`; copied (`atomic_write`) where links do not work."""
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write(path, Path(source).read_bytes())
        return
    os.replace(tmp, path)
    fsync_path(path.parent)
