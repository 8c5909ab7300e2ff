"""``pairsmith serve`` (the gRPC server) and ``pairsmith client ...`` (a command-line client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# CLI flag -> ServeConfig field, for flags that map one to one.
_FLAG_FIELDS = (
    "model",
    "cross_encoder",
    "uni_encoder",
    "backend",
    "auto_export",
    "device",
    "data_dir",
    "host",
    "port",
    "api_key_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "metrics_port",
    "metrics_host",
    "max_text_chars",
    "rate_limit_per_key",
    "rate_limit_bytes_per_key",
    "auth_failures_per_minute",
    "max_indexes",
    "max_vectors",
    "insecure",
    "max_batch_tokens",
    "max_batch_rows",
    "batch_hold_fraction",
    "max_concurrent_requests",
    "streams",
    "cross_last_layer",
    "max_open_indexes",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC server (Embed, Score, Rerank, Search, indexes)")
    p.add_argument("--config", type=Path, help="TOML file with ServeConfig keys (flags override it)")
    p.add_argument(
        "--model", help="bi-encoder: 'default', a model directory or a hub name (default: default)"
    )
    p.add_argument(
        "--cross-encoder", help="cross-encoder model (enables CROSS_ENCODER scoring and reranking)"
    )
    p.add_argument("--uni-encoder", help="Uni-Encoder directory (enables Rerank UNI_ENCODER)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx", "openvino", "auto"),
        help="inference runtime (default auto: the measured fastest batch-invariant engine for the "
        "machine: torch on a CUDA device, static int8 on onnxruntime on an x86 CPU; Info says which "
        "and why); torch; onnx = the fp32 ONNX export; openvino",
    )
    p.add_argument(
        "--no-auto-export",
        dest="auto_export",
        action="store_false",
        default=None,
        help="backend onnx: refuse a model with no ONNX export instead of exporting it on first use",
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: cuda when present)")
    p.add_argument(
        "--cross-last-layer",
        choices=("cls", "full"),
        help="cross-encoder: cls = the last layer for [CLS] only where the model qualifies (exact; "
        "default); full = every position",
    )
    p.add_argument(
        "--streams",
        type=int,
        help="backend onnx on the CPU: batches run at once, cores split between them "
        "(default 0 = automatic: one single-thread run per core; 1 = one batch at a time on all cores)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="index store root (default $PAIRSMITH_HOME or ~/.local/share/pairsmith)"
    )
    p.add_argument(
        "--host",
        help="address to bind (default 127.0.0.1; 0.0.0.0 when --api-key-file is given). "
        "A non-loopback address needs TLS or --insecure",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext on a non-loopback address: API keys and data cross the network in clear",
    )
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument(
        "--api-key-file",
        type=Path,
        help="file with API keys, one per line: KEY [name=ID] [scopes=read,write,admin] "
        "[max_indexes=N] [max_vectors=N] (enables auth; SIGHUP reloads it)",
    )
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM); with --tls-key enables TLS")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", type=Path, help="CA that client certificates must chain to (mutual TLS)"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: off)")
    p.add_argument(
        "--metrics-host", help="address for /metrics (default 127.0.0.1; it has no authentication)"
    )
    p.add_argument(
        "--max-text-chars",
        type=int,
        help="longest text in characters; longer ones are refused (default 65536)",
    )
    p.add_argument(
        "--rate-limit-per-key", type=float, help="calls per second per API key (default 0: no limit)"
    )
    p.add_argument(
        "--rate-limit-bytes-per-key",
        type=float,
        help="request bytes per second per API key, the cost of calls (default 0: no limit)",
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=int,
        help="failed authentications per peer address per minute before it is throttled (default 20; 0: off)",
    )
    p.add_argument("--max-indexes", type=int, help="indexes the server may hold (default 0: no limit)")
    p.add_argument("--max-vectors", type=int, help="vectors stored over all indexes (default 0: no limit)")
    p.add_argument("--max-batch-tokens", type=int, help="token budget per forward batch (default 8192)")
    p.add_argument("--max-batch-rows", type=int, help="rows per forward pass (default 32)")
    p.add_argument(
        "--batch-hold-fraction",
        type=float,
        help="after a batch, wait at most this fraction of its forward time for half a batch of work (default 0: never)",
    )
    p.add_argument(
        "--max-concurrent-requests", type=int, help="in-flight model requests before RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--max-open-indexes",
        type=int,
        help="indexes kept open at once; idle ones beyond it close and reopen on demand "
        "(default 0: from the file-descriptor limit)",
    )
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.set_defaults(func=run_serve)

    c = sub.add_parser("client", help="call a running pairsmith server")
    c.add_argument(
        "--target", default=os.environ.get("PAIRSMITH_TARGET", "localhost:50051"), help="host:port"
    )
    c.add_argument("--api-key-file", type=Path, help="file whose first key is sent as the Bearer token")
    c.add_argument("--tls-ca", type=Path, help="CA certificate to verify the server (enables TLS)")
    c.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    c.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    cs = c.add_subparsers(dest="client_command", metavar="CALL", required=True)

    i = cs.add_parser("info", help="the server's model, engine, CPU feature set and limits (JSON)")
    i.set_defaults(func=_client_info)

    e = cs.add_parser("embed", help="embed texts; prints JSON lines {index, token_count, vector}")
    e.add_argument("texts", nargs="+")
    e.add_argument("--dimensions", type=_count)
    e.add_argument("--no-normalize", action="store_true")
    e.set_defaults(func=_client_embed)

    s = cs.add_parser("score", help="score pairs given as TEXT_A TEXT_B [TEXT_A TEXT_B ...]")
    s.add_argument("texts", nargs="+")
    s.add_argument("--method", choices=("auto", "bi", "cross"), default="auto")
    s.set_defaults(func=_client_score)

    r = cs.add_parser("rerank", help="rerank candidate texts for a query")
    r.add_argument("query")
    r.add_argument("texts", nargs="+")
    r.add_argument("--method", choices=("auto", "bi", "cross", "uni"), default="auto")
    r.add_argument("--top-n", type=_count)
    r.set_defaults(func=_client_rerank)

    q = cs.add_parser("search", help="search an index with a text query")
    q.add_argument("index")
    q.add_argument("query")
    q.add_argument("--top-k", type=_count, default=10)
    q.add_argument("--rerank", choices=("auto", "bi", "cross", "uni"))
    q.add_argument("--candidates", type=_count)
    q.set_defaults(func=_client_search)

    u = cs.add_parser("upsert", help="stream a .jsonl file of {id, text | vector, payload} into an index")
    u.add_argument("index")
    u.add_argument("file", type=Path)
    u.add_argument("--create", action="store_true", help="create the index first if it does not exist")
    u.set_defaults(func=_client_upsert)


def _count(text: str) -> int:
    """argparse type for the client's unsigned request fields: an integer >= 0, else a usage error
    (a negative value used to reach protobuf and end in a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def config_from_args(args: argparse.Namespace):
    from pairsmith.service.config import ServeConfig

    overrides = {f: getattr(args, f, None) for f in _FLAG_FIELDS}
    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}
    if args.config is not None:
        return ServeConfig.from_toml(args.config, **overrides)
    return ServeConfig.from_mapping(overrides, source="command line")


