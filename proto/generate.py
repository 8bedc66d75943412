"""Generate nim_agent/_proto/ from proto/ (used by `make proto` and by the freshness test).

Usage: python proto/generate.py [--out DIR]   (default: nim_agent/_proto)

The descriptor keeps its full name (nim_agent/v1/nim.proto); the Python module is flattened to
nim_agent/_proto/nim_pb2.py (+ .pyi by mypy-protobuf).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["nim_agent/v1/nim.proto"]


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    include = Path(protoc.__file__).parent / "_proto"
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for proto in PROTOS:
            stem = Path(proto).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi"):
                source = Path(tmp) / f"{stem}{suffix}"
                target = out / f"{stem.name}{suffix}"
                shutil.copyfile(source, target)
                written.append(target)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "nim_agent" / "_proto")
    for path in generate(parser.parse_args().out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
