"""The `hilrl` command: one subcommand per entry of `SUBCOMMANDS`.

Each entry names its config dataclass and its runner as "module:attribute" so that only the
chosen subcommand's imports are paid for (`hilrl status` never imports torch).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from hilrl.deploy.configtools import parse_config


@dataclass(frozen=True)
class Subcommand:
    summary: str       # one line in `hilrl --help`
    description: str   # the top of `hilrl <name> --help`
    config: str        # "module:Dataclass"
    runner: str        # "module:function" taking the parsed config, returning the exit code
    logs: bool = False  # set up INFO logging on stderr before running
    verb: str = ""  # a config field that a leading bare word fills: `hilrl dataset export` = `--action export`


SUBCOMMANDS: dict[str, Subcommand] = {
    "learner": Subcommand(
        "train: gRPC server + TD3+BC offline, then online TD3 on the 50/50 human/policy buffer",
        "Run the learner: gRPC server, dual replay buffer, TD3+BC offline then online TD3.",
        "hilrl.learner.config:LearnerConfig", "hilrl.learner.server:serve", logs=True),
    "actor": Subcommand(
        "drive an arm (or the sim) with the current policy, stream every step to the learner",
        "Run an actor: control loop on the arm or sim, human takeover, streaming to the learner.",
        "hilrl.actor.config:ActorConfig", "hilrl.actor.main:run", logs=True),
    "demo": Subcommand(
        "learner + simulated arm as two processes on loopback: demos, training, evaluation",
        "Start a learner and a simulated arm as two processes over loopback gRPC, train "
        "(demos, offline TD3+BC, online TD3 with scripted takeovers), then evaluate.",
        "hilrl.deploy.demo:DemoConfig", "hilrl.deploy.demo:run_demo"),
    "status": Subcommand(
        "print the learner's status as one JSON object (exit 1 if it cannot be reached)",
        "Print the learner's status as one JSON object.",
        "hilrl.deploy.status:StatusConfig", "hilrl.deploy.status:print_status"),
    "health": Subcommand(
        "ask the learner's gRPC health service (no token needed); exit 0 when SERVING",
        "Ask the learner's gRPC health service (no token needed); exit 0 when it is SERVING.",
        "hilrl.deploy.status:StatusConfig", "hilrl.deploy.health:check_health"),
    "eval": Subcommand(
        "evaluate a trained policy (no noise, no takeover); prints one JSON object",
        "Evaluate a trained policy without exploration noise or takeover; prints one JSON object.",
        "hilrl.deploy.eval:EvalConfig", "hilrl.deploy.eval:run_eval"),
    "plot-q": Subcommand(
        "plot a checkpoint's Q values along stored or recorded episodes to a PNG",
        "Draw the critic's Q1(s, a) and Q1(s, pi(s)), the reward and the human-executed steps along "
        "episodes from a learner's buffer store or a step recording, to a PNG.",
        "hilrl.deploy.plot_q:PlotQConfig", "hilrl.deploy.plot_q:run_plot_q"),
    "dataset": Subcommand(
        "LeRobotDataset export (of a learner's store or a recording) and import (to a demos recording)",
        "hilrl dataset export --store DIR|--recording PATH --output DIR [--source human|policy|all], or "
        "hilrl dataset import --dataset DIR --output demos.zarr (see docs/datasets.md).",
        "hilrl.deploy.dataset:DatasetConfig", "hilrl.deploy.dataset:run_dataset", verb="action"),
    "outbox": Subcommand(
        "a stopped actor's unacknowledged batches: list them, set aside one the learner refuses",
        "hilrl outbox list --state-dir DIR, or hilrl outbox set-aside --state-dir DIR --seq N: moves batch N "
        "to DIR/outbox/set-aside/ (kept, never sent) so the actor sends the rest (see docs/troubleshooting.md).",
        "hilrl.deploy.outbox:OutboxConfig", "hilrl.deploy.outbox:run_outbox", verb="action"),
    "encoder": Subcommand(
        "pretrain a camera policy's image encoder on demos (for --algo.encoder-weights)",
        "Behaviour-clone the demonstrations to pretrain the image encoder ahead of time (the learner also does "
        "this itself, --encoder-pretrain-steps); writes the trunk for hilrl learner --algo.encoder-weights FILE.",
        "hilrl.deploy.encoder:EncoderConfig", "hilrl.deploy.encoder:run_encoder", logs=True),
    "record": Subcommand(
        "record human demonstrations to a file (seed a learner with: hilrl learner --demos FILE)",
        "Record human demonstrations to a file; seed a learner with it: hilrl learner --demos FILE.",
        "hilrl.deploy.record:RecordConfig", "hilrl.deploy.record:record", logs=True),
}

USAGE = "usage: hilrl <command> [options]   (hilrl <command> --help for every option)\n\ncommands:\n" + "".join(
    f"  {name:<9} {sub.summary}\n" for name, sub in SUBCOMMANDS.items())


def _load(ref: str):
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def _run(name: str, argv: list[str]) -> int:
    sub = SUBCOMMANDS[name]
    if sub.verb and argv and not argv[0].startswith("-"):
        argv = [f"--{sub.verb}", argv[0], *argv[1:]]
    cfg = parse_config(_load(sub.config), argv, f"hilrl {name}", sub.description)
    if sub.logs:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return _load(sub.runner)(cfg)


COMMANDS: dict[str, Callable[[list[str]], int]] = {name: partial(_run, name) for name in SUBCOMMANDS}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"hilrl: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
