"""Faults: kill -9 at random moments, a full disk, corrupted and truncated files.

kill -9 rounds: a child process (``fault_worker``) upserts, replaces, deletes and compacts with
thresholds so small that snapshot writes, HNSW rebuilds and IVF training happen every few
operations; the parent kills it at a random moment, reopens the store and checks that every
acknowledged write is present with its exact vector and payload and is found by search, that no
acknowledged delete came back, that the one operation in flight is all-or-nothing per item, and
that the snapshot checksum and SQLite's integrity check pass. ``PAIRSMITH_KILL_ROUNDS`` rounds
(2 in ``make test``, 24 in ``make reliability``), across Flat, HNSW and IVF indexes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pairsmith.errors import FailedPrecondition, ResourceExhausted
from pairsmith.service.store.faiss_index import sha256_file
from pairsmith.service.store.index_store import IndexStore, UpsertItem
from tests.reliability.conftest import KILL_ROUNDS, RESULTS_DIR
from tests.reliability.fault_worker import CONFIG, DIM, INDEX, vector_for

REPO = Path(__file__).resolve().parents[2]
FACTORIES = ("IDMap2,Flat", "HNSW16", "IVF8,Flat")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


class Journal:
    """The parent's model of the index: acknowledged state + the one operation in flight."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}  # id -> version acknowledged
        self.deleted: set[str] = set()  # acknowledged deletes (not re-upserted since)
        self.acked = 0
        self.inflight: dict | None = None

    def replay(self, lines: list[str]) -> None:
        self.inflight = None
        for line in lines:
            tag, _, body = line.partition(" ")
            if tag == "BEGIN":
                self.inflight = json.loads(body)
            elif tag == "ACK":
                op = json.loads(body)
                self.acked += 1
                if op["op"] == "upsert":
                    self.live.update(op["items"])
                    self.deleted.difference_update(op["items"])
                elif op["op"] == "delete":
                    for i in op["ids"]:
                        self.live.pop(i, None)
                        self.deleted.add(i)
                self.inflight = None


