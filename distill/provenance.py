"""Which code wrote a run: the git commit, whether the tree was dirty, and a hash of the changes.

Recorded in every run's ``state.json`` and ``report.json``; ``--resume`` refuses a
run written by different code (another commit, or the same commit with other
uncommitted changes), because a resumed run mixes the two versions' steps. An
installed package (no git checkout) is identified by its version alone.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), *args], capture_output=True, check=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.decode("utf-8", "replace")


@lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"version", "commit", "dirty", "diff_sha256"}``; commit/dirty are None outside a git checkout.

    ``diff_sha256`` hashes ``git diff HEAD`` (tracked files), so two dirty trees with the
    same changes count as the same code. Untracked files are not part of it.
    """
    from pairsmith import __version__

    info: dict = {"version": __version__, "commit": None, "dirty": None, "diff_sha256": None}
    commit = _git("rev-parse", "HEAD")
    if not commit or not (_REPO / "distill").is_dir():
        return info
    diff = _git("diff", "HEAD", "--", ".") or ""
    info["commit"] = commit.strip()
    info["dirty"] = bool(diff.strip())
    info["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:16] if diff.strip() else None
    return info


def same_code(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded code versions are the same code (commit, changes, package version)."""
    if not a or not b:
        return False
    keys = ("version", "commit", "diff_sha256")
    return all(a.get(k) == b.get(k) for k in keys)


def describe(v: dict | None) -> str:
    if not v:
        return "unknown code (no record)"
    if v.get("commit") is None:
        return f"pairsmith {v.get('version')}"
    dirty = f" + uncommitted changes {v['diff_sha256']}" if v.get("dirty") else ""
    return f"commit {str(v['commit'])[:12]}{dirty}"


__all__ = ["code_version", "describe", "same_code"]
