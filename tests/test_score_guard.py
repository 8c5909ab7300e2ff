"""The score guard refuses labeled training on pairs of the protected STS sets, by content."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pairsmith.distill import guard
from pairsmith.distill.data import PairSet, senteval_subsets
from pairsmith.distill.pairsets import load_pairs
from pairsmith.errors import InvalidInput


def _write_pairs(path, s1, s2, scores) -> str:
    path.write_text("".join(f"{a}\t{b}\t{y:g}\n" for a, b, y in zip(s1, s2, scores, strict=True)))
    return str(path)


# --------------------------------------------------------------------------- a tiny data folder


@pytest.fixture()
def tiny_root(tmp_path):
    """A data folder with one protected subset (40 pairs), 10 of them also in STS-B train."""
    year = tmp_path / "data/sts/sts12-16/STS12-en-test"
    year.mkdir(parents=True)
    s1 = [f"protected left sentence number {i} ." for i in range(40)]
    s2 = [f"protected right sentence number {i} ." for i in range(40)]
    (year / "STS.input.toy.txt").write_text("".join(f"{a}\t{b}\n" for a, b in zip(s1, s2, strict=True)))
    (year / "STS.gs.toy.txt").write_text("".join(f"{i % 6}\n" for i in range(40)))
    stsb = tmp_path / "data/sts/stsbenchmark"
    stsb.mkdir(parents=True)
    # STS-B train releases pairs 30-39 (cased and untokenised, as the real file does) with their scores
    rows = [f"main\tf\t2012\t{i:04d}\t{i % 6}\t{s1[i].title()}\t{s2[i].upper()}\n" for i in range(30, 40)]
    rows += [f"main\tf\t2012\t{i:04d}\t1.0\tfree left {i}\tfree right {i}\n" for i in range(100, 120)]
    (stsb / "sts-train.csv").write_text("".join(rows))
    return tmp_path / "data", s1, s2


def test_tiny_protected_table_exempts_released_pairs(tiny_root):
    root, s1, s2 = tiny_root
    table = guard.protected_pairs(str(root))
    assert len(table) == 2 * 30  # 40 pairs, both orders, minus the 10 STS-B train releases
    assert set(table.values()) == {"sts12/toy"}


@pytest.mark.parametrize(
    ("take", "refused"),
    [
        (range(0, 10), True),  # 10 protected pairs: the floor
        (range(0, 9), False),  # 9: below it
        (range(25, 40), False),  # 5 protected + 10 released by STS-B train
        (range(20, 40), True),  # 10 protected + 10 released
    ],
)
def test_tiny_rule_counts_protected_pairs(tiny_root, tmp_path, take, refused):
    root, s1, s2 = tiny_root
    f = _write_pairs(tmp_path / "mine.tsv", [s1[i] for i in take], [s2[i] for i in take], [0.5] * len(take))
    if refused:
        with pytest.raises(
            InvalidInput, match=r"of its \d+ pairs are pairs of protected evaluation sets \(sts12"
        ):
            load_pairs(f, root, labeled=True)
    else:
        assert load_pairs(f, root, labeled=True).scores is not None


def test_tiny_rescaled_reversed_recased_and_padded_copies_are_refused(tiny_root, tmp_path):
    root, s1, s2 = tiny_root
    n = 12
    # scores / 5, sentences swapped, other casing and spacing, plus 500 unrelated rows
    a = [s2[i].upper() + "  " for i in range(n)] + [f"unrelated {i}" for i in range(500)]
    b = [s1[i].replace(" .", ".") for i in range(n)] + [f"other {i}" for i in range(500)]
    f = _write_pairs(tmp_path / "mixed.tsv", a, b, [(i % 6) / 5 for i in range(n + 500)])
    with pytest.raises(InvalidInput, match=r"12 of its 512 pairs .*sts12 12; largest: sts12/toy 12"):
        load_pairs(f, root, labeled=True)
    assert load_pairs(f, root).scores is None  # unlabeled use stays allowed
    assert load_pairs(f, root, labeled=True, for_training=False).scores is not None  # evaluation too


def test_guard_counts_pairs_not_scores(tiny_root):
    root, s1, s2 = tiny_root
    ps = PairSet("x", s1[:10], s2[:10], np.zeros(10, dtype=np.float32))
    m = guard.protected_matches(ps, root)
    assert (m.rows, m.matched, m.refused, m.per_piece) == (10, 10, True, {"sts12/toy": 10})
    unlabeled = PairSet("x", s1[:10], s2[:10], None)
    guard.check_not_protected(unlabeled, "x", root)  # no scores: nothing to guard


# --------------------------------------------------------------------------- the real sets


def _msrvid(shared_data) -> PairSet:
    subs = senteval_subsets(shared_data / "sts/sts12-16/STS12-en-test")
    return next(p for p in subs if p.name.endswith("MSRvid.txt"))


@pytest.mark.data
def test_real_subset_rescaled_and_padded_msrvid_are_refused(shared_data, tmp_path):
    ps = _msrvid(shared_data)
    half = range(0, len(ps), 2)
    cases = {
        "half.tsv": ([ps.s1[i] for i in half], [ps.s2[i] for i in half], [ps.scores[i] for i in half]),
        "scaled.tsv": (ps.s1, ps.s2, [y / 5 for y in ps.scores]),
        "plus-one.tsv": (
            [*ps.s1, "A cat sat on the mat."],
            [*ps.s2, "A dog lay on a rug."],
            [*ps.scores, 1.0],
        ),
    }
    for name, (a, b, y) in cases.items():
        f = _write_pairs(tmp_path / name, a, b, y)
        with pytest.raises(
            InvalidInput, match=r"pairs of protected evaluation sets \(sts12 \d+; largest: sts12/MSRvid"
        ):
            load_pairs(f, shared_data, labeled=True)
    jl = tmp_path / "msrvid.jsonl"  # re-formatted: same pairs
    jl.write_text(
        "".join(
            json.dumps({"s1": a, "s2": b, "score": 1.0}) + "\n" for a, b in zip(ps.s1, ps.s2, strict=True)
        )
    )
    with pytest.raises(InvalidInput, match="MSRvid"):
        load_pairs(str(jl), shared_data, labeled=True)


@pytest.mark.data
def test_real_released_training_splits_pass(shared_data):
    for name in ("stsb-train", "stsb-dev", "sickr-train", "mrpc-train", "stsb-train,sickr-train"):
        ps = load_pairs(name, shared_data, labeled=True)
        assert guard.protected_matches(ps, shared_data).matched == 0, name


@pytest.mark.data
def test_real_every_protected_set_is_in_the_table(shared_data):
    table = guard.protected_pairs(str(shared_data))
    sets = {v.split("/")[0] for v in table.values()}
    assert {"sts12", "sts13", "sts14", "sts15", "sts16", "sts-companion", "sts2017"} <= sets
