"""Regenerate the committed Python code for the wire schema.

    python -m hilrl.protos.generate          # rewrite protos/v1/*_pb2*.py from protos/v1/*.proto
    python -m hilrl.protos.generate --check  # exit 1 if the committed code differs (CI drift test)

protoc writes imports from the proto path; to make them resolve under the `hilrl.protos` folder
mapping, each .proto is compiled as `hilrl/protos/v1/<name>.proto` inside a scratch directory, so
the generated modules say `from hilrl.protos.v1 import ...`. Needs grpcio-tools 1.73.x (the `dev`
extra): its bundled protobuf 6.31 emits code that imports under the protobuf 6.x runtime.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "v1"
PACKAGE_PATH = Path("hilrl/protos/v1")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto in protos/v1 into out_dir; return the files written."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - message for users without the dev extra
        raise SystemExit("grpcio-tools is missing: pip install -e '.[dev]'") from exc
    import grpc_tools

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / PACKAGE_PATH
        src.mkdir(parents=True)
        protos = sorted(PROTO_DIR.glob("*.proto"))
        for p in protos:
            shutil.copy(p, src / p.name)
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = ["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *[str(PACKAGE_PATH / p.name) for p in protos]]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(src.iterdir()):
            if f.suffix in (".py", ".pyi") and "_pb2" in f.name:
                shutil.copy(f, out_dir / f.name)
                written.append(out_dir / f.name)
        return written


def check() -> list[str]:
    """Names of generated files that differ from (or are missing next to) the committed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [f.name for f in fresh
                if not (PROTO_DIR / f.name).exists() or (PROTO_DIR / f.name).read_bytes() != f.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hilrl.protos.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        drift = check()
        if drift:
            print(f"generated code is stale: {', '.join(drift)}; run: python -m hilrl.protos.generate")
            return 1
        print("generated code matches protos/v1/*.proto")
        return 0
    for f in generate(PROTO_DIR):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
