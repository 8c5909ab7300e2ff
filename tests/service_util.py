"""Helpers for the service tests: servers on 127.0.0.1 (thread or subprocess), stubs, health."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

__all__ = ["pb", "pb_grpc", "health_status", "stub_for", "SubprocessServer", "SERVING", "NOT_SERVING"]


def stub_for(target: str, channel_options=None):
    ch = grpc.insecure_channel(target, options=channel_options or [])
    return ch, pb_grpc.PairsmithServiceStub(ch)


def call_code(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:
    """Call an RPC and return (status code, details); OK and "" when it succeeds."""
    try:
        fn(*args, **kw)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def health_status(channel, service: str = "") -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


class SubprocessServer:
    """``pairsmith serve`` in a child process (for kill -9 and SIGTERM tests)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.tmp = tmp
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log = tmp / "server.log"

    def start(self, timeout: float = 180.0) -> SubprocessServer:
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pairsmith", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--port-file", str(port_file), *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT
        )
        end = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if time.monotonic() > end:
                raise TimeoutError(self.log.read_text()[-3000:])
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        ch = grpc.insecure_channel(self.target)
        while True:
            try:
                if health_status(ch) == SERVING:
                    break
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"server not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        ch.close()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)
