"""A test run stopped by SIGTERM takes the hilrl processes its tests spawned with it (they lead their own
sessions, so without the conftest handler they ran on, using CPU, after the run was gone)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_until

INNER = '''
import os
import time
from pathlib import Path

from conftest import free_port


def test_spawns_a_learner_and_waits(spawn, tmp_path):
    learner = spawn("learner", "--port", str(free_port()), "--output-dir", str(tmp_path / "out"), name="learner")
    Path(os.environ["CHILD_PID_FILE"]).write_text(str(learner.popen.pid))
    time.sleep(600)
'''


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (killed, not yet reaped) is not running
            return f.read().rsplit(") ", 1)[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_of_the_test_run_kills_the_spawned_processes(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "child.pid"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent), CHILD_PID_FILE=str(pid_file))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                            "--rootdir", str(inner), "--basetemp", str(tmp_path / "base"), "test_inner.py"],
                           env=env, cwd=inner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 120, "the inner test to spawn a learner")
        child = int(pid_file.read_text())
        assert alive(child)
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == -signal.SIGTERM
        wait_until(lambda: not alive(child), 30, f"the spawned learner {child} to die with the run")
    finally:
        if run.poll() is None:
            run.kill()
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(OSError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
