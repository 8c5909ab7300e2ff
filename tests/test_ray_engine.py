"""The Ray engine (``--engine ray``): index builds equal to the local engine, resuming, pair scoring.

Ray runs for real: a local Ray with 2 CPUs started once for this module (``ray.init`` costs
~7-15 s on these boxes, so the tests share it; the engine reuses an initialised Ray). Without
the ``distributed`` extra the Ray tests skip with the install hint; the "Ray missing" and
"local engine never imports Ray" tests run either way.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pairsmith.errors import DataFormatError, FailedPrecondition
from pairsmith.service.ray_engine import RAY_HINT, RayOptions, require_ray
from pairsmith.service.store.build import BuildConfig, build_index
from pairsmith.service.store.index_store import IndexStore

REPO = Path(__file__).resolve().parent.parent
# A stalled Ray job (e.g. actors holding every CPU so read tasks never run) must fail, not hang.
pytestmark = pytest.mark.timeout(420)
WORDS = "river engine bread planet violin glacier tax owl lamp cedar harbor copper".split()


def _docs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        text = f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} {WORDS[(i * 7 + 3) % 12]} note {i % 37} item {i}"
        out.append({"id": f"doc-{i}", "text": text, "payload": {"n": i, "tag": WORDS[i % 3]}})
    return out


def _write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _items(home: Path, name: str) -> dict[str, str | None]:
    """id -> payload JSON, straight from the index's SQLite file."""
    conn = sqlite3.connect(home / "indexes" / name / "store.sqlite")
    try:
        return dict(conn.execute("SELECT id, payload FROM items").fetchall())
    finally:
        conn.close()


# --------------------------------------------------------------------------- without Ray


def test_ray_missing_names_the_extra(monkeypatch, tmp_path, tiny_bi_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(FailedPrecondition, match=r'pip install "pairsmith\[distributed\]"'):
        require_ray()
    from pairsmith.cli.main import main

    corpus = _write(tmp_path / "c.jsonl", _docs(5))
    args = ["index", "build", "--corpus", str(corpus), "--name", "x", "--home", str(tmp_path / "h")]
    rc = main([*args, "--model", str(tiny_bi_dir), "--engine", "ray", "--no-progress"])
    assert rc != 0
    assert not (tmp_path / "h" / "indexes" / "x").exists()  # refused before anything was created


def test_local_engine_never_imports_ray(tmp_path, tiny_bi_dir):
    corpus = _write(tmp_path / "c.jsonl", _docs(8))
    code = (
        "import sys\n"
        "from pairsmith.cli.main import main\n"
        "import pairsmith.service.ray_build, pairsmith.distill.dse, pairsmith.distill.trans_encoder\n"
        f"rc = main(['index', 'build', '--corpus', {str(corpus)!r}, '--name', 'x', '--home', {str(tmp_path)!r},"
        f" '--model', {str(tiny_bi_dir)!r}, '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "print('RAY' if 'ray' in sys.modules else 'NORAY')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NORAY"


# --------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def ray_local():
    try:
        ray = require_ray(local=True)
    except FailedPrecondition:
        pytest.skip(f"Ray is not installed: {RAY_HINT}")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_bi(tiny_bi_dir):
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")


def _cfgs(corpus, name, tiny_bi_dir, **kw):
    from pairsmith.service.ray_build import RayBuildConfig

    shard_docs = kw.pop("shard_docs", 64)
    cfg = BuildConfig(corpus, name, model_ref=str(tiny_bi_dir), chunk_docs=50, **kw)
    return cfg, RayBuildConfig(shard_docs=shard_docs, ray=RayOptions(actors=2))


class _Stop(Exception):
    pass


def test_ray_build_equals_local_build_and_resumes(ray_local, tmp_path, tiny_bi, tiny_bi_dir):
    """Many files, interrupted after two shards, resumed: same ids, payloads and Flat results as local."""
    from pairsmith.service.ray_build import build_index_ray

    docs = _docs(300)
    docs[250] = {**docs[250], "id": "doc-10"}  # a duplicate id: the later record wins in both engines
    whole = _write(tmp_path / "all.jsonl", docs)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k, (lo, hi) in enumerate([(0, 130), (130, 131), (131, 300)]):  # uneven files, one of one record
        _write(parts / f"part-{k}.jsonl", docs[lo:hi])
    home = tmp_path / "home"
    cfg, rcfg = _cfgs(parts, "ray", tiny_bi_dir)  # shards: 64, 64, 2 | 1 | 64, 64, 41

    def stop_after_two(rows_done: int) -> None:
        if rows_done >= 128:
            raise _Stop

    with IndexStore(home) as store:
        with pytest.raises(_Stop):
            build_index_ray(store, tiny_bi, cfg, rcfg, progress=False, on_shard=stop_after_two)
    assert len(_items(home, "ray")) == 128  # two shards durable in SQLite, nothing after them
    with IndexStore(home) as store:
        report = build_index_ray(store, tiny_bi, cfg, rcfg, progress=False)
        assert report.docs_resumed == 128 and report.docs_total == 300
        assert report.docs_encoded <= 300 - 128  # ingested shards are never encoded again
        build_index(store, tiny_bi, BuildConfig(whole, "local", chunk_docs=50), progress=False)
        assert report.info.count == store.get("local").count == 299
        assert _items(home, "ray") == _items(home, "local")  # same ids, same payloads
        q = tiny_bi.encode([d["text"] + " extra" for d in docs[::15]], normalize=True).vectors
        for a, b in zip(store.search("local", q, 10), store.search("ray", q, 10), strict=True):
            assert [h.id for h in a] == [h.id for h in b]
            # fp32 encodes of the same text in differently composed batches: equal to ~1e-6
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
        assert build_index_ray(store, tiny_bi, cfg, rcfg, progress=False).docs_encoded == 0  # finished
    # The same format the server serves: manifest + checksummed snapshot, reopened from disk.
    manifest = json.loads((home / "indexes" / "ray" / "manifest.json").read_text())
    assert manifest["count"] == 299 and manifest["snapshot"]["ntotal"] == 299
    with IndexStore(home) as store:
        assert store.load("ray").count == 299
        assert store.search("ray", q[:1], 1)[0][0].id == store.search("local", q[:1], 1)[0][0].id
    assert not (home / "ray-builds" / "ray").exists()  # shard files removed after success


@pytest.mark.slow  # one more Ray pipeline (~20-40 s on 2 shared cores)
def test_ray_build_ivf_recall_against_local_ivf(ray_local, tmp_path, tiny_bi, tiny_bi_dir):
    from pairsmith.service.ray_build import build_index_ray

    docs = _docs(400)
    corpus = _write(tmp_path / "c.jsonl", docs)
    home = tmp_path / "home"
    factory = "IVF8,Flat"
    with IndexStore(home) as store:
        build_index(store, tiny_bi, BuildConfig(corpus, "local", factory=factory), progress=False)
        cfg, rcfg = _cfgs(corpus, "ray", tiny_bi_dir, factory=factory, shard_docs=90)
        build_index_ray(store, tiny_bi, cfg, rcfg, progress=False)
        assert store.get("ray").factory == factory and store.get("ray").trained
        q = tiny_bi.encode([d["text"] + " query" for d in docs[::10]], normalize=True).vectors
        ra, rb = store.search("local", q, 10), store.search("ray", q, 10)
    recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(ra, rb, strict=True)])
    assert recall >= 0.99, recall


