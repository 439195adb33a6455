"""Sim steps/s with cameras under each rendering setting, and what each setting changes in the frames (issue 17).

    MUJOCO_GL=egl python benchmarks/sim_render.py [--steps 60]

One process, the same random actions from the same block position for every setting, so the frames of
two settings show the same scene and their mean absolute pixel difference says what the setting changes.
Settings: gym-hil's own (shadows, 8x multisampling), shadows off, hilrl's (`SimPickCube(cameras=True)`:
shadows and multisampling off), and hilrl's plus skybox and reflections off; the state-only sim for
reference. Then where one camera render's time goes: the arm's visual meshes against the rest.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from hilrl.hardware.sim import IMAGE_SHAPE, SimPickCube  # noqa: E402

FLAGS = mujoco.mjtRndFlag


def sim_with(shadows: bool, samples: int, skybox: bool = True, reflection: bool = True) -> SimPickCube:
    env = SimPickCube(seed=1, cameras=True)
    sim = env._env.unwrapped
    sim._viewer.close()
    sim._model.vis.quality.offsamples = samples
    sim._viewer = mujoco.Renderer(sim._model, height=IMAGE_SHAPE[0], width=IMAGE_SHAPE[1])
    for flag, on in ((FLAGS.mjRND_SHADOW, shadows), (FLAGS.mjRND_SKYBOX, skybox), (FLAGS.mjRND_REFLECTION, reflection)):
        sim._viewer.scene.flags[flag] = on
    return env


def play(env: SimPickCube, actions: np.ndarray) -> tuple[float, np.ndarray]:
    """Steps/s over `actions` from the same start, and the frames (front and wrist stacked)."""
    env.reset(seed=3)
    env.step(actions[0])  # warm-up
    env.reset(seed=3)
    frames, started = [], time.perf_counter()
    for a in actions:
        obs, _, terminated, truncated, _ = env.step(a)
        frames.append(np.concatenate([obs[c] for c in env.cameras]) if env.cameras else None)
        if terminated or truncated:
            break
    return len(frames) / (time.perf_counter() - started), np.stack(frames) if env.cameras else np.empty(0)


def render_ms(env: SimPickCube, groups: tuple[int, ...] | None, n: int = 20) -> float:
    """Milliseconds per front-camera render with only the geom `groups` shown (None: the default groups)."""
    sim = env._env.unwrapped
    option = mujoco.MjvOption()
    if groups is not None:
        option.geomgroup[:] = 0
        for g in groups:
            option.geomgroup[g] = 1
    sim._viewer.update_scene(sim._data, camera=sim.camera_id[0], scene_option=option)
    sim._viewer.render()
    started = time.perf_counter()
    for _ in range(n):
        sim._viewer.update_scene(sim._data, camera=sim.camera_id[0], scene_option=option)
        sim._viewer.render()
    return 1000 * (time.perf_counter() - started) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    actions = np.random.default_rng(0).uniform((-1, -1, -1, 0), (1, 1, 1, 2), (args.steps, 4)).astype(np.float32)
    print(f"load average {os.getloadavg()[0]:.1f}; renderer: MuJoCo {mujoco.__version__}, MUJOCO_GL="
          f"{os.environ['MUJOCO_GL']}")
    with SimPickCube(seed=1, cameras=True) as env:
        hilrl_rate, reference = play(env, actions)
        m = env._env.unwrapped._model
        mesh_groups = np.bincount(m.geom_group[m.geom_type == mujoco.mjtGeom.mjGEOM_MESH], minlength=4)
        costs = {"all shown": render_ms(env, None), "arm visual meshes (group 2) only": render_ms(env, (2,)),
                 "floor and block (group 0) only": render_ms(env, (0,)), "nothing": render_ms(env, ())}
    rows = [("gym-hil's (shadows, 8x multisampling)", dict(shadows=True, samples=8)),
            ("shadows off, 8x multisampling", dict(shadows=False, samples=8)),
            ("hilrl's: shadows and multisampling off", None),
            ("hilrl's + skybox and reflections off", dict(shadows=False, samples=0, skybox=False, reflection=False))]
    print("| rendering | steps/s (2 cameras, 128x128) | mean abs pixel difference to hilrl's (0-255) |")
    print("| --- | --- | --- |")
    for name, kw in rows:
        if kw is None:
            rate, diff = hilrl_rate, 0.0
        else:
            with sim_with(**kw) as env:
                rate, frames = play(env, actions)
            diff = float(np.abs(frames.astype(np.int16) - reference.astype(np.int16)).mean())
        print(f"| {name} | {rate:.1f} | {diff:.2f} |", flush=True)
    with SimPickCube(seed=1) as env:
        state_rate, _ = play(env, actions)
    print(f"| state only (no rendering) | {state_rate:.1f} | - |")
    print(f"\nrendering share of a hilrl camera step: {100 * (1 - hilrl_rate / state_rate):.0f} %")
    print("one front-camera render (hilrl's settings), ms: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items())
          + f"; {m.nmeshface:,} mesh faces, mesh geoms per group {mesh_groups.tolist()}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
