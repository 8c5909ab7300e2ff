"""Response-selection data for the Uni-Encoder: MuTual, named sets, the held-out split, overlap.

MuTual (``dialogue/mutual/mutual/train.tar.gz``) is a tar of one JSON object per file:
``{"answers": "B", "options": [4 strings], "article": "m : ... f : ...", "id": "train_1"}``.
The article is split into turns at each speaker marker (``m :`` / ``f :``, kept in the turn).
Errors name the archive, the member and line 1 (each member is one JSON object).

Named sets (``--data`` / ``--dataset``):

- ``mutual`` / ``mutual-train``: MuTual train minus the held-out and selection parts (training);
- ``mutual-heldout``: the held-out part (about 15 % of contexts, chosen by a hash of the
  normalised dialogue text, so examples sharing a dialogue stay on one side and the split never
  depends on a seed or on file order) — a second evaluation set;
- ``mutual-select``: the next 10 % by the same hash — the selection set of training runs
  (shares no dialogue with the training part or the held-out part);
- ``dailydialog-dev``: DailyDialog++ dev (the evaluation set; never trained on);
- ``dailydialog``: DailyDialog++ *train* (``dialogue/dailydialog-plusplus/train.json``), which
  the shared data does not hold: a clear error says so;
- a path: DailyDialog++ JSON lines, a MuTual ``.tar.gz``, a MuTual folder (``dev/``,
  ``test/`` or ``train/`` of ``.txt`` files each holding one JSON object, as the MuTual
  release lays them out; give the split folder or the folder above it with ``PATH:dev``), or
  one such ``.txt`` file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import replace
from pathlib import Path

from pairsmith.distill.data import DialogueSet, data_root, read_dailydialog_pp
from pairsmith.errors import DataFormatError, InvalidInput, NotFound

HELDOUT_PERCENT = 15  # share of MuTual train contexts held out for evaluation
SELECT_PERCENT = 10  # the next share: the selection set of training runs
_TURN = re.compile(r"(?:^|\s)(?=[mf] : )")
_ANSWERS = "ABCD"


def split_turns(article: str) -> list[str]:
    turns = [t.strip() for t in _TURN.split(article) if t.strip()]
    return turns or [article.strip()]


def _bucket(article: str) -> int:
    return int(hashlib.sha1(_norm(article).encode()).hexdigest(), 16) % 100


def is_heldout(article: str) -> bool:
    """By a hash of the normalised dialogue: examples sharing a dialogue fall on the same side."""
    return _bucket(article) < HELDOUT_PERCENT


def mutual_part(article: str) -> str:
    """train | select | heldout, by the dialogue's hash bucket."""
    b = _bucket(article)
    return "heldout" if b < HELDOUT_PERCENT else "select" if b < HELDOUT_PERCENT + SELECT_PERCENT else "train"


PARTS = ("all", "train", "select", "heldout")


def _mutual_blobs(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every member: a ``.tar.gz``, a folder of ``.txt`` files, or one file."""
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataFormatError(path, "no .txt files (MuTual layout: one JSON object per .txt file)")
        return [(str(f.relative_to(path)), f.read_bytes()) for f in files]
    if path.suffix == ".txt":
        return [(path.name, path.read_bytes())]
    try:
        tar = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise DataFormatError(path, f"not a readable .tar.gz ({exc})") from None
    with tar:  # streamed in archive order (random access into a .gz re-reads from the start)
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]


def read_mutual(path: str | os.PathLike[str], part: str = "all") -> DialogueSet:
    """MuTual ``train.tar.gz`` or a MuTual folder of ``.txt`` files; ``part``: all | train |
    select | heldout (the hash split of MuTual train, see the module docstring)."""
    if part not in PARTS:
        raise InvalidInput(f"part: expected one of {', '.join(PARTS)}, got {part!r}")
    path = Path(path)
    if not path.exists():
        raise NotFound(f"MuTual data: {path} not found (set PAIRSMITH_DATA or give the path)")
    ctx, pos, neg, ids = [], [], [], []
    for name, raw in sorted(_mutual_blobs(path)):
        where = f"{path}:{name}" if name != path.name else str(path)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(where, f"invalid JSON ({exc})", line=1) from None
        if not isinstance(obj, dict):
            raise DataFormatError(where, "expected a JSON object", line=1)
        for k in ("answers", "options", "article", "id"):
            if k not in obj:
                raise DataFormatError(where, f"field {k!r} missing", line=1)
        opts = obj["options"]
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
            raise DataFormatError(where, "field 'options' must be a list of >= 2 strings", line=1)
        ans = obj["answers"]
        if not isinstance(ans, str) or ans not in _ANSWERS[: len(opts)]:
            raise DataFormatError(
                where, f"field 'answers' must be one of {_ANSWERS[: len(opts)]}, got {ans!r}", line=1
            )
        if not isinstance(obj["article"], str) or not obj["article"].strip():
            raise DataFormatError(where, "field 'article' must be a non-empty string", line=1)
        if part != "all" and mutual_part(obj["article"]) != part:
            continue
        k = _ANSWERS.index(ans)
        ctx.append(split_turns(obj["article"]))
        pos.append([opts[k]])
        neg.append([o for i, o in enumerate(opts) if i != k])
        ids.append(str(obj["id"]))
    if not ctx:
        raise DataFormatError(path, f"no MuTual examples found (part {part})")
    return DialogueSet(f"mutual-{part}", ctx, pos, neg)


def load_dialogue(name_or_path: str, root: str | os.PathLike[str] | None = None) -> DialogueSet:
    """A named response-selection set or a file (see the module docstring)."""
    key = name_or_path.strip().lower()
    base = data_root(root)
    mutual = base / "dialogue/mutual/mutual/train.tar.gz"
    if key in ("mutual", "mutual-train"):
        return replace(read_mutual(mutual, "train"), name="mutual-train")
    if key in ("mutual-heldout", "mutual-select"):
        return replace(read_mutual(mutual, key.split("-")[1]), name=key)
    if key == "dailydialog-dev":
        return replace(
            read_dailydialog_pp(base / "dialogue/dailydialog-plusplus/dev.json"), name="dailydialog-dev"
        )
    if key in ("dailydialog", "dailydialog-train"):
        train = base / "dialogue/dailydialog-plusplus/train.json"
        if not train.exists():
            raise NotFound(
                f"dailydialog: {train} not found; the shared data holds only DailyDialog++ dev, which is "
                "the evaluation set and is never trained on. Train on --data mutual or a FILE"
            )
        return replace(read_dailydialog_pp(train), name="dailydialog-train")
    path, split = Path(name_or_path), None
    if not path.exists() and ":" in name_or_path:  # FOLDER:dev
        head, split = name_or_path.rsplit(":", 1)
        path = Path(head) / split
    if not path.exists():
        raise NotFound(
            f"dialogue data {name_or_path!r}: not one of mutual, mutual-select, mutual-heldout, "
            "dailydialog, dailydialog-dev and no such file or folder"
        )
    if path.is_dir() or path.name.endswith(".tar.gz") or path.suffix == ".txt":
        ds = read_mutual(path)
        return replace(ds, name=f"mutual:{path.name}" if path.is_dir() else ds.name)
    return read_dailydialog_pp(path)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
