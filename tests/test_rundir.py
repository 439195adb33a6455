"""learner/rundir.py: the learner output folder's layout (user-visible: README, docs and scripts name these paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hilrl.learner.rundir import RunDir, resolve_policy_file


def test_the_layout_is_the_documented_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert {name: getattr(run, name).relative_to(tmp_path).as_posix() for name in (
        "run_marker", "spec", "store", "address", "state", "policy", "weights_version", "weight_history",
        "tensorboard", "checkpoints")} == {
        "run_marker": "run.json", "spec": "spec.json", "store": "store", "address": "learner.json",
        "state": "learner_state.json", "policy": "policy.safetensors", "weights_version": "weights_version.json",
        "weight_history": "weights", "tensorboard": "tensorboard", "checkpoints": "checkpoints"}
    assert run.weight_file(7) == tmp_path / "weights" / "v000007.safetensors"
    assert run.checkpoint(30) == tmp_path / "checkpoints" / "step-000000030"
    assert run.checkpoint_tmp(30).parent == run.checkpoints and run.checkpoint_tmp(30).name.startswith(".")


def test_only_complete_checkpoints_count_newest_last(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))  # a str root works too
    assert run.latest_checkpoint() is None
    for step in (100, 20):
        run.checkpoint(step).mkdir(parents=True)
        run.mark_complete(run.checkpoint(step))
    run.checkpoint(300).mkdir()  # a crash mid-write: no DONE marker
    run.checkpoint_tmp(400).mkdir()
    assert run.complete_checkpoints() == [run.checkpoint(20), run.checkpoint(100)]
    assert run.latest_checkpoint() == run.checkpoint(100)
    assert run.is_complete(run.checkpoint(20)) and not run.is_complete(run.checkpoint(300))


def test_resolve_policy_file_takes_a_run_or_a_file_and_names_both_when_neither(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    with pytest.raises(SystemExit, match="learner --output-dir .* or a policy .safetensors file"):
        resolve_policy_file(run.root)
    run.policy.write_bytes(b"x")
    assert resolve_policy_file(run.root) == run.policy == resolve_policy_file(run.policy)


def test_the_run_records_round_trip_and_the_newest_state_wins(tmp_path: Path) -> None:
    from hilrl.buffers.spec import Feature, Spec

    run = RunDir(tmp_path / "out")
    assert run.read_run_id() is None and run.read_spec() is None and run.read_published() is None
    assert run.read_state() is None
    run_id = run.start_run()
    assert run.read_run_id() == run_id
    spec = Spec(observation=(Feature("x", "float32", (3,)),),
                action=Feature("action", "float32", (2,), (-1, -1), (1, 1)))
    run.write_spec(spec)
    assert run.read_spec() == spec
    run.write_weights_version(1)
    assert run.read_published() == (1, b"")  # the version is written before the policy file
    for version in (1, 2, 3):
        run.write_weights(version, b"v%d" % version, keep=2)
    assert run.policy.read_bytes() == b"v3" and [p.name for p in run.weight_files()] == ["v000002.safetensors",
                                                                                         "v000003.safetensors"]
    run.write_state({"learner_step": 5})
    checkpoint = run.checkpoint(9)
    checkpoint.mkdir(parents=True)
    run.write_state({"learner_step": 9}, checkpoint / run.state.name)  # a kill before the run's file caught up
    run.mark_complete(checkpoint)
    assert run.read_state() == {"learner_step": 9}
    run.write_state({"learner_step": 12})
    assert run.read_state() == {"learner_step": 12}