def _verify(root: Path, journal: Journal) -> dict:
    """Reopen the store in this process and check everything; returns figures for the round."""
    inflight = journal.inflight or {}
    maybe_new = inflight.get("items", {}) if inflight.get("op") == "upsert" else {}
    maybe_gone = set(inflight.get("ids", [])) if inflight.get("op") == "delete" else set()
    idx = root / "indexes" / INDEX
    manifest = json.loads((idx / "manifest.json").read_text())
    if manifest.get("snapshot"):
        snap = manifest["snapshot"]
        assert sha256_file(idx / snap["file"]) == snap["sha256"], "snapshot checksum mismatch"
    con = sqlite3.connect(idx / "store.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = {i: (v, p) for i, v, p in con.execute("SELECT id, vector, payload FROM items")}
    con.close()
    store = IndexStore(root, config=CONFIG)
    try:
        for ident, version in journal.live.items():
            if ident in maybe_gone and ident not in rows:
                continue  # deleted by the operation in flight: allowed
            assert ident in rows, f"acknowledged {ident} v{version} lost"
            vec, payload = rows[ident]
            got_version = json.loads(payload)["v"]
            allowed = {version} | ({maybe_new[ident]} if ident in maybe_new else set())
            assert got_version in allowed, f"{ident}: version {got_version}, expected {allowed}"
            want = _unit(vector_for(ident, got_version))
            assert np.allclose(np.frombuffer(vec, "<f4"), want, atol=1e-6), f"{ident}: vector differs"
        for ident in journal.deleted:
            if ident not in maybe_new:
                assert ident not in rows, f"acknowledged delete of {ident} came back"
        for ident, (vec, payload) in rows.items():
            if ident not in journal.live:  # only the in-flight upsert may add ids; whole items only
                assert ident in maybe_new, f"{ident} present but never written"
                assert json.loads(payload)["v"] == maybe_new[ident]
                assert np.allclose(
                    np.frombuffer(vec, "<f4"), _unit(vector_for(ident, maybe_new[ident])), atol=1e-6
                )
        assert store.get(INDEX).count == len(rows)
        # Searchable: each stored vector finds itself (Flat/IVF exact at this size; HNSW approximate).
        ids = sorted(rows)
        found = 0
        for start in range(0, len(ids), 256):
            part = ids[start : start + 256]
            q = np.stack([np.frombuffer(rows[i][0], "<f4") for i in part])
            for ident, hits in zip(part, store.search(INDEX, q, 5), strict=True):
                found += ident in {h.id for h in hits}
                assert all(h.id in rows for h in hits), "search returned a deleted or unknown id"
        factory = store.get(INDEX).factory
        need = len(ids) if not factory.startswith("HNSW") else int(0.98 * len(ids))  # HNSW: approximate
        assert found >= need, f"{factory}: only {found}/{len(ids)} vectors find themselves"
    finally:
        store.close()
    # The operation in flight is now settled one way or the other: adopt what is on disk, so the
    # next round's journal starts from the true state.
    for ident, version in maybe_new.items():
        if ident in rows and json.loads(rows[ident][1])["v"] == version:
            journal.live[ident] = version
            journal.deleted.discard(ident)
    for ident in maybe_gone:
        if ident not in rows:
            journal.live.pop(ident, None)
            journal.deleted.add(ident)
    journal.inflight = None
    return {"rows": len(rows), "found_by_search": found, "acknowledged_live": len(journal.live)}


def _run_round(root: Path, factory: str, round_: int, journal: Journal, rng: np.random.Generator) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    log_path = root.parent / f"journal-{round_}.log"  # a file, not a pipe: the worker never blocks
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.fault_worker",
            str(root),
            factory,
            str(round_),
            str(round_ + 7),
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{i} {v}\n" for i, v in journal.live.items()) + "GO\n")
    proc.stdin.flush()
    # Kill at a random moment after the worker has started writing (imports take ~1 s).
    time.sleep(float(rng.uniform(1.5, 4.0)))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, f"worker exited by itself ({proc.returncode}):\n{err[-3000:]}"
    before = journal.acked
    journal.replay([line for line in log_path.read_text().splitlines() if line.endswith("}")])
    killed_during = (journal.inflight or {}).get("op", "between operations")
    figures = _verify(root, journal)
    figures.update(
        round=round_, factory=factory, acked_ops=journal.acked - before, killed_during=killed_during
    )
    return figures


def test_kill9_rounds_lose_no_acknowledged_write(tmp_path):
    rng = np.random.default_rng(2026)
    rounds = []
    for n in range(KILL_ROUNDS):
        factory = FACTORIES[n % len(FACTORIES)]
        root = tmp_path / factory.replace(",", "_")
        journal = _JOURNALS.setdefault(factory, Journal())
        rounds.append(_run_round(root, factory, n, journal, rng))
    assert sum(r["acked_ops"] for r in rounds) > KILL_ROUNDS  # the rounds did write
    if RESULTS_DIR:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        summary = {
            "rounds": len(rounds),
            "rounds_passed": len(rounds),  # an assertion would have stopped the test
            "acknowledged_ops": sum(r["acked_ops"] for r in rounds),
            "live_items_checked": sum(r["rows"] for r in rounds),
            "killed_during": {
                k: sum(r["killed_during"] == k for r in rounds) for k in {r["killed_during"] for r in rounds}
            },
            "per_round": rounds,
        }
        Path(RESULTS_DIR, "faults.json").write_text(json.dumps(summary, indent=2))


_JOURNALS: dict[str, Journal] = {}


# -- full disk (injected write errors) -------------------------------------------------------------
def test_full_disk_write_is_resource_exhausted_reads_keep_working(tmp_path, monkeypatch):
    store = IndexStore(tmp_path, config=CONFIG)
    store.create("d", dim=DIM, encoder_fingerprint="f", encoder_id="e")
    first = [UpsertItem(f"a{i}", vector_for(f"a{i}", 1), {"v": 1}) for i in range(30)]
    store.upsert("d", first)
    db = store._handles["d"].db
    real_w = db._w

    class FullDisk:
        """The writer connection as SQLite behaves on a full disk: every write fails."""

        def execute(self, sql, *args):
            if sql.startswith(("INSERT", "DELETE", "COMMIT")):
                raise sqlite3.OperationalError("database or disk is full")
            return real_w.execute(sql, *args)

        def executemany(self, sql, *args):
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "_w", FullDisk())
    with pytest.raises(ResourceExhausted, match="disk is full") as ei:
        store.upsert("d", [UpsertItem("b0", vector_for("b0", 1))])
    assert "'d'" in ei.value.message and str(tmp_path) not in ei.value.message
    with pytest.raises(ResourceExhausted):
        store.delete("d", ["a0"])
    # Reads keep working and nothing half-written shows.
    assert store.get("d").count == 30
    hits = store.search("d", vector_for("a3", 1)[None, :], 1)[0]
    assert hits[0].id == "a3"
    monkeypatch.setattr(db, "_w", real_w)
    store.upsert("d", [UpsertItem("b0", vector_for("b0", 1))])  # space is back: writes work
    assert store.get("d").count == 31
    store.close()


