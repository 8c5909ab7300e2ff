"""``pairsmith train embedding`` (distill/embedding.py): losses, a tiny run through the CLI, serving.

Tiny random BERT + synthetic sentences written here (never shared/data); a real gRPC server on
127.0.0.1 port 0 serves the trained multi-layer model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairsmith.distill.embedding import contrastive_loss
from pairsmith.distill.losses import CosineMSELoss
from pairsmith.encoders import BiEncoder

WORDS = ["cat", "dog", "rain", "sun", "music", "river", "bread", "train", "snow", "code", "tree", "boat"]


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """Sentence pairs whose score is the word overlap (0-5): a target a tiny model can move towards."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a = list(rng.choice(WORDS, 5, replace=False))
        keep = int(rng.integers(0, 6))
        b = a[:keep] + list(rng.choice([w for w in WORDS if w not in a], 5 - keep, replace=False))
        rows.append((" ".join(a), " ".join(rng.permutation(b)), float(keep)))
    return rows


def test_contrastive_loss_is_in_batch_cross_entropy_with_duplicates_masked():
    torch.manual_seed(0)
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    ia, ib = np.array([0, 1, 2, 3]), np.array([10, 11, 12, 13])
    sim = 20.0 * F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T
    want = 0.5 * (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.T, torch.arange(4)))
    assert torch.allclose(contrastive_loss(u, v, ia, ib, 20.0), want)
    # rows 0 and 1 share their question: neither is the other's negative
    ia2 = np.array([0, 0, 2, 3])
    sim2 = sim.clone()
    sim2[0, 1] = sim2[1, 0] = float("-inf")
    want2 = 0.5 * (F.cross_entropy(sim2, torch.arange(4)) + F.cross_entropy(sim2.T, torch.arange(4)))
    assert torch.allclose(contrastive_loss(u, v, ia2, ib, 20.0), want2)
    assert not torch.allclose(want2, want)


def test_cosine_loss_is_mse_of_cosine():
    u, v = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(CosineMSELoss()(u, v, torch.tensor([0.5, 1.0])), torch.tensor(0.125))


def _mse_on(model_dir: str, rows) -> float:
    enc = BiEncoder.load(model_dir, device="cpu", backend="torch")
    a = enc.encode([r[0] for r in rows]).vectors
    b = enc.encode([r[1] for r in rows]).vectors
    return float(np.mean(((a * b).sum(1) - np.array([r[2] for r in rows]) / 5.0) ** 2))


