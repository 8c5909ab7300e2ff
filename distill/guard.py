"""The score guard: labeled training refuses pairs of the protected STS evaluation sets.

STS-B test was compiled from the SemEval STS 2012-2016 test sets (about three quarters of its
pairs are in them with their gold scores), so the scores of STS12-16, the STS companion and
STS 2017 must never be training targets. The guard works on *pair content*, not names or files:

- A **protected pair** is a pair (normalised text, :mod:`pairsmith.distill.textnorm`, either
  order) of a protected set that no released training or development split holds (STS-B
  train/dev, SICK train/trial, MRPC train/val/test). STS-B train holds whole STS12-16 subsets
  with their scores and MRPC holds most of STS12 MSRpar: those pairs are training data by their
  own release, and counting them would refuse STS-B train itself.
- **Rule**: a labeled training set is refused when :data:`MIN_PROTECTED_PAIRS` (10) or more of
  its pairs are protected pairs. Scores are not compared (a rescaled copy is the same pairs), and
  the rule counts pairs, not a fraction (added unrelated rows do not dilute it). Released sets
  share 0-1 protected pairs by chance (SICK train 0, MRPC 0 after the exemption above), so 10
  leaves room for a user's incidental duplicates while half of any protected subset of 20 or
  more protected pairs is refused.
- The refusal names the protected sets and subsets the pairs come from, with counts.

Unlabeled use of the protected sets (Trans-Encoder pools) is not guarded: it is allowed.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pairsmith.distill.data import PairSet, data_root, read_sts_tab, senteval_subsets
from pairsmith.distill.textnorm import norm_pair_key, unordered_pair_keys
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

MIN_PROTECTED_PAIRS = 10
# Released splits whose pairs are training data by their own release (see the module docstring).
RELEASED_SPLITS = (
    "stsb-train",
    "stsb-dev",
    "sickr-train",
    "sickr-dev",
    "mrpc-train",
    "mrpc-val",
    "mrpc-test",
)


def _protected_pieces(base: Path) -> list[tuple[str, list[str], list[str]]]:
    """(``set/subset`` name, s1, s2) of every protected subset found under ``base``."""
    pieces: list[tuple[str, list[str], list[str]]] = []
    for y in (12, 13, 14, 15, 16):
        folder = base / f"sts/sts12-16/STS{y}-en-test"
        if folder.is_dir():
            for ps in senteval_subsets(folder):
                sub = ps.name.split("/")[-1].removeprefix("STS.input.").removesuffix(".txt")
                pieces.append((f"sts{y}/{sub}", ps.s1, ps.s2))
    for f in sorted((base / "sts/sts-companion/stscompanion").glob("sts-*.csv")):
        ps = read_sts_tab(f)
        pieces.append((f"sts-companion/{f.stem}", ps.s1, ps.s2))
    z = base / "sts/sts2017/Sts2017.eval.v1.1.zip"
    if z.is_file():
        with zipfile.ZipFile(z) as zf:
            for name in sorted(n for n in zf.namelist() if "/STS.input." in n and n.endswith(".txt")):
                s1, s2 = [], []
                for line in io.TextIOWrapper(zf.open(name), encoding="utf-8-sig"):
                    parts = line.rstrip("\r\n").split("\t")
                    if len(parts) >= 2:
                        s1.append(parts[0])
                        s2.append(parts[1])
                track = name.rsplit("/", 1)[-1].removeprefix("STS.input.").removesuffix(".txt")
                pieces.append((f"sts2017/{track}", s1, s2))
    return pieces


@lru_cache(maxsize=4)
def protected_pairs(root: str) -> dict[str, str]:
    """Normalised pair key (both orders) -> the ``set/subset`` it comes from, for ``root``'s files.

    Missing files are skipped (a data folder without the protected sets protects nothing).
    """
    from pairsmith.distill.pairsets import _load_one  # pairsets imports this module

    base = Path(root)
    released: set[str] = set()
    for name in RELEASED_SPLITS:
        try:
            ps = _load_one(name, base)
        except Exception:  # noqa: BLE001 - an absent split exempts nothing
            continue
        released |= unordered_pair_keys(ps.s1, ps.s2)
    out: dict[str, str] = {}
    for piece, s1, s2 in _protected_pieces(base):
        for k in unordered_pair_keys(s1, s2) - released:
            out.setdefault(k, piece)
    return out


@dataclass(frozen=True)
class ProtectedMatch:
    """How many pairs of a training set are protected pairs, and where they come from."""

    rows: int
    matched: int
    per_piece: dict[str, int]  # ``set/subset`` -> matched pairs, largest first

    @property
    def refused(self) -> bool:
        return self.matched >= MIN_PROTECTED_PAIRS

    def reason(self) -> str:
        sets = Counter()
        for piece, n in self.per_piece.items():
            sets[piece.split("/")[0]] += n
        by_set = ", ".join(f"{s} {n}" for s, n in sets.most_common())
        top = ", ".join(f"{p} {n}" for p, n in list(self.per_piece.items())[:5])
        return (
            f"{self.matched} of its {self.rows} pairs are pairs of protected evaluation sets ({by_set}; "
            f"largest: {top})"
        )


def protected_matches(ps: PairSet, root: str | os.PathLike[str] | None = None) -> ProtectedMatch:
    """Count the pairs of ``ps`` (either order, normalised text) that are protected pairs."""
    table = protected_pairs(str(data_root(root)))
    hits = Counter(
        p for a, b in zip(ps.s1, ps.s2, strict=True) if (p := table.get(norm_pair_key(a, b))) is not None
    )
    return ProtectedMatch(len(ps), sum(hits.values()), dict(hits.most_common()))


def check_not_protected(ps: PairSet, spec: str, root: str | os.PathLike[str] | None = None) -> None:
    """Refuse ``ps`` as labeled training data when it holds protected pairs (module docstring)."""
    if ps.scores is None:
        return
    m = protected_matches(ps, root)
    if m.matched:
        log.info("pairs %s: %s", spec, m.reason())
    if m.refused:
        raise InvalidInput(
            f"pairs {spec}: {m.reason()}; their scores must not be used for training (the protected sets "
            f"STS12-16, STS companion and STS 2017 hold most STS-B test pairs; refused at "
            f">= {MIN_PROTECTED_PAIRS} such pairs, scores not compared). Use them unlabeled or for evaluation only"
        )


__all__ = [
    "MIN_PROTECTED_PAIRS",
    "RELEASED_SPLITS",
    "ProtectedMatch",
    "check_not_protected",
    "protected_matches",
    "protected_pairs",
]
