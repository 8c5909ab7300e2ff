"""Data readers: STS pairs, generic pair files, retrieval sets, answer selection, dialogue.

Every reader validates as it goes and raises :class:`DataFormatError` naming
the file, the line and what is wrong; nothing here returns half-parsed data.
Data sets are read from their published files by path (``PAIRSMITH_DATA``,
default ``../shared/data`` beside the repository); none is shipped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pairsmith.errors import DataFormatError, InvalidInput, NotFound

# --------------------------------------------------------------------------- locations


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given, else ``$PAIRSMITH_DATA``, else ``../shared/data`` from the repo/cwd."""
    if root is not None:
        return Path(root)
    env = os.environ.get("PAIRSMITH_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # repository root for an editable install
    for base in (here, Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise NotFound(f"{what}: {path} not found (set PAIRSMITH_DATA or --data to the data folder)")
    return path


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig") as fh:  # a leading byte-order mark is not data
            for no, line in enumerate(fh, 1):
                yield no, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _float(path: Path, no: int, text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise DataFormatError(path, f"{what} {text!r} is not a number", line=no) from None
    if not np.isfinite(v):
        raise DataFormatError(path, f"{what} {text!r} is not finite", line=no)
    return v


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairSet:
    """Sentence pairs with optional gold scores (STS 0-5, SICK 1-5, labels 0/1)."""

    name: str
    s1: list[str]
    s2: list[str]
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.s1) != len(self.s2):
            raise InvalidInput(f"{self.name}: {len(self.s1)} left vs {len(self.s2)} right sentences")
        if self.scores is not None and len(self.scores) != len(self.s1):
            raise InvalidInput(f"{self.name}: {len(self.scores)} scores for {len(self.s1)} pairs")

    def __len__(self) -> int:
        return len(self.s1)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.s1, self.s2, strict=True))

    @property
    def labeled(self) -> bool:
        return self.scores is not None


def _pairset(name: str, rows: list[tuple[str, str, float | None]], path: Path) -> PairSet:
    if not rows:
        raise DataFormatError(path, "no pairs found")
    labeled = [r[2] is not None for r in rows]
    if any(labeled) and not all(labeled):
        first = labeled.index(not labeled[0]) + 1
        raise DataFormatError(path, f"some pairs have a score and some do not (e.g. pair {first})")
    scores = np.array([r[2] for r in rows], dtype=np.float32) if all(labeled) else None
    return PairSet(name, [r[0] for r in rows], [r[1] for r in rows], scores)


def read_sts_tab(path: str | os.PathLike[str], name: str | None = None) -> PairSet:
    """STS-B (genre, file, year, id, score, s1, s2) or STS companion (genre, year, id, score, s1, s2).

    TAB-separated, no CSV quoting; extra trailing columns are ignored. The
    layout is detected from the first line.
    """
    path = _need(Path(path), "STS file")
    rows: list[tuple[str, str, float | None]] = []
    score_col: int | None = None
    for no, line in _lines(path):
        if not line.strip():
            continue
        f = line.split("\t")
        if score_col is None:
            score_col = next((c for c in (4, 3) if len(f) > c + 2 and _isfloat(f[c])), None)
            if score_col is None:
                raise DataFormatError(
                    path,
                    "not an STS-B/companion line: expected a score in field 5 (or 4) and two sentences",
                    line=no,
                )
        if len(f) < score_col + 3:
            raise DataFormatError(
                path, f"expected at least {score_col + 3} TAB-separated fields, got {len(f)}", line=no
            )
        rows.append((f[score_col + 1], f[score_col + 2], _float(path, no, f[score_col], "score")))
    return _pairset(name or path.stem, rows, path)


