"""Generate the Python gRPC code from ``protos/`` into ``service/gen/`` (``make protos``).

grpc_tools.protoc writes imports relative to the proto root
(``from pairsmith.v1 import x_pb2``); the committed code lives in the package
``pairsmith.service.gen.pairsmith.v1``, so imports and module names are
rewritten here. ``tests/test_service_protos.py`` regenerates into a temp dir
and fails on any difference from the committed files.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
GEN_ROOT = REPO / "service" / "gen"
GEN_PACKAGE = "pairsmith.service.gen"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.glob("pairsmith/v1/*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every proto under ``proto_root``; returns the generated files."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # dev dependency
        raise SystemExit("generating protos needs grpcio-tools: pip install 'grpcio-tools>=1.85,<2'") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see messages above)")
    written = sorted((out_dir / "pairsmith" / "v1").glob("*_pb2*.py*"))
    for path in written:
        path.write_text(_fix_imports(path.read_text()))
    return written


def _fix_imports(text: str) -> str:
    # "from pairsmith.v1 import x_pb2 as ..." -> package-qualified import.
    text = re.sub(
        r"^from pairsmith\.v1 import ", f"from {GEN_PACKAGE}.pairsmith.v1 import ", text, flags=re.M
    )
    # The module name protobuf records for the generated classes (not the proto package names).
    text = re.sub(
        r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'pairsmith\.v1\.",
        rf"\1'{GEN_PACKAGE}.pairsmith.v1.",
        text,
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GEN_ROOT, help="output root (default service/gen)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
