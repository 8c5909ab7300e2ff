"""The peers bench's worker protocol (bench/peers/worker.py): one JSON object per stdout line.

A contender that prints to stdout while it loads (Python ``print`` and a C-level ``write(1, ...)``,
as OpenVINO's calibration does) must not corrupt the protocol, and a contender that leaves a
non-daemon thread running (as infinity-emb does) must not keep the worker alive after ``quit``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOISY = """
import os, sys, threading, time
sys.path.insert(0, {peers!r})
import numpy as np
import worker

def noisy(model, art, threads, isa):
    print("Collecting calibration data: 100%")   # Python-level stdout
    os.write(1, b"C-level progress line\\n")       # C-level stdout
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()  # never ends
    return lambda texts, b: np.zeros((len(texts), 4), dtype=np.float32)

worker.CONTENDERS["noisy"] = noisy
sys.argv = ["worker", "--contender", "noisy", "--model", {model!r}, "--artifacts", {art!r}, "--threads", "1"]
worker.main()
"""


def test_library_output_stays_off_the_protocol_and_quit_ends_the_worker(tmp_path):
    code = NOISY.format(peers=str(REPO / "bench" / "peers"), model=str(tmp_path), art=str(tmp_path / "art"))
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["a b", "c d e"]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())  # the first line is the protocol's, not a progress bar
        assert ready["ready"] is True
        proc.stdin.write(json.dumps({"op": "encode", "texts": str(texts), "batch": 2, "out": None}) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["n"] == 2
        proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0  # the sleeping non-daemon thread does not hold it
        err = proc.stderr.read()
        assert "Collecting calibration data" in err and "C-level progress line" in err  # kept, in the log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
