"""The `hilrl` command as operators use it: help, config errors, refusals with actionable messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port, run_hilrl


@pytest.mark.parametrize("command, expected", [
    ("learner", ["--port", "--output-dir", "--resume", "--insecure", "--demo-episodes", "--algo.tau"]),
    ("actor", ["--learner", "--env", "--actor-id", "--fps", "--max-episodes", "--state-dir"]),
    ("status", ["--learner"]),
    ("demo", ["--train-minutes", "--eval-episodes"]),
    ("encoder", ["--demos", "--output", "--steps"]),
    ("learner", ["--algo.feature-views", "--algo.freeze-encoder", "--human-capacity"]),
])
def test_every_subcommand_explains_its_options(command: str, expected: list[str]) -> None:
    r = run_hilrl(command, "--help")
    assert r.returncode == 0, r.stderr
    for flag in expected:
        assert flag in r.stdout


def test_top_level_usage_and_unknown_command() -> None:
    assert "learner" in run_hilrl("--help").stdout
    r = run_hilrl("train")
    assert r.returncode == 2 and "unknown command 'train'" in r.stderr


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "learner.yaml"
    cfg.write_text("port: 50099\nofline_steps: 10\n")
    r = run_hilrl("learner", "--config", str(cfg), "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "unknown key 'ofline_steps'" in r.stderr and "offline_steps" in r.stderr and str(cfg) in r.stderr


def test_unknown_option_is_named() -> None:
    r = run_hilrl("actor", "--learnr", "127.0.0.1:1")
    assert r.returncode == 2 and "--learnr" in r.stderr and "did you mean --learner" in r.stderr


def test_stable_flags_parse_exactly_as_written(tmp_path: Path) -> None:
    r = run_hilrl("learner", "--port", "50123", "--output-dir", str(tmp_path), "--resume", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "resume: true" in r.stdout and "port: 50123" in r.stdout
    r = run_hilrl("actor", "--learner", "10.0.0.5:50051", "--env", "sim", "--actor-id", "arm-2", "--fps", "0",
                  "--max-episodes", "3", "--ee-step-m", "0.02", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "actor_id: arm-2" in r.stdout and "fps: 0" in r.stdout and "max_episodes: 3" in r.stdout
    assert "ee_step_m: 0.02" in r.stdout


def test_status_of_a_learner_that_is_not_running_fails_cleanly() -> None:
    r = run_hilrl("status", "--learner", f"127.0.0.1:{free_port()}", "--timeout-s", "2")
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot reach the learner" in r.stderr


def test_plaintext_on_a_non_loopback_address_needs_insecure(tmp_path: Path) -> None:
    r = run_hilrl("learner", "--host", "0.0.0.0", "--port", str(free_port()), "--output-dir", str(tmp_path / "o"))
    assert r.returncode != 0 and "--insecure" in r.stderr and "loopback" in r.stderr


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"run_id": "x"}')
    r = run_hilrl("learner", "--port", str(free_port()), "--output-dir", str(out))
    assert r.returncode != 0 and "pass --resume" in r.stderr


def test_eval_prints_one_json_object_and_names_bad_checkpoints(tmp_path: Path) -> None:
    import json

    from hilrl.learner.networks import Policy, PolicyConfig, policy_to_safetensors_bytes

    untrained = Policy(PolicyConfig(state_dim=21, action_dim=4))
    untrained.set_normalization([0] * 21, [1] * 21, [-1, -1, -1, 0], [1, 1, 1, 2])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "policy.safetensors").write_bytes(policy_to_safetensors_bytes(untrained))
    r = run_hilrl("eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # the whole of stdout is one JSON object
    assert result["episodes"] == 2 and result["success_rate"] == 0.0 and "mean_return" in result

    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(policy_to_safetensors_bytes(Policy(PolicyConfig(state_dim=5, action_dim=4))))
    r = run_hilrl("eval", "--checkpoint", str(wrong), "--episodes", "1", timeout=120)
    assert r.returncode != 0 and "expects state 5" in r.stderr
    r = run_hilrl("eval", "--checkpoint", str(tmp_path / "nothing"), timeout=120)
    assert r.returncode != 0 and "no policy at" in r.stderr


def test_real_arm_refusals_say_what_to_do(tmp_path: Path) -> None:
    base = ["actor", "--env", "so101", "--state-dir", str(tmp_path / "s")]
    r = run_hilrl(*base)
    assert r.returncode != 0 and "--robot-port" in r.stderr and "lerobot-find-port" in r.stderr
    r = run_hilrl(*base, "--robot-port", "/dev/ttyNOPE", "--calibration-dir", str(tmp_path / "calib"))
    assert r.returncode != 0 and "no calibration file" in r.stderr
    assert "lerobot-calibrate --robot.type=so101_follower --robot.port=/dev/ttyNOPE" in r.stderr
    r = run_hilrl(*base, "--robot-port", "/dev/ttyNOPE", "--action-mode", "joint")
    assert r.returncode != 0 and "--action-mode ee" in r.stderr
    r = run_hilrl(*base, "--robot-port", "/dev/ttyNOPE", "--cameras", "front")
    assert r.returncode != 0 and "NAME=INDEX_OR_PATH" in r.stderr


def test_health_needs_no_token_while_status_does(spawn, tmp_path: Path) -> None:
    from conftest import wait_until

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "out"), "--token-file",
                    str(token), name="learner")
    address = f"127.0.0.1:{port}"
    r = wait_until(lambda: (r := run_hilrl("health", "--learner", address)).returncode == 0 and r, 60,
                   "the learner to report SERVING", diagnose=lambda: learner.stderr[-2000:])
    assert '"status": "SERVING"' in r.stdout
    r = run_hilrl("status", "--learner", address)
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    assert learner.stop() == 0
    r = run_hilrl("health", "--learner", address, "--timeout-s", "2")
    assert r.returncode == 1 and "cannot reach the learner" in r.stderr
