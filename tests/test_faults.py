"""Fault injection with real processes over loopback: learner SIGKILLs, a link partition, an actor SIGKILL.

Every test ends with the same exactly-once check, by content: each step the learner's store holds
for an actor (read back with `BufferStore`) is compared, by a hash of everything in it, with what
that actor recorded sending (`--record`): the two multisets must be equal, so nothing is missing
and nothing is stored twice.

The learners here wait for more demonstrations than they will ever get (no training), so the CPU
goes to streaming; the sim actors run at 50 Hz.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import free_port, hilrl_status, log_tails, settled_status, wait_until
from tcp_proxy import TcpProxy

from hilrl.actor.outbox import JOURNAL, read_journal
from hilrl.buffers.assembler import Step
from hilrl.buffers.durable import BatchLog
from hilrl.buffers.recording import read_steps
from hilrl.buffers.spec import Spec
from hilrl.buffers.store import BufferStore
from hilrl.learner.ingest import unpack_items
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb

pytestmark = pytest.mark.e2e

WAITING_LEARNER = ["--demo-episodes", "100000", "--torch-threads", "1", "--hidden", "32,32"]


def learner_args(port: int, out: Path, *extra: str) -> list[str]:
    return ["learner", "--port", str(port), "--output-dir", str(out), *WAITING_LEARNER, *extra]


def actor_args(target: str, state: Path, actor_id: str, *extra: str) -> list[str]:
    return ["actor", "--learner", target, "--env", "sim", "--fps", "50", "--state-dir", str(state),
            "--actor-id", actor_id, *extra]


def fingerprint(step: Step) -> tuple:
    """Everything a stored step carries, the arrays as one sha256."""
    digest = hashlib.sha256(step.action.tobytes())
    for obs in (step.obs, step.final_obs or {}):
        for name in sorted(obs):
            digest.update(name.encode() + obs[name].tobytes())
    return (step.episode, step.step, step.is_intervention, step.reward, step.terminated, step.truncated,
            digest.hexdigest())


def stored_by_actor(out: Path) -> dict[str, list[Step]]:
    """The learner's store (after the learner has exited), grouped by the actor that sent each step."""
    spec = Spec.from_dict(json.loads((out / "spec.json").read_text()))
    steps: dict[str, list[Step]] = {}
    for source, item in BufferStore(out / "store", spec).replay():
        if isinstance(item, Step):
            steps.setdefault(source, []).append(item)
    return steps


def recorded(path: Path) -> list[Step]:
    return list(read_steps(path)[1])


def assert_exactly_once(stored: Iterable[Step], sent: Iterable[Step], who: str) -> int:
    got, want = Counter(map(fingerprint, stored)), Counter(map(fingerprint, sent))
    doubles = {k: n for k, n in got.items() if n > 1}
    missing, extra = want - got, got - want
    assert not doubles, f"{who}: {len(doubles)} steps stored more than once, e.g. {next(iter(doubles))}"
    assert not missing and not extra, (f"{who}: {sum(missing.values())} sent steps missing from the store "
                                       f"{sorted(missing)[:3]}, {sum(extra.values())} stored steps never sent "
                                       f"{sorted(extra)[:3]}")
    return sum(want.values())


def received(address: str) -> dict[str, int]:
    s = hilrl_status(address) or {"actors": []}
    return {a["id"]: a["transitions_received"] for a in s["actors"]}


def stop_actor(actor) -> dict:
    assert actor.stop(timeout=90) == 0, actor.stderr[-3000:]
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["unacked"] == 0, summary
    return summary


