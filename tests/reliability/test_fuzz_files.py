"""Fuzzing the CLI's file inputs: a corpus (.jsonl / .tsv) for ``pairsmith index build`` and a
pair file (.tsv / .jsonl) for the distillation commands. Random bytes, broken JSON, wrong types,
invalid UTF-8: the readers either return records or raise a :class:`PairsmithError` (a one-line
CLI error naming the file), never anything else.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairsmith.distill.data import read_pair_path
from pairsmith.errors import PairsmithError
from pairsmith.service.store.corpus import Corpus
from tests.reliability.conftest import FUZZ_EXAMPLES

FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_row = st.one_of(
    st.dictionaries(
        st.sampled_from(["id", "text", "payload", "a", "b", "score", "label", "x"]), json_scalar, max_size=5
    ),
    st.lists(json_scalar, max_size=3),
    json_scalar,
)
lines = st.one_of(
    json_row.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=80),
    st.text(max_size=80).map(str.encode),
    st.lists(st.text(max_size=12), max_size=5).map(lambda c: "\t".join(c).encode()),
)
contents = st.lists(lines, max_size=12).map(lambda ls: b"\n".join(ls))


def _try(fn) -> None:
    try:
        fn()
    except PairsmithError:
        pass


@FUZZ
@given(data=contents, suffix=st.sampled_from([".jsonl", ".tsv"]))
def test_corpus_reader_never_crashes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"corpus{suffix}"
        path.write_bytes(data)
        _try(lambda: [d for chunk in Corpus(path).chunks(4) for d in chunk])


@FUZZ
@given(data=contents, suffix=st.sampled_from([".tsv", ".jsonl", ".csv"]))
def test_pair_file_reader_never_crashes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pairs{suffix}"
        path.write_bytes(data)
        _try(lambda: read_pair_path(path))
