"""Embed throughput through gRPC vs in-process BiEncoder, same model, same run.

Starts ``pairsmith serve`` as a child process on 127.0.0.1 (so the server's
model threads do not share a GIL with the load generator), then, for each
repeat: in-process ``BiEncoder.encode`` on the same texts, and closed-loop
gRPC load at each client count (each client sends ``--texts-per-request``
texts per Embed call, back to back). Reports texts/s, the gRPC/in-process
ratio (median over repeats), and p50/p99 latency under open-loop load at half
of the peak gRPC throughput.

Run it alone (2-core boxes): ``flock /tmp/pairsmith-cpu.lock python bench/serve_bench.py``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
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


async def closed_loop(target: str, reqs: list[pb.EmbedRequest], clients: int) -> float:
    """All requests, ``clients`` at a time, back to back; returns texts/s."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(clients, 8))]
    stubs = [pb_grpc.PairsmithServiceStub(c) for c in channels]
    queue = list(reversed(reqs))
    n_texts = sum(len(r.texts) for r in reqs)

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while queue:
            resp = await stub.Embed(queue.pop(), timeout=120)
            assert resp.embeddings

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    dt = time.perf_counter() - t0
    for c in channels:
        await c.close()
    return n_texts / dt


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--texts", type=int, default=1024, help="texts per measurement")
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="in-process BiEncoder.encode batch size")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--server-args", default="", help="extra `pairsmith serve` flags")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from pairsmith.encoders import BiEncoder

    clients = [int(c) for c in args.clients.split(",")]
    texts = make_texts(args.texts)
    metrics_port = free_port()
    extra = [
        *args.server_args.split(),
        "--metrics-port",
        str(metrics_port),
        "--max-concurrent-requests",
        "4096",
    ]
    proc, port, log = start_server(args.model, extra)
    target = f"127.0.0.1:{port}"
    try:
        bi = BiEncoder.load(args.model, device="cpu")
        bi.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        wait_serving(target)
        reqs = requests_of(texts, args.texts_per_request)
        asyncio.run(closed_loop(target, reqs[:16], 4))  # warm-up
        runs: dict[str, list[float]] = {"in_process": [], **{f"grpc_{c}": [] for c in clients}}
        rows: dict[str, list[float]] = {f"grpc_{c}": [] for c in clients}  # mean inputs per merged batch
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            bi.encode(texts, batch_size=args.batch_size)
            runs["in_process"].append(len(texts) / (time.perf_counter() - t0))
            for c in clients:
                s0, n0 = batch_stats(metrics_port)
                runs[f"grpc_{c}"].append(asyncio.run(closed_loop(target, reqs, c)))
                s1, n1 = batch_stats(metrics_port)
                rows[f"grpc_{c}"].append((s1 - s0) / max(n1 - n0, 1))
            print(f"repeat {rep + 1}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in runs.items()), flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratios = {k: statistics.median(g / i for g, i in zip(v, runs["in_process"], strict=True))
                  for k, v in runs.items() if k != "in_process"}  # fmt: skip
        peak_tps = max(med[f"grpc_{c}"] for c in clients)
        rate = 0.5 * peak_tps / args.texts_per_request  # requests per second at half of peak
        n_req = max(20, int(rate * args.latency_seconds))
        lat_reqs = requests_of(make_texts(n_req * args.texts_per_request, seed=1), args.texts_per_request)
        lat = np.array(asyncio.run(open_loop(target, lat_reqs, rate)))
        result = {
            "model": bi.model_id,
            "texts_per_request": args.texts_per_request,
            "texts_per_measurement": len(texts),
            "repeats": args.repeats,
            "texts_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "ratio_vs_in_process_median": {k: round(v, 3) for k, v in ratios.items()},
            "mean_texts_per_server_batch": {k: round(statistics.median(v), 1) for k, v in rows.items()},
            "half_peak": {
                "rate_texts_per_s": round(rate * args.texts_per_request, 1),
                "requests": len(lat),
                "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 1),
            },
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "date": time.strftime("%Y-%m-%d"),
        }
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps(result, indent=2))
    print("\n| path | texts/s (median) | ratio vs in-process | texts per server batch |\n|---|---|---|---|")
    print(f"| in-process BiEncoder.encode (batch {args.batch_size}) | {med['in_process']:.1f} | 1.00 | - |")
    for c in clients:
        print(f"| gRPC Embed, {c} clients x {args.texts_per_request} texts | {med[f'grpc_{c}']:.1f} | "
              f"{ratios[f'grpc_{c}']:.2f} | {result['mean_texts_per_server_batch'][f'grpc_{c}']} |")  # fmt: skip
    hp = result["half_peak"]
    print(
        f"\nhalf of peak ({hp['rate_texts_per_s']} texts/s, open loop): p50 {hp['p50_ms']} ms, p99 {hp['p99_ms']} ms"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
