"""Which arm the actor drives, and who the human is on it."""

from __future__ import annotations

from typing import Any


def make_env(name: str, seed: int | None, demo_noise: float, takeover_after: int = 0) -> tuple[Any, Any]:
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
        return SimPickCube(seed=seed), ScriptedTeleop(expert, takeover_after)
    raise SystemExit(f"unknown --env {name!r}; supported: sim, replay:PATH")