def test_learner_sigkilled_three_times_while_two_actors_stream(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    rng = random.Random()
    learner = spawn(*learner_args(port, out), name="learner0")
    ids = ("arm-a", "arm-b")
    actors = {i: spawn(*actor_args(address, tmp_path / i, i, "--seed", str(n), "--record", str(tmp_path / f"{i}.zarr")),
                       name=i) for n, i in enumerate(ids)}
    logs = log_tails(learner=learner, **actors)

    kills = []
    for kill in range(3):
        floor = received(address)
        wait_until(lambda f=floor: all(received(address).get(i, 0) > f.get(i, 0) for i in ids), 120,
                   f"both actors streaming to learner #{kill}", interval=0.5, diagnose=logs)
        delay = rng.uniform(0.5, 3.0)
        time.sleep(delay)
        learner.popen.send_signal(signal.SIGKILL)
        learner.popen.wait()
        kills.append(round(delay, 2))
        time.sleep(rng.uniform(0.5, 2.0))  # the actors keep recording into their outboxes meanwhile
        learner = spawn(*learner_args(port, out, "--resume"), name=f"learner{kill + 1}")
        # what it rebuilt from the store; more than that means the actors reconnected and resent
        wait_until(lambda: hilrl_status(address), 60, f"learner #{kill + 1} to serve", interval=0.2, diagnose=logs)
    floor = received(address)
    wait_until(lambda: all(received(address).get(i, 0) > floor.get(i, 0) + 50 for i in ids), 120,
               "both actors streaming to the last learner", interval=0.5, diagnose=logs)

    summaries = {i: stop_actor(a) for i, a in actors.items()}
    status = settled_status(address)
    assert learner.stop() == 0
    stored = stored_by_actor(out)
    assert sorted(stored) == sorted(ids)
    for i in ids:
        n = assert_exactly_once(stored[i], recorded(tmp_path / f"{i}.zarr"), i)
        assert n == summaries[i]["steps"]
        assert "resending" in actors[i].stderr, f"{i} never had to resend:\n{actors[i].stderr[-3000:]}"
        assert "unreachable" in actors[i].stderr
    # the last learner rebuilt its buffers from the store and then took the rest: every step once
    assert {a["id"]: a["transitions_received"] for a in status["actors"]} == {i: summaries[i]["steps"] for i in ids}
    print(f"learner SIGKILLed {len(kills)} times (after {kills} s of streaming); stored "
          f"{ {i: len(stored[i]) for i in ids} } steps, exactly as recorded")


def test_link_partition_is_detected_and_healed_without_loss(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, out, "--keepalive-s", "2"), name="learner")
    with TcpProxy(port) as proxy:
        actor = spawn(*actor_args(proxy.address, tmp_path / "arm", "arm", "--keepalive-s", "2", "--seed", "3",
                                  "--record", str(tmp_path / "sent.zarr")), name="actor")
        logs = log_tails(learner=learner, actor=actor)
        wait_until(lambda: received(address).get("arm", 0) > 50, 120, "the actor streaming through the proxy",
                   interval=0.5, diagnose=logs)
        assert proxy.connections == 1
        proxy.blackhole()
        started = time.monotonic()
        # both ends notice the half-open link by themselves: the actor's keepalive ping goes unanswered ...
        wait_until(lambda: "unreachable (UNAVAILABLE" in actor.stderr, 30, "the actor to notice the partition",
                   interval=0.2, diagnose=logs)
        noticed = time.monotonic() - started
        # ... and the learner's does too: it ends the actor's stream and marks it disconnected
        s = wait_until(lambda: (s := hilrl_status(address)) and not s["actors"][0]["connected"] and s, 30,
                       "the learner to drop the half-open stream", interval=0.5, diagnose=logs)
        during = s["actors"][0]["transitions_received"]
        time.sleep(3)  # the actor retries into the void (its Hello times out) and keeps recording
        assert received(address)["arm"] == during, "steps got through a blackholed link"
        assert actor.popen.poll() is None
        proxy.heal()
        wait_until(lambda: received(address)["arm"] > during + 100, 120, "the backlog to arrive after healing",
                   interval=0.5, diagnose=logs)
        assert proxy.connections >= 2, "the actor never reconnected"
        summary = stop_actor(actor)
    status = settled_status(address)
    assert learner.stop() == 0
    assert "resending" in actor.stderr
    n = assert_exactly_once(stored_by_actor(out)["arm"], recorded(tmp_path / "sent.zarr"), "arm")
    assert n == summary["steps"] == status["actors"][0]["transitions_received"]
    print(f"partition noticed by the actor after {noticed:.1f}s; {n} steps stored exactly once")