def test_snapshot_write_failure_keeps_writes_and_replays(tmp_path, monkeypatch, caplog):
    import errno
    import os

    store = IndexStore(tmp_path, config=CONFIG)
    store.create("s", dim=DIM, encoder_fingerprint="f", encoder_id="e")
    real_fsync = os.fsync

    def no_space(fd):
        # Snapshot and manifest temp files are written, then fsync fails as on a full disk
        # (SQLite syncs through its own C calls, so its commits still succeed).
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_space)
    items = [UpsertItem(f"s{i}", vector_for(f"s{i}", 1), {"v": 1}) for i in range(100)]
    assert store.upsert("s", items) == 100  # compaction's snapshot fails; the write is committed
    assert "snapshot not written" in caplog.text
    assert not list((tmp_path / "indexes" / "s").glob(".*tmp-*"))  # the partial temp file is gone
    store.close()
    monkeypatch.undo()
    store = IndexStore(tmp_path, config=CONFIG)
    assert store.get("s").count == 100
    assert store.search("s", vector_for("s7", 1)[None, :], 1)[0][0].id == "s7"
    store.close()


# -- corrupted / truncated files ---------------------------------------------------------------------
def _built(tmp_path: Path, n: int = 200) -> Path:
    store = IndexStore(tmp_path, config=CONFIG)
    store.create("c", dim=DIM, encoder_fingerprint="f", encoder_id="e")
    store.upsert("c", [UpsertItem(f"c{i}", vector_for(f"c{i}", 1)) for i in range(n)])
    store.compact("c")
    store.close()
    return tmp_path / "indexes" / "c"


@pytest.mark.parametrize(
    "damage", ["truncate-snapshot", "flip-snapshot", "truncate-manifest", "garbage-manifest"]
)
def test_damaged_snapshot_or_manifest_detected_and_rebuilt_from_sqlite(tmp_path, caplog, damage):
    idx = _built(tmp_path)
    manifest = json.loads((idx / "manifest.json").read_text())
    snap = idx / manifest["snapshot"]["file"]
    if damage == "truncate-snapshot":
        snap.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])
    elif damage == "flip-snapshot":
        data = bytearray(snap.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snap.write_bytes(bytes(data))
    elif damage == "truncate-manifest":
        text = (idx / "manifest.json").read_text()
        (idx / "manifest.json").write_text(text[: len(text) // 2])
    else:
        (idx / "manifest.json").write_bytes(b"\x00\xff not json")
    store = IndexStore(tmp_path, config=CONFIG)
    info = store.load("c")
    assert info.count == 200
    named = snap.name if "snapshot" in damage else "manifest.json"
    assert named in caplog.text and "rebuilding from" in caplog.text, caplog.text
    assert store.search("c", vector_for("c11", 1)[None, :], 1)[0][0].id == "c11"
    store.close()
    store = IndexStore(tmp_path, config=CONFIG)  # the rebuild wrote a good snapshot again
    caplog.clear()
    store.load("c")
    assert "rebuilding" not in caplog.text
    store.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_sqlite_is_a_clear_error_naming_the_file(tmp_path, damage):
    idx = _built(tmp_path, 50)
    db = idx / "store.sqlite"
    if damage == "truncate":
        db.write_bytes(db.read_bytes()[:1000])
    else:
        db.write_bytes(b"this is not a database" * 100)
    store = IndexStore(tmp_path, config=CONFIG)
    with pytest.raises(FailedPrecondition, match="store.sqlite") as ei:
        store.load("c")
    assert "corrupt" in ei.value.message or "unreadable" in ei.value.message
    # ListIndexes reads manifests only (no SQLite opened): the damaged index is still listed from
    # its manifest, and every call that needs its store gets the clear error above.
    assert [i.name for i in store.list()] == ["c"]
    store.close()
