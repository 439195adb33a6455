"""Train the learned success detector on rendered sim frames and report precision/recall on held-out episodes.

    MUJOCO_GL=egl python benchmarks/success_detector.py --train-episodes 30 --test-episodes 15 \
        --cache /tmp/success-frames.npz --output success-detector.safetensors

Frames: gym-hil's pick-cube, front camera, shadows off, rendered at --render-size; every frame labelled
with the environment's own sparse success criterion (block lifted > 0.1 m). Train and held-out
episodes come from different seeds. Two tables: per frame, and per episode as the actor would use
it (`SuccessGate`: the episode counts as judged successful once --consecutive frames in a row are
above the threshold; "early" = judged successful before the block was actually lifted).
The trained detector is written with --output (for `hilrl actor --success.detector PATH`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from hilrl.hardware.success_frames import render_labelled_episodes
from hilrl.learner.success_net import DetectorSpec, precision_recall, train_detector


def frames(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    if args.cache and Path(args.cache).exists():
        with np.load(args.cache) as z:  # a local file this script wrote (no pickle: allow_pickle stays False)
            data = {k: z[k] for k in z.files}
        split = {p: {k[len(p) + 1:]: v for k, v in data.items() if k.startswith(p + "_")} for p in ("train", "test")}
        print(f"frames from {args.cache}")
        return split["train"], split["test"], float(data["render_s"])
    t0 = time.perf_counter()
    train = render_labelled_episodes(args.train_episodes, seed=args.seed, image_size=args.render_size)
    test = render_labelled_episodes(args.test_episodes, seed=args.seed + 1000, image_size=args.render_size)
    render_s = time.perf_counter() - t0
    if args.cache:
        np.savez(args.cache, render_s=render_s, **{f"train_{k}": v for k, v in train.items()},
                 **{f"test_{k}": v for k, v in test.items()})
    return train, test, render_s


def episode_verdicts(prob: np.ndarray, data: dict[str, np.ndarray], threshold: float, consecutive: int) -> dict:
    """Replay each held-out episode through the gate's rule: when would it have declared success?

    A verdict counts as correct only at or after the episode's first truly successful frame; one before it
    ("early") would have ended the episode with reward 1 before the block was up: a false success.
    """
    judged, correct, truth, lifted, early, delays = [], [], [], [], 0, []
    for ep in np.unique(data["episode"]):
        rows = np.flatnonzero(data["episode"] == ep)
        above, labels = prob[rows] > threshold, data["labels"][rows]
        streak, fired = 0, None
        for t, a in enumerate(above):
            streak = streak + 1 if a else 0
            if streak >= consecutive:
                fired = t
                break
        first = int(np.argmax(labels)) if labels.any() else None
        on_time = fired is not None and first is not None and fired >= first
        judged.append(fired is not None)
        lifted.append(bool(data["kind"][rows[0]] == 0))  # a *lift* episode: the block stays up
        correct.append(on_time)
        truth.append(first is not None)
        early += int(fired is not None and not on_time)
        if on_time:
            delays.append(fired - first)
    judged_n, correct_n, truth_n = sum(judged), sum(correct), sum(truth)
    return {"precision": correct_n / judged_n if judged_n else 0.0, "recall": correct_n / truth_n if truth_n else 0.0,
            "lift_recall": float(np.mean([c for c, k in zip(correct, lifted, strict=True) if k])) if any(lifted)
            else float("nan"), "episodes": len(judged), "successes": truth_n, "early": early,
            "delay": float(np.mean(delays)) if delays else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-episodes", type=int, default=30)
    ap.add_argument("--test-episodes", type=int, default=15)
    ap.add_argument("--render-size", type=int, default=64, help="rendered frame side (<= 128)")
    ap.add_argument("--image-sizes", default="64", help="comma-separated detector input sizes to compare")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--pad", type=int, default=0, help="DrQ random-shift pixels during training (0 = none)")
    ap.add_argument("--consecutive", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the rendered episodes and of the first training run")
    ap.add_argument("--train-seeds", type=int, default=1, help="training runs (seeds seed, seed+1, ...) per input size")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--cache", default="", help="npz file: reuse the rendered frames if it exists, else write them")
    ap.add_argument("--output", default="", help="write the detector of the first --image-sizes entry here")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(args.threads)

    train, test, render_s = frames(args)
    n_frames = len(train["labels"]) + len(test["labels"])
    print(f"train: {args.train_episodes} episodes, {len(train['labels'])} frames ({int(train['labels'].sum())} "
          f"success); held-out: {args.test_episodes} episodes, {len(test['labels'])} frames "
          f"({int(test['labels'].sum())} success); rendering {n_frames / max(render_s, 1e-9):.1f} frames/s")
    frame_rows, episode_rows = [], []
    runs = [(size, args.seed + k) for size in (int(s) for s in args.image_sizes.split(","))
            for k in range(args.train_seeds)]
    for i, (size, seed) in enumerate(runs):
        spec = DetectorSpec(image_size=size)
        t0 = time.perf_counter()
        det = train_detector(train["images"], train["labels"], spec, epochs=args.epochs, pad=args.pad,
                             seed=seed)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        prob = det.probabilities(test["images"])
        ms = (time.perf_counter() - t0) * 1e3 / len(prob)
        f = precision_recall(prob > spec.threshold, test["labels"])
        e = episode_verdicts(prob, test, spec.threshold, args.consecutive)
        n_params = sum(p.numel() for p in det.net.parameters())
        frame_rows.append(f"| {size}x{size} | {seed} | {n_params / 1e3:.0f} k | {train_s:.0f} s | "
                          f"{f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} | {f['accuracy']:.3f} | "
                          f"{f['tp']}/{f['fp']}/{f['fn']}/{f['tn']} | {ms:.2f} ms |")
        episode_rows.append(f"| {size}x{size} | {seed} | {args.consecutive} | {e['successes']}/{e['episodes']} | "
                            f"{e['precision']:.3f} | {e['recall']:.3f} | {e['lift_recall']:.3f} | "
                            f"{e['early']}/{e['episodes']} | "
                            f"{e['delay']:.2f} |")
        if i == 0 and args.output:
            det.save(args.output)
            print(f"detector written to {args.output}")
    print("\nper frame (held-out episodes)\n")
    print("| input | training seed | params | train time | precision | recall | F1 | accuracy | TP/FP/FN/TN | "
          "CPU ms/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(frame_rows))
    print("\nper episode, the actor's rule (success once `consecutive` frames in a row are above 0.5)\n")
    print("| input | training seed | consecutive | successful episodes | precision | recall | recall, lift episodes | "
          "judged success before the lift | mean delay (steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(episode_rows))


if __name__ == "__main__":
    main()
