"""Peer embedding servers for side-by-side serving benchmarks (started as subprocesses on 127.0.0.1).

infinity-emb 0.0.78 pins older transformers / sentence-transformers than
pairsmith, so it lives in its own pinned virtual environment (``envs.py``, name
``infinity``; ``bench/peers/envs.py infinity`` creates it, the peers bench does so on
first run). ``find_infinity()`` looks for its ``infinity_emb`` script in
``$PAIRSMITH_INFINITY`` (a path to the script), then in that environment. The peer serves the
same model directory with its torch engine on the CPU; clients use its REST
``POST /embeddings`` (OpenAI-style body ``{"model": ..., "input": [...]}``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def find_infinity(create: bool = False) -> Path | None:
    """The ``infinity_emb`` script: ``$PAIRSMITH_INFINITY``, else the peers' environment (made when ``create``)."""
    from .envs import ensure, env_python

    env = os.environ.get("PAIRSMITH_INFINITY")
    if create and not env:
        ensure("infinity")
    for cand in ([Path(env)] if env else []) + [env_python("infinity").parent / "infinity_emb"]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (MiB), from /proc."""
    total = 0
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class InfinityPeer:
    """``infinity_emb v2`` on 127.0.0.1 with the torch engine, CPU, same model directory."""

    name = "infinity-emb 0.0.78 (torch, REST /embeddings)"

    def __init__(self, exe: Path, model_dir: Path, port: int, *, batch_size: int = 32) -> None:
        self.port = port
        self.model_id = "bench-model"
        self.log = Path(tempfile.mkdtemp(prefix="pairsmith-infinity-")) / "infinity.log"
        cmd = [str(exe), "v2", "--model-id", str(model_dir), "--served-model-name", self.model_id]
        cmd += ["--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--batch-size", str(batch_size), "--log-level", "warning", "--no-bettertransformer"]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
        }
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.embed(["ready?"])
                return
            except (OSError, http.client.HTTPException, RuntimeError):
                time.sleep(0.5)
        raise RuntimeError(f"infinity not ready after {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def embed(self, texts: list[str], conn: http.client.HTTPConnection | None = None) -> list[list[float]]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            body = json.dumps({"model": self.model_id, "input": texts})
            conn.request("POST", "/embeddings", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"infinity HTTP {resp.status}: {data[:300]!r}")
            return [d["embedding"] for d in json.loads(data)["data"]]
        finally:
            if own:
                conn.close()

    def closed_loop(self, batches: list[list[str]], clients: int) -> tuple[float, list[float]]:
        """All batches, ``clients`` threads back to back (keep-alive connections); (texts/s, latencies s)."""
        queue = list(reversed(batches))
        lock = threading.Lock()
        lat: list[float] = []
        errors: list[BaseException] = []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        b = queue.pop()
                    t = time.perf_counter()
                    out = self.embed(b, conn)
                    lat.append(time.perf_counter() - t)
                    assert len(out) == len(b)
            except BaseException as exc:  # surfaced below: a failed peer must not look fast
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"infinity client failed: {errors[0]!r}")
        return sum(len(b) for b in batches) / dt, lat

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
