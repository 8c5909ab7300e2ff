"""Resource and shutdown cases for `make reliability`, each against a real ``pairsmith serve``.

- ``drain_pace``: one EmbedStream message of 16 short texts every 100 ms; SIGTERM 2 s in. Every
  message must be answered inside the shutdown grace, and the replies after SIGTERM must keep
  the request pace (largest gap between consecutive replies, and the most replies that arrive
  within 20 ms of each other).
- ``descriptors``: the server runs with ``RLIMIT_NOFILE`` lowered; the client creates more
  indexes than that limit allows open at once, each with one Upsert and one Search, then times
  ListIndexes. Every call must succeed (the server closes idle indexes).
- ``full_disk_create``: the data directory is a small filesystem filled to the brim; CreateIndex
  must answer RESOURCE_EXHAUSTED, leave no ``.creating-*`` folder, and reads must keep working.
  Needs a tmpfs mount (root); skipped with a reason otherwise.

    python bench/reliability/cases.py [--quick] [--out bench/results/reliability]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
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
sys.path.insert(0, str(REPO / "bench"))

from bench_common import provenance  # noqa: E402

from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb  # noqa: E402
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc  # noqa: E402


class Server:
    """``pairsmith serve`` in a child process; ``nofile`` lowers its descriptor limit."""

    def __init__(self, model: str, data: Path, work: Path, *extra: str, nofile: int | None = None) -> None:
        port_file = work / "port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "pairsmith", "serve", "--model", model, "--data-dir", str(data)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), *extra]

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log_path = work / "server.log"
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
        end = time.monotonic() + 300
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.PairsmithServiceStub(self.channel)
        while True:
            try:
                self.stub.Info(pb.InfoRequest(), timeout=10)
                break
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"server not ready:\n{self.log_path.read_text()[-3000:]}") from None
                time.sleep(0.2)

    def stop(self, timeout: float = 120.0) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def _code(fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


# -- drain pace ------------------------------------------------------------------------------------
def drain_pace(model: str, *, messages: int = 60, every_s: float = 0.1, sigterm_s: float = 2.0,
               grace_s: float = 10.0, texts: int = 16) -> dict:  # fmt: skip
    """One stream, SIGTERM ``sigterm_s`` in; reply times relative to the stream's start."""
    with tempfile.TemporaryDirectory(prefix="pairsmith-drain-") as tmp:
        work = Path(tmp)
        srv = Server(model, work / "data", work)
        sent: list[float] = []
        got: list[float] = []
        err: list[str] = []
        t0 = time.monotonic()

        def requests():
            for i in range(messages):
                sent.append(time.monotonic() - t0)
                yield pb.EmbedStreamRequest(
                    texts=[f"message {i} text {j} of the stream" for j in range(texts)]
                )
                time.sleep(max(0.0, t0 + (i + 1) * every_s - time.monotonic()))

        def consume():
            try:
                for _ in srv.stub.EmbedStream(requests(), timeout=grace_s + 60):
                    got.append(time.monotonic() - t0)
            except grpc.RpcError as exc:
                err.append(f"{exc.code().name}: {exc.details()}")

        th = threading.Thread(target=consume)
        th.start()
        time.sleep(max(0.0, sigterm_s - (time.monotonic() - t0)))
        t_term = time.monotonic() - t0
        srv.proc.send_signal(signal.SIGTERM)
        th.join(grace_s + 60)
        rc = srv.proc.wait(grace_s + 60)
        srv.channel.close()
        after = [t for t in got if t >= t_term]
        gaps = np.diff([t_term, *after]) if after else np.zeros(0)
        return {
            "messages": messages,
            "replies": len(got),
            "errors": err,
            "sigterm_at_s": round(t_term, 3),
            "last_reply_s": round(got[-1], 3) if got else None,
            "replies_after_sigterm": len(after),
            "max_gap_after_sigterm_s": round(float(gaps.max()), 3) if len(gaps) else None,
            # the most replies that arrived within 20 ms of the previous one, in a row (a burst)
            "largest_burst": _largest_burst(after, 0.02),
            "server_exit_code": rc,
            "reply_times_s": [round(t, 3) for t in got],
        }


def _largest_burst(times: list[float], within: float) -> int:
    best = run = 1 if times else 0
    for a, b in zip(times, times[1:], strict=False):
        run = run + 1 if b - a <= within else 1
        best = max(best, run)
    return best


# -- descriptors -----------------------------------------------------------------------------------
def descriptors(model: str, *, nofile: int = 256, indexes: int = 120, list_extra: int = 0) -> dict:
    """``indexes`` indexes under ``RLIMIT_NOFILE=nofile``, each: create, upsert one, search one."""
    with tempfile.TemporaryDirectory(prefix="pairsmith-fds-") as tmp:
        work = Path(tmp)
        srv = Server(model, work / "data", work, nofile=nofile)
        codes: dict[str, int] = {}
        dim = srv.stub.Info(pb.InfoRequest(), timeout=30).dim
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for i in range(indexes):
            name = f"fd-{i:05d}"
            vec = rng.standard_normal(dim).astype("<f4")
            for label, fn, req in (
                ("CreateIndex", srv.stub.CreateIndex, pb.CreateIndexRequest(name=name)),
                ("Upsert", srv.stub.Upsert,
                 iter([pb.UpsertRequest(index=name, items=[pb.UpsertItem(id="a", vector=vec.tobytes())])])),
                ("Search", srv.stub.Search, pb.SearchRequest(index=name, vector=vec.tobytes(), top_k=1)),
            ):  # fmt: skip
                code = _code(fn, req, timeout=60)
                codes[f"{label} {code}"] = codes.get(f"{label} {code}", 0) + 1
        loop_s = time.perf_counter() - t0
        list_ms = []
        for _ in range(3):
            t1 = time.perf_counter()
            n = len(srv.stub.ListIndexes(pb.ListIndexesRequest(), timeout=120).indexes)
            list_ms.append((time.perf_counter() - t1) * 1e3)
        leftovers = [p.name for p in (work / "data" / "indexes").glob(".creating-*")]
        rc = srv.stop()
        return {
            "rlimit_nofile": nofile,
            "indexes": indexes,
            "codes": codes,
            "all_ok": all(k.endswith(" OK") for k in codes),
            "loop_s": round(loop_s, 1),
            "list_indexes": n,
            "list_indexes_ms_median": round(float(np.median(list_ms)), 1),
            "creating_leftovers": leftovers,
            "server_exit_code": rc,
        }