def test_actor_sigkilled_mid_episode_restarts_on_its_state_dir(spawn, tmp_path: Path) -> None:
    """What an actor SIGKILL costs, precisely:

    * every batch in its outbox (on disk) at the kill is resent by the restarted actor and stored once;
    * the steps of the current episode not yet put into a batch (fewer than ``--batch-steps``) are in
      the outbox's journal; the restarted actor turns them into a batch and they are stored once too;
    * the killed episode stays in the store as the prefix that was executed; its last step never gets a
      next observation, so the learner's assembler drops that one step from the replay buffers (and
      logs it) when the restarted actor's first episode (a new episode index) arrives.
    """
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    state = tmp_path / "arm"
    learner = spawn(*learner_args(port, out), name="learner")
    # small batches, so that the kill usually leaves a sent prefix of an unfinished episode (sim episodes are
    # shorter than the default 32-step batch, which closes at every episode end)
    first = spawn(*actor_args(address, state, "arm", "--seed", "5", "--batch-steps", "4"), name="actor1")
    logs = log_tails(learner=learner, actor=first)
    wait_until(lambda: received(address).get("arm", 0) > 100, 120, "the first actor streaming", interval=0.5,
               diagnose=logs)
    # Freeze the learner so acknowledgements stop and batches pile up in the outbox, then freeze the actor
    # mid-episode and photograph what is durable: the learner's store and the actor's outbox.
    learner.popen.send_signal(signal.SIGSTOP)
    time.sleep(random.uniform(1.0, 2.0))
    first.popen.send_signal(signal.SIGSTOP)
    shutil.copytree(out / "store", tmp_path / "store-at-kill")
    shutil.copytree(state / "outbox", tmp_path / "outbox-at-kill")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait()
    learner.popen.send_signal(signal.SIGCONT)

    spec = Spec.from_dict(json.loads((out / "spec.json").read_text()))
    at_kill = BufferStore(tmp_path / "store-at-kill", spec)  # opening it truncates what was not committed
    stored_seq = at_kill.last_seqs().get("arm", 0)
    durable = [step for source, step in at_kill.replay() if source == "arm" and isinstance(step, Step)]
    # acknowledged but not stored yet: in the learner's ingest log, which the next start stores (as it does below)
    for _, payload in BatchLog(tmp_path / "store-at-kill" / "log").read():
        meta, items = unpack_items(spec, payload)
        if meta["source"] == "arm" and meta["seq"] > stored_seq:
            durable += [s for s in items if isinstance(s, Step)]
            stored_seq = meta["seq"]
    pending = []
    for path in sorted((tmp_path / "outbox-at-kill").glob("*.batch")):
        batch = pb.TransitionBatch.FromString(path.read_bytes())
        if batch.seq > stored_seq:  # not yet stored (a batch stored but not yet acknowledged is skipped)
            pending += [s for s in codec.decode_items(batch, spec) if isinstance(s, Step)]
    assert pending, "the outbox held nothing unacknowledged at the kill; the test proves nothing"
    journal = [s for s in codec.decode_items(pb.TransitionBatch(items=read_journal(
        tmp_path / "outbox-at-kill" / JOURNAL)), spec) if isinstance(s, Step)]
    durable += pending + journal
    last = durable[-1]
    orphan = not (last.terminated or last.truncated)

    second = spawn(*actor_args(address, state, "arm", "--seed", "6", "--record", str(tmp_path / "after.zarr")),
                   name="actor2")
    logs = log_tails(learner=learner, actor=second)
    floor = received(address)["arm"]
    wait_until(lambda: received(address)["arm"] > floor + 100, 120, "the restarted actor streaming", interval=0.5,
               diagnose=logs)
    summary = stop_actor(second)
    status = settled_status(address)
    assert learner.stop() == 0

    assert "unacknowledged batches from an earlier run; they will be resent" in second.stderr
    assert "resending" in second.stderr
    if journal:  # the kill usually falls inside a batch (--batch-steps 4): its steps came back from the journal
        assert f"outbox: {len(journal)} steps of a batch the earlier run never closed" in second.stderr
    after = recorded(tmp_path / "after.zarr")
    assert min(s.episode for s in after) > last.episode  # the restart never reuses an episode index
    stored = stored_by_actor(out)["arm"]
    assert_exactly_once(stored, durable + after, "arm")
    assert len(after) == summary["steps"]
    killed = sorted(s.step for s in stored if s.episode == last.episode)
    assert killed == list(range(last.step + 1)), "the killed episode's sent prefix is not contiguous"
    # the buffers hold every stored step as a transition except the killed episode's unfinished last step
    assert status["actors"][0]["transitions_received"] == len(stored) - int(orphan)
    dropped = f"episode {last.episode} step {last.step} never got its next observation; dropped"
    assert (dropped in learner.stderr) == orphan, learner.stderr[-2000:]
    print(f"actor SIGKILL with {len(pending)} steps unacknowledged in its outbox and {len(journal)} in its journal: "
          "all resent and stored once; "
          f"killed episode {last.episode} kept as steps 0..{last.step}, "
          f"{'its last step dropped from the buffers' if orphan else 'it had ended'}")
