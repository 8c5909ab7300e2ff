"""Pair sources for distillation jobs: named pools, files, label scaling, overlap checks.

``--pairs`` accepts a comma-separated list of named sets (``stsb-train``,
``sts12`` ... ``sts16``, ``sickr-train``, ``sts-companion``, ``mrpc-train`` ...),
pools (``sts-all``: the paper's transductive pool; ``sts-inductive``: STS-B train
and SICK train minus every pair of the STS 7-task evaluation sets) and pair files (TSV or JSONL,
see :func:`pairsmith.distill.data.read_pair_file`).

Overlap, exclusion and deduplication compare pairs by their normalised text
(:mod:`pairsmith.distill.textnorm`: case, punctuation and whitespace ignored).
Gold scores of the STS12-16, companion and 2017 sets are never training targets; the
guard (:mod:`pairsmith.distill.guard`) checks the *pairs* of every labeled training set
(a copy, subset, rescaled or padded version of those files is refused like their names).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from pairsmith.distill.data import (
    STS7,
    PairSet,
    data_root,
    load_sts_set,
    read_mrpc,
)
from pairsmith.distill.guard import check_not_protected
from pairsmith.distill.textnorm import norm_pair_key, unordered_pair_keys
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

# The paper's ``sts_sickr`` pool (STS12-16 test + all STS-B + all SICK) as far as the data here goes,
# plus the STS companion. Scores are never used: these are unlabeled pairs.
POOLS = {
    "sts-all": [
        "sts12",
        "sts13",
        "sts14",
        "sts15",
        "sts16",
        "stsb-train",
        "stsb-dev",
        "sickr-train",
        "sickr-dev",
        "sts-companion",
    ],
    "sts-inductive": ["stsb-train", "sickr-train"],
}
# Pools that are disjoint from the STS 7-task evaluation sets by construction: STS-B train holds whole
# STS12-16 subsets (17-50% of each year's pairs, normalised text), so those pairs are dropped on load.
INDUCTIVE_POOLS = {"sts-inductive"}
MRPC = {"mrpc-train": "msr-para-train.tsv", "mrpc-val": "msr-para-val.tsv", "mrpc-test": "msr-para-test.tsv"}
# Sets whose scores must never be training targets (they contain most STS-B test pairs). By name here;
# by content in :mod:`pairsmith.distill.guard` (any file holding their pairs, whatever its scores).
NO_TRAIN_SCORES = {"sts12", "sts13", "sts14", "sts15", "sts16", "sts-companion", "sts2017"}

# Known score ranges for scaling gold scores to [0, 1].
SCORE_RANGES = {"stsb": (0.0, 5.0), "sickr": (1.0, 5.0), "mrpc": (0.0, 1.0)}


def _names(spec: str) -> list[str]:
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise InvalidInput("pairs: empty specification; give a file or set names (e.g. stsb-train)")
    return parts


def _load_one(name: str, root: str | os.PathLike[str] | None) -> PairSet:
    key = name.lower()
    if key in MRPC:
        return read_mrpc(data_root(root) / "pairs" / "mrpc" / MRPC[key], name=key)
    return load_sts_set(name, root)


def load_pairs(
    spec: str,
    root: str | os.PathLike[str] | None = None,
    *,
    labeled: bool = False,
    dedup: bool = True,
    for_training: bool = True,
) -> PairSet:
    """Resolve ``spec`` to one PairSet.

    ``labeled=False`` drops the scores (unlabeled use; allowed for every set).
    ``labeled=True`` keeps them and, when ``for_training``, refuses sets whose
    scores may never be trained on (STS12-16, companion, 2017), by name and by content. ``dedup``
    drops repeated pairs (normalised text, same order), keeping the first.
    """
    names: list[str] = []
    inductive = False
    for n in _names(spec):
        names.extend(POOLS.get(n.lower(), [n]))
        inductive |= n.lower() in INDUCTIVE_POOLS
    if labeled and for_training:
        bad = [n for n in names if n.lower() in NO_TRAIN_SCORES]
        if bad:
            raise InvalidInput(
                f"pairs: the scores of {bad} must not be used for training (they contain most STS-B test "
                "pairs); use them unlabeled or for evaluation only"
            )
    sets = [_load_one(n, root) for n in names]
    s1 = [s for ps in sets for s in ps.s1]
    s2 = [s for ps in sets for s in ps.s2]
    scores = None
    if labeled:
        missing = [ps.name for ps in sets if ps.scores is None]
        if missing:
            raise InvalidInput(f"pairs: {missing} have no scores; labeled training needs a score per pair")
        scores = np.concatenate([ps.scores for ps in sets]).astype(np.float32)  # type: ignore[misc]
    if dedup:
        keep: dict[str, int] = {}
        for i, (a, b) in enumerate(zip(s1, s2, strict=True)):
            keep.setdefault(norm_pair_key(a, b), i)
        idx = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))
        if len(idx) < len(s1):
            log.info("pairs %s: %d duplicate pairs dropped", spec, len(s1) - len(idx))
            s1 = [s1[i] for i in idx]
            s2 = [s2[i] for i in idx]
            scores = scores[idx] if scores is not None else None
    if not s1:
        raise InvalidInput(f"pairs {spec}: no pairs")
    out = PairSet(spec, s1, s2, scores)
    if labeled and for_training:
        check_not_protected(out, spec, root)
    if inductive:
        out = drop_pairs_in(out, list(STS7), root)
    return out


def score_range_for(spec: str, scores: np.ndarray, given: str | None = None) -> tuple[float, float]:
    """The (lo, hi) range that maps gold scores to [0, 1]: given ``LO,HI``, known set, or [0, 1]."""
    if given:
        try:
            lo, hi = (float(x) for x in given.split(","))
        except ValueError:
            raise InvalidInput(f"--score-range: expected 'LO,HI', got {given!r}") from None
        if not hi > lo:
            raise InvalidInput(f"--score-range: HI must exceed LO, got {given!r}")
        return lo, hi
    prefixes = {n.split("-")[0].lower() for n in _names(spec)}
    known = {SCORE_RANGES[p] for p in prefixes if p in SCORE_RANGES}
    if len(known) == 1 and len(prefixes) == 1:
        return known.pop()
    if len(scores) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0:
        return 0.0, 1.0
    raise InvalidInput(
        f"pairs {spec}: scores span [{float(scores.min()):g}, {float(scores.max()):g}]; "
        "say how to map them to [0, 1] with --score-range LO,HI (e.g. 0,5 for STS)"
    )


def scale_scores(scores: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    lo, hi = rng
    out = (np.asarray(scores, dtype=np.float32) - lo) / (hi - lo)
    if float(out.min()) < -1e-6 or float(out.max()) > 1 + 1e-6:
        raise InvalidInput(f"scores fall outside the range [{lo:g}, {hi:g}] given for them")
    return np.clip(out, 0.0, 1.0)


def pair_key(a: str, b: str) -> str:
    """A stable hash of one ordered pair's text (what caches and overlap checks key on)."""
    h = hashlib.sha256()
    h.update(a.encode("utf-8"))
    h.update(b"\x00\x1f\x00")
    h.update(b.encode("utf-8"))
    return h.hexdigest()[:32]


