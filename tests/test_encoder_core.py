"""The encoder core's contracts: typed hand-offs, tokenizer/backend protocols, one pipeline,
post-processing, the fingerprint, and the three extension shapes (tests/core_examples.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pairsmith.encoders import BiEncoder
from pairsmith.encoders.pipeline import Pipeline
from pairsmith.encoders.postprocess import finalize_vectors, pair_cosine, sigmoid
from pairsmith.encoders.runtime import ModelBackend, TorchBackend
from pairsmith.encoders.source import fingerprint, resolve_model
from pairsmith.encoders.tokenize import TextTokenizer, Tokenizer
from pairsmith.encoders.types import ModelOutput, OutputKind, TokenBatch
from pairsmith.errors import InvalidInput
from pairsmith.vectors import normalize_rows

GOLDEN = Path(__file__).parent / "golden" / "default_embeddings.json"


# -- golden numbers ------------------------------------------------------------------------------


def test_default_model_matches_stored_golden_embeddings(default_bi):
    """Stored numbers, not the same library in the same process: catches a changed pooling,
    normalisation, tokenizer setting or weight file. Made by tests/golden/make_golden.py."""
    gold = json.loads(GOLDEN.read_text())
    got = default_bi.encode(gold["sentences"]).vectors
    want = np.asarray(gold["vectors"], dtype=np.float32)
    assert got.shape == want.shape
    # 1e-5: float32 summation order differs across BLAS builds/ISAs; golden values differ at ~1e-7.
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- types ---------------------------------------------------------------------------------------


def test_token_batch_checks_shapes_and_feeds_every_array():
    ids = np.ones((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="position_ids"):
        TokenBatch(ids, ids, None, position_ids=np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="attention_bias"):
        TokenBatch(ids, ids, None, attention_bias=np.zeros((2, 3, 3), np.float32))
    b = TokenBatch(
        ids,
        ids,
        None,
        position_ids=ids,
        attention_bias=np.zeros((2, 1, 3, 3), np.float32),
        extras={"bytes": np.arange(5)},
    )
    assert set(b.feeds()) == {"input_ids", "attention_mask", "position_ids", "attention_bias", "bytes"}


def test_grouped_output_offsets():
    out = ModelOutput(OutputKind.GROUPED_SCORES, np.arange(5, dtype=np.float32), np.array([0, 2, 2, 5]))
    assert [g.tolist() for g in out.groups()] == [[0, 1], [], [2, 3, 4]]
    with pytest.raises(ValueError):
        ModelOutput(OutputKind.GROUPED_SCORES, np.arange(5, dtype=np.float32), np.array([0, 2]))


# -- post-processing -----------------------------------------------------------------------------


def test_normalize_rows_handles_huge_and_tiny_values_and_refuses_zero():
    x = np.array([[1e38, 1e38, 0.0], [1e-30, 0.0, 1e-30], [3.0, 4.0, 0.0]], dtype=np.float32)
    y = normalize_rows(x)
    np.testing.assert_allclose(y[0], [2**-0.5, 2**-0.5, 0], atol=1e-6)
    np.testing.assert_allclose(y[1], [2**-0.5, 0, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(y[2], [0.6, 0.8, 0], atol=1e-6)
    with pytest.raises(InvalidInput, match=r"vectors\[1\]: a zero vector has no direction"):
        normalize_rows(np.array([[1.0, 0], [0, 0]], np.float32))
    with pytest.raises(InvalidInput, match=r"vectors\[0\]: holds NaN"):
        normalize_rows(np.array([[np.nan, 1.0], [1.0, 1.0]], np.float32))


def test_dimensions_prefix_then_normalise_and_sigmoid_is_stable():
    x = np.array([[3.0, 4.0, 12.0]], np.float32)
    np.testing.assert_allclose(finalize_vectors(x, dimensions=2, normalize=True), [[0.6, 0.8]], atol=1e-6)
    np.testing.assert_allclose(finalize_vectors(x, dimensions=2, normalize=False), [[3.0, 4.0]])
    with pytest.raises(InvalidInput, match="dimensions"):
        finalize_vectors(x, dimensions=4, normalize=True)
    with np.errstate(over="raise"):
        np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(
        pair_cosine(np.array([[1.0, 0]]), np.array([[2.0, 2.0]])), [2**-0.5], atol=1e-6
    )


def test_encode_dimensions_in_process_equals_prefix_of_full(default_bi):
    full = default_bi.encode(["a cat sits on the mat"], normalize=False).vectors
    small = default_bi.encode(["a cat sits on the mat"], dimensions=32).vectors
    want = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(small, want, atol=1e-6)
    assert abs(np.linalg.norm(small) - 1) < 1e-6


# -- planner and pipeline ------------------------------------------------------------------------


def test_pipeline_keeps_input_order_whatever_the_plan(default_bi):
    texts = ["short", "a much longer sentence about nothing at all, really", "mid length text", "x"]
    # Reference: each text on its own (a one-row call cannot be reordered), not another batched call.
    ref = np.stack([default_bi.encode([t]).vectors[0] for t in texts])
    for rows in (2, 3, 32):
        np.testing.assert_allclose(default_bi.encode(texts, batch_size=rows).vectors, ref, atol=1e-5)


def test_protocols_are_what_the_core_depends_on(default_bi):
    assert isinstance(default_bi.tokenizer, Tokenizer)
    assert isinstance(default_bi.pipeline.backend, ModelBackend)
    with pytest.raises(Exception, match="predict"):
        default_bi.pipeline.backend.predict(default_bi.tokenizer.pad([[101, 102]], [[0, 0]]))
    default_bi.pipeline.backend.health()
    default_bi.pipeline.health()


def test_tokenizer_from_dir_equals_the_transformers_one(tiny_bi_dir):
    from transformers import AutoTokenizer

    a = TextTokenizer(AutoTokenizer.from_pretrained(str(tiny_bi_dir)), 16)
    b = TextTokenizer.from_dir(tiny_bi_dir, 16)
    texts = ["Hello world!", "word " * 40, ""]
    ea, eb = a.encode(texts), b.encode(texts)
    assert ea.ids == eb.ids and ea.truncated.tolist() == eb.truncated.tolist() == [False, True, False]
    assert a.pad_id == b.pad_id and a.uses_type_ids == b.uses_type_ids
    pa, pb = a.encode_pairs([("a b", "c d")]), b.encode_pairs([("a b", "c d")])
    assert pa.type_ids == pb.type_ids and 1 in pa.type_ids[0]


# -- fingerprint -----------------------------------------------------------------------------------


def test_fingerprint_sees_every_module_weight(tiny_bi_dir, tmp_path):
    """Replacing a Dense module's weights changed the vectors but not the fingerprint before."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    st = SentenceTransformer(str(tiny_bi_dir), device="cpu")
    torch.manual_seed(1)
    dense_model = SentenceTransformer(modules=[*st._modules.values(), Dense(32, 8)], device="cpu")
    a, b = tmp_path / "a", tmp_path / "b"
    dense_model.save(str(a))
    shutil.copytree(a, b)
    dense_dir = next(p for p in b.iterdir() if p.name.endswith("_Dense"))
    torch.manual_seed(2)
    SentenceTransformer(modules=[*st._modules.values(), Dense(32, 8)], device="cpu").save(str(tmp_path / "c"))
    shutil.copy(next((tmp_path / "c").glob("*_Dense/model.safetensors")), dense_dir / "model.safetensors")
    va = BiEncoder.load(str(a), device="cpu", backend="torch").encode(["a cat"]).vectors
    vb = BiEncoder.load(str(b), device="cpu", backend="torch").encode(["a cat"]).vectors
    assert float(va[0] @ vb[0]) < 0.99  # the vectors really changed
    assert fingerprint(a) != fingerprint(b)


