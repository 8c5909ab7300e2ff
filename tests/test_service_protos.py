"""The committed generated code matches the protos; the protos follow the API style rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "protos" / "pairsmith" / "v1" / "pairsmith_service.proto"


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    from pairsmith.service.protogen import GEN_ROOT, generate

    written = generate(tmp_path)
    assert written, "protoc produced nothing"
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = GEN_ROOT / rel
        assert committed.exists(), f"{rel} is not committed; run `make protos`"
        assert committed.read_text() == path.read_text(), f"{rel} is stale; run `make protos` and commit"
    committed_files = {p.relative_to(GEN_ROOT) for p in (GEN_ROOT / "pairsmith" / "v1").glob("*_pb2*.py*")}
    assert committed_files == {p.relative_to(tmp_path) for p in written}, "stale generated files: remove them"


def test_generated_imports_use_the_package():
    grpc_file = (REPO / "service/gen/pairsmith/v1/pairsmith_service_pb2_grpc.py").read_text()
    assert "from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2" in grpc_file
    assert "'/pairsmith.v1.PairsmithService/Embed'" in grpc_file  # wire names untouched
    assert pb.EmbedRequest.__module__ == "pairsmith.service.gen.pairsmith.v1.pairsmith_service_pb2"


def test_buf_style():
    fd = pb.DESCRIPTOR
    assert fd.package == "pairsmith.v1"
    for enum in fd.enum_types_by_name.values():
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        assert enum.values[0].number == 0 and enum.values[0].name == prefix + "UNSPECIFIED", enum.name
        assert all(v.name.startswith(prefix) for v in enum.values), enum.name
    service = fd.services_by_name["PairsmithService"]
    seen = set()
    for m in service.methods:
        assert m.input_type.name == f"{m.name}Request", m.name
        assert m.output_type.name == f"{m.name}Response", m.name
        seen |= {m.input_type.name, m.output_type.name}
    assert len(seen) == 2 * len(service.methods)  # one request/response per RPC, none shared
    for name in seen:
        msg = fd.message_types_by_name[name]
        if name.endswith("Response"):
            assert "timing" in msg.fields_by_name, f"{name} has no Timing"


def test_every_declaration_has_a_comment():
    lines = PROTO.read_text().splitlines()
    decl = re.compile(
        r"^\s*((optional|repeated)\s+)?[\w.<>, ]+\s+\w+\s*=\s*\d+;|^\s*(message|enum|service|rpc|oneof)\s"
    )
    missing = []
    for i, line in enumerate(lines):
        if decl.match(line) and not line.strip().startswith("//"):
            prev = lines[i - 1].strip() if i else ""
            if not prev.startswith("//"):
                missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "declarations without a comment:\n" + "\n".join(missing)