# Every evaluation set pairsmith knows by name: the overlap report covers all of them, whichever
# sets a run reports (test splits that the data folder lacks are listed as unavailable).
KNOWN_EVAL_SETS = [*STS7, "stsb-test", "sickr-test"]


@dataclass(frozen=True)
class Overlap:
    """How many distillation pairs also appear (in either order) in each evaluation set."""

    per_set: dict[str, float]  # fraction of each requested eval set's pairs found in the pool
    setting: str  # transductive | inductive | partial over the requested sets (see :func:`overlap`)
    known: dict[str, float] = field(default_factory=dict)  # the same for every known evaluation set
    unavailable: tuple[str, ...] = ()  # known evaluation sets the data folder lacks

    def as_dict(self) -> dict:
        return {
            "setting": self.setting,
            "eval_pairs_in_pool": self.per_set,
            "known_eval_pairs_in_pool": self.known,
            "transductive_for": sorted(n for n, v in self.known.items() if v >= 0.5),
            "known_unavailable": list(self.unavailable),
        }


def overlap(pool: PairSet, eval_sets: list[str], root: str | os.PathLike[str] | None = None) -> Overlap:
    """Which evaluation setting a pool gives, and its overlap with every known evaluation set.

    *transductive*: some requested evaluation set is (at least half) inside the pool, as in
    the paper; *inductive*: every requested evaluation set shares at most 5% of its pairs
    with the pool (incidental duplicates, e.g. STS-B train/dev share 0.5%; use
    ``drop_pairs_in`` for a strictly disjoint pool); *partial* otherwise. ``known`` covers
    :data:`KNOWN_EVAL_SETS` as well, so a figure on a set the run did not name is not read as
    held-out when the pool holds it.
    """
    keys = unordered_pair_keys(pool.s1, pool.s2)
    known: dict[str, float] = {}
    unavailable: list[str] = []
    for name in dict.fromkeys([*eval_sets, *KNOWN_EVAL_SETS]):
        try:
            ps = load_sts_set(name, root)
        except Exception as exc:  # noqa: BLE001 - a missing eval set only weakens the report
            if name in eval_sets:
                log.warning("overlap check: cannot read %s (%s)", name, exc)
            unavailable.append(name)
            continue
        hits = sum(norm_pair_key(a, b) in keys for a, b in zip(ps.s1, ps.s2, strict=True))
        known[name] = round(hits / max(len(ps), 1), 4)
    per = {n: known[n] for n in eval_sets if n in known}
    worst = max(per.values(), default=0.0)
    setting = "transductive" if worst >= 0.5 else "inductive" if worst <= 0.05 else "partial"
    return Overlap(per, setting, known, tuple(unavailable))