def run_serve(args: argparse.Namespace) -> int:
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("pairsmith").setLevel(logging.INFO)
    config = config_from_args(args)
    return asyncio.run(_serve(config, args.port_file))


async def _serve(config, port_file: Path | None) -> int:
    from pairsmith.service.server import build_server

    server, port = await build_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_keys)
    if port_file is not None:
        from pairsmith.atomic import atomic_write_text

        atomic_write_text(port_file, str(port))
    print(
        f"pairsmith: listening on {config.bind_host}:{port}; loading models...", file=sys.stderr, flush=True
    )
    ready = asyncio.ensure_future(server.wait_ready())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.exception() is not None:
        stopping.cancel()
        await server.stop(0)
        raise ready.exception()
    if not stop.is_set():
        extra = f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""
        print(f"pairsmith: serving on port {port}{extra} (SIGTERM to stop)", file=sys.stderr, flush=True)
        print(f"pairsmith: engine {server.rt.models.bi.engine}", file=sys.stderr, flush=True)
        await stopping
    ready.cancel()
    print("pairsmith: shutting down (draining in-flight calls)", file=sys.stderr, flush=True)
    await server.stop()
    return 0


# -- client ------------------------------------------------------------------
def _client(args: argparse.Namespace):
    from pairsmith.service.client import PairsmithClient

    key = None
    if args.api_key_file is not None:
        from pairsmith.service.auth import load_api_keys

        key = load_api_keys(args.api_key_file)[0].decode()
    return PairsmithClient(
        args.target,
        api_key=key,
        tls_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        timeout=args.timeout,
    )