# -- full disk -------------------------------------------------------------------------------------
def full_disk_create(model: str, *, size_mb: int = 8) -> dict:
    """CreateIndex on a filled tmpfs: RESOURCE_EXHAUSTED, nothing half-created, reads keep working."""
    with tempfile.TemporaryDirectory(prefix="pairsmith-full-") as tmp:
        work = Path(tmp)
        mnt = work / "mnt"
        mnt.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            return {"skipped": f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})"}
        try:
            srv = Server(model, mnt / "data", work)
            try:
                srv.stub.CreateIndex(pb.CreateIndexRequest(name="before"), timeout=60)
                dim = srv.stub.Info(pb.InfoRequest(), timeout=30).dim
                vec = np.ones(dim, "<f4")
                srv.stub.Upsert(
                    iter(
                        [
                            pb.UpsertRequest(
                                index="before", items=[pb.UpsertItem(id="a", vector=vec.tobytes())]
                            )
                        ]
                    ),
                    timeout=60,
                )
                _fill(mnt / "ballast")
                codes = {}
                for i in range(3):
                    try:
                        srv.stub.CreateIndex(pb.CreateIndexRequest(name=f"full-{i}"), timeout=60)
                        code, details = "OK", ""
                    except grpc.RpcError as exc:
                        code, details = exc.code().name, exc.details()
                    codes[code] = codes.get(code, 0) + 1
                leftovers = sorted(p.name for p in (mnt / "data" / "indexes").iterdir() if p.name != "before")
                search = _code(srv.stub.Search, pb.SearchRequest(index="before", vector=vec.tobytes(), top_k=1),
                               timeout=60)  # fmt: skip
                listed = _code(srv.stub.ListIndexes, pb.ListIndexesRequest(), timeout=60)
                (mnt / "ballast").unlink()
                after = _code(srv.stub.CreateIndex, pb.CreateIndexRequest(name="after"), timeout=60)
            finally:
                rc = srv.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return {
            "filesystem_mb": size_mb,
            "create_codes": codes,
            "message": details,
            "leftovers": leftovers,
            "search_while_full": search,
            "list_while_full": listed,
            "create_after_space_freed": after,
            "server_exit_code": rc,
        }


def _fill(path: Path) -> None:
    """Write ``path`` until the filesystem refuses another byte."""
    with open(path, "wb", buffering=0) as fh:
        for size in (1 << 16, 1):
            block = b"\0" * size
            try:
                while True:
                    fh.write(block)
            except OSError:
                pass


def report(out: dict) -> dict:
    rows = []
    d = out.get("drain_pace")
    if d:
        rows.append(["EmbedStream through the SIGTERM drain",
                     f"{d['replies']}/{d['messages']} replies; largest gap after SIGTERM {d['max_gap_after_sigterm_s']} s; "
                     f"largest burst {d['largest_burst']}"])  # fmt: skip
    f = out.get("descriptors")
    if f:
        rows.append([f"{f['indexes']} indexes under RLIMIT_NOFILE={f['rlimit_nofile']}",
                     f"{f['codes']}; ListIndexes {f['list_indexes_ms_median']} ms"])  # fmt: skip
    z = out.get("full_disk_create")
    if z:
        rows.append(["CreateIndex on a full disk",
                     z.get("skipped") or f"{z['create_codes']}; left behind {z['leftovers'] or 'nothing'}; "
                     f"reads {z['search_while_full']}"])  # fmt: skip
    return {
        "section": "Reliability",
        "title": "Resource and shutdown cases (real `pairsmith serve`)",
        "columns": ["case", "result"],
        "rows": rows,
        "notes": "bench/reliability/cases.py against a server subprocess on 127.0.0.1; other jobs used "
        "the same cores meanwhile, so latencies are upper bounds.",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reliability")
    ap.add_argument("--cases", default="drain_pace,descriptors,full_disk_create")
    ap.add_argument("--indexes", type=int, default=2000, help="descriptor case: indexes to create")
    ap.add_argument("--quick", action="store_true", help="descriptor case with 300 indexes")
    args = ap.parse_args()
    if args.quick:
        args.indexes = min(args.indexes, 300)
    out: dict = {
        **provenance(sys.argv, REPO),
        "shared_machine": True,
        "model": args.model,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (torch default)"),
    }
    for case in args.cases.split(","):
        print(f"case {case} ...", flush=True)
        if case == "drain_pace":
            out[case] = drain_pace(args.model)
        elif case == "descriptors":
            out[case] = descriptors(args.model, indexes=args.indexes)
        elif case == "full_disk_create":
            out[case] = full_disk_create(args.model)
        print(json.dumps({k: v for k, v in out[case].items() if k != "reply_times_s"}), flush=True)
    out["report"] = report(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cases.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
