"""An exposed server: TLS or --insecure off loopback, throttled and logged auth failures, audit
lines, scopes per key, fair shares and byte budgets, key reload on SIGHUP, quotas, the exact
open-method list. Real servers on 127.0.0.1 (threads, and one subprocess for SIGHUP)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from pairsmith.errors import DataFormatError, InvalidInput, PermissionDenied, Unauthenticated
from pairsmith.service.auth import (
    OPEN_METHODS,
    SCOPE_OF,
    ApiKeyInterceptor,
    AuthPolicy,
    KeyTable,
    load_key_table,
)
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import REPO, SubprocessServer, pb, pb_grpc

C = grpc.StatusCode
SERVICE = pb.DESCRIPTOR.services_by_name["PairsmithService"]
READER, WRITER, ADMIN, ALL = ("r" * 32, "w" * 32, "a" * 32, "x" * 32)
DIM = 32  # the tiny test model


def write_keys(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def md(key: str | None):
    return (("authorization", f"Bearer {key}"),) if key else ()


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def serve(tiny_bi_dir, tmp: Path, keys: Path | None, **kw) -> ServerThread:
    cfg = ServeConfig(
        model=str(tiny_bi_dir), host="127.0.0.1", data_dir=tmp / "data", api_key_file=keys, **kw
    )
    return ServerThread(cfg).start()


# -- 1. plaintext off loopback ----------------------------------------------------------------------
def test_plaintext_off_loopback_needs_tls_or_insecure(tmp_path):
    keys = write_keys(tmp_path / "keys", ALL + "\n")
    for cfg in (ServeConfig(api_key_file=keys), ServeConfig(host="0.0.0.0", api_key_file=keys)):
        with pytest.raises(InvalidInput, match="API keys .* clear text") as ei:
            cfg.check_exposure()
        assert "--insecure" in ei.value.message and "--tls-cert" in ei.value.message
    with pytest.raises(InvalidInput, match="without a key"):
        ServeConfig(host="10.1.2.3").check_exposure()
    ServeConfig(host="0.0.0.0", api_key_file=keys, insecure=True).check_exposure()
    from pairsmith.cli.main import build_parser
    from pairsmith.cli.serve import config_from_args

    args = build_parser("serve").parse_args(["serve", "--host", "0.0.0.0", "--insecure"])
    config_from_args(args).check_exposure()  # the flag reaches the config
    toml = tmp_path / "serve.toml"
    toml.write_text('host = "0.0.0.0"\ninsecure = true\n')
    ServeConfig.from_toml(toml).check_exposure()
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        ServeConfig(host=host, api_key_file=keys).check_exposure()
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    ServeConfig(host="0.0.0.0", api_key_file=keys, tls_cert=cert, tls_key=cert).check_exposure()


def test_serve_refuses_plaintext_on_all_interfaces(tmp_path):
    keys = write_keys(tmp_path / "keys", ALL + "\n")
    cmd = [sys.executable, "-m", "pairsmith", "serve", "--api-key-file", str(keys), "--port", "0"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]  # INVALID_ARGUMENT's exit code, before any bind
    assert "0.0.0.0 without TLS" in res.stderr and "--insecure" in res.stderr


# -- key file -----------------------------------------------------------------------------------------
def test_key_file_format(tmp_path):
    f = write_keys(
        tmp_path / "keys",
        "# comment\n"
        f"{ALL}\n"
        f"{READER} name=ui scopes=read\n"
        f"{WRITER}== name=ingest scopes=read,write max_indexes=3 max_vectors=1000\n",  # '=' inside a key
    )
    t = load_key_table(f)
    assert [k.id for k in t.keys][1:] == ["ui", "ingest"] and t.keys[0].id.startswith("key-")
    assert t.keys[0].scopes == {"read", "write", "admin"} and t.keys[1].scopes == {"read"}
    assert (t.keys[2].secret, t.keys[2].max_indexes, t.keys[2].max_vectors) == (
        (WRITER + "==").encode(),
        3,
        1000,
    )
    assert ALL not in repr(t)  # ids in reprs and logs, never the key
    bad = {
        f"{ALL}\n{READER} scopes=read,delete\n": ":2: scopes=",
        f"{ALL} nmae=x\n": ":1: 'nmae=x'",
        f"{ALL} max_vectors=-1\n": ":1: max_vectors=",
        f"{ALL} name=a\n{READER} name=a\n": ":2: key id 'a' appears twice",
        f"{ALL}\n{ALL} name=b\n": ":2: the same key appears twice",
        "short name=x\n": ":1: keys must be at least 16",
    }
    for text, msg in bad.items():
        with pytest.raises(DataFormatError) as ei:
            load_key_table(write_keys(tmp_path / "bad", text))
        assert msg in ei.value.message and ALL not in ei.value.message


def test_every_rpc_has_a_scope():
    names = {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}
    assert names == set(SCOPE_OF), "a new RPC needs a scope in auth.SCOPE_OF"


# -- 8/9. exact open list; refusals through the error table --------------------------------------------
def test_open_list_is_exact_method_names():
    async def main():
        async def ok(request, context):
            return b"ok"

        handler = grpc.unary_unary_rpc_method_handler(ok)
        table = KeyTable(load_key_table_from_text(ALL).keys)
        server = grpc.aio.server(interceptors=[ApiKeyInterceptor(table, AuthPolicy(failures_per_minute=0))])
        for svc, meth in (
            ("grpc.foo.Bar", "Baz"),
            ("grpc.health.v1.Health", "Evil"),
            ("grpc.health.v1.Health", "Check"),
        ):
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(svc, {meth: handler}),))  # fmt: skip
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for path in ("/grpc.foo.Bar/Baz", "/grpc.health.v1.Health/Evil", "/grpc.health.v1.Health/Check"):
                for key in (None, ALL):
                    try:
                        await ch.unary_unary(path)(b"", metadata=md(key), timeout=10)
                        out[path, key] = C.OK
                    except grpc.aio.AioRpcError as exc:
                        out[path, key] = exc.code()
        await server.stop(0)
        return out

    out = asyncio.run(main())
    assert out["/grpc.foo.Bar/Baz", None] == C.UNAUTHENTICATED
    assert out["/grpc.health.v1.Health/Evil", None] == C.UNAUTHENTICATED  # a prefix match let it through
    assert out["/grpc.health.v1.Health/Check", None] == C.OK
    assert all(out[p, ALL] == C.OK for p, _ in out)
    assert "/grpc.health.v1.Health/Watch" in OPEN_METHODS and len(OPEN_METHODS) == 4


def load_key_table_from_text(text: str) -> KeyTable:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return load_key_table(write_keys(Path(d) / "k", text + "\n"))


def test_refusals_are_error_table_kinds():
    class Ctx:
        def peer(self):
            return "ipv4:127.0.0.1:5555"

    icp = ApiKeyInterceptor(load_key_table_from_text(f"{READER} scopes=read"), AuthPolicy())
    assert isinstance(
        icp._admit("/pairsmith.v1.PairsmithService/Info", b"nope" * 5, Ctx(), 0), Unauthenticated
    )
    denied = icp._admit("/pairsmith.v1.PairsmithService/DropIndex", READER.encode(), Ctx(), 0)
    assert isinstance(denied, PermissionDenied) and "'admin' scope" in denied.message


# -- 2. throttling and logging of failures --------------------------------------------------------------
def test_wrong_key_burst_is_throttled_and_logged_without_the_key(tiny_bi_dir, tmp_path, caplog):
    keys = write_keys(tmp_path / "keys", ALL + "\n")
    st = serve(tiny_bi_dir, tmp_path, keys, auth_failures_per_minute=20)
    wrong = "guessed-key-" + "9" * 20
    try:
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        with caplog.at_level(logging.INFO):
            t0 = time.monotonic()
            seen = []
            for _ in range(300):
                try:
                    stub.Info(pb.InfoRequest(), metadata=md(wrong), timeout=10)
                    seen.append((C.OK, "", ()))
                except grpc.RpcError as exc:
                    seen.append((exc.code(), exc.details(), exc.trailing_metadata() or ()))
            elapsed = time.monotonic() - t0
            # While throttled even the right key is refused: keys are not checked at all.
            right, details = code_of(lambda: stub.Info(pb.InfoRequest(), metadata=md(ALL), timeout=10))
        codes = [c for c, _, _ in seen]
        assert codes[:20] == [C.UNAUTHENTICATED] * 20
        refills = int(elapsed / 3.0) + 1  # 20 per minute: one every 3 s
        assert codes.count(C.UNAUTHENTICATED) <= 20 + refills
        assert codes.count(C.RESOURCE_EXHAUSTED) >= 300 - 20 - refills
        _, msg, trailing = seen[-1]
        assert "too many failed authentication attempts" in msg and "retry in" in msg
        assert any(k == "grpc-retry-pushback-ms" and int(v) > 0 for k, v in trailing)
        assert right == C.RESOURCE_EXHAUSTED and "too many failed" in details
        lines = [r.getMessage() for r in caplog.records if r.name == "pairsmith.service.auth"]
        auth_lines = [m for m in lines if m.startswith(("auth failure", "auth throttled"))]
        assert 10 <= len(auth_lines) <= 10 + int(elapsed) + 2, auth_lines  # 10 at once, then 1 per second
        assert "peer=ipv4:127.0.0.1" in auth_lines[0] and "key_hash=" in auth_lines[0]
        assert wrong not in caplog.text and ALL not in caplog.text
        ch.close()
    finally:
        st.stop()


# -- 3. audit lines --------------------------------------------------------------------------------------
def test_audit_lines_name_the_key_never_show_it(tiny_bi_dir, tmp_path, caplog):
    keys = write_keys(tmp_path / "keys", f"{ADMIN} name=ops\n{WRITER}\n")
    st = serve(tiny_bi_dir, tmp_path, keys)
    try:
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        with caplog.at_level(logging.INFO, logger="pairsmith.audit"):
            stub.CreateIndex(pb.CreateIndexRequest(name="docs"), metadata=md(ADMIN), timeout=30)
            items = [pb.UpsertItem(id=f"d{i}", text=f"doc {i}") for i in range(3)]
            stub.Upsert(iter([pb.UpsertRequest(index="docs", items=items)]), metadata=md(WRITER), timeout=30)
            stub.Delete(pb.DeleteRequest(index="docs", ids=["d0", "nope"]), metadata=md(WRITER), timeout=30)
            stub.DropIndex(pb.DropIndexRequest(name="docs"), metadata=md(ADMIN), timeout=30)
        lines = [r.getMessage() for r in caplog.records if r.name == "pairsmith.audit"]
        writer_id = load_key_table(keys).keys[1].id
        assert lines[0].startswith("CreateIndex index=docs") and "key=ops peer=ipv4:127.0.0.1" in lines[0]
        assert lines[1].startswith("Upsert index=docs upserted=3 count=3") and f"key={writer_id}" in lines[1]
        assert (
            lines[2].startswith("Delete index=docs requested=2 deleted=1") and f"key={writer_id}" in lines[2]
        )
        assert lines[3].startswith("DropIndex index=docs") and "key=ops" in lines[3]
        assert ADMIN not in caplog.text and WRITER not in caplog.text
        ch.close()
    finally:
        st.stop()


# -- 4. scopes ---------------------------------------------------------------------------------------------
def _call(channel, method, key):
    path = f"/{SERVICE.full_name}/{method.name}"
    req = getattr(pb, method.input_type.name)
    kw = dict(request_serializer=req.SerializeToString, response_deserializer=lambda b: b)
    if method.client_streaming and method.server_streaming:
        return code_of(
            lambda: list(channel.stream_stream(path, **kw)(iter([req()]), metadata=md(key), timeout=30))
        )
    if method.client_streaming:
        return code_of(lambda: channel.stream_unary(path, **kw)(iter([req()]), metadata=md(key), timeout=30))
    return code_of(lambda: channel.unary_unary(path, **kw)(req(), metadata=md(key), timeout=30))


def test_scopes_hold_on_every_rpc(tiny_bi_dir, tmp_path):
    keys = write_keys(
        tmp_path / "keys",
        f"{READER} name=reader scopes=read\n{WRITER} name=writer scopes=write\n"
        f"{ADMIN} name=admin scopes=admin\n{ALL} name=all\n",
    )
    st = serve(tiny_bi_dir, tmp_path, keys)
    granted = {READER: {"read"}, WRITER: {"write"}, ADMIN: {"admin"}, ALL: {"read", "write", "admin"}}
    try:
        ch = grpc.insecure_channel(st.target)
        for m in SERVICE.methods:
            scope = SCOPE_OF[f"/{SERVICE.full_name}/{m.name}"]
            for key, scopes in granted.items():
                code, details = _call(ch, m, key)
                if scope in scopes:
                    assert code not in (C.PERMISSION_DENIED, C.UNAUTHENTICATED, C.INTERNAL), (m.name, details)
                else:
                    assert code == C.PERMISSION_DENIED, (m.name, key[0], code)
                    assert f"lacks the '{scope}' scope that {m.name} needs" in details
        ch.close()
    finally:
        st.stop()


# -- 5. cost budget and fair admission ---------------------------------------------------------------------
def test_byte_budget_counts_cost_not_calls(tiny_bi_dir, tmp_path):
    keys = write_keys(tmp_path / "keys", f"{READER} name=big\n{WRITER} name=small\n")
    st = serve(tiny_bi_dir, tmp_path, keys, rate_limit_bytes_per_key=20_000)  # burst 40 kB
    try:
        ch = grpc.insecure_channel(st.target, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = pb_grpc.PairsmithServiceStub(ch)
        big = pb.EmbedRequest(texts=["word " * 2000] * 10)  # ~100 kB: passes once, leaves the key in debt
        assert code_of(lambda: stub.Embed(big, metadata=md(READER), timeout=60))[0] == C.OK
        code, details = code_of(
            lambda: stub.Embed(pb.EmbedRequest(texts=["hi"]), metadata=md(READER), timeout=30)
        )
        assert code == C.RESOURCE_EXHAUSTED and "byte budget" in details and "retry in" in details
        for _ in range(20):  # the other key: many small calls, untouched by the first key's debt
            stub.Embed(pb.EmbedRequest(texts=["a small call"]), metadata=md(WRITER), timeout=30)
        # Streams pay per message and are paced, not cut: 8 x 20 kB against 20 kB/s with a 40 kB
        # burst takes at least (160 - 40) / 20 = 6 s, less what refills while the server works.
        stub.CreateIndex(pb.CreateIndexRequest(name="s"), metadata=md(WRITER), timeout=30)
        time.sleep(2.5)  # let the small key's bucket refill
        msgs = [
            pb.UpsertRequest(index="s", items=[pb.UpsertItem(id=f"{j}", text="t" * 20_000)]) for j in range(8)
        ]
        t0 = time.monotonic()
        assert stub.Upsert(iter(msgs), metadata=md(WRITER), timeout=60).upserted == 8
        assert time.monotonic() - t0 > 4.0
        ch.close()
    finally:
        st.stop()


def test_one_key_flooding_cannot_starve_another(tiny_bi_dir, tmp_path):
    keys = write_keys(tmp_path / "keys", f"{READER} name=flood\n{WRITER} name=quiet\n")
    st = serve(tiny_bi_dir, tmp_path, keys, max_concurrent_requests=8)  # 4 per key
    stop = threading.Event()
    flood_codes: list[grpc.StatusCode] = []
    big = pb.EmbedRequest(texts=["many words in a long text " * 40] * 64)

    def flood():
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        while not stop.is_set():
            flood_codes.append(code_of(lambda: stub.Embed(big, metadata=md(READER), timeout=60))[0])
        ch.close()

    threads = [threading.Thread(target=flood) for _ in range(24)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        waits, codes = [], []
        for _ in range(15):
            t0 = time.monotonic()
            codes.append(
                code_of(
                    lambda: stub.Embed(pb.EmbedRequest(texts=["quick"]), metadata=md(WRITER), timeout=60)
                )[0]
            )
            waits.append(time.monotonic() - t0)
        ch.close()
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        st.stop()
    assert codes == [C.OK] * 15, codes
    assert C.RESOURCE_EXHAUSTED in flood_codes  # the flooding key meets its own share
    # The quiet key queues behind at most the flooding key's share (4 big calls), not behind 24.
    assert max(waits) < 15.0 and sorted(waits)[7] < 5.0, waits


def test_a_stream_waits_for_its_share_instead_of_failing(tiny_bi_dir, tmp_path):
    # 2 keys, max_concurrent_requests=2: a share of 1 model request each. A stream keeps up to
    # max_stream_inflight messages in work; past its share they wait, the stream is not cut.
    keys = write_keys(tmp_path / "keys", f"{READER} name=bulk\n{WRITER} name=other\n")
    st = serve(tiny_bi_dir, tmp_path, keys, max_concurrent_requests=2)
    try:
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        msgs = [pb.EmbedRequest(texts=[f"message {i} " * 30] * 16) for i in range(40)]
        replies = list(stub.EmbedStream(iter(msgs), metadata=md(READER), timeout=120))
        assert [r.sequence for r in replies] == list(range(40))
        ch.close()
    finally:
        st.stop()


# -- 6. SIGHUP reload ---------------------------------------------------------------------------------------
@pytest.mark.slow  # a server subprocess: ~25 s of start-up on 2 shared cores
def test_sighup_reloads_keys_bad_file_keeps_old(tiny_bi_dir, tmp_path):
    keys = write_keys(tmp_path / "keys", READER + "\n")
    srv = SubprocessServer(tmp_path, "--model", str(tiny_bi_dir), "--data-dir", str(tmp_path / "d"),
                           "--api-key-file", str(keys), "--auth-failures-per-minute", "0").start()  # fmt: skip
    try:
        ch = grpc.insecure_channel(srv.target)
        stub = pb_grpc.PairsmithServiceStub(ch)

        def info(key):
            return code_of(lambda: stub.Info(pb.InfoRequest(), metadata=md(key), timeout=10))[0]

        assert info(READER) == C.OK and info(WRITER) == C.UNAUTHENTICATED
        write_keys(keys, f"{WRITER} name=new\n")
        srv.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while info(READER) != C.UNAUTHENTICATED and time.monotonic() < end:
            time.sleep(0.1)
        assert info(READER) == C.UNAUTHENTICATED and info(WRITER) == C.OK
        write_keys(keys, "too-short\n")  # a bad file: the keys in use stay
        srv.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while "not reloaded" not in srv.log.read_text() and time.monotonic() < end:
            time.sleep(0.1)
        log_text = srv.log.read_text()
        assert "not reloaded" in log_text and "keeping the 1 keys in use" in log_text
        assert info(WRITER) == C.OK and info(READER) == C.UNAUTHENTICATED
        assert srv.proc.poll() is None  # SIGHUP did not stop it
        assert WRITER not in log_text and READER not in log_text
        ch.close()
    finally:
        srv.terminate()


# -- 7. quotas -------------------------------------------------------------------------------------------------
def test_quotas_global_and_per_key_survive_restart(tiny_bi_dir, tmp_path):
    keys = write_keys(tmp_path / "keys", f"{ALL} name=ops\n{WRITER} name=team max_indexes=1 max_vectors=10\n")
    kw = dict(max_indexes=3, max_vectors=40)
    st = serve(tiny_bi_dir, tmp_path, keys, **kw)

    def vecs(prefix: str, n: int):
        return [
            pb.UpsertItem(id=f"{prefix}{i}", vector_values=pb.FloatVector(values=[1.0] * DIM))
            for i in range(n)
        ]

    try:
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)

        def create(name, key):
            return code_of(
                lambda: stub.CreateIndex(pb.CreateIndexRequest(name=name), metadata=md(key), timeout=30)
            )

        def upsert(name, key, items):
            return code_of(
                lambda: stub.Upsert(
                    iter([pb.UpsertRequest(index=name, items=items)]), metadata=md(key), timeout=30
                )
            )

        assert create("team1", WRITER)[0] == C.OK
        code, details = create("team2", WRITER)
        assert (
            code == C.RESOURCE_EXHAUSTED
            and "max_indexes=1 in the key file" in details
            and "'team'" in details
        )
        assert upsert("team1", WRITER, vecs("a", 10))[0] == C.OK
        code, details = upsert("team1", ALL, vecs("b", 1))  # counts against the owner, whoever writes
        assert code == C.RESOURCE_EXHAUSTED and "max_vectors=10 in the key file" in details
        stub.Delete(pb.DeleteRequest(index="team1", ids=["a0", "a1"]), metadata=md(WRITER), timeout=30)
        assert upsert("team1", WRITER, vecs("c", 2))[0] == C.OK  # room again after a delete
        assert create("ops1", ALL)[0] == C.OK and create("ops2", ALL)[0] == C.OK
        code, details = create("ops3", ALL)
        assert code == C.RESOURCE_EXHAUSTED and "max_indexes=3" in details
        assert upsert("ops1", ALL, vecs("d", 30))[0] == C.OK  # 10 + 30 = 40
        code, details = upsert("ops2", ALL, vecs("e", 1))
        assert code == C.RESOURCE_EXHAUSTED and "max_vectors=40" in details
        stub.DropIndex(pb.DropIndexRequest(name="ops2"), metadata=md(ALL), timeout=30)
        assert create("ops3", ALL)[0] == C.OK
        ch.close()
    finally:
        st.stop()
    st = serve(tiny_bi_dir, tmp_path, keys, **kw)  # ownership and counts come back from the store
    try:
        ch = grpc.insecure_channel(st.target)
        stub = pb_grpc.PairsmithServiceStub(ch)
        code, details = code_of(
            lambda: stub.CreateIndex(pb.CreateIndexRequest(name="team2"), metadata=md(WRITER), timeout=30)
        )
        assert code == C.RESOURCE_EXHAUSTED and "max_indexes=1" in details
        code, details = code_of(
            lambda: stub.Upsert(
                iter([pb.UpsertRequest(index="team1", items=vecs("z", 1))]), metadata=md(WRITER), timeout=30
            )
        )
        assert code == C.RESOURCE_EXHAUSTED and "max_vectors=10" in details
        ch.close()
    finally:
        st.stop()
