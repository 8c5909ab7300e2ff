from __future__ import annotations

import numpy as np
import pytest

from pairsmith.encoders import Activation, BiEncoder, CrossEncoder, Pooling, resolve_model
from pairsmith.errors import InvalidInput, NotFound

SENTS = [
    "A man is playing a guitar.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "Stocks rallied sharply for three months in anticipation of a rebound in the second half of the year.",
    "",
    "Ünïcödé tëxt wörks töö — 東京",
]


def test_default_matches_sentence_transformers(default_bi):
    ours = default_bi.encode(SENTS, batch_size=4).vectors
    ref = default_bi.st_model.encode(SENTS, normalize_embeddings=True, batch_size=4)
    assert ours.shape == (len(SENTS), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_alone_equals_in_padded_batch(default_bi):
    batch = default_bi.encode(SENTS, batch_size=len(SENTS)).vectors
    for i, s in enumerate(SENTS):
        alone = default_bi.encode([s]).vectors[0]
        assert np.abs(alone - batch[i]).max() < 1e-5, s


def test_truncation_reported(default_bi):
    long = "word " * 400
    emb = default_bi.encode(["short", long])
    assert emb.truncated.tolist() == [False, True]
    assert emb.token_counts[1] == default_bi.max_length


def test_token_budget_batches_do_not_change_results(default_bi):
    a = default_bi.encode(SENTS, batch_size=32).vectors
    b = default_bi.encode(SENTS, batch_size=32, max_tokens=40).vectors
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_normalize_flag(tiny_bi_dir):
    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
    raw = enc.encode(SENTS[:3], normalize=False).vectors
    unit = enc.encode(SENTS[:3], normalize=True).vectors
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_pooling_modes_match_their_formula_and_are_batch_invariant(tiny_bi_dir, pooling):
    """Each mode recomputed from the backbone's token states: catches a mode mapped to another."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", pooling=pooling, backend="torch")
    texts = SENTS[:4]
    batch = enc.encode(texts, normalize=False).vectors
    alone = np.stack([enc.encode([s], normalize=False).vectors[0] for s in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    backbone = tiny_bi_dir.parent / (tiny_bi_dir.name + "-backbone")
    hf, tok = AutoModel.from_pretrained(str(backbone)).eval(), AutoTokenizer.from_pretrained(str(backbone))
    feats = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = hf(**feats).last_hidden_state  # (B, T, H)
    m = feats["attention_mask"].bool()
    if pooling is Pooling.MEAN:
        want = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    elif pooling is Pooling.CLS:
        want = h[:, 0]
    elif pooling is Pooling.MAX:
        want = h.masked_fill(~m[..., None], -1e9).max(1).values
    else:
        want = h[torch.arange(len(texts)), m.sum(1) - 1]
    np.testing.assert_allclose(batch, want.numpy(), atol=1e-5)


def test_plain_transformer_dir_gets_pooling(tiny_bi_dir):
    backbone = tiny_bi_dir.parent / (tiny_bi_dir.name + "-backbone")
    enc = BiEncoder.load(str(backbone), device="cpu", pooling=Pooling.MAX, backend="torch")
    assert enc.encode(["x y"]).vectors.shape == (1, 32)


def test_bad_inputs():
    with pytest.raises(NotFound, match="does not exist"):
        resolve_model("./no/such/model")
    with pytest.raises(NotFound, match="hub is off"):
        resolve_model("someorg/somemodel")
    with pytest.raises(InvalidInput, match="pooling"):
        Pooling.parse("median")


def test_encode_rejects_non_strings(tiny_bi_dir):
    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
    with pytest.raises(InvalidInput, match=r"texts\[1\]"):
        enc.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="one string"):
        enc.encode("just a string")  # type: ignore[arg-type]


def test_cross_encoder_matches_sentence_transformers(tiny_cross_dir):
    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    pairs = [(SENTS[0], SENTS[2]), (SENTS[1], SENTS[3]), ("a", "b")]
    ours = ce.score(pairs).values
    ref = ce.st_model.predict(pairs)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    raw = ce.score(pairs, activation=Activation.RAW).values
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), ours, atol=1e-5)


def test_cross_encoder_symmetric_averages_orders(tiny_cross_dir):
    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    pairs = [(SENTS[0], SENTS[2]), (SENTS[1], SENTS[3])]
    ab = ce.score(pairs).values
    ba = ce.score([(b, a) for a, b in pairs]).values
    sym = ce.score(pairs, symmetric=True).values
    np.testing.assert_allclose(sym, (ab + ba) / 2, atol=1e-6)


def test_cross_encoder_refuses_bi_encoder_dir(tiny_bi_dir):
    with pytest.raises(InvalidInput, match="bi-encoder"):
        CrossEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
    ce = CrossEncoder.from_backbone(str(tiny_bi_dir), device="cpu", max_length=32)
    assert ce.score([("a", "b")]).values.shape == (1,)


@pytest.mark.parametrize("saved_pooler", [False, True])
def test_from_backbone_identity_pooler_only_when_checkpoint_lacks_it(tmp_path, saved_pooler):
    import torch
    from safetensors.torch import load_file

    from tests.tiny import make_tiny_backbone

    d = make_tiny_backbone(tmp_path / "bb", seed=3, pooler=saved_pooler)
    ce = CrossEncoder.from_backbone(str(d), device="cpu", max_length=32)
    dense = ce.st_model.model.base_model.pooler.dense
    eye = torch.eye(dense.in_features)
    if saved_pooler:
        saved = load_file(str(d / "model.safetensors"))
        key = next(k for k in saved if k.endswith("pooler.dense.weight"))
        torch.testing.assert_close(dense.weight.detach(), saved[key])
        assert not torch.equal(dense.weight.detach(), eye)
    else:
        torch.testing.assert_close(dense.weight.detach(), eye)
        assert float(dense.bias.detach().abs().max()) == 0.0


def test_from_backbone_says_whether_the_head_is_new_or_loaded(tiny_bi_dir, tmp_path, caplog):
    """A bi-encoder backbone gets a new head; a trained cross-encoder as --init keeps its own (and says so)."""
    import logging

    with caplog.at_level(logging.INFO, logger="pairsmith.encoders.cross_encoder"):
        ce = CrossEncoder.from_backbone(str(tiny_bi_dir), device="cpu", seed=0)
    assert "newly initialised" in caplog.text and "starts from" not in caplog.text
    ce.save(tmp_path / "ce")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pairsmith.encoders.cross_encoder"):
        again = CrossEncoder.from_backbone(str(tmp_path / "ce"), device="cpu", seed=1)
    assert "starts from the checkpoint's classification head" in caplog.text
    assert "newly initialised" not in caplog.text
    pairs = [("a cat", "a dog"), ("one", "two three")]
    np.testing.assert_allclose(again.score(pairs).values, ce.score(pairs).values, atol=1e-6)  # head kept
