"""The learner's store on a disk that fills up, with a real learner and a real sim actor over loopback gRPC.

The store directory is a size-limited tmpfs that the test mounts (CI runs as root); the test fills it with a
file of its own while the actor streams. The learner must stop acknowledging, say why (its log, `hilrl
status`), keep the store consistent, and continue once the file is deleted; at the end the actor's recording
(`--record`) and the store hold the same steps: nothing acknowledged is lost, nothing is stored twice.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import free_port, hilrl_status, log_tails, wait_until
from test_faults import actor_args, assert_exactly_once, learner_args, received, recorded, stop_actor, stored_by_actor

from hilrl.buffers.assembler import Step
from hilrl.buffers.store import read_store

pytestmark = pytest.mark.e2e


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root); the write failures themselves "
                    "are covered without it by tests/test_store_faults.py")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); tests/test_store_faults.py covers the write "
                    "failures without it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Append to `path` until the disk is full; returns the bytes written (call again to take freed space)."""
    written = 0
    with open(path, "ab", buffering=0) as f:
        block = b"\0" * 65536
        while True:
            try:
                written += f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        try:
            while True:  # the last partial block
                written += f.write(b"\0" * 512)
        except OSError:
            pass
    return written


def test_a_full_disk_stops_acknowledging_and_storing_resumes_once_space_is_freed(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    with small_disk(out / "store", "8m") as disk:
        learner = spawn(*learner_args(port, out), name="learner")
        actor = spawn(*actor_args(address, tmp_path / "arm", "arm", "--seed", "4", "--record",
                                  str(tmp_path / "sent.zarr")), name="actor")
        logs = log_tails(learner=learner, actor=actor)
        wait_until(lambda: received(address).get("arm", 0) > 50, 120, "the actor streaming", interval=0.5,
                   diagnose=logs)

        filler = disk / "filler"
        fill(filler)
        status = wait_until(lambda: (s := hilrl_status(address)) and s["store_problem"] and s, 30,
                            "the learner to report the full disk", interval=0.5, diagnose=logs)
        assert "the disk is full" in status["store_problem"], status["store_problem"]
        fill(filler)  # whatever the learner's roll-backs freed meanwhile
        frozen = received(address)["arm"]
        time.sleep(3)  # the actor keeps executing and recording; the learner acknowledges nothing
        fill(filler)
        assert received(address)["arm"] == frozen, "steps were stored on a full disk"
        assert actor.popen.poll() is None and learner.popen.poll() is None
        assert "not storing" in learner.stderr and "No space left on device" in learner.stderr, learner.stderr[-2000:]
        assert "did not store the batches (RESOURCE_EXHAUSTED" in actor.stderr, actor.stderr[-2000:]
        # consistent while full: a reader sees the committed steps, each once
        _, items, _ = read_store(disk)
        keys = Counter((source, s.episode, s.step) for source, s in items if isinstance(s, Step))
        assert keys and max(keys.values()) == 1

        filler.unlink()
        wait_until(lambda: received(address)["arm"] > frozen + 100, 60, "storing to resume after freeing space",
                   interval=0.5, diagnose=logs)
        assert hilrl_status(address)["store_problem"] == ""
        assert "the store is writable again" in learner.stderr
        summary = stop_actor(actor)
        assert learner.stop() == 0, learner.stderr[-3000:]
        n = assert_exactly_once(stored_by_actor(out)["arm"], recorded(tmp_path / "sent.zarr"), "arm")
        assert n == summary["steps"]
    print(f"disk full after {frozen} transitions: acknowledging stopped, {n} steps stored exactly once after "
          "space was freed")
