"""Response-selection data for the Uni-Encoder: MuTual, named sets, the held-out split, overlap.

MuTual (``dialogue/mutual/mutual/train.tar.gz``) is a tar of one JSON object per file:
``{"answers": "B", "options": [4 strings], "article": "m : ... f : ...", "id": "train_1"}``.
The article is split into turns at each speaker marker (``m :`` / ``f :``, kept in the turn).
Errors name the archive, the member and line 1 (each member is one JSON object).

Named sets (``--data`` / ``--dataset``):

- ``mutual`` / ``mutual-train``: MuTual train minus the held-out part (training);
- ``mutual-heldout``: the held-out part (about 15 % of contexts, chosen by a hash of the
  normalised dialogue text, so examples sharing a dialogue stay on one side and the split never
  depends on a seed or on file order) — a second evaluation set;
- ``dailydialog-dev``: DailyDialog++ dev (the evaluation set; never trained on);
- ``dailydialog``: DailyDialog++ *train* (``dialogue/dailydialog-plusplus/train.json``), which
  the shared data does not hold: a clear error says so;
- a path: DailyDialog++ JSON lines, or a MuTual ``.tar.gz``.
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
_TURN = re.compile(r"(?:^|\s)(?=[mf] : )")
_ANSWERS = "ABCD"


def split_turns(article: str) -> list[str]:
    turns = [t.strip() for t in _TURN.split(article) if t.strip()]
    return turns or [article.strip()]


def is_heldout(article: str) -> bool:
    """By a hash of the normalised dialogue: examples sharing a dialogue fall on the same side."""
    return int(hashlib.sha1(_norm(article).encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def read_mutual(path: str | os.PathLike[str], part: str = "all") -> DialogueSet:
    """MuTual ``train.tar.gz``; ``part``: all | train (minus held-out) | heldout."""
    if part not in ("all", "train", "heldout"):
        raise InvalidInput(f"part: expected all, train or heldout, got {part!r}")
    path = Path(path)
    if not path.exists():
        raise NotFound(f"MuTual archive: {path} not found (set PAIRSMITH_DATA or give the path)")
    ctx, pos, neg, ids = [], [], [], []
    try:
        tar = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise DataFormatError(path, f"not a readable .tar.gz ({exc})") from None
    with tar:  # streamed in archive order (random access into a .gz re-reads from the start)
        blobs = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    for name, raw in sorted(blobs):
        where = f"{path}:{name}"
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
        held = is_heldout(obj["article"])
        if (part == "train" and held) or (part == "heldout" and not held):
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
    if key == "mutual-heldout":
        return replace(read_mutual(mutual, "heldout"), name="mutual-heldout")
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
    path = Path(name_or_path)
    if not path.exists():
        raise NotFound(
            f"dialogue data {name_or_path!r}: not one of mutual, mutual-heldout, dailydialog, "
            "dailydialog-dev and no such file"
        )
    if path.name.endswith(".tar.gz"):
        return read_mutual(path)
    return read_dailydialog_pp(path)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
