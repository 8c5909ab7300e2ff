"""Crash-safe run state for long distillation jobs.

Every artifact is written atomically (temp file or directory, fsync, rename),
and a run's ``state.json`` lists the steps already finished with what they
produced. ``--resume`` re-reads it and skips those steps, so a run killed at
any point restarts from the last finished step, never from the beginning. A
state whose recorded configuration differs from the one given is refused, and so
is one written by different code (:mod:`pairsmith.distill.provenance`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pairsmith.atomic import atomic_write_bytes, atomic_write_json, write_dir
from pairsmith.distill.provenance import code_version, describe, same_code
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)


STATE_FILE = "state.json"


# Atomic writes: the shared helpers (temp + fsync + rename + fsync of the folder; folders swapped in).
write_bytes_atomic = atomic_write_bytes
write_json_atomic = atomic_write_json
save_dir_atomic = write_dir  # writer(tmpdir), then the folder is swapped into dest


def save_npy_atomic(path: str | os.PathLike[str], array) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def save_npz_atomic(path: str | os.PathLike[str], **arrays) -> None:
    """Several named arrays in one .npz, written atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def clean_stale_temps(folder: Path) -> None:
    """Remove half-written temp files/dirs left by a killed run."""
    if not folder.is_dir():
        return
    for p in folder.rglob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for p in folder.rglob(".*.old-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class RunState:
    """The finished steps of one run, persisted in ``out/state.json`` after each step."""

    def __init__(self, out: Path, config: dict, *, resume: bool, kind: str) -> None:
        self.out = Path(out)
        self.path = self.out / STATE_FILE
        self.kind = kind
        self.config = json.loads(json.dumps(config, default=str))  # tuples -> lists, as on disk
        config = self.config
        existing = self.path.exists()
        # The code this process runs: taken once, so a commit or checkout in the worktree while the run is
        # in progress does not change what state.json and the report record.
        self._code = code_version()
        if existing and not resume:
            raise FailedPrecondition(
                f"{self.out}: holds an earlier run ({STATE_FILE}); pass --resume to continue it "
                "or choose a new --out directory"
            )
        if resume and existing:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise FailedPrecondition(f"{self.path}: unreadable run state ({exc})") from exc
            if data.get("kind") != kind:
                raise FailedPrecondition(f"{self.path}: a {data.get('kind')!r} run, not {kind!r}")
            code = self._code
            if not same_code(data.get("code"), code):
                raise FailedPrecondition(
                    f"{self.path}: --resume of a run written by {describe(data.get('code'))}, but this is "
                    f"{describe(code)}; a resumed run must not mix code versions: rerun it with that code "
                    "or start a new --out directory"
                )
            diff = _config_diff(data.get("config", {}), config)
            if diff:
                raise FailedPrecondition(
                    f"{self.path}: --resume with a different configuration ({'; '.join(diff)}); "
                    "use the same options or a new --out directory"
                )
            self.done: dict[str, dict] = dict(data.get("done", {}))
            self.started = float(data.get("started", time.time()))
            self.elapsed_before = float(data.get("elapsed_s", 0.0))
            clean_stale_temps(self.out)
            log.info("resuming %s: %d steps already finished", self.out, len(self.done))
        else:
            if resume:
                log.info("--resume: no earlier run in %s, starting fresh", self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            self.done = {}
            self.started = time.time()
            self.elapsed_before = 0.0
        self._t0 = time.time()
        self._lock = threading.Lock()
        self._write()

    # Only these keys may change between a run and its resume.
    RESUMABLE_CHANGES = ("cycles", "progress", "device")

    @property
    def code(self) -> dict:
        """The code version that wrote this run (what every report records), as at this invocation's start."""
        return self._code

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self._t0)

    def is_done(self, step: str) -> bool:
        return step in self.done

    def info(self, step: str) -> dict:
        return self.done.get(step, {})

    def mark(self, step: str, **info: Any) -> None:
        with self._lock:  # parallel fits (one thread per model) mark their own steps
            self.done[step] = {**info, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write()

    def _write(self) -> None:
        write_json_atomic(
            self.path,
            {
                "version": 1,
                "kind": self.kind,
                "code": self._code,
                "config": self.config,
                "started": self.started,
                "elapsed_s": round(self.elapsed(), 3),
                "done": self.done,
            },
        )


def _config_diff(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RunState.RESUMABLE_CHANGES:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise InvalidInput(f"--out: {p} exists and is not a directory")
    return p
