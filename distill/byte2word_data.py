"""Byte2Word data: the MLM corpus (training splits only, deduplicated) and the classification sets.

The MLM corpus is built at run time from the shared data folder (never copied into the
repository). It takes every sentence of the files in :data:`MLM_SOURCES` (training splits) and
none of :data:`EVAL_SETS` (evaluation sets); sentences are deduplicated on normalised text
(NFKC, lower case, whitespace collapsed), and any sentence whose normalised text equals one of
the classification evaluation sentences (SST-2 dev/test, AdvGLUE SST-2) is dropped.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import tarfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pairsmith.atomic import atomic_write_text
from pairsmith.distill.data import _lines, _need, data_root
from pairsmith.errors import DataFormatError, InvalidInput, NotFound

# (relative path, how to read it): training splits only.
MLM_SOURCES: tuple[tuple[str, str], ...] = (
    ("classification/sst2/sentiment-train", "sst2"),
    ("sts/stsbenchmark/sts-train.csv", "stsb"),
    ("sts/sick/SICK_train.txt", "sick"),
    ("pairs/mrpc/msr-para-train.tsv", "mrpc"),
    ("pairs/rte/derived_jsonl/train.jsonl", "rte"),
    ("retrieval/trecqa/train.csv", "trecqa"),
    ("retrieval/nfcorpus/train.titles.queries", "nfq"),
    ("retrieval/nfcorpus/train.vid-titles.queries", "nfq"),
    ("retrieval/nfcorpus/train.nontopic-titles.queries", "nfq"),
    ("retrieval/nfcorpus/train.vid-desc.queries", "nfq"),
    ("dialogue/mutual/mutual/train.tar.gz", "mutual"),
    ("dialogue/mutual/mutual_plus/train.tar.gz", "mutual"),
)

# Not read for the MLM corpus (evaluation sets, and test splits kept out of every training).
EVAL_SETS: tuple[str, ...] = (
    "classification/sst2/sentiment-dev",
    "classification/sst2/sentiment-test",
    "classification/xnli/*",
    "classification/tatoeba/*",
    "pairs/advglue/*",
    "pairs/mrpc/msr-para-val.tsv, msr-para-test.tsv",
    "pairs/rte/validation*, test*",
    "pairs/paws-x/*",
    "sts/stsbenchmark/sts-dev.csv",
    "sts/sts12-16/*, sts/sts2017/*, sts/sts-companion/*",
    "sts/sick/SICK_trial.txt",
    "retrieval/nfcorpus/dev.*",
    "retrieval/wikiqa/*",
    "retrieval/trecqa/dev.csv",
    "dialogue/dailydialog-plusplus/*",
)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _sentences(path: Path, kind: str) -> Iterator[str]:
    if kind in ("sst2", "nfq"):
        col = 0 if kind == "sst2" else 1
        for _no, line in _lines(path):
            parts = line.split("\t")
            if len(parts) > col:
                yield parts[col]
    elif kind == "stsb":
        for _no, line in _lines(path):
            parts = line.split("\t")
            if len(parts) >= 7:
                yield from parts[5:7]
    elif kind in ("sick", "mrpc"):
        cols = (1, 2) if kind == "sick" else (3, 4)
        for no, line in _lines(path):
            parts = line.split("\t")
            if no > 1 and len(parts) > cols[1]:
                yield from (parts[c] for c in cols)
    elif kind == "rte":
        for no, line in _lines(path):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(path, f"bad JSON ({exc.msg})", line=no) from None
                yield row["sentence1"]
                yield row["sentence2"]
    elif kind == "trecqa":
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                yield row["qtext"]
                yield row["atext"]
    elif kind == "mutual":
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    row = json.load(io.TextIOWrapper(tar.extractfile(member), encoding="utf-8"))  # type: ignore[arg-type]
                    yield row["article"]
                    yield from row["options"]
    else:
        raise InvalidInput(f"unknown source kind {kind!r}")


@dataclass(frozen=True)
class CorpusReport:
    path: str
    sentences: int
    read: int
    duplicates: int
    eval_overlap_dropped: int
    per_source: dict[str, int]


def build_mlm_corpus(out: str | Path, data: str | Path | None = None) -> CorpusReport:
    """Write the deduplicated MLM corpus (one sentence per line) to ``out``, atomically."""
    root = data_root(data)
    banned = {
        normalise(s) for s, _ in read_labelled(_need(root / "classification/sst2/sentiment-dev", "SST-2 dev"))
    }
    banned |= {normalise(s) for s, _ in read_labelled(root / "classification/sst2/sentiment-test")}
    banned |= {normalise(s) for s, _ in read_advglue_sst2(root)}
    seen: set[str] = set()
    kept: list[str] = []
    per: dict[str, int] = {}
    read = dup = overlap = 0
    for rel, kind in MLM_SOURCES:
        path = _need(root / rel, f"MLM source {rel}")
        n0 = len(kept)
        for s in _sentences(path, kind):
            s = " ".join(s.split())
            if not s:
                continue
            read += 1
            key = normalise(s)
            if key in banned:
                overlap += 1
            elif key in seen:
                dup += 1
            else:
                seen.add(key)
                kept.append(s)
        per[rel] = len(kept) - n0
    atomic_write_text(out, "\n".join(kept) + "\n")
    return CorpusReport(str(out), len(kept), read, dup, overlap, per)


def read_corpus(path: str | Path) -> list[str]:
    p = _need(Path(path), "MLM corpus")
    return [line for _no, line in _lines(p) if line.strip()]


def read_labelled(path: Path) -> list[tuple[str, int]]:
    """``sentence TAB label`` lines (SST-2 layout); a bad line names file:line."""
    rows = []
    for no, line in _lines(_need(Path(path), "labelled file")):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("\t")
        if not sep or not label.strip().lstrip("-").isdigit():
            raise DataFormatError(path, "expected 'sentence<TAB>integer label'", line=no)
        rows.append((text.strip(), int(label)))
    if not rows:
        raise DataFormatError(path, "no labelled rows")
    return rows


def read_advglue_sst2(root: Path) -> list[tuple[str, int]]:
    path = _need(root / "pairs/advglue/dev.json", "AdvGLUE dev")
    return [(r["sentence"], int(r["label"])) for r in json.loads(path.read_text())["sst2"]]


# Named labelled sets for ``pairsmith eval classify`` (sentence, label): path under the data folder.
CLASSIFY_SETS = {
    "sst2-train": "classification/sst2/sentiment-train",
    "sst2-dev": "classification/sst2/sentiment-dev",
    "sst2-test": "classification/sst2/sentiment-test",
}


def load_classification_set(
    name_or_path: str, data: str | Path | None = None
) -> tuple[str, list[tuple[str, int]]]:
    """(name, rows) of a named labelled set (:data:`CLASSIFY_SETS`, ``advglue-sst2``) or a
    ``sentence<TAB>label`` file."""
    key = name_or_path.strip().lower()
    root = data_root(data)
    if key in CLASSIFY_SETS:
        return key, read_labelled(_need(root / CLASSIFY_SETS[key], f"classification set {key}"))
    if key == "advglue-sst2":
        return key, read_advglue_sst2(root)
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join([*CLASSIFY_SETS, "advglue-sst2"])
        raise NotFound(f"--dataset {name_or_path!r}: not a known set ({names}) and no such file")
    return path.name, read_labelled(path)


def task_sets(task: str, dev: str | None, data: str | Path | None) -> tuple[list, list, str]:
    """(train rows, dev rows, name): ``sst2`` from the shared data, or a labelled FILE (+ --task-dev)."""
    if task == "sst2":
        root = data_root(data)
        base = root / "classification/sst2"
        return read_labelled(base / "sentiment-train"), read_labelled(base / "sentiment-dev"), "sst2"
    train = read_labelled(Path(task))
    if dev is None:
        raise InvalidInput("--task-dev: required with --task FILE (a labelled dev file)")
    return train, read_labelled(Path(dev)), Path(task).name


# --------------------------------------------------------------------------- selection split

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def words_key(text: str) -> str:
    """``text`` as lower-case letter/digit words joined by single spaces (NFKC, case-folded).

    Containment tests pad keys with spaces (``f" {a} " in f" {b} "``) so that they match whole
    words only: ``a fine film`` is inside ``not a fine film .``, ``fine`` is not inside ``finest``.
    """
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


@dataclass(frozen=True)
class SelectionSplit:
    """A fit/selection split of one labelled set in which no row's text contains another's.

    ``dropped_inside``: fit rows whose words occur inside (or equal) a selection row;
    ``dropped_containing``: fit rows that hold a selection row inside them;
    ``not_maximal``: long rows not eligible for selection because a longer row contains them.
    """

    fit: list[tuple[str, int]]
    select: list[tuple[str, int]]
    dropped_inside: int
    dropped_containing: int
    not_maximal: int

    def stats(self) -> dict[str, int]:
        return {
            "fit": len(self.fit),
            "select": len(self.select),
            "dropped_inside_select": self.dropped_inside,
            "dropped_containing_select": self.dropped_containing,
            "candidates_inside_longer_rows": self.not_maximal,
        }


class _Grams:
    """Rows indexed by their word 1-, 2- and 3-grams, for containment look-ups."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            w = k.split()
            for n in range(1, min(3, len(w)) + 1):
                for g in {tuple(w[j : j + n]) for j in range(len(w) - n + 1)}:
                    self.index[g].append(i)

    def containing(self, key: str) -> list[int]:
        """Indices of the rows whose key holds ``key`` as whole words (the row itself included)."""
        w = key.split()
        if not w:
            return list(range(len(self.keys)))
        n = min(3, len(w))
        grams = [tuple(w[j : j + n]) for j in range(len(w) - n + 1)]
        cands = min((self.index.get(g, []) for g in grams), key=len)
        needle = f" {key} "
        return [i for i in cands if needle in f" {self.keys[i]} "]


