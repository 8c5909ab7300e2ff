"""Corpus readers for batch index building: JSON Lines, TSV and Parquet, streamed.

Every format yields :class:`Doc` records ``(row, id, text, payload)`` in file
order, one bounded chunk at a time, so a corpus larger than memory builds.
``row`` counts records from 1 (what a resumed build skips). Malformed input
raises :class:`~pairsmith.errors.DataFormatError` naming the file and line
(Parquet: the row).

- ``.jsonl`` / ``.ndjson``: one object per line, ``{"id": ..., "text": ..., "payload": {...}}``;
  blank lines are skipped; ``id`` may be a string or an integer.
- ``.tsv``: a header line naming at least ``id`` and ``text`` (optionally
  ``payload``, a JSON object); tab-separated, no quoting, one record per line.
- ``.parquet``: columns ``id``, ``text`` and optionally ``payload`` (a JSON
  string or a struct); read in record batches.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pairsmith.errors import DataFormatError, InvalidInput, NotFound

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv", ".parquet": "parquet"}
MAX_TEXT_CHARS = 1_000_000


@dataclass(frozen=True)
class Doc:
    row: int  # 1-based record number
    id: str
    text: str
    payload: dict | None


def _doc(path: Path, line: int, row: int, ident: object, text: object, payload: object) -> Doc:
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise DataFormatError(path, f"'id' must be a non-empty string or integer, got {ident!r}", line=line)
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(path, f"'text' must be a non-empty string, got {text!r:.60}", line=line)
    if len(text) > MAX_TEXT_CHARS:
        raise DataFormatError(
            path, f"'text' has {len(text)} characters; the limit is {MAX_TEXT_CHARS}", line=line
        )
    if isinstance(payload, str):
        try:
            payload = json.loads(payload) if payload.strip() else None
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"'payload' is not valid JSON ({exc.msg})", line=line) from None
    if payload is not None and not isinstance(payload, dict):
        raise DataFormatError(
            path, f"'payload' must be a JSON object, got {type(payload).__name__}", line=line
        )
    return Doc(row=row, id=str(ident), text=text, payload=payload)


class Corpus:
    """A corpus file; :meth:`docs` streams it, :meth:`count` counts records cheaply."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise NotFound(f"corpus: file {self.path} not found")
        fmt = FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise InvalidInput(f"corpus: {self.path.name}: unknown format; use one of {sorted(FORMATS)}")
        self.format = fmt

    def stamp(self) -> dict:
        """Identity of the file's content for resuming (path, size, mtime)."""
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def count(self) -> int:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        n = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    n += 1
        return n - 1 if self.format == "tsv" and n else n

    def docs(self, *, skip: int = 0) -> Iterator[Doc]:
        """Records in order; the first ``skip`` are read but not validated or returned."""
        reader = {"jsonl": self._jsonl, "tsv": self._tsv, "parquet": self._parquet}[self.format]
        return reader(skip)

    def chunks(self, size: int, *, skip: int = 0) -> Iterator[list[Doc]]:
        chunk: list[Doc] = []
        for doc in self.docs(skip=skip):
            chunk.append(doc)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _jsonl(self, skip: int) -> Iterator[Doc]:
        row = 0
        with open(self.path, encoding="utf-8", errors="strict") as fh:
            line_no = 0
            while True:
                try:
                    line = fh.readline()
                except UnicodeDecodeError as exc:
                    raise DataFormatError(self.path, f"not UTF-8 ({exc.reason})", line=line_no + 1) from None
                if not line:
                    return
                line_no += 1
                if not line.strip():
                    continue
                row += 1
                if row <= skip:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(
                        self.path, f"invalid JSON ({exc.msg} at column {exc.colno})", line=line_no
                    ) from None
                if not isinstance(obj, dict):
                    raise DataFormatError(
                        self.path, f"expected a JSON object, got {type(obj).__name__}", line=line_no
                    )
                for key in ("id", "text"):
                    if key not in obj:
                        raise DataFormatError(
                            self.path, f"missing field {key!r} (fields: {sorted(obj)})", line=line_no
                        )
                yield _doc(self.path, line_no, row, obj["id"], obj["text"], obj.get("payload"))

    def _tsv(self, skip: int) -> Iterator[Doc]:
        with open(self.path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                header = next(reader, None)
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataFormatError(self.path, f"cannot read header ({exc})", line=1) from None
            if header is None:
                return
            cols = [h.strip().lower() for h in header]
            if "id" not in cols or "text" not in cols:
                raise DataFormatError(
                    self.path, f"header must name 'id' and 'text' columns, got {header}", line=1
                )
            i_id, i_text = cols.index("id"), cols.index("text")
            i_pay = cols.index("payload") if "payload" in cols else None
            row = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except (UnicodeDecodeError, csv.Error) as exc:
                    raise DataFormatError(
                        self.path, f"unreadable line ({exc})", line=reader.line_num + 1
                    ) from None
                line_no = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                row += 1
                if row <= skip:
                    continue
                if len(fields) != len(cols):
                    raise DataFormatError(
                        self.path,
                        f"expected {len(cols)} tab-separated fields, got {len(fields)}",
                        line=line_no,
                    )
                payload = fields[i_pay] if i_pay is not None else None
                yield _doc(self.path, line_no, row, fields[i_id], fields[i_text], payload)

    def _parquet(self, skip: int) -> Iterator[Doc]:
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover
            raise InvalidInput("corpus: reading Parquet needs pyarrow: pip install pyarrow") from None
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise DataFormatError(self.path, f"not a readable Parquet file ({exc})") from None
        names = [n.lower() for n in pf.schema_arrow.names]
        if "id" not in names or "text" not in names:
            raise DataFormatError(self.path, f"needs columns 'id' and 'text', has {pf.schema_arrow.names}")
        real = {n.lower(): n for n in pf.schema_arrow.names}
        cols = [real["id"], real["text"]] + ([real["payload"]] if "payload" in real else [])
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            if row + batch.num_rows <= skip:
                row += batch.num_rows
                continue
            data = batch.to_pydict()
            ids, texts = data[cols[0]], data[cols[1]]
            pays = data[cols[2]] if len(cols) == 3 else [None] * len(ids)
            for ident, text, pay in zip(ids, texts, pays, strict=True):
                row += 1
                if row <= skip:
                    continue
                yield _doc(self.path, row, row, ident, text, pay)
