"""Embed throughput through gRPC vs in-process BiEncoder vs a peer server (infinity-emb), same run.

Starts ``pairsmith serve`` as a child process on 127.0.0.1 (so the server's
model threads do not share a GIL with the load generator) and, when installed
(``bench/peers/``), infinity-emb on the same model directory; then, for each
repeat: in-process ``BiEncoder.encode`` on the same texts and backend, and
closed-loop load for each ``--loads`` entry (CLIENTSxTEXTS: each client sends
requests of that many texts back to back) against pairsmith's gRPC ``Embed``
and infinity's REST ``/embeddings``. Reports texts/s (median of repeats), the
gRPC/in-process and gRPC/infinity ratios (median of per-repeat ratios), p50/p99
per-request latency over all repeats, and the servers' resident memory.

Run it alone (2-core boxes)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/serve_bench.py --backend onnx --out runs/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import InfinityPeer, find_infinity, rss_mib  # noqa: E402

from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb  # noqa: E402
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_WORDS = (
    "the a cat dog river market stock rally model server batch token query answer search index vector "
    "quietly quickly bright dark small large runs sits jumps writes reads finds learns builds cooks sleeps "
    "morning evening city village mountain ocean forest music code tea coffee bread rain snow wind sun"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of 6-30 words (no shared data in the repo)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(6, 31)))) + "." for _ in range(n)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def batch_stats(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the server's pairsmith_batch_size histogram for the bi-encoder."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    vals = {}
    for line in body.splitlines():
        for key in ("pairsmith_batch_size_sum", "pairsmith_batch_size_count"):
            if line.startswith(key + '{model="bi"}'):
                vals[key] = float(line.rsplit(" ", 1)[1])
    return vals.get("pairsmith_batch_size_sum", 0.0), vals.get("pairsmith_batch_size_count", 0.0)


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, int, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="pairsmith-bench-"))
    port_file = tmp / "port"
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "pairsmith", "serve", "--model", model, "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--port-file", str(port_file), "--data-dir", str(tmp / "data"), *extra]
    # The repo root only for a model path relative to it: there, a source checkout's top folder can
    # shadow an installed pairsmith (the GPU machine runs an assembled package from PYTHONPATH).
    cwd = REPO if (REPO / model).exists() else tmp
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    while not port_file.exists():
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text()), log


def wait_serving(target: str, timeout: float = 300) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ch = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(ch)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                ch.close()
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become SERVING")


def requests_of(texts: list[str], per: int) -> list[pb.EmbedRequest]:
    return [pb.EmbedRequest(texts=texts[i : i + per]) for i in range(0, len(texts), per)]


async def closed_loop(target: str, reqs: list[pb.EmbedRequest], clients: int) -> tuple[float, list[float]]:
    """All requests, ``clients`` at a time, back to back; returns (texts/s, per-request latencies in s)."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(clients, 8))]
    stubs = [pb_grpc.PairsmithServiceStub(c) for c in channels]
    queue = list(reversed(reqs))
    n_texts = sum(len(r.texts) for r in reqs)
    lat: list[float] = []

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while queue:
            t = time.perf_counter()
            resp = await stub.Embed(queue.pop(), timeout=120)
            lat.append(time.perf_counter() - t)
            assert resp.embeddings

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    dt = time.perf_counter() - t0
    for c in channels:
        await c.close()
    return n_texts / dt, lat


