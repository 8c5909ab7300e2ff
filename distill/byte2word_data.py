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
import tarfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pairsmith.atomic import atomic_write_text
from pairsmith.distill.data import _lines, _need, data_root
from pairsmith.errors import DataFormatError, InvalidInput

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


__all__ = [
    "EVAL_SETS",
    "MLM_SOURCES",
    "build_mlm_corpus",
    "normalise",
    "read_advglue_sst2",
    "read_corpus",
    "read_labelled",
    "task_sets",
]
