"""Uni-Encoder block attention (encoders/uni_block.py) against the dense masked path.

The dense path (the tokenizer's (B, 1, T, T) mask, the warm head's gate hooks) is the reference:
the block path must give the same scores, hidden states of real tokens and gradients, for both
masks, both heads, padding, uneven candidates and several rows; backbones it cannot run exactly
keep the dense path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pairsmith.encoders import UniConfig, UniEncoder, UniMask
from pairsmith.encoders.runtime import to_features
from pairsmith.encoders.uni_block import block_index, block_support
from tests.tiny import make_tiny_backbone

SMALL = UniConfig(max_context_tokens=48, max_candidate_tokens=16, max_row_tokens=96, max_groups=16)
# uneven contexts and candidates; 96-token rows split the first item's candidates into several rows
ITEMS = [
    (
        ["Hi there, how are you doing today?", "Fine thanks. Busy week at work, lots of meetings."],
        [
            "Sounds tiring!",
            "The moon is made of cheese, or so they say in the old stories.",
            "Same here, lots to do.",
            "ok",
            "Want to grab lunch tomorrow at the new place near the station?",
            "No.",
            "I have been there, the soup is great.",
        ],
    ),
    (["Any plans for the weekend?"], ["Hiking.", "No", "Sleep all day, then a long walk on the beach."]),
    (["Did you see the game last night? It was unbelievable."], ["Yes!"]),
]


@pytest.fixture(autouse=True)
def block_everywhere(monkeypatch):
    """These rows are short: a block tokenizer would hand them the dense mask (cheaper there)."""
    import pairsmith.encoders.uni_tokenize as ut

    monkeypatch.setattr(ut, "BLOCK_MIN_TOKENS", 0)


def _scores(model, tok, items, *, block: bool, grad: bool, max_row_tokens: int | None = None):
    enc, _, _ = tok.encode_groups(items, max_row_tokens=max_row_tokens)
    feats = to_features(tok.with_mask(tok.mask, block=block).pad(enc.ids), "cpu")
    with torch.set_grad_enabled(grad):
        return model(feats)["scores"], len(enc.ids)  # (B, G)


def _spans_valid(tok, items):
    enc, _, _ = tok.encode_groups(items)
    f = to_features(tok.pad(enc.ids), "cpu")
    return f["spans"], f["attention_mask"].bool()


def _assert_block_equals_dense(uni: UniEncoder, mask: UniMask, grad: bool, items=ITEMS, rows: int = 3):
    tok = uni.tokenizer.with_mask(mask)
    dense, n = _scores(uni.model, tok, items, block=False, grad=grad)
    block, _ = _scores(uni.model, tok, items, block=True, grad=grad)
    assert n >= rows  # several rows per batch: padding, uneven contexts and candidates
    torch.testing.assert_close(block, dense, atol=1e-5, rtol=1e-5)


def _open_gates(uni: UniEncoder, seed: int = 0) -> None:
    """Gates at random open values: cross-segment attention carries real weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (uni.model.gate_c2x, uni.model.gate_x2c):
            p.copy_(torch.rand(p.shape, generator=g) * -2.0)  # in (-2, 0]


@pytest.fixture(scope="module")
def warm(tiny_bi_dir) -> UniEncoder:
    return UniEncoder.from_bi_encoder(str(tiny_bi_dir), config=SMALL, device="cpu")


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> UniEncoder:
    d = make_tiny_backbone(tmp_path_factory.mktemp("uni-block") / "backbone", seed=5)
    return UniEncoder.from_backbone(str(d), config=SMALL, device="cpu", seed=0)


@pytest.mark.parametrize("buckets", ["merged", "per-class"])
@pytest.mark.parametrize("grad", [False, True], ids=["fused", "autograd"])
@pytest.mark.parametrize("gates", ["closed", "open"])
@pytest.mark.parametrize("mask", list(UniMask))
def test_warm_head_block_equals_dense(warm, mask, gates, grad, buckets, monkeypatch):
    """Gates at init (-30) and open (-2 .. 0); no autograd runs the fused kernel, autograd the
    plain operations; candidates in one own-span bucket or one per length class."""
    import pairsmith.encoders.uni_block as ub

    if buckets == "per-class":
        monkeypatch.setattr(ub, "MERGE_PAIRS", 0)
        assert len(ub.block_index(*_spans_valid(warm.tokenizer, ITEMS)).buckets) > 1
    if gates == "open":
        _open_gates(warm)
    try:
        _assert_block_equals_dense(warm, mask, grad)
    finally:
        with torch.no_grad():
            warm.model.gate_c2x.fill_(SMALL.gate_init)
            warm.model.gate_x2c.fill_(SMALL.gate_init)