def drop_pairs_in(pool: PairSet, eval_sets: list[str], root: str | os.PathLike[str] | None = None) -> PairSet:
    """``pool`` without any pair that occurs (in either order, normalised text) in ``eval_sets``."""
    banned: set[str] = set()
    for name in eval_sets:
        ps = load_sts_set(name, root)
        banned |= unordered_pair_keys(ps.s1, ps.s2)
    idx = [
        i for i, (a, b) in enumerate(zip(pool.s1, pool.s2, strict=True)) if norm_pair_key(a, b) not in banned
    ]
    if len(idx) < len(pool):
        log.info("pairs: %d pairs that occur in the evaluation sets dropped", len(pool) - len(idx))
    if not idx:
        raise InvalidInput("pairs: every pair occurs in the evaluation sets; nothing left to distill on")
    return PairSet(
        pool.name,
        [pool.s1[i] for i in idx],
        [pool.s2[i] for i in idx],
        pool.scores[idx] if pool.scores is not None else None,
    )


def subsample(ps: PairSet, n: int | None, seed: int) -> PairSet:
    """At most ``n`` pairs drawn without replacement (order kept); all when ``n`` is None."""
    if n is None or n >= len(ps):
        return ps
    if n < 1:
        raise InvalidInput(f"--max-pairs: must be >= 1, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(ps), size=n, replace=False))
    return PairSet(
        f"{ps.name}[{n}]",
        [ps.s1[i] for i in idx],
        [ps.s2[i] for i in idx],
        ps.scores[idx] if ps.scores is not None else None,
    )


__all__ = [
    "MRPC",
    "NO_TRAIN_SCORES",
    "check_not_protected",
    "POOLS",
    "STS7",
    "KNOWN_EVAL_SETS",
    "Overlap",
    "load_pairs",
    "drop_pairs_in",
    "overlap",
    "pair_key",
    "scale_scores",
    "score_range_for",
    "subsample",
]
