"""Shared helpers: real hilrl processes on free loopback ports, and a stand-in learner link for loop tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LIVE: dict[int, subprocess.Popen] = {}  # pid -> every spawned process not yet reaped


def _kill_spawned_then_die(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP of the test run: kill the hilrl processes the tests spawned (each leads its own
    session, so nothing else reaches them and they would run on), then die of the same signal."""
    for pid, popen in list(_LIVE.items()):
        if popen.poll() is None:  # never signal a reaped pid: it may belong to someone else by now
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_configure(config: pytest.Config) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _kill_spawned_then_die)


class Proc:
    """A `hilrl ...` subprocess whose stdout/stderr go to files under the test's tmp dir."""

    def __init__(self, args: list[str], log_dir: Path, name: str) -> None:
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL="egl")
        self.popen = subprocess.Popen([sys.executable, "-m", "hilrl.deploy.cli", *args],
                                      stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"),  # noqa: SIM115
                                      env=env, start_new_session=True)
        _LIVE[self.popen.pid] = self.popen

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def _spawn(*args: str, name: str) -> Proc:
        p = Proc(list(args), tmp_path, name)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()
        _LIVE.pop(p.popen.pid, None)


def run_hilrl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="egl")
    return subprocess.run([sys.executable, "-m", "hilrl.deploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def hilrl_status(address: str) -> dict | None:
    """`hilrl status` as a user runs it; None when the learner cannot be reached."""
    r = run_hilrl("status", "--learner", address, "--timeout-s", "5")
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0,
               diagnose: Callable[[], str] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")


def train_online(learner: Proc, actor: Proc, address: str, what: str, timeout: float = 150) -> dict:
    """Wait until the learner is online with more than 20 policy steps and the actor has applied weights v>=2,
    stop both (each must exit 0) and return the actor's one-line JSON summary."""

    def trained() -> dict | None:
        s = hilrl_status(address)
        ok = (s and s["actors"] and s["stage"] == "online" and s["buffers"]["policy"]["size"] > 20
              and s["actors"][0]["weight_version_applied"] >= 2)
        return s if ok else None

    wait_until(trained, timeout, what, diagnose=log_tails(learner=learner, actor=actor))
    assert actor.stop() == 0
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["weight_version"] >= 2 and summary["steps"] > summary["interventions"]
    assert learner.stop() == 0
    return summary


def log_tails(chars: int = 3000, **procs: Proc) -> Callable[[], str]:
    """A `diagnose` callable for `wait_until` and assertion messages: the last `chars` characters of each
    named process's stderr, read when it is called."""
    return lambda: "\n".join(f"--- {name}:\n{proc.stderr[-chars:]}" for name, proc in procs.items())


class Link:
    """Just what the actor loop reads from a learner link: an online learner that already sent weights."""

    def __init__(self, policy) -> None:
        self.stage, self.fatal, self.actor_id, self.weight_version_applied = "online", None, "t", 0
        self.loop_stats = None
        self.connected = threading.Event()
        self.connected.set()
        self._policy = (1, policy)

    def take_policy(self):
        new, self._policy = self._policy, None
        return new


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread for the test (2-core CI runners; other tests run alongside)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def ingest(core, actor_id: str, batches: list, weight_version_applied: int = 0) -> list[bool]:
    """What the service does with one stream's batches (`Ingest.batches`: logged, then acknowledgeable), then wait
    until the writer has stored them and fed the buffers; returns the duplicate flags."""
    duplicates = core.ingest.batches(actor_id, batches, weight_version_applied)
    assert core.ingest.drain(60), "the ingest writer did not store the batches"
    return duplicates


def settled_status(address: str, timeout: float = 60.0) -> dict:
    """`hilrl status` once the learner has stored everything it acknowledged (its ingest backlog is empty):
    acknowledged means "in the ingest log"; the buffers and the counters follow when the writer has stored it."""
    return wait_until(lambda: (s := hilrl_status(address)) and s["ingest_backlog_batches"] == 0 and s, timeout,
                      "the learner's ingest backlog to drain", interval=0.2)