def _run_client(args, fn) -> int:
    import grpc

    from pairsmith.errors import PairsmithError
    from pairsmith.service.status import STATUS_FOR_KIND

    try:
        with _client(args) as c:
            fn(c)
    except grpc.RpcError as exc:
        kind = {v: k for k, v in STATUS_FOR_KIND.items()}.get(exc.code())
        msg = f"{exc.code().name}: {exc.details()}"
        if kind is None:
            print(f"pairsmith client: {msg}", file=sys.stderr)
            return 1
        raise PairsmithError(msg, kind=kind) from None
    return 0


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def _client_info(args) -> int:
    def go(c):
        info = c.info()
        info.pop("timing", None)
        _print(info)

    return _run_client(args, go)


def _client_embed(args) -> int:
    def go(c):
        res = c.embed(args.texts, dimensions=args.dimensions, normalize=not args.no_normalize)
        for i, v in enumerate(res.vectors):
            _print(
                {
                    "index": i,
                    "token_count": int(res.token_counts[i]),
                    "vector": [round(float(x), 6) for x in v],
                }
            )

    return _run_client(args, go)


def _client_score(args) -> int:
    from pairsmith.errors import InvalidInput

    if len(args.texts) % 2:
        raise InvalidInput("score: give an even number of texts (TEXT_A TEXT_B pairs)")
    pairs = list(zip(args.texts[::2], args.texts[1::2], strict=True))

    def go(c):
        for (a, b), s in zip(pairs, c.score(pairs, method=args.method), strict=True):
            _print({"text_a": a, "text_b": b, "score": float(s)})

    return _run_client(args, go)


def _client_rerank(args) -> int:
    def go(c):
        for r in c.rerank(args.query, args.texts, method=args.method, top_n=args.top_n, return_text=True):
            _print(r)

    return _run_client(args, go)


def _client_search(args) -> int:
    def go(c):
        hits = c.search(
            args.index, text=args.query, top_k=args.top_k, rerank=args.rerank, candidates=args.candidates
        )
        for h in hits:
            _print({"id": h.id, "score": h.score, "payload": h.payload})

    return _run_client(args, go)


def _client_upsert(args) -> int:
    from pairsmith.errors import DataFormatError, NotFound

    if not args.file.is_file():
        raise NotFound(f"upsert: file {args.file} does not exist")

    def items():
        with open(args.file, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(args.file, f"not JSON ({exc.msg})", line=n) from None
                if not isinstance(row, dict) or "id" not in row or not ("text" in row or "vector" in row):
                    raise DataFormatError(args.file, "expected an object with id and text or vector", line=n)
                yield row

    failed: list[BaseException] = []

    def checked():
        # An error in a request generator reaches the caller only as CANCELLED; keep the real one.
        try:
            yield from items()
        except DataFormatError as exc:
            failed.append(exc)
            raise

    def go(c):
        import grpc

        if args.create:
            try:
                c.get_index(args.index)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                c.create_index(args.index)
        try:
            n = c.upsert(args.index, checked())
        except grpc.RpcError:
            if failed:
                raise failed[0] from None
            raise
        _print({"index": args.index, "upserted": n, "count": int(c.get_index(args.index).get("count", 0))})

    return _run_client(args, go)
