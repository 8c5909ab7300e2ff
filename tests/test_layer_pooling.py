"""Multi-layer / last-layer trainable pooling (encoders/modules/layer_pooling.py) and its training job.

Tiny random BERTs (tests/tiny.py): mechanics, not quality. The pooler's weights are randomised
where a test needs every part of the formula to matter (a fresh residual pooler adds exactly 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairsmith.encoders import BiEncoder
from pairsmith.encoders.modules import enable_all_layers
from pairsmith.encoders.modules.layer_pooling import LayerPooling, last_token, make_pooler
from pairsmith.errors import InvalidInput

TEXTS = [
    "a cat sits on the mat",
    "Hi",
    "the quick brown fox jumps over the lazy dog near the river bank at dawn",
    "stocks rallied for three months",
]
LONG = "many words in a much longer sentence than any the export example traced " * 3


def _st(tiny_bi_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_bi_dir), device="cpu")


def _randomize(pooler: LayerPooling, seed: int = 0) -> LayerPooling:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pooler.named_parameters():
            base = 1.0 if name.endswith("weight") and "norm" in name else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return pooler


def _model(tiny_bi_dir: Path, kind: str, residual: bool = True, randomize: bool = True, **sizes):
    from sentence_transformers import SentenceTransformer

    st = _st(tiny_bi_dir)
    torch.manual_seed(0)
    pooler = make_pooler(st, kind, n_latents=4, head_dim=8, residual=residual, **sizes)
    if randomize:
        _randomize(pooler)
    model = SentenceTransformer(modules=[st._modules["0"], pooler], device="cpu").eval()
    enable_all_layers(model)
    return model, pooler


@pytest.fixture(scope="module")
def saved(tiny_bi_dir, tmp_path_factory):
    """Saved models (randomised poolers) keyed by (kind, residual)."""
    root = tmp_path_factory.mktemp("layer-pooling")
    out = {}
    for kind in ("multi-layer", "last-layer"):
        for residual in (True, False):
            model, _ = _model(tiny_bi_dir, kind, residual)
            d = root / f"{kind}-{residual}"
            model.save(str(d))
            out[(kind, residual)] = d
    return out


# -- the formula, recomputed independently --------------------------------------------------------


def _recompute(d: Path, texts: list[str]) -> np.ndarray:
    """From the saved files alone: HF hidden states -> the pooler's formula, item by item, in fp64."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    cfg = json.loads((d / "1_LayerPooling" / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(d / "1_LayerPooling" / "model.safetensors")).items()}
    hf = AutoModel.from_pretrained(str(d)).eval()
    tok = AutoTokenizer.from_pretrained(str(d))
    h, nh, dh = cfg["hidden_size"], cfg["heads"], cfg["head_dim"]

    def ln(x, name):
        return F.layer_norm(x, (h,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    q = (ln(w["latents"], "norm_z") @ w["to_q.weight"].T).view(-1, nh, dh)  # (Nq, nh, dh)
    rows = []
    for text in texts:  # one text at a time: no padding anywhere
        feats = tok([text], return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            hs = [x[0].double() for x in hf(**feats, output_hidden_states=True).hidden_states]  # L x (T, H)
        if cfg["kind"] == "multi-layer":
            x = torch.stack([t.mean(0) for t in hs])  # (L, H) per-layer means
            anchor = x[-1]
            keys = ln(x + w["layer_embedding"], "norm_x")  # (L, H)
        else:
            anchor = hs[-1].mean(0)
            keys = ln(hs[-1], "norm_x")  # (T, H)
        k = (keys @ w["to_k.weight"].T).view(-1, nh, dh)  # (n, nh, dh)
        v = (keys @ w["to_v.weight"].T).view(-1, nh, dh)
        att = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(dh), -1)  # (nh, Nq, n)
        o = torch.einsum("hij,jhd->ihd", att, v).reshape(q.shape[0], -1)  # (Nq, nh*dh)
        z = w["latents"] + o @ w["to_out.weight"].T + w["to_out.bias"]  # (Nq, H)
        f = ln(z, "norm_ff") @ w["ff.0.weight"].T + w["ff.0.bias"]
        z = z + F.gelu(f) @ w["ff.2.weight"].T + w["ff.2.bias"]
        e = anchor + (z - w["latents"]).mean(0) if cfg["residual"] else z.mean(0)
        rows.append(F.normalize(e, dim=0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["multi-layer", "last-layer"])
@pytest.mark.parametrize("residual", [True, False])
def test_matches_independent_recomputation_and_loads_everywhere(saved, kind, residual):
    """Catches: a wrong layer set, padding attended, a missing layer embedding / norm / FF / residual
    term, wrong head split, a save that loses weights or config; plain sentence-transformers agrees."""
    from sentence_transformers import SentenceTransformer

    d = saved[(kind, residual)]
    want = _recompute(d, TEXTS)
    ours = BiEncoder.load(str(d), device="cpu", backend="torch").encode(TEXTS).vectors
    np.testing.assert_allclose(ours, want, atol=2e-5)  # fp32 model vs fp64 recomputation
    plain = SentenceTransformer(str(d), device="cpu", trust_remote_code=True).encode(
        TEXTS, normalize_embeddings=True
    )
    np.testing.assert_allclose(plain, ours, atol=1e-5)
    cfg = json.loads((d / "1_LayerPooling" / "config.json").read_text())
    assert cfg["kind"] == kind and cfg["residual"] is residual and cfg["n_latents"] == 4


@pytest.mark.parametrize("kind", ["multi-layer", "last-layer"])
def test_alone_equals_in_a_batch(saved, kind):
    """Padding must not leak in: every text alone gives its row of the padded batch."""
    enc = BiEncoder.load(str(saved[(kind, False)]), device="cpu", backend="torch")
    batch = enc.encode(TEXTS + [LONG]).vectors
    for i, t in enumerate(TEXTS + [LONG]):
        np.testing.assert_allclose(enc.encode([t]).vectors[0], batch[i], atol=1e-5)


def test_fresh_residual_pooler_is_exactly_mean_pooling(tiny_bi_dir):
    """Start = the backbone's mean pooling (the correction starts at zero), for both kinds."""
    plain = _st(tiny_bi_dir).encode(TEXTS, convert_to_tensor=True)
    for kind in ("multi-layer", "last-layer"):
        model, _ = _model(tiny_bi_dir, kind, residual=True, randomize=False)
        got = model.encode(TEXTS, convert_to_tensor=True)
        assert torch.equal(got, plain)


def test_gradient_reaches_latents_and_every_part(tiny_bi_dir):
    model, pooler = _model(tiny_bi_dir, "multi-layer", residual=True, randomize=False)
    feats = model.tokenize(TEXTS)

    def step() -> None:
        pooler.zero_grad()
        model(feats)["sentence_embedding"].pow(2).sum().backward()

    step()  # fresh: to_out and the last FF layer are zero, so only they get gradient at step 0
    assert pooler.to_out.weight.grad.abs().sum() > 0 and pooler.ff[2].weight.grad.abs().sum() > 0
    with torch.no_grad():
        pooler.to_out.weight.add_(0.1 * torch.randn_like(pooler.to_out.weight))  # as after one update
    step()
    for name in ("latents", "layer_embedding", "to_q.weight", "to_k.weight", "to_v.weight", "norm_x.weight"):
        g = dict(pooler.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_last_token_reduce_handles_either_padding_side():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (B, T, H)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(last_token(h, right), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.equal(last_token(h, left), torch.stack([h[0, 3], h[1, 3]]))


def test_pooler_size_on_the_default_model_is_under_five_percent(default_bi):
    st = default_bi.st_model
    enc = sum(p.numel() for p in next(iter(st._modules.values())).parameters())
    for kind in ("multi-layer", "last-layer"):
        n = make_pooler(st, kind).parameter_count()
        assert n / enc <= 0.05, (kind, n, enc)
    # Stated in the README: 897,024 parameters = 3.95 % of all-MiniLM-L6-v2's 22,713,216.
    assert make_pooler(st, "multi-layer").parameter_count() == 897_024 and enc == 22_713_216


def test_bad_configuration_and_missing_layers_are_clear_errors(tiny_bi_dir):
    with pytest.raises(InvalidInput, match="head_dim"):
        LayerPooling(32, 3, head_dim=512)
    with pytest.raises(InvalidInput, match="num_layers"):
        LayerPooling(32, 0, kind="multi-layer")
    with pytest.raises(InvalidInput, match="kind"):
        LayerPooling(32, 3, kind="sideways")
    pooler = LayerPooling(32, 3)
    feats = {"token_embeddings": torch.zeros(1, 2, 32), "attention_mask": torch.ones(1, 2)}
    with pytest.raises(InvalidInput, match="output_hidden_states"):
        pooler(feats)


# -- export and serving ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["multi-layer", "last-layer"])
def test_onnx_export_parity_on_lengths_the_trace_never_saw(saved, kind, tmp_path):
    """Catches a graph that fixed the traced batch's longest item (the padded reference does)."""
    import shutil

    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    d = tmp_path / "m"
    shutil.copytree(saved[(kind, False)], d)
    export_onnx(str(d), ExportConfig())
    texts = TEXTS + [LONG, "x"]
    torch_vecs = BiEncoder.load(str(d), device="cpu", backend="torch").encode(texts).vectors
    onnx_vecs = BiEncoder.load(str(d), device="cpu", backend="onnx").encode(texts).vectors
    np.testing.assert_allclose(onnx_vecs, torch_vecs, atol=1e-5)
