"""Load: N concurrent clients with a mixed workload against a real ``pairsmith serve`` on 127.0.0.1.

Mix per call: Embed 30%, Score 15%, Rerank 15%, Search 25% (alternating a Flat and an HNSW index),
Upsert 10% (new ids with text), Delete 5% (ids upserted earlier: many deletes over a run, so the
HNSW index is rebuilt on the way). Each phase reports throughput, p50/p99 latency, errors by
status code, and the server's RSS sampled once a second from /proc. Phases:

1. baseline: 1 client, ``--baseline-s`` seconds (latency when idle);
2. for each ``--clients`` N: ``--warmup-s`` seconds, then ``--seconds`` measured (RSS growth =
   median of the last 10% of samples vs the first 10%, both after warm-up);
3. saturation: ``--saturate`` calls in flight at once (futures), expecting only OK or
   RESOURCE_EXHAUSTED;
4. recovery: 1 client again; its p50 is compared with the baseline's.

    python bench/reliability/load.py --clients 16,64 --seconds 300 --out bench/results/reliability
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb  # noqa: E402
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc  # noqa: E402

WORDS = (
    "the a model server index vector query answer search fast slow green river mountain city data "
    "paper method result table figure train test learn encode rank score pair text sentence word"
).split()
MIX = (
    ("Embed", 0.30),
    ("Score", 0.15),
    ("Rerank", 0.15),
    ("Search", 0.25),
    ("Upsert", 0.10),
    ("Delete", 0.05),
)


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(4, 24))))


class Server:
    def __init__(self, model: str, data: Path, extra: list[str]) -> None:
        port_file = data / "port"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "pairsmith", "serve", "--model", model, "--data-dir", str(data)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), *extra]
        self.log = open(data / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 300
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"server did not start; see {data / 'server.log'}")
            time.sleep(0.2)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        ch = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(ch).result(timeout=300)
        stub = pb_grpc.PairsmithServiceStub(ch)
        while True:
            try:
                stub.Info(pb.InfoRequest(), timeout=10)
                break
            except grpc.RpcError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)
        ch.close()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(120)


class Workload:
    """Shared state of the mixed clients: ids that exist (for deletes), counters."""

    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.next_id = 0
        self.seed = seed

    def fresh_ids(self, n: int) -> list[str]:
        with self.lock:
            out = [f"u{self.next_id + i}" for i in range(n)]
            self.next_id += n
            return out

    def call(self, stub, rng: np.random.Generator, rpc: str, timeout: float = 60.0) -> None:
        if rpc == "Embed":
            stub.Embed(
                pb.EmbedRequest(texts=[sentence(rng) for _ in range(int(rng.integers(1, 9)))]),
                timeout=timeout,
            )
        elif rpc == "Score":
            pairs = [
                pb.TextPair(text_a=sentence(rng), text_b=sentence(rng))
                for _ in range(int(rng.integers(1, 5)))
            ]
            stub.Score(pb.ScoreRequest(pairs=pairs), timeout=timeout)
        elif rpc == "Rerank":
            texts = [sentence(rng) for _ in range(int(rng.integers(4, 17)))]
            stub.Rerank(pb.RerankRequest(query=sentence(rng), texts=texts, top_n=3), timeout=timeout)
        elif rpc == "Search":
            index = "flat" if rng.random() < 0.5 else "hnsw"
            stub.Search(pb.SearchRequest(index=index, text=sentence(rng), top_k=10), timeout=timeout)
        elif rpc == "Upsert":
            ids = self.fresh_ids(int(rng.integers(1, 9)))
            index = "flat" if rng.random() < 0.5 else "hnsw"
            items = [pb.UpsertItem(id=i, text=sentence(rng)) for i in ids]
            stub.Upsert(iter([pb.UpsertRequest(index=index, items=items)]), timeout=timeout)
            with self.lock:
                self.ids.extend((index, i) for i in ids)
        elif rpc == "Delete":
            with self.lock:
                take = [self.ids.pop(int(rng.integers(len(self.ids)))) for _ in range(min(4, len(self.ids)))]
            for index in ("flat", "hnsw"):
                ids = [i for ix, i in take if ix == index]
                if ids:
                    stub.Delete(pb.DeleteRequest(index=index, ids=ids), timeout=timeout)


def run_phase(wl: Workload, server: Server, clients: int, seconds: float, warmup: float, seed: int) -> dict:
    stop = threading.Event()
    measuring = threading.Event()
    records: list[list[tuple[str, str, float]]] = [[] for _ in range(clients)]
    names = [m for m, _ in MIX]
    probs = np.array([p for _, p in MIX])
    channels = [grpc.insecure_channel(wl.target) for _ in range(max(1, clients // 8))]

    def client(k: int) -> None:
        rng = np.random.default_rng(seed * 1000 + k)
        stub = pb_grpc.PairsmithServiceStub(channels[k % len(channels)])
        while not stop.is_set():
            rpc = names[int(rng.choice(len(names), p=probs))]
            t0 = time.perf_counter()
            try:
                wl.call(stub, rng, rpc)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            if measuring.is_set():
                records[k].append((rpc, code, time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    measuring.set()
    rss: list[tuple[float, float]] = []
    t_start = time.monotonic()
    while time.monotonic() - t_start < seconds:
        rss.append((time.monotonic() - t_start, server.rss_mb()))
        time.sleep(1.0)
    measuring.clear()
    elapsed = time.monotonic() - t_start
    stop.set()
    for t in threads:
        t.join(120)
    for ch in channels:
        ch.close()
    return summarise([r for rs in records for r in rs], elapsed, clients, rss)


def summarise(recs: list[tuple[str, str, float]], elapsed: float, clients: int, rss) -> dict:
    lat = np.array([r[2] for r in recs if r[1] == "OK"]) * 1e3
    by_rpc = collections.defaultdict(list)
    for rpc, code, s in recs:
        if code == "OK":
            by_rpc[rpc].append(s * 1e3)
    out = {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "calls": len(recs),
        "throughput_rps": round(len(recs) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "codes": dict(collections.Counter(r[1] for r in recs)),
        "per_rpc": {
            k: {
                "n": len(v),
                "p50_ms": round(float(np.percentile(v, 50)), 1),
                "p99_ms": round(float(np.percentile(v, 99)), 1),
            }
            for k, v in sorted(by_rpc.items())
        },
    }
    if rss:
        vals = np.array([v for _, v in rss])
        tenth = max(1, len(vals) // 10)
        first, last = float(np.median(vals[:tenth])), float(np.median(vals[-tenth:]))
        out["rss_mb"] = {
            "first": round(first, 1),
            "last": round(last, 1),
            "max": round(float(vals.max()), 1),
            "growth_pct": round(100 * (last - first) / first, 2),
            "samples": [[round(t, 1), round(v, 1)] for t, v in rss],
        }
    return out


def saturate(wl: Workload, n: int, seed: int) -> dict:
    """``n`` Embed calls in flight at once (futures from one thread): past the admission limit."""
    rng = np.random.default_rng(seed)
    ch = grpc.insecure_channel(wl.target)
    stub = pb_grpc.PairsmithServiceStub(ch)
    t0 = time.perf_counter()
    futs = [
        stub.Embed.future(pb.EmbedRequest(texts=[sentence(rng) for _ in range(8)]), timeout=120)
        for _ in range(n)
    ]
    codes = collections.Counter()
    for f in futs:
        try:
            f.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    ch.close()
    return {"in_flight": n, "codes": dict(codes), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", default="16,64")
    ap.add_argument("--seconds", default="60,300", help="measured seconds per --clients entry")
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--baseline-s", type=float, default=10.0)
    ap.add_argument("--saturate", type=int, default=700)
    ap.add_argument("--preload", type=int, default=2000, help="documents per index before the run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reliability")
    ap.add_argument("--server-args", default="", help="extra `pairsmith serve` flags")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    seconds = [float(s) for s in args.seconds.split(",")]
    seconds += [seconds[-1]] * (len(clients) - len(seconds))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pairsmith-load-") as tmp:
        server = Server(args.model, Path(tmp), args.server_args.split())
        try:
            ch = grpc.insecure_channel(server.target)
            stub = pb_grpc.PairsmithServiceStub(ch)
            stub.CreateIndex(pb.CreateIndexRequest(name="flat"))
            stub.CreateIndex(pb.CreateIndexRequest(name="hnsw", factory="HNSW32"))
            wl = Workload(server.target, seed=0)
            rng = np.random.default_rng(0)
            for index in ("flat", "hnsw"):
                for start in range(0, args.preload, 256):
                    ids = wl.fresh_ids(min(256, args.preload - start))
                    items = [pb.UpsertItem(id=i, text=sentence(rng)) for i in ids]
                    stub.Upsert(iter([pb.UpsertRequest(index=index, items=items)]), timeout=600)
                    wl.ids.extend((index, i) for i in ids)
            ch.close()
            report = {
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                "model": args.model,
                "date": time.strftime("%Y-%m-%d"),
                "baseline": run_phase(wl, server, 1, args.baseline_s, 2.0, seed=1),
            }
            report["load"] = []
            for n, (c, s) in enumerate(zip(clients, seconds, strict=True)):
                print(f"load: {c} clients for {s:.0f} s (+{args.warmup_s:.0f} s warm-up)", flush=True)
                report["load"].append(run_phase(wl, server, c, s, args.warmup_s, seed=10 + n))
            if args.saturate:
                print(f"saturation: {args.saturate} calls in flight", flush=True)
                report["saturation"] = saturate(wl, args.saturate, seed=99)
            report["recovery"] = run_phase(wl, server, 1, args.baseline_s, 2.0, seed=2)
        finally:
            report_rc = server.stop()
        report["server_exit_code"] = report_rc
    (args.out / "load.json").write_text(json.dumps(report, indent=2))
    for phase in report["load"]:
        r = phase.get("rss_mb", {})
        print(
            f"{phase['clients']:>3} clients: {phase['throughput_rps']} calls/s, p50 {phase['p50_ms']} ms, "
            f"p99 {phase['p99_ms']} ms, codes {phase['codes']}, RSS {r.get('first')} -> {r.get('last')} MB "
            f"({r.get('growth_pct')}%)"
        )
    print("saturation:", report.get("saturation"))
    print(f"baseline p50 {report['baseline']['p50_ms']} ms, after load p50 {report['recovery']['p50_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
