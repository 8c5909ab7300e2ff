"""API-key auth on every RPC (driven from the service descriptor), open health/reflection, TLS and mTLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pairsmith.service.auth import bearer_token, key_matches, load_api_keys
from pairsmith.service.client import PairsmithClient
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import SERVING, pb

KEY = "test-key-0123456789abcdef"
SERVICE = pb.DESCRIPTOR.services_by_name["PairsmithService"]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("auth") / "keys.txt"
    p.write_text(f"# pairsmith keys\n{KEY}\nsecond-key-abcdefghijklmnop\n")
    return p


@pytest.fixture(scope="module")
def server(tiny_bi_dir, key_file, tmp_path_factory):
    cfg = ServeConfig(
        model=str(tiny_bi_dir),
        host="127.0.0.1",
        data_dir=tmp_path_factory.mktemp("auth-data"),
        api_key_file=key_file,
        auth_failures_per_minute=0,  # this module fails on purpose for every RPC; throttling: test_service_security
    )
    st = ServerThread(cfg).start()
    yield st
    st.stop()


def _call(channel, method, metadata):
    """Call ``method`` (a MethodDescriptor) with a default request; returns the status code."""
    path = f"/{SERVICE.full_name}/{method.name}"
    req_cls = getattr(pb, method.input_type.name)
    resp_cls = getattr(pb, method.output_type.name)
    kw = dict(request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString)
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kw)(iter([req_cls()]), metadata=metadata, timeout=30))
        elif method.client_streaming:
            channel.stream_unary(path, **kw)(iter([req_cls()]), metadata=metadata, timeout=30)
        elif method.server_streaming:
            list(channel.unary_stream(path, **kw)(req_cls(), metadata=metadata, timeout=30))
        else:
            channel.unary_unary(path, **kw)(req_cls(), metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=[m.name for m in SERVICE.methods])
def test_every_rpc_needs_the_key(server, method):
    ch = grpc.insecure_channel(server.target)
    assert _call(ch, method, ()) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        _call(ch, method, (("authorization", "Bearer wrong-key-0123456789"),))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert _call(ch, method, (("authorization", KEY),)) == grpc.StatusCode.UNAUTHENTICATED  # no scheme
    # With the key the call gets past auth (an empty request may still be invalid).
    assert _call(ch, method, (("authorization", f"Bearer {KEY}"),)) != grpc.StatusCode.UNAUTHENTICATED
    ch.close()


def test_health_and_reflection_are_open(server):
    ch = grpc.insecure_channel(server.target)
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert r.status == SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = list(
        refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
    )
    names = {s.name for s in resp[0].list_services_response.service}
    assert SERVICE.full_name in names and "grpc.health.v1.Health" in names
    ch.close()


def test_client_with_key(server):
    with PairsmithClient(server.target, api_key="second-key-abcdefghijklmnop") as c:
        assert c.embed(["hello"]).vectors.shape == (1, 32)


def test_key_helpers(tmp_path):
    assert bearer_token((("authorization", "Bearer abc"),)) == b"abc"
    assert bearer_token((("Authorization", "bearer  abc "),)) == b"abc"
    assert bearer_token((("authorization", "Basic abc"),)) == b""
    assert bearer_token((("x-other", "1"),)) is None
    keys = (b"a" * 16, b"b" * 16)
    assert key_matches(b"b" * 16, keys) and not key_matches(b"c" * 16, keys) and not key_matches(b"", keys)
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    from pairsmith.errors import InvalidInput

    with pytest.raises(InvalidInput):
        load_api_keys(short)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(InvalidInput):
        load_api_keys(empty)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=pairsmith-test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


def test_tls_and_mutual_tls(tiny_bi_dir, certs, tmp_path):
    cfg = ServeConfig(
        model=str(tiny_bi_dir),
        host="127.0.0.1",
        data_dir=tmp_path,
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
    )
    st = ServerThread(cfg).start()
    target = f"localhost:{st.port}"
    try:
        with PairsmithClient(
            target, tls_ca=certs / "ca.pem", client_cert=certs / "client.pem", client_key=certs / "client.key"
        ) as c:
            assert c.embed(["over mTLS"]).vectors.shape == (1, 32)
        with PairsmithClient(target, tls_ca=certs / "ca.pem", timeout=5) as c:  # no client certificate
            with pytest.raises(grpc.RpcError) as ei:
                c.embed(["x"])
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        with PairsmithClient(target, timeout=5) as c:  # plaintext against a TLS port
            with pytest.raises(grpc.RpcError):
                c.embed(["x"])
    finally:
        st.stop()
