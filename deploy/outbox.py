"""`hilrl outbox list|set-aside`: look into a stopped actor's outbox and set aside a batch the learner refuses.

A batch the learner refuses with INVALID_ARGUMENT (the actor exits with code 3 and names its seq) is refused
again on every restart. `set-aside` moves that one batch to `<state-dir>/outbox/set-aside/` (kept for
inspection, never sent, never deleted by hilrl); the actor then sends the rest. See docs/troubleshooting.md.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilrl.deploy.configtools import opt


@dataclass
class OutboxConfig:
    action: Literal["list", "set-aside"] = field(metadata={"help": "what to do (also the first word: "
                                                                  "`hilrl outbox list ...`)"})
    state_dir: Path | None = opt(None, "the actor's --state-dir (the actor must be stopped)")
    seq: int = opt(0, "set-aside: the seq of the batch to set aside (the actor's exit message names it)")


def describe(path: Path) -> dict:
    """What a batch file holds, without decoding its tensors."""
    from hilrl.protos.v1 import learner_pb2 as pb

    batch = pb.TransitionBatch.FromString(path.read_bytes())
    kinds = [item.WhichOneof("kind") for item in batch.items]
    steps = [item.transition for item in batch.items if item.WhichOneof("kind") == "transition"]
    return {"seq": batch.seq, "file": str(path), "bytes": path.stat().st_size, "items": len(kinds),
            "steps": len(steps), "discards": kinds.count("discard"), "empty_items": kinds.count(None),
            "episodes": sorted({t.episode for t in steps}),
            "interventions": sum(t.is_intervention for t in steps)}


def run_outbox(cfg: OutboxConfig) -> int:
    from hilrl.actor.outbox import JOURNAL, SET_ASIDE, StateDir, StateDirInUse, read_journal
    from hilrl.buffers.durable import fsync_path

    outbox = Path(cfg.state_dir or "") / "outbox"
    if cfg.state_dir is None or not outbox.is_dir():
        print(f"hilrl outbox: no actor outbox in --state-dir {cfg.state_dir} (expected {outbox})", file=sys.stderr)
        return 2
    try:
        state = StateDir(cfg.state_dir, None)  # the actor's own lock: never while it runs
    except StateDirInUse as exc:
        print(f"hilrl outbox: {exc}; stop that actor first", file=sys.stderr)
        return 2
    try:
        pending = sorted(outbox.glob("*.batch"))
        if cfg.action == "list":
            acked = outbox / "acked.json"
            journal = [i for i in read_journal(outbox / JOURNAL) if i.WhichOneof("kind") == "transition"]
            print(json.dumps({"actor_id": state.actor_id,
                              "last_acked_seq": json.loads(acked.read_text())["seq"] if acked.exists() else 0,
                              "pending": [describe(p) for p in pending],
                              "journal_steps": len(journal),  # of the batch a killed run never closed
                              "set_aside": [describe(p) for p in sorted((outbox / SET_ASIDE).glob("*.batch"))]},
                             indent=1))
            return 0
        source = outbox / f"{cfg.seq:012d}.batch"
        if not source.exists():
            seqs = [int(p.stem) for p in pending]
            print(f"hilrl outbox: no batch seq {cfg.seq} waiting in {outbox} (waiting: {seqs or 'none'})",
                  file=sys.stderr)
            return 2
        aside = outbox / SET_ASIDE
        aside.mkdir(exist_ok=True)
        os.replace(source, aside / source.name)
        fsync_path(aside)
        fsync_path(outbox)
        print(f"batch seq {cfg.seq} set aside: {aside / source.name} (kept, never sent); the actor sends the "
              f"other {len(pending) - 1} batches when it starts again")
        return 0
    finally:
        state.close()
