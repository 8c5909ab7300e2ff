"""Batch index building: corpus readers, the build, resuming after an interruption, the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pairsmith.errors import DataFormatError, FailedPrecondition, InvalidInput, NotFound
from pairsmith.service.store.build import BuildConfig, build_index
from pairsmith.service.store.corpus import Corpus
from pairsmith.service.store.index_store import IndexStore
from tests.tiny import make_tiny_bi_encoder

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["rivers", "engines", "bread", "planets", "violins", "glaciers", "taxes", "owls"]


def _texts(n: int) -> list[str]:
    return [
        f"note {i} on {TOPICS[i % len(TOPICS)]} and {TOPICS[(i * 7) % len(TOPICS)]}, entry {i * 13 % 97}"
        for i in range(n)
    ]


def _write_jsonl(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i, t in enumerate(_texts(n)):
            fh.write(json.dumps({"id": f"doc-{i}", "text": t, "payload": {"n": i}}) + "\n")
            if i % 50 == 7:
                fh.write("\n")  # blank lines are allowed
    return path


@pytest.fixture(scope="module")
def tiny_bi(tiny_bi_dir):
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")


def test_build_without_text_keeps_payload_as_given(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 20)
    with IndexStore(tmp_path / "home") as store:
        build_index(store, tiny_bi, BuildConfig(corpus, "bare", store_text=False), progress=False)
        q = tiny_bi.encode(_texts(1), normalize=True).vectors
        assert store.search("bare", q, 1)[0][0].payload == {"n": 0}


def test_build_then_search_finds_each_doc_by_its_own_text(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 300)
    with IndexStore(tmp_path / "home") as store:
        report = build_index(store, tiny_bi, BuildConfig(corpus, "docs", chunk_docs=64), progress=False)
        assert report.docs_total == report.docs_encoded == report.info.count == 300
        texts = _texts(300)
        q = tiny_bi.encode(texts[:40], normalize=True).vectors
        for i, hits in enumerate(store.search("docs", q, 3)):
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            top = [h.id for h in hits if h.score > 1 - 1e-4]
            assert f"doc-{i}" in top
            # The text is kept as payload["text"] (what Search's rerank stage reads), as Upsert does.
            assert next(h for h in hits if h.id == f"doc-{i}").payload == {"n": i, "text": texts[i]}
        info = store.get("docs")
        assert info.encoder_fingerprint == tiny_bi.fingerprint and info.dim == tiny_bi.dim
        # Same format the server serves: a manifest with checksum and a snapshot file.
        manifest = json.loads((tmp_path / "home" / "indexes" / "docs" / "manifest.json").read_text())
        assert manifest["count"] == 300 and manifest["snapshot"]["sha256"]


class _Stop(Exception):
    pass


def test_interrupted_build_resumes_without_duplicates_or_reencoding(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 500)
    cfg = BuildConfig(corpus, "docs", factory="IVF8,Flat", chunk_docs=100)

    def interrupt(done: int) -> None:
        if done >= 200:
            raise _Stop

    with IndexStore(tmp_path / "home") as store:
        with pytest.raises(_Stop):
            build_index(store, tiny_bi, cfg, progress=False, on_chunk=interrupt)
        assert store.get("docs").count == 200
    calls: list[int] = []
    real_encode = tiny_bi.encode

    class Counting:
        dim, fingerprint, model_id = tiny_bi.dim, tiny_bi.fingerprint, tiny_bi.model_id

        def encode(self, texts, **kw):
            calls.append(len(texts))
            return real_encode(texts, **kw)

    with IndexStore(tmp_path / "home") as store:
        report = build_index(store, Counting(), cfg, progress=False)
        assert (report.docs_resumed, report.docs_encoded, sum(calls)) == (200, 300, 300)
        info = store.get("docs")
        assert info.count == 500 and info.trained and info.factory == "IVF8,Flat"
        db = sqlite3.connect(tmp_path / "home" / "indexes" / "docs" / "store.sqlite")
        ids = [r[0] for r in db.execute("SELECT id FROM items")]
        db.close()
        assert sorted(ids) == sorted(f"doc-{i}" for i in range(500))
        # Running again is a no-op.
        again = build_index(store, Counting(), BuildConfig(corpus, "docs"), progress=False)
        assert again.docs_encoded == 0 and sum(calls) == 300


def test_interrupted_after_last_chunk_finishes_faiss_on_rerun(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 120)
    cfg = BuildConfig(corpus, "docs", factory="HNSW16", chunk_docs=60)

    def stop_at_end(done: int) -> None:
        if done == 120:
            raise _Stop  # every vector committed, FAISS not built yet

    with IndexStore(tmp_path / "home") as store:
        with pytest.raises(_Stop):
            build_index(store, tiny_bi, cfg, progress=False, on_chunk=stop_at_end)
    with IndexStore(tmp_path / "home") as store:
        report = build_index(store, tiny_bi, cfg, progress=False)
        assert (report.docs_encoded, report.docs_resumed, report.info.count) == (0, 120, 120)
        q = tiny_bi.encode(_texts(120)[:3], normalize=True).vectors
        assert all(len(h) == 5 for h in store.search("docs", q, 5))


def test_resume_refuses_changed_corpus_and_other_encoder(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 50)
    with IndexStore(tmp_path / "home") as store:
        build_index(store, tiny_bi, BuildConfig(corpus, "docs"), progress=False)
        with pytest.raises(FailedPrecondition, match="factory"):
            build_index(store, tiny_bi, BuildConfig(corpus, "docs", factory="HNSW16"), progress=False)
        _write_jsonl(corpus, 60)
        with pytest.raises(FailedPrecondition, match="changed since"):
            build_index(store, tiny_bi, BuildConfig(corpus, "docs"), progress=False)
    from pairsmith.encoders import BiEncoder

    other = BiEncoder.load(
        str(make_tiny_bi_encoder(tmp_path / "other", seed=1)), device="cpu", backend="torch"
    )
    with IndexStore(tmp_path / "home") as store:
        with pytest.raises(FailedPrecondition, match="fingerprint"):
            build_index(store, other, BuildConfig(corpus, "docs"), progress=False)


def test_ivf_factory_needs_enough_vectors(tmp_path, tiny_bi):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 100)
    with IndexStore(tmp_path / "home") as store:
        with pytest.raises(InvalidInput, match=r"IVF256,Flat.*needs at least 256 vectors.*has 100"):
            build_index(store, tiny_bi, BuildConfig(corpus, "docs", factory="IVF256,Flat"), progress=False)
        with pytest.raises(NotFound):
            store.get("docs")  # nothing half-created


def test_tsv_and_parquet_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = tmp_path / "c.tsv"
    tsv.write_text('id\ttext\tpayload\na\tfirst text\t{"k": 1}\n\nb\tsecond text\t\n')
    docs = list(Corpus(tsv).docs())
    assert [(d.row, d.id, d.text, d.payload) for d in docs] == [
        (1, "a", "first text", {"k": 1}),
        (2, "b", "second text", None),
    ]
    assert Corpus(tsv).count() == 2
    pq.write_table(
        pa.table({"id": [1, 2, 3], "text": ["x", "y", "z"], "payload": ['{"a": 1}', None, '{"c": 3}']}),
        tmp_path / "c.parquet",
    )
    pdocs = list(Corpus(tmp_path / "c.parquet").docs(skip=1))
    assert [(d.row, d.id, d.payload) for d in pdocs] == [(2, "2", None), (3, "3", {"c": 3})]
    assert Corpus(tmp_path / "c.parquet").count() == 3


@pytest.mark.parametrize(
    "name, content, where, what",
    [
        ("a.jsonl", '{"id": "a", "text": "ok"}\n\n{"id": "b", "text": \n', ":3:", "invalid JSON"),
        ("b.jsonl", '{"id": "a", "text": "ok"}\n{"id": "b"}\n', ":2:", "missing field 'text'"),
        ("c.jsonl", '{"id": "a", "text": "ok", "payload": [1]}\n', ":1:", "'payload' must be a JSON object"),
        ("d.jsonl", '{"id": null, "text": "ok"}\n', ":1:", "'id' must be"),
        ("e.jsonl", '{"id": "a", "text": "  "}\n', ":1:", "'text' must be a non-empty"),
        ("f.tsv", "id\ttext\na\tone\nb\ttwo\textra\n", ":3:", "expected 2 tab-separated fields"),
        ("g.tsv", "ident\tbody\na\tone\n", ":1:", "header must name 'id' and 'text'"),
        ("h.tsv", "id\ttext\tpayload\na\tone\t{oops\n", ":2:", "'payload' is not valid JSON"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, name, content, where, what):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as err:
        list(Corpus(path).docs())
    assert f"{name}{where}" in err.value.message and what in err.value.message


def test_corpus_file_errors(tmp_path):
    with pytest.raises(NotFound, match="not found"):
        Corpus(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("id,text\n")
    with pytest.raises(InvalidInput, match="unknown format"):
        Corpus(tmp_path / "x.csv")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1], "body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataFormatError, match="needs columns 'id' and 'text'"):
        list(Corpus(tmp_path / "p.parquet").docs())


def test_cli_build_stats_search_list_drop(tmp_path, tiny_bi_dir, capsys):
    from pairsmith.cli.main import main

    corpus = _write_jsonl(tmp_path / "c.jsonl", 80)
    home = str(tmp_path / "home")
    base = ["--home", home]
    assert (
        main(
            [
                "index",
                "build",
                "--corpus",
                str(corpus),
                "--name",
                "cli",
                "--model",
                str(tiny_bi_dir),
                "--no-progress",
                *base,
            ]
        )
        == 0
    )
    assert "80 vectors" in capsys.readouterr().out
    assert main(["index", "stats", "cli", *base]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 80 and stats["metric"] == "cosine"
    from pairsmith.encoders.onnx_quant import choose_engine

    if choose_engine().variant.startswith("int8"):  # built with backend auto, the default: int8 vectors
        assert "+qint8_static_" in stats["encoder_fingerprint"]
    # search encodes with the engine the index was built with (read from its fingerprint)
    assert main(["index", "search", "cli", _texts(80)[5], "-k", "2", "--json", *base]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main(["index", "list", *base]) == 0
    assert "cli" in capsys.readouterr().out
    assert main(["index", "stats", "nope", *base]) == 3  # NOT_FOUND exit code
    assert main(["index", "build", "--corpus", str(tmp_path / "none.jsonl"), "--name", "x", *base]) == 3
    assert main(["index", "build", "--corpus", str(corpus), "--name", "Bad/Name", *base]) == 2
    assert main(["index", "drop", "cli", "--yes", *base]) == 0
    assert main(["index", "stats", "cli", *base]) == 3


def test_engine_mismatch_refusal_says_how_to_rebuild(tmp_path):
    with IndexStore(tmp_path) as store:
        store.create("int8", dim=4, encoder_fingerprint="abc+qint8_static_avx2", encoder_id="m")
        store.create("fp32", dim=4, encoder_fingerprint="abc", encoder_id="m")
        with pytest.raises(FailedPrecondition) as err:
            store.check_encoder("int8", "abc")  # same model, fp32 engine
        msg = str(err.value)
        assert "qint8_static_avx2 vectors of the same model" in msg and "fp32 ones" in msg
        assert "pairsmith index build --name int8 --corpus FILE --model MODEL --backend torch" in msg
        assert "serve it with the engine it was built with (--backend auto)" in msg
        with pytest.raises(FailedPrecondition, match="--backend auto\\) or serve it .*--backend torch"):
            store.check_encoder("fp32", "abc+qint8_static_avx2")
        with pytest.raises(FailedPrecondition, match="serve the same model or rebuild"):
            store.check_encoder("fp32", "other-model")
        store.check_encoder("fp32", "abc")  # agreeing fingerprints: no error


def test_demo_corpus_is_packaged_and_valid():
    path = REPO / "service" / "demo" / "corpus.jsonl"
    docs = list(Corpus(path).docs())
    assert 50 <= len(docs) <= 100
    assert len({d.id for d in docs}) == len(docs)


@pytest.mark.slow
def test_kill_9_during_cli_build_then_rerun_completes(tmp_path, tiny_bi_dir):
    corpus = _write_jsonl(tmp_path / "c.jsonl", 3000)
    home = tmp_path / "home"
    cmd = [
        sys.executable,
        "-m",
        "pairsmith",
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--name",
        "k9",
        "--model",
        str(tiny_bi_dir),
        "--chunk-docs",
        "100",
        "--no-progress",
        "--home",
        str(home),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = home / "indexes" / "k9" / "store.sqlite"
    done = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db_path.exists():
                try:
                    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
                        row = db.execute("SELECT value FROM meta WHERE key = 'user:build'").fetchone()
                    done = json.loads(row[0])["rows_done"] if row else 0
                except sqlite3.OperationalError:
                    pass
            if done >= 300:
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 300 <= done < 3000, "the build should have been killed midway"
    assert subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0
    with IndexStore(home) as store:
        assert store.get("k9").count == 3000  # ids are the primary key: 3000 rows = no duplicates
        assert json.loads(store.read_meta("k9", "build"))["done"] is True
        hits = store.search("k9", np.ones((1, store.get("k9").dim), np.float32), 5)
        assert len(hits[0]) == 5


def test_ray_encoder_actors_run_the_drivers_engine(tiny_bi_dir):
    """An index built with the default engine (auto: int8 on an x86 CPU) on Ray: the actors load the
    driver's variant, not fp32 (``backend="onnx"`` alone), so their fingerprint agrees."""
    from pairsmith.encoders import BiEncoder
    from pairsmith.service.ray_build import actor_engine
    from pairsmith.service.ray_engine import EncoderActor

    for backend in ("auto", "torch"):
        driver = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend=backend)
        actor = EncoderActor(
            str(tiny_bi_dir),
            **actor_engine(driver),
            fingerprint=driver.fingerprint,
            batch_tokens=512,
            device="cpu",
        )
        out = actor({"text": np.array(_texts(4)), "id": np.arange(4)})
        np.testing.assert_allclose(out["vector"], driver.encode(_texts(4)).vectors, atol=1e-5)
