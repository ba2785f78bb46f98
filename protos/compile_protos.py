"""Generate Python code from protos/ with grpcio-tools.

Run by the package build (setup.py) and by `make protos`; the output in
kimball_grpc/generated/ is never edited by hand and never committed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "kimball_grpc/generated"


def generate() -> None:
    """Compile every .proto under protos/ into kimball_grpc/generated/."""
    import grpc_tools
    from grpc_tools import protoc

    out = ROOT / PACKAGE
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(ROOT)) for p in PROTOS.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    # google/api/annotations.proto and http.proto ship with googleapis-common-protos.
    annotations = importlib.util.find_spec("google.api.annotations_pb2")
    if annotations is None or annotations.origin is None:
        raise SystemExit("googleapis-common-protos is needed to compile protos/")
    googleapis = str(Path(annotations.origin).parents[2])
    args = [
        "protoc",
        # Map protos/ onto the package path so generated imports are absolute
        # (kimball_grpc.generated.kimball.v1...), not top-level modules.
        f"-I{PACKAGE}=protos",
        f"-I{include}",
        f"-I{googleapis}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        *[f"{PACKAGE}/{Path(s).relative_to('protos')}" for s in sources],
    ]
    # Paths above are relative to the repository root, wherever the build runs from.
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        code = protoc.main(args)
    finally:
        os.chdir(previous)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    for directory in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").touch()


if __name__ == "__main__":
    generate()
    sys.exit(0)
