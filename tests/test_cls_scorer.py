"""The cross-encoder's CLS-only last layer (encoders/cls_scorer.py): exact, used, guarded.

The fast path must give the full model's logits on padded, ragged batches (real
model and tiny random ones), be what the torch backend and the ONNX export run,
fall back for models it does not cover, and refuse itself when it disagrees.
"""

from __future__ import annotations

import numpy as np
import pytest

from pairsmith.encoders import Activation, CrossEncoder, cls_scorer
from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
from pairsmith.errors import FailedPrecondition, InvalidInput

PAIRS = [
    ("A man is playing a guitar.", "A man plays an acoustic guitar on a small stage in front of a crowd."),
    ("Hi", "Stocks rallied for three months in anticipation of a rebound in the second half of the year."),
    ("Ünïcödé tëxt wörks töö — 東京", "two words"),
    ("", "An empty first sentence still gives [CLS] [SEP] and a second segment."),
    ("The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.", "a"),
]


def _full_logits(ce: CrossEncoder, pairs) -> np.ndarray:
    """Logits of the unmodified sentence-transformers forward (the specification)."""
    import torch

    st = ce.st_model
    enc = st.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.inference_mode():
        st.eval()
        return st(dict(enc))["scores"].float().numpy()[:, 0]


def _spread(ce: CrossEncoder, seed: int) -> None:
    """Re-draw the tiny model's weights wide (std 0.2): at the init std 0.02 every pair gets ~the same
    logit, and equality would prove little."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ce.st_model.model.named_parameters():
            if "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _is_fast(ce: CrossEncoder) -> bool:
    return cls_scorer.last_layer(ce.pipeline.backend.module) == "cls-only"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_cls_only_equals_the_full_forward(tiny_cross_dir, seed):
    ce = CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=seed)
    _spread(ce, seed)
    assert _is_fast(ce)
    want = _full_logits(ce, PAIRS)
    # Batch of 5 padded to the longest pair, and batches of 2: padding differs, logits must not.
    got5 = ce.score(PAIRS, activation=Activation.RAW, batch_size=5).values
    got2 = ce.score(PAIRS, activation=Activation.RAW, batch_size=2).values
    np.testing.assert_allclose(got5, want, atol=1e-5)
    np.testing.assert_allclose(got2, want, atol=1e-5)
    assert np.ptp(want) > 0.1  # the pairs really score differently: equality is not trivial


def test_default_model_cls_only_equals_the_full_forward():
    ce = CrossEncoder.from_backbone("default", device="cpu", seed=0)
    assert _is_fast(ce)
    want = _full_logits(ce, PAIRS)
    got = ce.score(PAIRS, activation=Activation.RAW, batch_size=5).values
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_last_layer_option_and_bad_value(tiny_cross_dir, tmp_path, monkeypatch):
    """``last_layer`` is a load option (no environment variable is read): full runs every position."""
    monkeypatch.setenv("PAIRSMITH_CROSS_LAST_LAYER", "full")  # ignored: not a setting any more
    assert _is_fast(CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0))
    full = CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0, last_layer="full")
    assert not _is_fast(full)
    full.save(tmp_path / "ce")
    ce = CrossEncoder.load(str(tmp_path / "ce"), device="cpu", backend="torch", last_layer="full")
    assert not _is_fast(ce)
    assert _is_fast(CrossEncoder.load(str(tmp_path / "ce"), device="cpu", backend="torch"))
    with pytest.raises(InvalidInput, match="last_layer"):
        CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0, last_layer="half")


def test_onnx_export_made_with_the_other_last_layer_is_refused(tiny_cross_dir, tmp_path):
    res = export_onnx(str(tiny_cross_dir), ExportConfig(), out=tmp_path / "m")  # cls-only graph
    with pytest.raises(FailedPrecondition, match="--last-layer full"):
        CrossEncoder.load(str(res.model_dir), device="cpu", backend="onnx", last_layer="full")
    assert CrossEncoder.load(str(res.model_dir), device="cpu", backend="onnx").score(
        PAIRS[:1]
    ).values.shape == (1,)


def test_guard_refuses_a_scorer_that_disagrees(tiny_cross_dir, monkeypatch):
    """The build-time check is live: a scorer that skips the padding mask is not used."""
    real = cls_scorer.build_cls_scorer

    def no_mask(hf):
        fast = real(hf)
        inner = fast.forward

        def forward(input_ids, attention_mask, token_type_ids=None):
            import torch

            return inner(input_ids, torch.ones_like(attention_mask), token_type_ids)

        fast.forward = forward
        return fast

    ce = CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0)
    _spread(ce, 0)
    hf, tok = ce.st_model.model, ce.st_model.tokenizer
    assert cls_scorer.cls_scorer_or_none(hf, tok) is not None
    monkeypatch.setattr(cls_scorer, "build_cls_scorer", no_mask)
    assert cls_scorer.cls_scorer_or_none(hf, tok) is None
    assert type(cls_scorer.scores_module(ce.st_model)).__name__ != "FastScores"


def test_unsupported_model_keeps_the_full_forward(tiny_cross_dir):
    ce = CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0)
    hf = ce.st_model.model
    hf.config.model_type = "roberta"  # anything but plain BERT is left alone
    try:
        assert cls_scorer.cls_scorer_or_none(hf, ce.st_model.tokenizer) is None
        with pytest.raises(ValueError, match="model_type"):
            cls_scorer.build_cls_scorer(hf)
    finally:
        hf.config.model_type = "bert"


def test_onnx_cross_export_runs_the_cls_only_graph(tiny_cross_dir, tmp_path):
    fast = export_onnx(str(tiny_cross_dir), ExportConfig(), out=tmp_path / "fast")
    full = export_onnx(str(tiny_cross_dir), ExportConfig(last_layer="full"), out=tmp_path / "full")
    assert fast.manifest["details"]["last_layer"] == "cls-only"
    assert full.manifest["details"]["last_layer"] == "full"

    ref = _full_logits(CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0), PAIRS)
    for res in (fast, full):
        onnx_ce = CrossEncoder.load(str(res.model_dir), device="cpu", backend="onnx", onnx_variant="fp32")
        got = onnx_ce.score(PAIRS, activation=Activation.RAW, batch_size=5).values
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_fused_export_keeps_the_trunks_attention_fusions(tiny_cross_dir, tmp_path):
    """The first L-1 layers go through Hugging Face's code, so onnxruntime's optimizer still fuses them
    (the GPU fp16 and fused dynamic int8 variants depend on it); only the CLS-only layer stays unfused."""
    # isa pinned: the variant's name follows the ISA, which differs between machines (AVX2 / AVX-512 EPYCs).
    cfg = ExportConfig(quantize="int8-dynamic", isa="avx2", fuse="on")
    res = export_onnx(str(tiny_cross_dir), cfg, out=tmp_path)
    fused = res.manifest["variants"]["qint8_avx2"]["fused"]
    assert fused.get("Attention") == 1  # the tiny model has 2 layers
    assert fused.get("EmbedLayerNormalization") == 1


def test_one_token_type_backbone_takes_the_fast_path(tmp_path):
    """type_vocab_size 1 (RoBERTa-like): the load-time probe zeroes the second segment's type ids
    instead of indexing past the table (the probe crashed loading such models: a uni-encoder
    baseline test caught it)."""
    import torch

    from tests.tiny import make_tiny_backbone

    model = make_tiny_backbone(tmp_path / "one-type", seed=4, type_vocab_size=1)
    ce = CrossEncoder.from_backbone(str(model), device="cpu", seed=0)
    assert _is_fast(ce)
    _spread(ce, 4)
    st = ce.st_model
    enc = st.tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    enc["token_type_ids"] = torch.zeros_like(enc["token_type_ids"])
    with torch.inference_mode():
        want = st.model(**enc).logits.float().numpy()[:, 0]
        got = ce.pipeline.backend.module(dict(enc))["scores"].float().numpy()[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_one_token_type_backbone_scores_pairs(tmp_path):
    """CrossEncoder.score on a type_vocab_size 1 backbone whose tokenizer emits type ids: no index error,
    and the scores equal the model run with every type id 0 (its only type)."""
    import torch

    from pairsmith.encoders import Activation
    from tests.tiny import make_tiny_backbone

    model = make_tiny_backbone(tmp_path / "one-type", seed=5, type_vocab_size=1)
    ce = CrossEncoder.from_backbone(str(model), device="cpu", seed=0)
    got = ce.score(PAIRS, activation=Activation.RAW).values
    st = ce.st_model
    enc = st.tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    assert int(enc["token_type_ids"].max()) == 1  # the tokenizer does emit type 1
    enc["token_type_ids"] = torch.zeros_like(enc["token_type_ids"])
    with torch.inference_mode():
        want = st.model(**enc).logits.float().numpy()[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The ONNX export of such a model takes no type ids (its example pairs would index past the table).
    ce.save(tmp_path / "ce")
    onnx_ce = CrossEncoder.load(str(tmp_path / "ce"), device="cpu", backend="onnx", onnx_variant="fp32")
    assert "token_type_ids" not in onnx_ce.pipeline.backend.runner.input_names
    np.testing.assert_allclose(onnx_ce.score(PAIRS, activation=Activation.RAW).values, want, atol=1e-4)


def test_serve_config_last_layer_reaches_the_cross_encoder(tiny_bi_dir, tiny_cross_dir, tmp_path):
    from pairsmith.service.config import ServeConfig
    from pairsmith.service.server import load_models

    ce = CrossEncoder.from_backbone(str(tiny_cross_dir), device="cpu", seed=0)
    ce.save(tmp_path / "ce")
    for mode, fast in (("full", False), ("cls", True)):
        cfg = ServeConfig(
            model=str(tiny_bi_dir), cross_encoder=str(tmp_path / "ce"), backend="torch", cross_last_layer=mode
        )
        assert _is_fast(load_models(cfg).cross) is fast