def selection_split(
    rows: Sequence[tuple[str, int]], n_select: int, *, min_words: int = 10, seed: int = 0
) -> SelectionSplit:
    """Hold out ``n_select`` rows of ``rows`` for model selection, sharing no text with the rest.

    SST-2 train is a phrase bank: a sentence and many of its sub-phrases are separate rows, and a
    long phrase is often inside a longer one. Rule, on :func:`words_key` text (whole words):

    1. Selection rows are drawn (seeded) from rows of at least ``min_words`` words that no other
       row with different text contains (a held-out row is never inside a training row).
    2. Every other row that lies inside a selection row (or equals one) or contains one is dropped
       from the fit set (no training row is inside a held-out row, or holds one).

    :func:`split_conflicts` of the result is always 0.
    """
    if n_select < 1:
        raise InvalidInput(f"selection split: n_select must be >= 1, got {n_select}")
    keys = [words_key(t) for t, _ in rows]
    grams = _Grams(keys)
    order = [i for i, k in enumerate(keys) if len(k.split()) >= min_words]
    random.Random(seed).shuffle(order)
    held: list[int] = []
    held_keys: set[str] = set()
    not_maximal = 0
    for i in order:
        if len(held) == n_select:
            break
        if keys[i] in held_keys:
            continue  # the same text twice would be one selection row counted twice
        if any(keys[j] != keys[i] for j in grams.containing(keys[i])):
            not_maximal += 1
            continue
        held.append(i)
        held_keys.add(keys[i])
    if len(held) < n_select:
        raise InvalidInput(
            f"selection split: only {len(held)} rows of >= {min_words} words are not inside a longer row; "
            f"asked for {n_select}"
        )
    held_set = set(held)
    spans = {
        " ".join(w[a:b])
        for w in (keys[i].split() for i in held)
        for a in range(len(w))
        for b in range(a + 1, len(w) + 1)
    }
    containing: set[int] = set()
    for i in held:
        containing.update(grams.containing(keys[i]))
    fit: list[tuple[str, int]] = []
    inside = holding = 0
    for i, row in enumerate(rows):
        if i in held_set:
            continue
        if keys[i] in spans or not keys[i]:
            inside += 1
        elif i in containing:
            holding += 1
        else:
            fit.append(row)
    select = [rows[i] for i in sorted(held)]
    return SelectionSplit(fit, select, inside, holding, not_maximal)


def split_conflicts(fit: Sequence[tuple[str, int]], select: Sequence[tuple[str, int]]) -> int:
    """Number of (fit, select) row pairs where one text holds the other as whole words (0 for a clean split)."""
    grams = _Grams([words_key(t) for t, _ in fit])
    sel_keys = [words_key(t) for t, _ in select]
    spans = {
        " ".join(w[a:b])
        for w in (k.split() for k in sel_keys)
        for a in range(len(w))
        for b in range(a + 1, len(w) + 1)
    }
    bad = sum(1 for k in grams.keys if k in spans)
    for k in sel_keys:
        bad += sum(1 for j in grams.containing(k) if grams.keys[j] not in spans)
    return bad


__all__ = [
    "CLASSIFY_SETS",
    "EVAL_SETS",
    "SelectionSplit",
    "MLM_SOURCES",
    "build_mlm_corpus",
    "load_classification_set",
    "normalise",
    "read_advglue_sst2",
    "read_corpus",
    "read_labelled",
    "selection_split",
    "split_conflicts",
    "task_sets",
    "words_key",
]