def _isfloat(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_senteval_year(folder: str | os.PathLike[str], name: str | None = None) -> PairSet:
    """One SemEval STS year in SentEval layout: every STS.input.X.txt with its STS.gs.X.txt.

    Pairs whose gold line is blank are unscored and dropped (SentEval's rule).
    The year's subsets are concatenated (one Spearman per year, as SentEval and
    the Trans-Encoder code compute it).
    """
    folder = _need(Path(folder), "STS year folder")
    inputs = sorted(folder.glob("STS.input.*.txt"))
    if not inputs:
        raise NotFound(f"{folder}: no STS.input.*.txt files")
    rows: list[tuple[str, str, float | None]] = []
    for inp in inputs:
        rows.extend(_senteval_subset(folder, inp))
    return _pairset(name or folder.name, rows, folder)


def senteval_subsets(folder: str | os.PathLike[str]) -> list[PairSet]:
    """The scored subsets of one SentEval year folder, one PairSet each (e.g. STS12's MSRpar)."""
    folder = _need(Path(folder), "STS year folder")
    out = []
    for inp in sorted(folder.glob("STS.input.*.txt")):
        rows = _senteval_subset(folder, inp)
        if rows:
            out.append(_pairset(f"{folder.name}/{inp.name}", rows, inp))
    return out


def _senteval_subset(folder: Path, inp: Path) -> list[tuple[str, str, float | None]]:
    subset = inp.name[len("STS.input.") : -len(".txt")]
    gs = folder / f"STS.gs.{subset}.txt"
    if not gs.exists():
        return []  # e.g. STS13 SMT: input withheld / gold without input
    sents = list(_lines(inp))
    golds = list(_lines(gs))
    if len(sents) != len(golds):
        raise DataFormatError(gs, f"{len(golds)} gold lines for {len(sents)} input lines in {inp.name}")
    rows: list[tuple[str, str, float | None]] = []
    for (no, s), (_, g) in zip(sents, golds, strict=True):
        if not g.strip():
            continue
        parts = s.split("\t")
        if len(parts) < 2:
            raise DataFormatError(inp, "expected 's1 TAB s2'", line=no)
        rows.append((parts[0], parts[1], _float(gs, no, g.strip(), "gold score")))
    return rows


def read_sick(path: str | os.PathLike[str], name: str | None = None) -> PairSet:
    """SICK (TAB, header: pair_ID sentence_A sentence_B relatedness_score ...): SICK-R pairs."""
    path = _need(Path(path), "SICK file")
    rows: list[tuple[str, str, float | None]] = []
    cols: dict[str, int] = {}
    for no, line in _lines(path):
        if not line.strip():
            continue
        f = line.split("\t")
        if not cols:
            cols = {c: i for i, c in enumerate(f)}
            missing = {"sentence_A", "sentence_B", "relatedness_score"} - cols.keys()
            if missing:
                raise DataFormatError(path, f"header lacks {sorted(missing)}", line=no)
            continue
        if len(f) <= max(cols["sentence_A"], cols["sentence_B"], cols["relatedness_score"]):
            raise DataFormatError(path, f"expected {len(cols)} fields, got {len(f)}", line=no)
        score = _float(path, no, f[cols["relatedness_score"]], "relatedness_score")
        rows.append((f[cols["sentence_A"]], f[cols["sentence_B"]], score))
    return _pairset(name or path.stem, rows, path)


def read_pair_file(path: str | os.PathLike[str], name: str | None = None) -> PairSet:
    """Generic pairs: JSONL with ``s1``, ``s2`` and optional ``score``, or TSV ``s1 TAB s2 [TAB score]``.

    A TSV header line ``s1 s2 [score]`` is allowed. Either every pair has a score or none has.
    """
    path = _need(Path(path), "pair file")
    rows: list[tuple[str, str, float | None]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for obj, _, no in _jsonl(path):
            for key in ("s1", "s2"):
                if not isinstance(obj.get(key), str):
                    raise DataFormatError(path, f"field {key!r} missing or not a string", line=no)
            score = obj.get("score")
            if score is not None:
                if isinstance(score, bool) or not isinstance(score, (int, float)):
                    raise DataFormatError(path, f"field 'score' must be a number, got {score!r}", line=no)
                score = _float(path, no, str(score), "score")
            rows.append((obj["s1"], obj["s2"], score))
    else:
        for no, line in _lines(path):
            if not line.strip():
                continue
            f = line.split("\t")
            if no == 1 and [c.strip().lower() for c in f[:2]] == ["s1", "s2"]:
                continue
            if len(f) not in (2, 3):
                raise DataFormatError(path, f"expected 's1 TAB s2 [TAB score]', got {len(f)} fields", line=no)
            score = _float(path, no, f[2], "score") if len(f) == 3 else None
            rows.append((f[0], f[1], score))
    return _pairset(name or path.stem, rows, path)


def read_mrpc(path: str | os.PathLike[str], name: str | None = None) -> PairSet:
    """MRPC (msr-para-*.tsv: Quality, #1 ID, #2 ID, #1 String, #2 String); scores are 0/1 labels."""
    path = _need(Path(path), "MRPC file")
    rows: list[tuple[str, str, float | None]] = []
    for no, line in _lines(path):
        if no == 1 and line.startswith("Quality"):
            continue
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 5 or f[0] not in ("0", "1"):
            raise DataFormatError(path, "expected 'label(0/1) TAB id1 TAB id2 TAB s1 TAB s2'", line=no)
        rows.append((f[3], f[4], float(f[0])))
    return _pairset(name or path.stem, rows, path)


# Named STS sets (the 7-task convention: STS12-16 test years, STS-B dev, SICK-R dev = SICK trial).
STS7 = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb-dev", "sickr-dev"]
_STS_NAMED = {
    "stsb-train": ("sts/stsbenchmark/sts-train.csv", read_sts_tab),
    "stsb-dev": ("sts/stsbenchmark/sts-dev.csv", read_sts_tab),
    "stsb-test": ("sts/stsbenchmark/sts-test.csv", read_sts_tab),
    "sickr-train": ("sts/sick/SICK_train.txt", read_sick),
    "sickr-dev": ("sts/sick/SICK_trial.txt", read_sick),
    "sickr-test": ("sts/sick/SICK_test_annotated.txt", read_sick),
    **{f"sts{y}": (f"sts/sts12-16/STS{y}-en-test", read_senteval_year) for y in (12, 13, 14, 15, 16)},
}
STS_SET_NAMES = sorted([*_STS_NAMED, "sts-companion"])


def load_sts_set(name_or_path: str, root: str | os.PathLike[str] | None = None) -> PairSet:
    """A named STS set (``stsb-dev``, ``sts12`` … ``sts16``, ``sickr-dev``, ``sts-companion``, …) or a file.

    A path is read by its layout: a folder in SentEval layout, SICK (header),
    STS-B/companion TAB files, or a generic pair file (.jsonl / s1 TAB s2 TAB score).
    """
    key = name_or_path.strip().lower()
    base = data_root(root)
    if key == "sts-companion":
        folder = _need(base / "sts/sts-companion/stscompanion", "STS companion")
        parts = [read_sts_tab(p) for p in sorted(folder.glob("sts-*.csv"))]
        return PairSet(
            "sts-companion",
            [s for p in parts for s in p.s1],
            [s for p in parts for s in p.s2],
            np.concatenate([p.scores for p in parts]),  # type: ignore[misc]
        )
    if key in _STS_NAMED:
        rel, reader = _STS_NAMED[key]
        return reader(_need(base / rel, f"STS set {key}"), name=key)
    path = Path(name_or_path)
    if not path.exists():
        raise NotFound(
            f"STS set {name_or_path!r}: not a known name ({', '.join(STS_SET_NAMES)}) and no such file"
        )
    return read_pair_path(path)


def read_pair_path(path: Path) -> PairSet:
    """Detect a pair file's layout from its name and first line, then read it."""
    if path.is_dir():
        return read_senteval_year(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_pair_file(path)
    first = next((ln for _, ln in _lines(path) if ln.strip()), "")
    fields = first.split("\t")
    if "sentence_A" in fields:
        return read_sick(path)
    if first.startswith("Quality\t#1 ID"):
        return read_mrpc(path)
    if len(fields) >= 6 and (_isfloat(fields[4]) or _isfloat(fields[3])):
        return read_sts_tab(path)
    return read_pair_file(path)


# --------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, documents and graded relevance.

    ``candidates`` is set for answer selection (each question ranks only its
    own candidate sentences); for corpus retrieval it is None.
    """

    name: str
    docs: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    candidates: dict[str, list[str]] | None = field(default=None)


def read_nfcorpus(
    folder: str | os.PathLike[str], split: str = "dev", queries: str = "titles"
) -> RetrievalSet:
    """NFCorpus layout: ``{split}.docs``, ``{split}.{queries}.queries``, ``{split}.3-2-1.qrel`` (graded)."""
    folder = _need(Path(folder), "NFCorpus folder")
    docs = _read_id_text(_need(folder / f"{split}.docs", "NFCorpus docs"))
    qs = _read_id_text(_need(folder / f"{split}.{queries}.queries", "NFCorpus queries"))
    qrels: dict[str, dict[str, int]] = {}
    qrel_path = _need(folder / f"{split}.3-2-1.qrel", "NFCorpus qrels")
    for no, line in _lines(qrel_path):
        if not line.strip():
            continue
        f = line.split()
        if len(f) != 4:
            raise DataFormatError(qrel_path, "expected 'qid 0 docid grade'", line=no)
        qrels.setdefault(f[0], {})[f[2]] = int(_float(qrel_path, no, f[3], "grade"))
    qs = {q: t for q, t in qs.items() if q in qrels}
    return RetrievalSet(f"nfcorpus-{split}", docs, qs, {q: qrels[q] for q in qs})


def _read_id_text(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for no, line in _lines(path):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataFormatError(path, "expected 'id TAB text'", line=no)
        key, text = line.split("\t", 1)
        out[key] = text
    return out


def read_beir(folder: str | os.PathLike[str], split: str = "dev") -> RetrievalSet:
    """BEIR layout: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/{split}.tsv."""
    folder = _need(Path(folder), "BEIR folder")
    docs: dict[str, str] = {}
    for obj, path, no in _jsonl(_need(folder / "corpus.jsonl", "BEIR corpus")):
        _require_keys(obj, ("_id", "text"), path, no)
        docs[str(obj["_id"])] = (obj.get("title", "") + " " + obj["text"]).strip()
    queries: dict[str, str] = {}
    for obj, path, no in _jsonl(_need(folder / "queries.jsonl", "BEIR queries")):
        _require_keys(obj, ("_id", "text"), path, no)
        queries[str(obj["_id"])] = obj["text"]
    qrels: dict[str, dict[str, int]] = {}
    qpath = _need(folder / "qrels" / f"{split}.tsv", "BEIR qrels")
    for no, line in _lines(qpath):
        f = line.split("\t")
        if no == 1 and not _isfloat(f[-1]):
            continue
        if len(f) != 3:
            raise DataFormatError(qpath, "expected 'query-id TAB corpus-id TAB score'", line=no)
        qrels.setdefault(f[0], {})[f[1]] = int(_float(qpath, no, f[2], "score"))
    queries = {q: t for q, t in queries.items() if q in qrels}
    return RetrievalSet(f"{folder.name}-{split}", docs, queries, qrels)


def _jsonl(path: Path):
    for no, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"invalid JSON ({exc.msg})", line=no) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, "expected a JSON object", line=no)
        yield obj, path, no


def _require_keys(obj: dict, keys: Iterable[str], path: Path, no: int) -> None:
    for k in keys:
        if k not in obj:
            raise DataFormatError(path, f"field {k!r} missing", line=no)


def _answer_selection(name: str, rows: list[tuple[str, str, int]]) -> RetrievalSet:
    """(question, answer, label) rows -> per-question candidate lists; questions without a positive dropped."""
    qid_of: dict[str, str] = {}
    docs: dict[str, str] = {}
    cands: dict[str, list[str]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q, a, label in rows:
        qid = qid_of.setdefault(q, f"q{len(qid_of)}")
        did = f"{qid}-a{len(cands.get(qid, []))}"
        docs[did] = a
        cands.setdefault(qid, []).append(did)
        if label > 0:
            qrels.setdefault(qid, {})[did] = label
    queries = {qid: q for q, qid in qid_of.items() if qid in qrels}
    return RetrievalSet(name, docs, queries, {q: qrels[q] for q in queries}, {q: cands[q] for q in queries})


def read_wikiqa(path: str | os.PathLike[str]) -> RetrievalSet:
    """WikiQA TSV (QuestionID, Question, DocumentID, DocumentTitle, SentenceID, Sentence, Label)."""
    path = _need(Path(path), "WikiQA file")
    rows: list[tuple[str, str, int]] = []
    cols: dict[str, int] = {}
    for no, line in _lines(path):
        f = line.split("\t")
        if not cols:
            cols = {c: i for i, c in enumerate(f)}
            if not {"Question", "Sentence", "Label"} <= cols.keys():
                raise DataFormatError(path, "header must name Question, Sentence and Label", line=no)
            continue
        if not line.strip():
            continue
        if len(f) != len(cols) or f[cols["Label"]] not in ("0", "1"):
            raise DataFormatError(path, f"expected {len(cols)} fields with Label 0/1", line=no)
        rows.append((f[cols["Question"]], f[cols["Sentence"]], int(f[cols["Label"]])))
    return _answer_selection(path.stem, rows)


def read_trecqa(path: str | os.PathLike[str]) -> RetrievalSet:
    """TrecQA CSV with header qtext,label,atext (standard CSV quoting)."""
    path = _need(Path(path), "TrecQA file")
    rows: list[tuple[str, str, int]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"qtext", "label", "atext"} <= set(reader.fieldnames):
            raise DataFormatError(path, "header must be qtext,label,atext", line=1)
        for rec in reader:
            no = reader.line_num
            if rec["label"] not in ("0", "1") or rec["atext"] is None:
                raise DataFormatError(path, f"label must be 0/1, got {rec['label']!r}", line=no)
            rows.append((rec["qtext"], rec["atext"], int(rec["label"])))
    return _answer_selection(path.stem, rows)


_RETRIEVAL_NAMED = {
    "nfcorpus-dev": lambda base: read_nfcorpus(base / "retrieval/nfcorpus", "dev"),
    "wikiqa-dev": lambda base: read_wikiqa(_need(base / "retrieval/wikiqa/WikiQA-dev.tsv", "WikiQA dev")),
    "trecqa-dev": lambda base: read_trecqa(_need(base / "retrieval/trecqa/dev.csv", "TrecQA dev")),
    "trecqa-train": lambda base: read_trecqa(_need(base / "retrieval/trecqa/train.csv", "TrecQA train")),
}


def load_retrieval_set(name_or_path: str, root: str | os.PathLike[str] | None = None) -> RetrievalSet:
    key = name_or_path.strip().lower()
    if key in _RETRIEVAL_NAMED:
        return replace(_RETRIEVAL_NAMED[key](data_root(root)), name=key)
    path = Path(name_or_path)
    if not path.exists():
        raise NotFound(f"dataset {name_or_path!r}: not one of {sorted(_RETRIEVAL_NAMED)} and no such path")
    if path.is_dir():
        if (path / "corpus.jsonl").exists():
            return read_beir(path)
        if any(path.glob("*.docs")):
            return read_nfcorpus(path)
        raise DataFormatError(path, "folder is neither BEIR (corpus.jsonl) nor NFCorpus (*.docs) layout")
    if path.suffix.lower() == ".csv":
        return read_trecqa(path)
    return read_wikiqa(path)


# --------------------------------------------------------------------------- dialogue


@dataclass(frozen=True)
class DialogueSet:
    """Response selection: per context, positive responses and negatives (random + adversarial)."""

    name: str
    contexts: list[list[str]]
    positives: list[list[str]]
    negatives: list[list[str]]


def read_dailydialog_pp(path: str | os.PathLike[str]) -> DialogueSet:
    """DailyDialog++ JSON lines: context, positive_responses, random_/adversarial_negative_responses."""
    path = _need(Path(path), "DailyDialog++ file")
    ctx, pos, neg = [], [], []
    keys = ("context", "positive_responses", "random_negative_responses", "adversarial_negative_responses")
    for obj, p, no in _jsonl(path):
        _require_keys(obj, keys, p, no)
        for k in keys:
            v = obj[k]
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise DataFormatError(p, f"field {k!r} must be a non-empty list of strings", line=no)
        ctx.append(obj["context"])
        pos.append(obj["positive_responses"])
        neg.append(obj["random_negative_responses"] + obj["adversarial_negative_responses"])
    if not ctx:
        raise DataFormatError(path, "no dialogues found")
    return DialogueSet(path.stem, ctx, pos, neg)


def load_dialogue_set(name_or_path: str, root: str | os.PathLike[str] | None = None) -> DialogueSet:
    if name_or_path.strip().lower() == "dailydialog-dev":
        ds = read_dailydialog_pp(data_root(root) / "dialogue/dailydialog-plusplus/dev.json")
        return replace(ds, name="dailydialog-dev")
    return read_dailydialog_pp(name_or_path)