async def open_loop(target: str, reqs: list[pb.EmbedRequest], rate_rps: float) -> list[float]:
    """Send requests at a fixed rate regardless of replies; returns per-request latencies (s)."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [pb_grpc.PairsmithServiceStub(c) for c in channels]
    lat: list[float] = []

    async def one(i: int, req) -> None:
        t = time.perf_counter()
        await stubs[i % 4].Embed(req, timeout=120)
        lat.append(time.perf_counter() - t)

    tasks = []
    start = time.perf_counter()
    for i, req in enumerate(reqs):
        delay = start + i / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, req)))
    await asyncio.gather(*tasks)
    for c in channels:
        await c.close()
    return lat


def parse_loads(spec: str) -> list[tuple[int, int]]:
    """``"16x8,4x32"`` -> [(16 clients, 8 texts per request), (4, 32)]."""
    out = []
    for part in spec.split(","):
        c, _, t = part.strip().partition("x")
        if not (c.isdigit() and t.isdigit() and int(c) > 0 and int(t) > 0):
            raise SystemExit(f"--loads: expected CLIENTSxTEXTS like 16x8, got {part!r}")
        out.append((int(c), int(t)))
    return out


def pct_ms(lat: list[float], q: float) -> float:
    return round(float(np.percentile(lat, q)) * 1e3, 1) if lat else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--backend",
        choices=("torch", "onnx", "openvino", "auto"),
        default="auto",
        help="server and in-process (auto: the engine table's pick for this CPU, the default engine)",
    )
    ap.add_argument("--texts", type=int, default=1024, help="texts per measurement")
    ap.add_argument("--loads", default="16x8,4x32", help="CLIENTSxTEXTS_PER_REQUEST, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="in-process BiEncoder.encode batch size")
    ap.add_argument(
        "--latency-seconds", type=float, default=0.0, help="open-loop run at half of peak (0: skip)"
    )
    ap.add_argument("--peer", choices=("auto", "none", "infinity"), default="auto",
                    help="auto: run infinity-emb too when installed (bench/peers/envs.py makes its environment)")  # fmt: skip
    ap.add_argument("--server-args", default="", help="extra `pairsmith serve` flags")
    ap.add_argument("--device", default="cpu", help="cpu | cuda: the server's and the in-process encoder's")
    ap.add_argument("--texts-from", default="synthetic",
                    help="synthetic, or an STS set name (stsb-dev ...) read from the data folder")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from bench_common import machine_facts, machine_line

    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.source import default_model_dir, resolve_model

    loads = parse_loads(args.loads)
    texts, text_source = make_texts(args.texts), "synthetic"
    if args.texts_from != "synthetic":
        from pairsmith.distill.data import load_sts_set

        pairs = load_sts_set(args.texts_from)
        real = list(dict.fromkeys(list(pairs.s1) + list(pairs.s2)))
        texts, text_source = (real * (1 + args.texts // len(real)))[: args.texts], args.texts_from
    facts = machine_facts()
    if (
        args.backend in ("onnx", "auto") and args.device == "cpu"
    ):  # the server and the in-process encoder load the same export
        from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

        export_onnx(args.model, ExportConfig(quantize="int8"))
    metrics_port = free_port()
    extra = ["--backend", args.backend, "--device", args.device, *args.server_args.split()]
    extra += ["--metrics-port", str(metrics_port)]
    extra += ["--max-concurrent-requests", "4096"]
    peer = None
    exe = find_infinity(create=args.peer == "infinity") if args.peer != "none" else None
    if args.peer == "infinity" and exe is None:
        raise SystemExit(
            "--peer infinity: infinity_emb not found (PAIRSMITH_INFINITY or bench/peers/envs.py infinity)"
        )
    proc, port, log = start_server(args.model, extra)
    target = f"127.0.0.1:{port}"
    result: dict = {}
    try:
        if exe is not None:
            src = resolve_model(args.model)
            peer = InfinityPeer(exe, src.path or default_model_dir(), free_port(), batch_size=args.batch_size)
        bi = BiEncoder.load(args.model, device=args.device, backend=args.backend)
        bi.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        wait_serving(target)
        if peer is not None:
            peer.wait_ready()
            peer.closed_loop([texts[i : i + 8] for i in range(0, min(128, len(texts)), 8)], 4)  # warm-up
        asyncio.run(closed_loop(target, requests_of(texts, 8)[:16], 4))  # warm-up
        names = ["in_process"] + [f"grpc_{c}x{t}" for c, t in loads]
        names += [f"infinity_{c}x{t}" for c, t in loads] if peer is not None else []
        runs: dict[str, list[float]] = {k: [] for k in names}
        lats: dict[str, list[float]] = {k: [] for k in names if k != "in_process"}
        rows: dict[str, list[float]] = {f"grpc_{c}x{t}": [] for c, t in loads}
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            bi.encode(texts, batch_size=args.batch_size)
            runs["in_process"].append(len(texts) / (time.perf_counter() - t0))
            for c, t in loads:
                s0, n0 = batch_stats(metrics_port)
                tps, lat = asyncio.run(closed_loop(target, requests_of(texts, t), c))
                s1, n1 = batch_stats(metrics_port)
                runs[f"grpc_{c}x{t}"].append(tps)
                lats[f"grpc_{c}x{t}"] += lat
                rows[f"grpc_{c}x{t}"].append((s1 - s0) / max(n1 - n0, 1))
                if peer is not None:
                    tps, lat = peer.closed_loop([texts[i : i + t] for i in range(0, len(texts), t)], c)
                    runs[f"infinity_{c}x{t}"].append(tps)
                    lats[f"infinity_{c}x{t}"] += lat
            print(f"repeat {rep + 1}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in runs.items()), flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratios = {k: statistics.median(g / i for g, i in zip(v, runs["in_process"], strict=True))
                  for k, v in runs.items() if k != "in_process"}  # fmt: skip
        vs_peer = {}
        if peer is not None:
            for c, t in loads:
                g, p = runs[f"grpc_{c}x{t}"], runs[f"infinity_{c}x{t}"]
                vs_peer[f"{c}x{t}"] = round(statistics.median(a / b for a, b in zip(g, p, strict=True)), 3)
        result = {
            "command": " ".join([sys.executable, *sys.argv]),
            "code": facts["code"],
            "machine": facts,
            "machine_line": machine_line(facts),
            "shared_machine": "timed while other jobs may run on the same cores: compare ratios within this file",
            "texts_from": text_source,
            "model": bi.model_id,
            "backend": args.backend,
            "variant": bi.pipeline.backend.variant,
            "texts_per_measurement": len(texts),
            "repeats": args.repeats,
            "texts_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "ratio_vs_in_process_median": {k: round(v, 3) for k, v in ratios.items()},
            "grpc_vs_infinity_median": vs_peer,
            "latency_ms": {
                k: {"p50": pct_ms(v, 50), "p99": pct_ms(v, 99), "n": len(v)} for k, v in lats.items()
            },
            "mean_texts_per_server_batch": {k: round(statistics.median(v), 1) for k, v in rows.items()},
            "server_rss_mib": round(rss_mib(proc.pid), 1),
            "peer_rss_mib": round(peer.rss_mib(), 1) if peer is not None else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        if args.latency_seconds > 0:
            c0, t0_ = loads[0]
            peak = med[f"grpc_{c0}x{t0_}"]
            rate = 0.5 * peak / t0_  # requests per second at half of peak
            n_req = max(20, int(rate * args.latency_seconds))
            lat_reqs = requests_of(make_texts(n_req * t0_, seed=1), t0_)
            lat = np.array(asyncio.run(open_loop(target, lat_reqs, rate)))
            result["half_peak"] = {"rate_texts_per_s": round(rate * t0_, 1), "requests": len(lat),
                                   "p50_ms": pct_ms(list(lat), 50), "p99_ms": pct_ms(list(lat), 99)}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
        if peer is not None:
            peer.stop()
    print(json.dumps(result, indent=2))
    print(f"\n{result['machine_line']}; backend {args.backend} ({result['variant']})")
    print("| path | texts/s (median) | vs in-process | vs infinity | p50 / p99 ms | texts per server batch |")
    print("|---|---|---|---|---|---|")
    print(f"| in-process BiEncoder.encode (batch {args.batch_size}) | {med['in_process']:.1f} | 1.00 | | | |")
    for c, t in loads:
        k, lt = f"grpc_{c}x{t}", result["latency_ms"][f"grpc_{c}x{t}"]
        print(f"| pairsmith gRPC Embed, {c} clients x {t} texts | {med[k]:.1f} | {ratios[k]:.2f} | "
              f"{vs_peer.get(f'{c}x{t}', '')} | {lt['p50']} / {lt['p99']} | {result['mean_texts_per_server_batch'][k]} |")  # fmt: skip
        if peer is not None:
            k, lt = f"infinity_{c}x{t}", result["latency_ms"][f"infinity_{c}x{t}"]
            print(f"| infinity-emb REST, {c} clients x {t} texts | {med[k]:.1f} | {ratios[k]:.2f} | 1.00 | "
                  f"{lt['p50']} / {lt['p99']} | |")  # fmt: skip
    print(f"server RSS {result['server_rss_mib']} MiB; peer RSS {result['peer_rss_mib']} MiB")
    report_rows = [[f"in-process encode (batch {args.batch_size})", round(med["in_process"], 1), 1.0, None]]
    for c, t in loads:
        k = f"grpc_{c}x{t}"
        report_rows.append([f"pairsmith gRPC Embed, {c} clients x {t} texts", round(med[k], 1),
                            round(ratios[k], 2), vs_peer.get(f"{c}x{t}")])  # fmt: skip
        if peer is not None:
            k = f"infinity_{c}x{t}"
            report_rows.append([f"infinity-emb REST (torch), {c} clients x {t} texts", round(med[k], 1),
                                round(ratios[k], 2), 1.0])  # fmt: skip
    result["report"] = {
        "section": "CPU engines",
        "title": f"Serving: gRPC vs in-process vs infinity-emb ({facts['feature_set']}, {result['variant']})",
        "columns": ["path", "texts/s (median)", "vs in-process", "vs infinity-emb"],
        "rows": report_rows,
        "notes": (
            f"{len(texts)} {text_source} texts per measurement, closed loop, median of {args.repeats} "
            "interleaved repeats; server and peer on 127.0.0.1 on the same cores as the clients."
        ),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
