"""The peers' pinned virtual environments: created on first use under a cache folder, then reused.

Each peer pins versions that pip resolves offline-compatible with one another (the
combinations that work with torch 2.13 CPU; newer releases of a peer may need other pins):

- ``st-torch``: sentence-transformers 6.2 (the library most users run).
- ``st-onnx``: sentence-transformers 5.7 with its ``[onnx]`` extra (6.x's extra needs an
  optimum-onnx that wants transformers < 4.58, so pip cannot resolve it).
- ``st-openvino``: sentence-transformers 6.3 + optimum-intel 2.2 + OpenVINO 2026.4.1. pip pulls
  a torchvision that breaks ``import transformers`` with torch 2.13, so it is uninstalled after.
- ``fastembed``: fastembed 0.9.1 (onnxruntime, no torch).
- ``infinity``: infinity-emb 0.0.78 with its server, torch and optimum engines.

torch is always installed first and alone, pinned to the CPU build (``torch==2.13.0`` from
``/opt/wheels`` when that folder exists), and then held by a constraints file, so no peer can
pull a multi-GB CUDA build. The folder is ``$PAIRSMITH_PEERS_HOME``, else
``$PAIRSMITH_CACHE/peers``, else ``~/.cache/pairsmith/peers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class PeerEnv:
    name: str
    packages: tuple[str, ...]
    torch: bool = True
    uninstall: tuple[str, ...] = ()  # removed after install (known-bad transitive pulls)
    probe: str = ""  # a python statement that must run in the finished environment
    pins: tuple[str, ...] = field(default=())  # extra constraints


ENVS: dict[str, PeerEnv] = {
    e.name: e
    for e in (
        PeerEnv(
            "st-torch",
            ("sentence-transformers==6.2.0",),
            probe="import sentence_transformers",
        ),
        PeerEnv(
            "st-onnx",
            ("sentence-transformers[onnx]==5.7.0",),
            probe="import sentence_transformers, onnxruntime, optimum.onnxruntime",
        ),
        PeerEnv(
            "st-openvino",
            (
                "sentence-transformers[openvino]==6.3.0",
                "optimum-intel[openvino]==2.2.0",
                "openvino==2026.4.1",
                "datasets==5.0.1",  # the static int8 helper reads its calibration sentences with it
                "huggingface-hub>=1.5,<1.22",  # newer datasets pull a hub that optimum-intel refuses
            ),
            uninstall=("torchvision",),
            probe="import transformers, sentence_transformers, openvino, optimum.intel",
        ),
        PeerEnv("fastembed", ("fastembed==0.9.1",), torch=False, probe="import fastembed"),
        PeerEnv(
            "infinity",
            ("infinity-emb[server,torch,optimum]==0.0.78",),
            probe="import infinity_emb",
        ),
    )
}


def peers_home() -> Path:
    env = os.environ.get("PAIRSMITH_PEERS_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("PAIRSMITH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pairsmith"
    )
    return Path(base) / "peers"


def _stamp(venv: Path) -> Path:
    return venv / ".pairsmith-peer.json"


def env_python(name: str) -> Path:
    return peers_home() / "venvs" / name / "bin" / "python"


def _pip(py: Path, *args: str, log) -> None:
    links = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *links, *args]
    print(f"peers: {' '.join(cmd[2:])}", file=log, flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def ensure(name: str, *, log=sys.stderr) -> Path:
    """The environment's python, creating the environment when it is missing or its pins changed."""
    spec = ENVS[name]
    venv = peers_home() / "venvs" / name
    py = venv / "bin" / "python"
    want = {
        "packages": list(spec.packages),
        "torch": TORCH if spec.torch else None,
        "uninstall": list(spec.uninstall),
    }
    stamp = _stamp(venv)
    if py.exists() and stamp.exists() and json.loads(stamp.read_text()).get("spec") == want:
        return py
    t0 = time.monotonic()
    print(f"peers: creating {venv} (first run only; a few minutes)", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # kept: a rerun only tops up
    _pip(py, "--upgrade", "pip", log=log)
    cons = venv / "constraints.txt"
    cons.write_text("\n".join([TORCH, *spec.pins]) + "\n" if spec.torch else "\n".join(spec.pins) + "\n")
    if spec.torch:
        _pip(py, TORCH, log=log)
    _pip(py, "-c", str(cons), *spec.packages, log=log)
    if spec.uninstall:
        subprocess.run(
            [str(py), "-m", "pip", "uninstall", "-y", "-q", *spec.uninstall], check=False, stdout=log
        )
    if spec.probe:  # from the environment's folder: a source checkout's kernels/ would look like a package
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([str(py), "-c", spec.probe], check=True, env=env, cwd=venv)
    freeze = subprocess.run(
        [str(py), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    stamp.write_text(
        json.dumps({"spec": want, "freeze": freeze.splitlines(), "seconds": round(time.monotonic() - t0)})
    )
    return py


def versions(name: str) -> dict[str, str]:
    """Installed versions of the packages that matter, from the environment's stamp."""
    stamp = _stamp(peers_home() / "venvs" / name)
    freeze = json.loads(stamp.read_text())["freeze"] if stamp.exists() else []
    keep = ("torch", "sentence-transformers", "transformers", "onnxruntime", "openvino", "optimum",
            "optimum-intel", "optimum-onnx", "fastembed", "infinity-emb", "tokenizers", "numpy")  # fmt: skip
    out = {}
    for line in freeze:
        if "==" in line:
            k, v = line.split("==", 1)
            if k.lower() in keep:
                out[k.lower()] = v
    return out


if __name__ == "__main__":
    for n in sys.argv[1:] or list(ENVS):
        print(n, ensure(n))
