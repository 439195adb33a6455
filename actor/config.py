"""The actor's typed configuration; --learner, --env, --actor-id, --fps, --max-episodes are stable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilrl.actor.success import SuccessDetectorConfig
from hilrl.buffers.options import opt
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
    ee_step_m: float = opt(0.01, "action mode ee: metres the end effector moves per action unit (must equal the "
                                  "--demo-map.ee-step-m the demonstrations were converted with)", group="real arm")
    max_episode_steps: int = opt(200, "real arm: steps before an episode is truncated", group="real arm")
    actor_id: str | None = opt(None, "stable name of this actor; none = the one stored in --state-dir, or a new one")
    state_dir: Path | None = opt(None, "where id, sequence numbers and the outbox live; "
                                       "none = ~/.local/state/hilrl/actors/<actor-id or 'default'>")
    new_run: bool = opt(False, "send unacknowledged batches recorded for another learner run to the learner's "
                               "current run (without it the actor stops and says so)")
    fps: int = opt(10, "control rate in Hz (0 = as fast as the sim steps; sim and replay only)")
    max_episodes: int = opt(0, "stop after this many episodes (0 = run until SIGINT/SIGTERM)")
    seed: int | None = opt(None, "seed of the sim, the exploration noise and the scripted human; none = random")
    sim_cameras: bool = opt(False, "--env sim: add the front and wrist cameras (uint8, --sim-image-size square) to "
                                   "the observation, so the learner trains a camera policy")
    sim_image_size: int = opt(128, "--env sim --sim-cameras: camera resolution in pixels (square; 32-512)")
    residual_base: str | None = opt(None, "residual mode: run this frozen base policy, 'expert' (the sim's scripted "
                                          "expert), 'checkpoint:PATH' (a learner --output-dir or policy file) or "
                                          "'lerobot:PATH' (a lerobot-train pretrained_model directory, ACT or "
                                          "Diffusion), add its action to every observation as 'base_action' and "
                                          "let the learner (started with --residual) train only a bounded correction")
    residual_base_map: tuple[str, ...] = opt((), "--residual-base lerobot:PATH: POLICY_KEY=HILRL_NAME entries naming "
                                                 "the observation each policy input is read from, e.g. "
                                                 "observation.state=joint_pos,observation.images.top=front; unnamed "
                                                 "inputs: observation.X and observation.images.X <- X, "
                                                 "observation.state <- joint_pos (arm) / agent_pos (sim)")
    residual_base_device: str | None = opt(None, "--residual-base lerobot:PATH: device to run the policy on (cpu, "
                                                 "cuda, mps); none = the device in its config.json")
    residual_bias: tuple[float, ...] = opt((), "--residual-base expert: a fixed DX,DY,DZ offset (action units) added "
                                               "to the expert's commands (a miscalibrated base, for studies)")
    exploration_noise: float = opt(0.1, "std of Gaussian exploration noise, as a fraction of each action's half-range")
    demo_noise: float = opt(0.1, "std of noise the scripted human adds to its demonstrations (sim only)")
    takeover_after: int = opt(50, "scripted takeover: the human takes over a policy episode not solved after "
                                   "this many steps (0 = never)")
    batch_steps: int = opt(32, "transitions per batch sent to the learner (a batch also closes at episode end)")
    flush_timeout_s: float = opt(30.0, "on exit, wait this long for the learner to acknowledge what is queued")
    outbox_max_mb: float = opt(1024.0, "unacknowledged data kept on disk before the actor stops starting episodes "
                                       "(the current one finishes; nothing is dropped)")
    max_message_mb: int = opt(16, "largest gRPC message sent or accepted, in MiB")
    checkpoint: Path | None = opt(None, "run this policy (a learner --output-dir or a policy .safetensors file) "
                                        "with no learner: nothing is streamed, no exploration noise, the sim's "
                                        "scripted takeover is off unless --schedule asks for human episodes; "
                                        "--record still records")
    schedule: str = opt("", "episode rhythm once a policy runs, e.g. 3h3p or human:3,policy:3 (3 human episodes, "
                            "then 3 policy episodes, repeated); sim: the scripted expert demonstrates the human "
                            "ones; real arm: the console says which kind is next. Empty = policy episodes only")
    on_learner_lost: Literal["keep", "hold"] = opt(
        "keep", "learner unreachable (not connected, or nothing acknowledged) for --learner-lost-after-s: keep "
                "running the last good policy, or hold: end the policy episode and start none until it is back")
    learner_lost_after_s: float = opt(5.0, "seconds without the learner before it counts as lost")
    watchdog_periods: float = opt(3.0, "a tick that comes later than this many control periods executes the hold "
                                       "action instead (counted as watchdog_holds; 0 = off; needs --fps > 0)")
    max_action_delta: float = opt(0.0, "largest change of any action entry from one step to the next, in "
                                       "action units (ee: steps and gripper command; joint: degrees); 0 = off",
                                  group="safety")
    workspace: tuple[float, ...] = opt((), "end-effector box XMIN,YMIN,ZMIN,XMAX,YMAX,ZMAX in metres (sim: "
                                           "world frame; real arm: robot base frame, passed to lerobot's EE bounds "
                                           "too); empty = the sim's own limits / lerobot's default bounds",
                                       group="safety")
    rest_pose: tuple[float, ...] = opt((), "real arm: joint positions (degrees, gripper 0..100, lerobot's motor "
                                           "order) to move to before every episode, then wait for the operator's "
                                           "go (gamepad LB / key g); empty = start where the arm is",
                                       group="real arm")
    rest_speed_deg_s: float = opt(30.0, "real arm: joint speed while moving to --rest-pose", group="real arm")
    success: SuccessDetectorConfig = field(
        default_factory=SuccessDetectorConfig,
        metadata={"help": "learned success detector: ends episodes and sets the reward; buttons always win"})