@pytest.mark.parametrize("grad", [False, True], ids=["fused", "autograd"])
@pytest.mark.parametrize("mask", list(UniMask))
def test_linear_head_block_equals_dense(linear, mask, grad):
    _assert_block_equals_dense(linear, mask, grad)


def test_open_gates_matter(warm):
    """The equality above is not vacuous: opened gates move the scores (cross-segment attention is
    live) and arrow differs from context-blind."""
    tok = warm.tokenizer
    closed, _ = _scores(warm.model, tok.with_mask(UniMask.CONTEXT_BLIND), ITEMS, block=True, grad=False)
    _open_gates(warm)
    try:
        blind, _ = _scores(warm.model, tok.with_mask(UniMask.CONTEXT_BLIND), ITEMS, block=True, grad=False)
        arrow, _ = _scores(warm.model, tok.with_mask(UniMask.ARROW), ITEMS, block=True, grad=False)
    finally:
        with torch.no_grad():
            warm.model.gate_c2x.fill_(SMALL.gate_init)
            warm.model.gate_x2c.fill_(SMALL.gate_init)
    # a tiny random model's cosines move little; still 10x the 1e-5 the equality tests hold
    assert (blind - closed).abs().max() > 1e-4
    assert (arrow - blind).abs().max() > 1e-4


