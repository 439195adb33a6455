"""Durable writes: file replacement (after a crash or power loss a file is either wholly old or wholly new), and
`BatchLog`, an append-only log whose records are durable once `append` returns.

Every file we replace in place (the store's commit, the learner's published weights and state,
checkpoints, the actor's outbox batches and its acknowledged sequence number) goes through
`atomic_write` (or `atomic_path` when a library writes the file itself): write a temporary file
next to it, flush and fsync it, rename it over the target, fsync the directory so the rename
itself survives. `replace_dir` does the same for a directory of such files (a checkpoint).
Temporary files end in ``.tmp``; a crash can leave one behind, never a torn target.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------ an append-only log with group commit

SEGMENT_BYTES = 64 << 20  # a new log segment after this many bytes
RECORD = struct.Struct("<IQI")  # magic, payload length, crc32 of the payload
MAGIC = 0x484C4731  # "HLG1"


class BatchLog:
    """Append-only segment files of records; `append` returns once its record is fsynced (one fsync serves every
    record written before it started: group commit)."""

    def __init__(self, path: Path, segment_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.segment_bytes = segment_bytes or SEGMENT_BYTES
        fresh = not self.path.is_dir()
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            fsync_path(self.path.parent)
        existing = self.segments()
        self.segment = existing[-1] + 1 if existing else 0  # the segment appends go to (opened on first use)
        self._fd: int | None = None
        self._size = 0
        self._cond = threading.Condition()
        self._written = self._synced = self._failed = 0  # record tickets: written, fsynced, lost to a failed fsync
        self._syncing = False

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.path.glob("*.log") if p.stem.isdigit())

    def _file(self, segment: int) -> Path:
        return self.path / f"{segment:012d}.log"

    def read(self) -> Iterator[tuple[int, memoryview]]:
        """(segment, payload) of every intact record, oldest first; a segment's reading ends at its first torn
        or damaged record."""
        for segment in self.segments():
            data = memoryview(self._file(segment).read_bytes())
            offset = 0
            while offset + RECORD.size <= len(data):
                magic, size, crc = RECORD.unpack_from(data, offset)
                payload = data[offset + RECORD.size:offset + RECORD.size + size]
                if magic != MAGIC or len(payload) != size or zlib.crc32(payload) != crc:
                    log.warning("%s: record at byte %d is torn or damaged; the segment ends there",
                                self._file(segment), offset)
                    break
                yield segment, payload
                offset += RECORD.size + size

    def append(self, parts: list[bytes | memoryview]) -> int:
        """Write one record (the concatenation of `parts`) and wait until it is fsynced; returns its segment.
        Raises OSError when the write or the fsync fails (the record then does not count as logged)."""
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        size = sum(len(p) for p in parts)
        with self._cond:
            if self._fd is None or self._size >= self.segment_bytes:
                self._rotate()
            assert self._fd is not None
            segment = self.segment
            try:
                _write_all(self._fd, [RECORD.pack(MAGIC, size, crc), *parts])
            except OSError:
                self._size = self.segment_bytes  # whatever part of it landed is skipped: continue in a new segment
                raise
            self._size += RECORD.size + size
            self._written += 1
            ticket = self._written
            while self._synced < ticket:
                if self._failed >= ticket:
                    raise OSError(errno.EIO, "the ingest log's fsync failed", str(self._file(segment)))
                if self._syncing:
                    self._cond.wait()
                    continue
                self._sync_locked()
        return segment

    def _sync_locked(self) -> None:
        """Become the one fsync in flight (the lock is released meanwhile) for every record written so far."""
        self._syncing, fd, upto = True, self._fd, self._written
        self._cond.release()
        try:
            os.fsync(fd)
            error = None
        except OSError as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._syncing = False
            self._cond.notify_all()
        if error is not None:
            self._failed = self._written  # every record in this segment since the last good fsync
            self._size = self.segment_bytes
            raise error
        self._synced = max(self._synced, upto)

    def _rotate(self) -> None:
        while self._syncing:
            self._cond.wait()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._synced < self._written:
                    self._sync_old(fd)
            finally:
                os.close(fd)
            self.segment += 1
        self._fd = os.open(self._file(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = 0
        fsync_path(self.path)  # the new segment's name survives a crash

    def _sync_old(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError:
            self._failed = self._written
            raise
        self._synced = self._written

    def drop(self, keep_from: int) -> None:
        """Delete the segments before `keep_from` (their records are stored); never the one being written."""
        for segment in self.segments():
            if segment < min(keep_from, self.segment):
                self._file(segment).unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("*.log"))

    def close(self) -> None:
        with self._cond:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, parts: list) -> None:
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        n = os.writev(fd, views[:1024])
        while n and views:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0], n = views[0][n:], 0