# -- the three extension shapes ------------------------------------------------------------------


def _save_all_layer_model(tiny_bi_dir: Path, out: Path) -> Path:
    from sentence_transformers import SentenceTransformer

    from tests.core_examples import AllLayerPooler

    st = SentenceTransformer(str(tiny_bi_dir), device="cpu")
    body = st._modules["0"]
    body.auto_model.config.output_hidden_states = True
    n_layers = body.auto_model.config.num_hidden_layers + 1
    SentenceTransformer(modules=[body, AllLayerPooler(32, n_layers)], device="cpu").save(str(out))
    return out


def test_all_layer_pooler_runs_saves_loads_and_exports(tiny_bi_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    d = _save_all_layer_model(tiny_bi_dir, tmp_path / "ml")
    enc = BiEncoder.load(str(d), device="cpu", backend="torch")
    texts = ["a cat sits", "Hi", "the quick brown fox jumps over the lazy dog"]
    ours = enc.encode(texts).vectors
    plain = SentenceTransformer(str(d), device="cpu", trust_remote_code=True).encode(
        texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(ours, plain, atol=1e-5)  # plain sentence-transformers loads it too
    # It really reads every layer: recompute the weighted mix from the backbone's hidden states.
    import torch
    from transformers import AutoModel, AutoTokenizer

    hf = AutoModel.from_pretrained(str(d)).eval()
    tok = AutoTokenizer.from_pretrained(str(d))
    feats = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = torch.stack(hf(**feats, output_hidden_states=True).hidden_states)  # (L, B, T, H)
    m = feats["attention_mask"][None, :, :, None].float()
    means = (hs * m).sum(2) / m.sum(2)  # (L, B, H)
    w = torch.softmax(torch.linspace(-1.0, 1.0, hs.shape[0]), 0)[:, None, None]
    want = torch.nn.functional.normalize((w * means).sum(0), dim=-1).numpy()
    np.testing.assert_allclose(ours, want, atol=1e-5)
    export_onnx(str(d), ExportConfig())
    onnx = BiEncoder.load(str(d), device="cpu", backend="onnx")
    np.testing.assert_allclose(onnx.encode(texts).vectors, ours, atol=1e-5)


def test_untrusted_module_class_is_refused_not_imported(tiny_bi_dir, tmp_path):
    from pairsmith.errors import FailedPrecondition

    d = _save_all_layer_model(tiny_bi_dir, tmp_path / "ml")
    mods = json.loads((d / "modules.json").read_text())
    mods[1]["type"] = "evil_pkg.Pooler"
    (d / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(FailedPrecondition, match="evil_pkg.Pooler"):
        BiEncoder.load(str(d), device="cpu", backend="torch")


def test_non_wordpiece_tokenizer_runs_through_pipeline_and_onnx(tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from tests.core_examples import CharEmbedder, CharTokenizer

    torch.manual_seed(0)
    d = tmp_path / "char"
    SentenceTransformer(modules=[CharEmbedder(), Pooling(16, "mean")], device="cpu").save(str(d))
    enc = BiEncoder.load(str(d), device="cpu", backend="torch")
    assert isinstance(enc.tokenizer, CharTokenizer) and isinstance(enc.tokenizer, Tokenizer)
    texts = ["héllo wörld", "東京", "x" * 100]
    out = enc.encode(texts)
    assert out.truncated.tolist() == [False, False, True] and out.token_counts.tolist() == [11, 2, 64]
    np.testing.assert_allclose(out.vectors, np.stack([enc.encode([t]).vectors[0] for t in texts]), atol=1e-6)
    export_onnx(str(d), ExportConfig())
    onnx = BiEncoder.load(str(d), device="cpu", backend="onnx", auto_export=False)
    np.testing.assert_allclose(onnx.encode(texts).vectors, out.vectors, atol=1e-5)


def test_grouped_score_model_through_pipeline_and_onnx_registry(tmp_path):
    import torch

    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.onnx_runtime import load_onnx_backend
    from tests.core_examples import GroupScorer, GroupTokenizer

    torch.manual_seed(0)
    d = tmp_path / "grouped"
    GroupScorer().save(d)
    tok = GroupTokenizer()
    pipe = Pipeline(tok, TorchBackend(GroupScorer.load(d), "cpu", "scores", OutputKind.GROUPED_SCORES))
    rows = [("hello", "a|bb|ccc"), ("a much longer context here", "x|y"), ("hi", "only one")]
    enc = tok.encode_pairs(rows)
    out = pipe.forward(enc, max_rows=2)
    groups = out.groups()
    assert [len(g) for g in groups] == [3, 2, 1]  # one score per candidate span, input order
    alone = [pipe.forward(tok.encode_pairs([r])).groups()[0] for r in rows]
    for g, a in zip(groups, alone, strict=True):
        np.testing.assert_allclose(g, a, atol=1e-6)
    export_onnx(str(d), ExportConfig(kind="test-grouped"))
    onnx = load_onnx_backend(
        resolve_model(str(d)), "test-grouped", None, "cpu", output=OutputKind.GROUPED_SCORES
    )
    onnx_out = Pipeline(tok, onnx.backend).forward(enc)
    np.testing.assert_allclose(onnx_out.values, out.values, atol=1e-5)
