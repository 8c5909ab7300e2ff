"""Security checks beyond ``test_service_auth`` (which covers the key on every RPC from the
service descriptor, open health/reflection, constant-time comparison, TLS and mTLS):
message size limits enforced before decoding, the per-key rate limit, key-file permission
warnings, no pickle deserialisation anywhere in the packages, and auth on the v1 reflection name.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import grpc
import pytest

from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import pb, pb_grpc

REPO = Path(__file__).resolve().parents[2]
KEY = "k" * 40


@pytest.fixture(scope="module")
def keyed(tiny_bi_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    keys = tmp / "keys"
    keys.write_text(KEY + "\n" + "m" * 40 + "\n")
    keys.chmod(0o600)
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        host="127.0.0.1",
        data_dir=tmp / "data",
        api_key_file=keys,
        rate_limit_per_key=5.0,
        max_message_bytes=64 * 1024,
    )
    st = ServerThread(cfg).start()
    yield st
    st.stop()


def _stub(target: str, key: str | None = KEY):
    ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)])
    md = (("authorization", f"Bearer {key}"),) if key else ()
    return ch, pb_grpc.PairsmithServiceStub(ch), md


def test_oversized_message_refused_before_decoding(keyed):
    ch, stub, md = _stub(keyed.target)
    big = pb.EmbedRequest(texts=["x" * 100_000])  # > max_message_bytes (64 KiB)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Embed(big, metadata=md, timeout=10)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ch.close()


def test_rate_limit_per_key(keyed):
    # 5 calls/s, burst 10: a tight loop of 40 calls must see RESOURCE_EXHAUSTED, and the other
    # key keeps its own budget.
    ch, stub, md = _stub(keyed.target)
    codes = []
    for _ in range(40):
        try:
            stub.Info(pb.InfoRequest(), metadata=md, timeout=10)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
            assert "rate limit" in exc.details()
    assert "RESOURCE_EXHAUSTED" in codes and codes[:5] == ["OK"] * 5
    assert codes.count("OK") <= 10 + 40 * 5 / 5  # burst + what 5/s refills during the loop
    other = (("authorization", "Bearer " + "m" * 40),)
    stub.Info(pb.InfoRequest(), metadata=other, timeout=10)
    ch.close()
    limited = keyed.server.metrics.rate_limited.labels("Info")._value.get()
    assert limited == codes.count("RESOURCE_EXHAUSTED")


def test_reflection_v1_open_without_key(keyed):
    from grpc_reflection.v1alpha import reflection_pb2

    ch = grpc.insecure_channel(keyed.target)
    call = ch.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (resp,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert resp.list_services_response.service
    ch.close()


def test_key_file_readable_by_others_is_warned_about(tmp_path, caplog):
    from pairsmith.service.auth import load_api_keys

    f = tmp_path / "keys"
    f.write_text(KEY + "\n")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_api_keys(f)
    assert "chmod 600" in caplog.text
    caplog.clear()
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        load_api_keys(f)
    assert "chmod" not in caplog.text


def test_rate_limit_needs_keys():
    from pairsmith.errors import InvalidInput

    with pytest.raises(InvalidInput, match="api_key_file"):
        ServeConfig(rate_limit_per_key=3.0)


PICKLE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("torch", "load"), ("np", "load"), ("numpy", "load")}


def test_nothing_deserialises_pickles():
    # No pickle.load(s) at all; torch.load only with weights_only=True; np.load never with
    # allow_pickle=True. Over every package module (lazy imports included).
    bad = []
    for folder in ("pairsmith", "encoders", "distill", "service", "kernels"):
        for f in (REPO / folder).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    bad += [
                        f"{f}:{node.lineno} imports pickle"
                        for a in node.names
                        if a.name in ("pickle", "dill")
                    ]
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                base = node.func.value
                name = (base.id if isinstance(base, ast.Name) else "", node.func.attr)
                kw = {k.arg: k.value for k in node.keywords}
                if name[0] == "pickle" or (name == ("torch", "load") and not _true(kw.get("weights_only"))):
                    bad.append(f"{f}:{node.lineno} {name[0]}.{name[1]}")
                if name in (("np", "load"), ("numpy", "load")) and _true(kw.get("allow_pickle")):
                    bad.append(f"{f}:{node.lineno} np.load(allow_pickle=True)")
    assert bad == []


def _true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True
