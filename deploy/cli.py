"""The `hilrl` command: learner, actor, demo, status."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from hilrl.deploy.configtools import parse_config

USAGE = """usage: hilrl <command> [options]   (hilrl <command> --help for every option)

commands:
  learner   train: gRPC server + TD3+BC offline, then online TD3 on the 50/50 human/policy buffer
  actor     drive an arm (or the sim) with the current policy, stream every step to the learner
  demo      learner + simulated arm as two processes on loopback: demos, training, evaluation
  status    print the learner's status as one JSON object (exit 1 if it cannot be reached)
  health    ask the learner's gRPC health service (no token needed); exit 0 when SERVING
  eval      evaluate a trained policy (no noise, no takeover); prints one JSON object
  record    record human demonstrations to a file (seed a learner with: hilrl learner --demos FILE)
"""


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def learner(argv: list[str]) -> int:
    from hilrl.learner.config import LearnerConfig

    cfg = parse_config(LearnerConfig, argv, "hilrl learner",
                       "Run the learner: gRPC server, dual replay buffer, TD3+BC offline then online TD3.")
    _logging()
    from hilrl.learner.server import serve

    return serve(cfg)


def actor(argv: list[str]) -> int:
    from hilrl.actor.config import ActorConfig

    cfg = parse_config(ActorConfig, argv, "hilrl actor",
                       "Run an actor: control loop on the arm or sim, human takeover, streaming to the learner.")
    _logging()
    from hilrl.actor.main import run

    return run(cfg)


def demo(argv: list[str]) -> int:
    from hilrl.deploy.demo import DemoConfig, run_demo

    cfg = parse_config(DemoConfig, argv, "hilrl demo",
                       "Start a learner and a simulated arm as two processes over loopback gRPC, train "
                       "(demos, offline TD3+BC, online TD3 with scripted takeovers), then evaluate.")
    return run_demo(cfg)


def status(argv: list[str]) -> int:
    from hilrl.deploy.status import StatusConfig, print_status

    cfg = parse_config(StatusConfig, argv, "hilrl status", "Print the learner's status as one JSON object.")
    return print_status(cfg)


def record(argv: list[str]) -> int:
    from hilrl.deploy.record import RecordConfig
    from hilrl.deploy.record import record as run_record

    cfg = parse_config(RecordConfig, argv, "hilrl record",
                       "Record human demonstrations to a file; seed a learner with it: hilrl learner --demos FILE.")
    _logging()
    return run_record(cfg)


def evaluate(argv: list[str]) -> int:
    from hilrl.deploy.eval import EvalConfig, run_eval

    cfg = parse_config(EvalConfig, argv, "hilrl eval",
                       "Evaluate a trained policy without exploration noise or takeover; prints one JSON object.")
    return run_eval(cfg)


def health(argv: list[str]) -> int:
    from hilrl.deploy.health import check_health
    from hilrl.deploy.status import StatusConfig

    cfg = parse_config(StatusConfig, argv, "hilrl health",
                       "Ask the learner's gRPC health service (no token needed); exit 0 when it is SERVING.")
    return check_health(cfg)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "learner": learner, "actor": actor, "demo": demo, "status": status, "record": record,
    "eval": evaluate, "health": health,
}


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
