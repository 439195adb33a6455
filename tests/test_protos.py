"""The committed generated code matches protos/v1/*.proto and imports under the runtime protobuf."""

from __future__ import annotations

import subprocess
import sys

import google.protobuf


def test_generated_code_has_not_drifted_from_the_proto() -> None:
    r = subprocess.run([sys.executable, "-m", "hilrl.protos.generate", "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_modules_import_as_hilrl_protos_under_the_installed_runtime() -> None:
    from hilrl.protos.v1 import learner_pb2, learner_pb2_grpc

    assert google.protobuf.__version__.startswith("6.")
    assert learner_pb2.DESCRIPTOR.package == "hilrl.v1"
    assert learner_pb2_grpc.LearnerStub is not None