@pytest.mark.parametrize("mask", list(UniMask))
def test_hidden_states_of_real_tokens_match(linear, mask):
    """Every real token's last-layer state, not only the pooled scores (padding queries differ
    by design: they reach no score)."""
    tok = linear.tokenizer.with_mask(mask)
    enc, _, _ = tok.encode_groups(ITEMS)
    dense = to_features(tok.pad(enc.ids), "cpu")
    block = to_features(tok.with_mask(mask, block=True).pad(enc.ids), "cpu")
    assert "attention_bias" not in block and "attention_bias" in dense
    with torch.no_grad():
        hd, hb = linear.model.hidden(dense), linear.model.hidden(block)  # (B, T, H)
    real = dense["attention_mask"].bool()
    torch.testing.assert_close(hb[real], hd[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", list(UniMask))
def test_gradients_match_the_dense_path(warm, mask):
    """Training runs this path: gate and backbone gradients equal the dense path's."""
    _open_gates(warm, seed=1)
    tok = warm.tokenizer.with_mask(mask)
    weights = torch.randn(
        len(tok.encode_groups(ITEMS)[0].ids), SMALL.max_groups, generator=torch.Generator().manual_seed(2)
    )
    grads = {}
    try:
        for block in (False, True):
            warm.model.zero_grad()
            scores, _ = _scores(warm.model, tok, ITEMS, block=block, grad=True)
            (scores * weights).sum().backward()
            grads[block] = {n: p.grad.clone() for n, p in warm.model.named_parameters() if p.grad is not None}
    finally:
        warm.model.zero_grad()
        with torch.no_grad():
            warm.model.gate_c2x.fill_(SMALL.gate_init)
            warm.model.gate_x2c.fill_(SMALL.gate_init)
    if mask is UniMask.CONTEXT_BLIND:  # x2c edges are masked: dense gives exact zeros, block none
        assert not grads[False]["gate_x2c"].any() and "gate_x2c" not in grads[True]
        grads[True]["gate_x2c"] = torch.zeros_like(grads[False]["gate_x2c"])
    assert grads[True].keys() == grads[False].keys()
    assert grads[False]["gate_c2x"].abs().max() > 1e-4  # the gates really receive a gradient
    if mask is UniMask.ARROW:
        assert grads[False]["gate_x2c"].abs().max() > 1e-4
    for name, g in grads[False].items():
        # fp32 sums in another order over a few hundred terms: 1e-4 of the largest entry
        torch.testing.assert_close(grads[True][name], g, atol=1e-4 * float(g.abs().max()) + 1e-7, rtol=1e-3)


def test_rank_runs_the_block_path_and_matches_the_dense_tokenizer(warm):
    """rank()/pipeline() use the block layout on a BERT backbone; the ONNX exporter's tokenizer
    (the encoder's own) keeps the dense mask."""
    assert warm.model.block_unsupported is None
    assert warm.pipeline().tokenizer.block and not warm.tokenizer.block
    _open_gates(warm, seed=3)
    try:
        for mask in UniMask:
            got = warm.rank_many(ITEMS, mask=mask, max_row_tokens=96)
            want, _ = _scores(warm.model, warm.tokenizer.with_mask(mask), ITEMS, block=False, grad=False)
            enc, chunks, _ = warm.tokenizer.encode_groups(ITEMS, max_row_tokens=96)
            for ch, row in zip(chunks, want.numpy(), strict=True):
                np.testing.assert_allclose(
                    got[ch.item][ch.start : ch.stop], row[: ch.stop - ch.start], atol=1e-5
                )
    finally:
        with torch.no_grad():
            warm.model.gate_c2x.fill_(SMALL.gate_init)
            warm.model.gate_x2c.fill_(SMALL.gate_init)


def test_block_index_buckets_cover_every_candidate_token_once():
    spans = torch.tensor(
        [
            [-1, -1, -1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, -1],
            [-1, -1, 0, 0, 0, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
        ]
    )
    valid = torch.ones_like(spans, dtype=torch.bool)
    valid[0, 16] = False
    valid[1, 6:] = False
    idx = block_index(spans, valid, merge_pairs=0)  # every length class its own bucket
    assert (idx.lx, idx.lx_min) == (3, 2) and not idx.cand_from_lx
    seen = sorted(
        (int(r), int(p))
        for bk in idx.buckets
        for r, p in zip(bk.row[bk.member], bk.pos[bk.member], strict=True)
    )
    want = sorted(
        (int(r), int(p)) for r, p in zip(*((spans >= 0) & valid).nonzero(as_tuple=True), strict=True)
    )
    assert seen == want
    # span 1 of row 0 (10 tokens) is in a class of its own
    assert [bk.row.shape[1] for bk in idx.buckets] == [3, 10]
    # by default 4 spans padded from 3 to 10 tokens cost less than a second bucket
    merged = block_index(spans, valid)
    assert [bk.row.shape[1] for bk in merged.buckets] == [10]
    assert int(merged.buckets[0].member.sum()) == len(want)


# -- other backbones ---------------------------------------------------------------------------------


def _tiny_roberta(out: Path) -> Path:
    from transformers import RobertaConfig, RobertaModel

    from tests.tiny import _TINY_SHAPE, _copy_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    cfg = RobertaConfig(**_TINY_SHAPE, max_position_embeddings=130, pad_token_id=0, type_vocab_size=1)
    RobertaModel(cfg, add_pooling_layer=False).save_pretrained(out)
    _copy_tokenizer(out)
    return out


@pytest.mark.parametrize("mask", list(UniMask))
def test_roberta_block_equals_dense(tmp_path, mask):
    """RoBERTa: positions offset by pad + 1, no token types; the same layer modules."""
    uni = UniEncoder.from_backbone(
        str(_tiny_roberta(tmp_path / "roberta")), config=SMALL, device="cpu", seed=0
    )
    assert uni.config.position_offset == 1 and not uni.config.uses_type_ids
    assert uni.model.block_unsupported is None
    _assert_block_equals_dense(uni, mask, grad=False)


@pytest.mark.parametrize("mask", list(UniMask))
def test_mpnet_falls_back_to_the_dense_path(tmp_path, mask):
    """MPNet's relative position bias is not in the block path: the encoder keeps the dense mask,
    and a block-layout batch handed to it is scored through a rebuilt dense mask."""
    from tests.tiny import make_tiny_mpnet_bi_encoder

    d = make_tiny_mpnet_bi_encoder(tmp_path / "mpnet", seed=2)
    uni = UniEncoder.from_bi_encoder(str(d), config=SMALL, device="cpu")
    assert "mpnet" in (block_support(uni.model.backbone) or "")
    assert uni.model.block_unsupported is not None and not uni.pipeline(mask).tokenizer.block
    _open_gates(uni)
    _assert_block_equals_dense(uni, mask, grad=False)


@pytest.mark.parametrize("mask", list(UniMask))
def test_default_model_block_equals_dense(mask):
    """The packaged default model (MiniLM, 6 layers) at 20 candidates, gates open."""
    uni = UniEncoder.from_bi_encoder("default", mask=mask, device="cpu")
    _open_gates(uni, seed=4)
    cands = [f"candidate number {i} says {'something longer ' * (i % 4)}hello" for i in range(20)]
    _assert_block_equals_dense(uni, mask, grad=False, items=[(ITEMS[0][0], cands), ITEMS[1]], rows=2)


def test_short_batches_keep_the_dense_mask(warm, monkeypatch):
    """A block tokenizer hands batches under BLOCK_MIN_TOKENS the dense mask, longer ones none."""
    import pairsmith.encoders.uni_tokenize as ut

    monkeypatch.setattr(ut, "BLOCK_MIN_TOKENS", 40)
    tok = warm.tokenizer.with_mask(UniMask.ARROW, block=True)
    short, _, _ = tok.encode_groups([(["Hi?"], ["Yes.", "No."])])
    long, _, _ = tok.encode_groups(ITEMS[:1], max_row_tokens=10**6)
    assert tok.pad(short.ids).attention_bias is not None
    batch = tok.pad(long.ids)
    assert (
        batch.shape[1] >= 40 and batch.attention_bias is None and batch.extras["uni_arrow"].tolist() == [True]
    )
