"""The actor's typed configuration; --learner, --env, --actor-id, --fps, --max-episodes are stable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hilrl.deploy.configtools import opt
from hilrl.protos.transport import ClientSecurity


@dataclass
class ActorConfig(ClientSecurity):
    """Everything `hilrl actor` needs (TLS and token options come from ``ClientSecurity``)."""

    learner: str = opt("127.0.0.1:50051", "learner address HOST:PORT")
    env: str = opt("sim", "what to drive: 'sim' (gym-hil Panda pick-cube, scripted expert as the human), or "
                          "'replay:PATH' (stream a recording made with --record through to the learner)")
    record: Path | None = opt(None, "also record every step sent to the learner into this new file (zarr)")
    human_input: Literal["gamepad", "keyboard"] = opt(
        "gamepad", "takeover device on a real arm (the sim's human is the scripted expert)", group="real arm")
    robot_port: str | None = opt(None, "--env so101/so100: the arm's serial port (find it with lerobot-find-port)",
                                 group="real arm")
    robot_id: str = opt("follower", "lerobot's robot id: names the calibration file <id>.json", group="real arm")
    calibration_dir: Path | None = opt(None, "lerobot calibration directory (none = lerobot's default)",
                                       group="real arm")
    cameras: tuple[str, ...] = opt((), "cameras as NAME=INDEX_OR_PATH, e.g. front=0,wrist=/dev/video2 "
                                       "(cropped and resized to 128x128)", group="real arm")
    action_mode: Literal["ee", "joint"] = opt("ee", "ee: [dx,dy,dz,gripper] like the sim and the gamepad (needs "
                                                    "--urdf-path); joint: absolute joint targets", group="real arm")
    urdf_path: Path | None = opt(None, "SO-101 URDF for end-effector control (action mode ee)", group="real arm")
    max_episode_steps: int = opt(200, "real arm: steps before an episode is truncated", group="real arm")
    actor_id: str | None = opt(None, "stable name of this actor; none = the one stored in --state-dir, or a new one")
    state_dir: Path | None = opt(None, "where id, sequence numbers and the outbox live; "
                                       "none = ~/.local/state/hilrl/actors/<actor-id or 'default'>")
    fps: int = opt(10, "control rate in Hz (0 = as fast as the sim steps; sim and replay only)")
    max_episodes: int = opt(0, "stop after this many episodes (0 = run until SIGINT/SIGTERM)")
    seed: int | None = opt(None, "seed of the sim, the exploration noise and the scripted human; none = random")
    exploration_noise: float = opt(0.1, "std of Gaussian exploration noise, as a fraction of each action's half-range")
    demo_noise: float = opt(0.1, "std of noise the scripted human adds to its demonstrations (sim only)")
    takeover_after: int = opt(50, "scripted takeover: the human takes over a policy episode not solved after "
                                   "this many steps (0 = never)")
    batch_steps: int = opt(32, "transitions per batch sent to the learner (a batch also closes at episode end)")
    flush_timeout_s: float = opt(30.0, "on exit, wait this long for the learner to acknowledge what is queued")
    outbox_max_mb: float = opt(1024.0, "unacknowledged data kept on disk before the actor stops starting episodes "
                                       "(the current one finishes; nothing is dropped)")
    max_message_mb: int = opt(16, "largest gRPC message sent or accepted, in MiB")
    wait_for_weights_s: float = opt(0.0, "give up waiting for the first weights after this long (0 = forever)")
