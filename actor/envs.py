"""Which arm the actor drives, and who the human is on it."""

from __future__ import annotations

from typing import Any


def make_env(name: str, seed: int | None, demo_noise: float, takeover_after: int = 0,
             cameras: bool = False, image_size: int = 128) -> tuple[Any, Any]:
    """Return (env, human): the arm/sim and the takeover device that produces human actions.

    'sim': the gym-hil Panda pick-cube with the scripted expert standing in for the person with
    the gamepad (it records the demonstrations and rescues stuck policy episodes).
    'replay:PATH': a recording replayed step by step; there is no human (the steps say who acted).
    """
    if name.startswith("replay:"):
        from hilrl.actor.replay import ReplaySource
        from hilrl.buffers.recording import RecordingError

        try:
            return ReplaySource(name.removeprefix("replay:")), None
        except RecordingError as exc:
            raise SystemExit(f"--env {name}: {exc}") from exc
    if name == "sim":
        from hilrl.actor.human import ScriptedTeleop
        from hilrl.hardware.expert import ScriptedExpert
        from hilrl.hardware.sim import SimPickCube

        expert = ScriptedExpert(noise=demo_noise, seed=None if seed is None else seed + 1)
        try:
            env = SimPickCube(seed=seed, cameras=cameras, image_size=image_size)  # cameras: no privileged state
        except ValueError as exc:
            raise SystemExit(f"--env sim: {exc} (--sim-image-size)") from exc
        return env, ScriptedTeleop(expert, takeover_after, scene=env.scene)
    raise SystemExit(f"unknown --env {name!r}; supported: sim, replay:PATH, so101, so100")


def make_real_arm(cfg) -> tuple[Any, Any]:
    """An SO-101/SO-100 follower (+ cameras) and the takeover device, from an ActorConfig.

    Errors name the device, the port tried and what to check; an uncalibrated arm is refused with
    lerobot's calibration command (the actor never starts an interactive calibration).
    """
    from hilrl.hardware.cameras import CameraSpec
    from hilrl.hardware.so_arm import ArmConfig, ArmError, SOArm

    if cfg.robot_port is None:
        raise SystemExit(f"--env {cfg.env} needs --robot-port (find it with: lerobot-find-port)")
    if cfg.action_mode == "joint" and getattr(cfg, "checkpoint", None) is None and not cfg.residual_base:
        raise SystemExit("--action-mode joint: the gamepad and keyboard take over in end-effector space, so a "
                         "human-in-the-loop session needs --action-mode ee (with --urdf-path); joint mode runs "
                         "a trained policy (--checkpoint) or a residual session on a joint-space base "
                         "(--residual-base, learner with --residual), with the buttons and e-stop but no takeover")
    cameras = []
    for item in cfg.cameras:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise SystemExit(f"--cameras {item!r}: expected NAME=INDEX_OR_PATH, e.g. front=0")
        cameras.append(CameraSpec(name, int(where) if where.isdigit() else where))
    arm_cfg = ArmConfig(port=cfg.robot_port, model=cfg.env, robot_id=cfg.robot_id,
                        calibration_dir=cfg.calibration_dir, action_mode=cfg.action_mode, cameras=cameras,
                        max_steps=cfg.max_episode_steps,
                        urdf_path=None if cfg.urdf_path is None else str(cfg.urdf_path),
                        ee_step_m=cfg.ee_step_m,
                        rest_pose=tuple(cfg.rest_pose) or None, rest_speed_deg_s=cfg.rest_speed_deg_s,
                        fps=cfg.fps or 30)
    if cfg.workspace:  # lerobot's EEBoundsAndSafety clips to the same box (our clamp counts it first)
        arm_cfg.ee_bounds = (tuple(cfg.workspace[:3]), tuple(cfg.workspace[3:]))
    try:
        arm = SOArm(arm_cfg).connect()
    except (ArmError, ConnectionError, OSError, ValueError) as exc:
        raise SystemExit(f"--env {cfg.env}: {exc}") from exc
    try:
        if cfg.human_input == "keyboard":
            from hilrl.hardware.keyboard import KeyboardInput

            human = KeyboardInput()
        else:
            from hilrl.hardware.gamepad import GamepadInput

            human = GamepadInput()
    except (ConnectionError, RuntimeError) as exc:
        arm.close()
        raise SystemExit(f"--human-input {cfg.human_input}: {exc}") from exc
    if cfg.action_mode == "joint":
        from hilrl.actor.human import NoTakeover

        human = NoTakeover(human)
    return arm, human
