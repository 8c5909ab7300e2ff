"""pairsmith.atomic: a folder swap leaves the old or the new folder at the destination at every step."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from pairsmith import atomic


def _folder(path: Path, tag: str, n: int = 3) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"part-{i}.txt").write_text(f"{tag} {i}")
    (path / "sub").mkdir()
    (path / "sub" / "deep.txt").write_text(tag)
    return path


def _state(dest: Path) -> str:
    """``old`` or ``new`` when ``dest`` is one complete folder, else what is wrong."""
    if not dest.is_dir():
        return "missing"
    tags = {(dest / f"part-{i}.txt").read_text().split()[0] for i in range(3)} | {
        (dest / "sub" / "deep.txt").read_text()
    }
    return tags.pop() if len(tags) == 1 else f"mixed {sorted(tags)}"


def _watch_every_step(monkeypatch, dest: Path) -> list[str]:
    """Record ``dest``'s state before and after every file-system step replace_dir takes."""
    seen: list[str] = []

    def wrap(owner, name):
        real = getattr(owner, name)

        def step(*args, **kwargs):
            seen.append(_state(dest))
            try:
                return real(*args, **kwargs)
            finally:
                seen.append(_state(dest))

        monkeypatch.setattr(owner, name, step)

    wrap(atomic.os, "replace")
    wrap(atomic.os, "rename")
    wrap(atomic.os, "fsync")
    wrap(atomic.shutil, "rmtree")
    wrap(atomic, "exchange")
    return seen


def test_folder_swap_never_leaves_the_destination_without_old_or_new(tmp_path, monkeypatch):
    dest = _folder(tmp_path / "model", "old")
    src = _folder(tmp_path / ".model.tmp", "new")
    seen = _watch_every_step(monkeypatch, dest)
    atomic.replace_dir(src, dest)
    assert _state(dest) == "new" and not src.exists()
    assert seen and set(seen) <= {"old", "new"}, seen
    assert seen[0] == "old" and seen[-1] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old folder is gone


def test_fallback_without_exchange_still_ends_with_the_new_folder(tmp_path, monkeypatch):
    """Where the OS has no RENAME_EXCHANGE the old folder is moved aside first (documented gap)."""
    dest = _folder(tmp_path / "model", "old")
    src = _folder(tmp_path / ".model.tmp", "new")
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    seen = _watch_every_step(monkeypatch, dest)
    atomic.replace_dir(src, dest)
    assert _state(dest) == "new"
    assert "missing" in seen  # the gap between the two renames that the exchange closes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_new_destination_and_write_dir(tmp_path):
    out = atomic.write_dir(tmp_path / "a" / "model", lambda d: _folder(d / "x", "new") and None)
    assert (out / "x" / "sub" / "deep.txt").read_text() == "new"

    def fails(d: Path) -> None:
        (d / "half.txt").write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        atomic.write_dir(out, fails)
    assert (out / "x" / "sub" / "deep.txt").read_text() == "new"  # untouched
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # no temp folder left


def test_a_reader_always_finds_a_complete_folder(tmp_path):
    """A thread reading the destination while it is replaced 200 times never misses it."""
    dest = _folder(tmp_path / "model", "v0")
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                state = _state(dest)
            except FileNotFoundError as exc:  # a file vanished under the reader
                state = f"missing file {exc.filename}"
            if state not in ("v0", "v1"):
                bad.append(state)

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(200):
            atomic.replace_dir(_folder(tmp_path / f".model.{i}", f"v{(i + 1) % 2}"), dest)
    finally:
        stop.set()
        t.join()
    # A reader may straddle two swaps (a file of one version, then of another): mixed is fine;
    # a missing folder is not.
    assert not [b for b in bad if b.startswith("missing")], bad[:5]


def test_replace_file_and_temp_path_stay_in_the_folder(tmp_path):
    target = tmp_path / "d" / "port"
    tmp = atomic.temp_path(target)
    assert tmp.parent == target.parent and tmp.name.startswith(".port.")
    tmp.write_text("123")
    atomic.replace_file(tmp, target)
    assert target.read_text() == "123" and not tmp.exists()


def test_exchange_swaps_two_names(tmp_path):
    a = _folder(tmp_path / "a", "A")
    b = _folder(tmp_path / "b", "B")
    if not atomic.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this OS / file system")
    assert _state(a) == "B" and _state(b) == "A"
    shutil.rmtree(a)
    with pytest.raises(OSError):
        atomic.exchange(a, b)  # one side missing: a real error, not a silent fallback
    assert os.path.isdir(b)
