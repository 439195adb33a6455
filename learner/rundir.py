"""The learner's output folder (`--output-dir`): where each of its files lives.

Readers outside the learner (the actor's `--checkpoint`, `hilrl eval`) find the published policy
through `resolve_policy_file`.
"""

from __future__ import annotations

from pathlib import Path

POLICY_FILE = "policy.safetensors"  # the newest published weights, with the policy config in its metadata


def resolve_policy_file(path: Path) -> Path:
    """`path` itself if it is a policy file, else the published policy of the learner output folder `path`;
    exits with a message naming both choices when there is none."""
    candidate = path / POLICY_FILE if path.is_dir() else path
    if not candidate.exists():
        raise SystemExit(f"no policy at {candidate}: give a learner --output-dir that has published weights, "
                         "or a policy .safetensors file")
    return candidate
