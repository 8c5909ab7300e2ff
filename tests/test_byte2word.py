"""Byte2Word: segmentation, packing, the byte pooler, training, save/load, bi-encoder use (server too)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pairsmith.encoders.byte2word.model import BytePooler, WordEncoder
from pairsmith.encoders.byte2word.noise import NoiseConfig, add_noise, noisy_texts
from pairsmith.encoders.byte2word.tokenizer import (
    BOW,
    EOW,
    N_SPECIAL,
    SEP,
    ByteWordTokenizer,
    decode_words,
    segment,
    split_words,
)
from pairsmith.errors import FailedPrecondition, InvalidInput

TEXTS = ["a good movie , really .", "héllo wörld", "東京タワーは高いです", "", "it's   fine!!"]


# -- segmentation -------------------------------------------------------------------------------


def test_punctuation_policy_examples():
    assert split_words("good, bad") == ["good", ",", "bad"]
    assert split_words("it's") == ["it", "'", "s"]
    assert split_words("wait...what?!") == ["wait", "...", "what", "?!"]
    assert split_words("  tabs\tand\nnew  lines ") == ["tabs", "and", "new", "lines"]
    assert split_words("C++ e-mail") == ["C++", "e", "-", "mail"]  # '+' is a symbol (S*), '-' punctuation


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=4, max_value=12))
def test_segmentation_round_trips_bytes(text, cap):
    units = segment(text, cap)
    words = split_words(text)
    assert decode_words(units) == words
    assert "".join(words) == "".join(text.split())  # only whitespace is lost
    assert sum(u[0] == BOW for u in units) == sum(u[-1] == EOW for u in units) == len(words)
    for u in units:
        body = bytes(i - N_SPECIAL for i in u if i >= N_SPECIAL)
        assert 1 <= len(body) <= cap  # the byte cap holds for every chunk
        body.decode("utf-8")  # chunks end on code-point boundaries: each decodes alone


def test_no_space_script_is_capped_into_chunks():
    units = segment("東京タワーは高いです", 8)  # 10 characters x 3 bytes = 30 bytes, one "word"
    assert [len(u) for u in units] == [1 + 6, 6, 6, 6, 6 + 1]  # BOW / 2 characters per chunk / EOW
    assert decode_words(units) == ["東京タワーは高いです"]


def test_truncation_and_pairs():
    tok = ByteWordTokenizer(max_length=4, max_word_bytes=8)
    enc = tok.encode(["one two three four five", "one", ""])
    assert enc.truncated.tolist() == [True, False, False]
    assert [len(r) for r in enc.ids] == [4, 1, 1]  # an empty text is one empty word
    pairs = tok.encode_pairs([("a b c d e", "x")])
    assert (
        pairs.ids[0][-2] == (SEP,) and pairs.type_ids[0] == [0, 0, 0, 1] and pairs.truncated[0]
    )  # SEP in segment A


# -- packing ------------------------------------------------------------------------------------


def test_packing_matches_a_naive_loop():
    tok = ByteWordTokenizer(max_length=16, max_word_bytes=6)
    enc = tok.encode(TEXTS)
    batch = tok.pad(enc.ids, enc.type_ids)
    width = max(len(r) for r in enc.ids)
    byte_ids, byte_pos, cu, slots = [], [], [0], []
    for r, row in enumerate(enc.ids):
        for w, unit in enumerate(row):
            for p, b in enumerate(unit):
                byte_ids.append(b)
                byte_pos.append(p)
            cu.append(cu[-1] + len(unit))
            slots.append(r * width + w)
    ex = batch.extras
    assert ex["byte_ids"].tolist() == byte_ids and ex["byte_pos"].tolist() == byte_pos
    assert ex["cu_seqlens"].tolist() == cu and ex["word_slot"].tolist() == slots
    assert batch.attention_mask.sum(1).tolist() == [len(r) for r in enc.ids]
    assert len(byte_ids) == sum(len(u) for r in enc.ids for u in r)  # packed: no pad bytes


def _features(tok: ByteWordTokenizer, texts: list[str]) -> dict:
    enc = tok.encode(texts)
    return {k: torch.from_numpy(v) for k, v in tok.pad(enc.ids, enc.type_ids).feeds().items()}


@pytest.mark.parametrize("byte_layers", [0, 1])
def test_word_vector_is_independent_of_neighbour_lengths(byte_layers):
    torch.manual_seed(0)
    model = WordEncoder(
        d_model=16, n_layers=1, n_heads=2, d_ff=32, d_byte=16, pool_heads=2, byte_layers=byte_layers
    ).eval()
    tok = model.tokenizer
    short = _features(tok, ["a cat", "b"])
    long = _features(tok, ["extraordinarily cat", "x" * 19 + " yz"])
    with torch.no_grad():
        v1 = model.unit_vectors(short)[0, 1]  # "cat" after a 1-byte word
        v2 = model.unit_vectors(long)[0, 1]  # "cat" after a 15-byte word, other row longer
        alone = model.unit_vectors(_features(tok, ["cat"]))[0, 0]
    torch.testing.assert_close(v1, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(v2, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(alone, model.unit_vectors(_features(tok, ["cut"]))[0, 0])


def _per_word_loop(pool: BytePooler, ids, pos, cu) -> torch.Tensor:
    """Oracle: one word at a time, unpadded: its bytes through the byte layers (if any), then a plain
    softmax of the queries over them. Sized for the (d_byte 8, 2 heads of 4) poolers below."""
    x = pool.norm(pool.byte_emb(ids) + pool.pos_emb(pos))  # (T, C)
    rows = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        h = x[s:e][None]  # (1, L, C): this word alone
        for blk in pool.byte_blocks:
            h = blk(h, torch.ones(1, e - s, dtype=torch.bool))
        k = pool.k(h[0]).view(e - s, 2, 4)  # (L, H, Dh)
        v = pool.v(h[0]).view(e - s, 2, 4)
        att = torch.softmax(torch.einsum("ihd,jhd->ihj", pool.queries, k) / 2.0, -1)  # (Nq, H, L)
        rows.append(pool.out_norm(pool.out(torch.einsum("ihj,jhd->ihd", att, v).flatten())))
    return torch.stack(rows)


def test_pooler_matches_a_per_word_softmax_loop():
    torch.manual_seed(1)
    pool = BytePooler(d_byte=8, d_model=8, n_queries=2, heads=2, max_word_bytes=6).double().eval()
    feats = _features(ByteWordTokenizer(16, 6), ["ab cdefghij k"])
    ids, pos, cu = feats["byte_ids"], feats["byte_pos"], feats["cu_seqlens"]
    with torch.no_grad():
        got = pool(ids, pos, cu)  # (N, d_model)
        want = _per_word_loop(pool, ids, pos, cu)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_byte_layers_attend_within_each_word_only():
    # Self-attention over the bytes of one word at a time, no padding, against the packed batch: a
    # mask that let bytes see a neighbour word or the pad slots would change every word's vector.
    torch.manual_seed(2)
    pool = (
        BytePooler(d_byte=8, d_model=8, n_queries=2, heads=2, max_word_bytes=6, byte_layers=2).double().eval()
    )
    feats = _features(ByteWordTokenizer(16, 6), ["ab cdefghij k", "xyz"])
    ids, pos, cu = feats["byte_ids"], feats["byte_pos"], feats["cu_seqlens"]
    with torch.no_grad():
        got = pool(ids, pos, cu)  # (N, d_model)
        want = _per_word_loop(pool, ids, pos, cu)
        without = BytePooler(d_byte=8, d_model=8, n_queries=2, heads=2, max_word_bytes=6).double().eval()
        without.load_state_dict(pool.state_dict(), strict=False)  # same weights, no byte layers
        plain = without(ids, pos, cu)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert (got - plain).abs().max() > 1e-3  # the layers are used, not skipped
    with pytest.raises(InvalidInput, match="byte_layers"):
        BytePooler(d_byte=8, d_model=8, n_queries=2, heads=2, max_word_bytes=6, byte_layers=-1)


def test_byte_layers_save_load_and_onnx_parity(tmp_path):
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer
    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    cfg = Byte2WordTrainConfig(
        out=str(tmp_path / "m"), mlm_corpus="", size="tiny", batch_size=6, byte_layers=1
    )
    tr = Trainer(cfg)
    tr.pretrain(CORPUS, 3)
    tr.save(tmp_path / "m")
    from sentence_transformers import SentenceTransformer

    enc = BiEncoder.load(str(tmp_path / "m"), device="cpu", backend="torch")
    st_model = SentenceTransformer(
        str(tmp_path / "m"), device="cpu", local_files_only=True, trust_remote_code=True
    )
    first = st_model[0]
    assert first.byte_layers == 1 and len(first.pooler.byte_blocks) == 1
    feats = _features(tr.tok, TEXTS)
    with torch.no_grad():  # the saved byte layer is the trained one
        torch.testing.assert_close(
            first.eval()(dict(feats))["token_embeddings"],
            tr.encoder.eval()(dict(feats))["token_embeddings"],
            rtol=0,
            atol=0,
        )
    want = enc.encode(TEXTS).vectors
    export_onnx(str(tmp_path / "m"), ExportConfig())
    onnx = BiEncoder.load(str(tmp_path / "m"), device="cpu", backend="onnx", auto_export=False)
    np.testing.assert_allclose(onnx.encode(TEXTS).vectors, want, atol=1e-5)
    with pytest.raises(InvalidInput, match="--byte-layers"):
        Byte2WordTrainConfig(out="", mlm_corpus="", byte_layers=-1)


def test_missing_extras_is_a_clear_error():
    model = WordEncoder(d_model=16, n_layers=1, n_heads=2, d_ff=32, d_byte=16, pool_heads=2)
    ids = torch.ones((1, 3), dtype=torch.int64)
    with pytest.raises(FailedPrecondition, match="byte_ids"):
        model({"input_ids": ids, "attention_mask": ids})


# -- noiser -------------------------------------------------------------------------------------


def test_noiser_is_seeded_and_keeps_boundaries():
    texts = ["The quick brown fox , jumps !"] * 3
    cfg = NoiseConfig(swap=0.1, drop=0.1, case=0.2)
    assert noisy_texts(texts, cfg, 3) == noisy_texts(texts, cfg, 3)
    assert noisy_texts(texts, cfg, 3) != noisy_texts(texts, cfg, 4)
    assert add_noise(texts[0], NoiseConfig(), random.Random(0)) == texts[0]
    dropped = add_noise(texts[0], NoiseConfig(drop=1.0), random.Random(0))
    assert dropped == "    ,  !"  # every letter gone, spaces and punctuation kept
    assert add_noise("abcd", NoiseConfig(swap=1.0), random.Random(0)) == "badc"
    assert add_noise("abC", NoiseConfig(case=1.0), random.Random(0)) == "ABc"


# -- training, save/load, bi-encoder ------------------------------------------------------------

CORPUS = [
    "the film is a charming and funny ride",
    "a dull , tedious mess of a movie",
    "one of the best pictures of the year",
    "it never finds its footing and drags on",
    "warm performances carry the simple story",
    "the plot is thin but the jokes land",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer

    d = tmp_path_factory.mktemp("b2w")
    cfg = Byte2WordTrainConfig(out=str(d / "model"), mlm_corpus="", size="tiny", batch_size=6, lr=3e-3)
    tr = Trainer(cfg)
    losses = tr.pretrain(CORPUS, 60)
    rows = [(s, i % 2) for i, s in enumerate(CORPUS)]
    tr.finetune(rows, 5)
    tr.save(d / "model")
    return tr, losses, d / "model"


def test_tiny_model_mlm_loss_falls(tiny_run):
    _, losses, _ = tiny_run
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # Six sentences seen 60 times: the model memorises them; the start is ~ln(30522) = 10.3 nats.
    assert first > 9.0 and last < first - 2.0, (first, last)


def test_wordpiece_baseline_trains_too():
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer

    cfg = Byte2WordTrainConfig(out="", mlm_corpus="", unit="wordpiece", size="tiny", batch_size=6, lr=3e-3)
    tr = Trainer(cfg)
    losses = tr.pretrain(CORPUS, 60)
    # Same memorisation task; per-step losses swing ~1 nat with the random masks, so 1.5 nats margin.
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.5
    assert tr.mlm.slots == 1 and tr.encoder.input_embedding_params() == 30522 * 32


def test_save_load_round_trip(tiny_run):
    from sentence_transformers import SentenceTransformer

    from pairsmith.encoders.byte2word.heads import load_heads

    tr, _, path = tiny_run
    tr.encoder.eval()
    feats = _features(tr.tok, TEXTS)
    with torch.no_grad():
        want = tr.encoder(dict(feats))["token_embeddings"]
    st_model = SentenceTransformer(str(path), device="cpu", local_files_only=True, trust_remote_code=True)
    with torch.no_grad():
        got = st_model.eval()[0](dict(feats))["token_embeddings"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    heads = load_heads(path)
    for name, head in (("mlm", tr.mlm), ("classifier", tr.clf)):
        for (k, a), (_, b) in zip(head.state_dict().items(), heads[name].state_dict().items(), strict=True):
            assert torch.equal(a, b), (name, k)
    vecs = st_model.encode(TEXTS, convert_to_numpy=True)  # plain sentence-transformers encode()
    assert vecs.shape == (len(TEXTS), 32) and np.isfinite(vecs).all()


def test_bi_encoder_through_the_pipeline_and_onnx(tiny_run):
    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.byte2word.tokenizer import ByteWordTokenizer as Tok
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    _, _, path = tiny_run
    enc = BiEncoder.load(str(path), device="cpu", backend="torch")
    assert isinstance(enc.tokenizer, Tok)
    texts = [*TEXTS, "word " * 80]
    out = enc.encode(texts)
    assert out.truncated.tolist() == [False] * len(TEXTS) + [True]
    alone = np.stack([enc.encode([t]).vectors[0] for t in texts])
    np.testing.assert_allclose(out.vectors, alone, atol=1e-5)  # batching (packing) changes nothing
    export_onnx(str(path), ExportConfig())
    onnx = BiEncoder.load(str(path), device="cpu", backend="onnx", auto_export=False)
    assert isinstance(onnx.tokenizer, Tok)
    np.testing.assert_allclose(onnx.encode(texts).vectors, out.vectors, atol=1e-5)


def test_embed_and_search_on_a_real_server(tiny_run, tmp_path):
    from pairsmith.encoders import BiEncoder
    from pairsmith.service.config import ServeConfig
    from pairsmith.service.server import ServerThread
    from tests.service_util import pb, stub_for

    _, _, path = tiny_run
    bi = BiEncoder.load(str(path), device="cpu", backend="torch")
    srv = ServerThread(
        ServeConfig(backend="torch", model=str(path), host="127.0.0.1", data_dir=tmp_path)
    ).start()
    try:
        ch, s = stub_for(srv.target)
        r = s.Embed(pb.EmbedRequest(texts=CORPUS))
        got = np.stack([np.frombuffer(e.vector, dtype="<f4") for e in r.embeddings])
        want = bi.encode(CORPUS).vectors
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
        s.CreateIndex(pb.CreateIndexRequest(name="b2w"))
        items = [pb.UpsertItem(id=f"d{i}", text=t) for i, t in enumerate(CORPUS)]
        s.Upsert(iter([pb.UpsertRequest(index="b2w", items=items)]))
        hits = s.Search(pb.SearchRequest(index="b2w", text=CORPUS[2], top_k=3)).hits
        assert hits[0].id == "d2"
        ch.close()
    finally:
        srv.stop()


def test_cli_trains_on_a_task_file(tmp_path, monkeypatch):
    from pairsmith.cli.main import main
    from pairsmith.distill import byte2word as b2w

    # The report names the code the run started with: a commit made while it trains must not relabel it
    phase = {"trained": False}
    real_pretrain = b2w.Trainer.pretrain

    def pretrain(self, *a, **kw):
        phase["trained"] = True
        return real_pretrain(self, *a, **kw)

    monkeypatch.setattr(b2w.Trainer, "pretrain", pretrain)
    monkeypatch.setattr(
        b2w, "code_version", lambda: {"commit": "after00" if phase["trained"] else "before0", "dirty": False}
    )

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    task = tmp_path / "task.tsv"
    task.write_text("".join(f"{s}\t{i % 2}\n" for i, s in enumerate(CORPUS)))
    out = tmp_path / "m"
    rc = main(["train", "byte2word", "--mlm-corpus", str(corpus), "--task", str(task), "--task-dev", str(task),
               "--config", "tiny", "--max-steps", "3", "--ft-steps", "2", "--batch-size", "4", "--select", str(task),
               "--out", str(out)])  # fmt: skip
    assert rc == 0 and (out / "report.json").is_file() and (out / "modules.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["commit"] == "before0" and report["code"]["commit"] == "before0"
    bad = tmp_path / "bad.tsv"
    bad.write_text("no label here\n")
    rc = main(["train", "byte2word", "--mlm-corpus", str(corpus), "--task", str(bad), "--task-dev", str(task),
               "--config", "tiny", "--max-steps", "1", "--out", str(tmp_path / "m2")])  # fmt: skip
    assert rc == 2  # a malformed file is an InvalidInput naming file:line, not a traceback