@pytest.fixture(scope="module")
def trained(tiny_bi_dir, tmp_path_factory) -> Path:
    from pairsmith.cli.main import main

    root = tmp_path_factory.mktemp("train-emb")
    data = root / "pairs.tsv"
    data.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in _pairs(96)))
    out = root / "run"
    rc = main(
        [
            "train", "embedding", "--model", str(tiny_bi_dir), "--pooling", "multi-layer",
            "--data", str(data), "--score-range", "0,5", "--epochs", "3", "--batch-size", "16",
            "--lr", "1e-3", "--pooler-lr", "3e-3", "--latents", "4", "--head-dim", "8",
            "--checkpoint-steps", "5", "--seed", "3", "--threads", "1", "--no-progress",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    return out


def test_tiny_training_run_lowers_the_loss_and_writes_its_artifacts(trained, tiny_bi_dir):
    rows = _pairs(96)
    before, after = _mse_on(str(tiny_bi_dir), rows), _mse_on(str(trained / "model"), rows)
    assert after < 0.7 * before, (before, after)  # 18 steps at lr 1e-3 on 96 pairs: a clear drop
    rep = json.loads((trained / "report.json").read_text())
    assert rep["loss"] == "cosine" and rep["train_pairs"] == 96 and rep["fit"]["steps"] == 18
    assert rep["pooler_params"] > 0 and rep["fit"]["best_step"] is None  # final weights, no selection
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["pooling"] == "multi-layer" and cfg["fit"]["seed"] == 3 and cfg["sizes"]["n_latents"] == 4
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["step-10", "step-15"]  # every 5 steps, the last two kept
    # the pooler itself was trained: its zero-initialised output layer moved
    from safetensors.torch import load_file

    w = load_file(str(trained / "model" / "1_LayerPooling" / "model.safetensors"))
    assert w["to_out.weight"].abs().sum() > 0


def test_unscored_pairs_train_contrastive(tiny_bi_dir, tmp_path):
    from pairsmith.distill.embedding import TrainEmbeddingConfig, train_embedding
    from pairsmith.distill.fit_config import FitConfig

    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{a}\t{b}\n" for a, b, _ in _pairs(40)))
    cfg = TrainEmbeddingConfig(
        model=str(tiny_bi_dir),
        pooling="last-layer",
        data=str(data),
        fit=FitConfig(epochs=1, batch_size=8, lr=1e-4, max_length=32, seed=1),
    )
    rep = train_embedding(cfg, tmp_path / "run", device="cpu", progress=False)
    assert rep["loss"] == "contrastive" and rep["fit"]["steps"] == 5
    assert (
        json.loads((tmp_path / "run" / "model" / "1_LayerPooling" / "config.json").read_text())["kind"]
        == "last-layer"
    )


def test_served_trained_model_answers_embed_and_search(trained, tmp_path):
    from pairsmith.service.config import ServeConfig
    from pairsmith.service.server import ServerThread
    from tests.service_util import pb, stub_for

    model = str(trained / "model")
    bi = BiEncoder.load(model, device="cpu", backend="torch")
    texts = ["cat dog rain", "a much longer sentence about music and rivers and boats", "x"]
    st = ServerThread(
        ServeConfig(backend="torch", model=model, host="127.0.0.1", port=0, data_dir=tmp_path / "d")
    ).start()
    ch, stub = stub_for(st.target)
    try:
        r = stub.Embed(pb.EmbedRequest(texts=texts))
        got = np.stack([np.frombuffer(e.vector, dtype="<f4") for e in r.embeddings])
        np.testing.assert_allclose(got, bi.encode(texts).vectors, atol=1e-5)
        assert r.dim == bi.dim
        stub.CreateIndex(pb.CreateIndexRequest(name="ml"))
        items = [pb.UpsertItem(id=f"d{i}", text=t) for i, t in enumerate(texts)]
        stub.Upsert(iter([pb.UpsertRequest(index="ml", items=items)]), timeout=60)
        hits = stub.Search(pb.SearchRequest(index="ml", text=texts[1], top_k=3)).hits
        assert hits[0].id == "d1" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    finally:
        ch.close()
        st.stop()


def test_never_worse_than_the_start(tmp_path):
    """With --dev the start is scored first and kept: a fit that cannot beat it saves the start."""
    import json

    from pairsmith.cli.main import main
    from pairsmith.encoders import BiEncoder
    from tests.test_distill import _start_dev
    from tests.tiny import make_tiny_bi_encoder

    start = make_tiny_bi_encoder(tmp_path / "start", seed=5)
    dev = _start_dev(start, tmp_path / "dev.tsv")
    rows = [f"cat runs fast {i}\tdog eats food {i}\t{i % 5}" for i in range(16)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    argv = ["train", "embedding", "--model", str(start), "--data", str(tmp_path / "train.tsv"),
            "--score-range", "0,5", "--dev", str(dev), "--epochs", "2", "--lr", "1e-2", "--batch-size", "8",
            "--max-length", "32", "--device", "cpu", "--no-progress", "--require-improvement",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 3
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["improved"] is False and rep["best_score"] == rep["start_score"] >= rep["trained_score"]
    texts = ["a man plays guitar", "dog eats food"]
    a = BiEncoder.load(str(start), device="cpu").encode(texts, normalize=False).vectors
    b = BiEncoder.load(str(tmp_path / "out" / "model"), device="cpu").encode(texts, normalize=False).vectors
    np.testing.assert_array_equal(a, b)