def test_ray_build_reports_bad_record_by_file_and_line(ray_local, tmp_path, tiny_bi, tiny_bi_dir):
    from pairsmith.service.ray_build import build_index_ray

    parts = tmp_path / "parts"
    parts.mkdir()
    _write(parts / "a.jsonl", _docs(10))
    bad = _docs(5)
    bad[3]["text"] = ""
    _write(parts / "b.jsonl", bad)
    cfg, rcfg = _cfgs(parts, "bad", tiny_bi_dir)
    with IndexStore(tmp_path / "home") as store:
        with pytest.raises(DataFormatError, match=r"b\.jsonl:4: 'text' must be a non-empty string"):
            build_index_ray(store, tiny_bi, cfg, rcfg, progress=False)


def test_score_pairs_equals_local_models(ray_local, tiny_bi, tiny_bi_dir, tiny_cross_dir):
    from pairsmith.encoders import Activation, CrossEncoder
    from pairsmith.service.ray_engine import score_pairs

    docs = _docs(60)
    pairs = [(docs[i]["text"], docs[(i * 7 + 1) % 60]["text"]) for i in range(60)]
    opts = RayOptions(actors=2, batch_size=16)
    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    local = ce.score(pairs, activation=Activation.RAW, symmetric=True).values
    got = score_pairs(str(tiny_cross_dir), pairs, kind="cross", activation="raw", symmetric=True, opts=opts)
    np.testing.assert_allclose(got, local, atol=1e-5)  # fp32, batches composed differently
    cos = tiny_bi.similarity([a for a, _ in pairs], [b for _, b in pairs])
    got = score_pairs(str(tiny_bi_dir), pairs, kind="bi", opts=opts)
    np.testing.assert_allclose(got, cos, atol=1e-5)
