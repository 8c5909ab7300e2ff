"""Uni-Encoder: packing, masks vs a naive reference, invariances, the real backbone honouring
the 4-D mask, errors, save/load, ONNX parity, MuTual reader, training + resume."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pairsmith.encoders import UniConfig, UniEncoder, UniMask
from pairsmith.encoders.uni_tokenize import NEG, attention_bias, pack_rows, position_ids
from pairsmith.errors import DataFormatError, InvalidInput
from tests.tiny import make_tiny_backbone

SMALL = UniConfig(max_context_tokens=48, max_candidate_tokens=16, max_row_tokens=256, max_groups=16)
CTX = ["Hi there, how are you doing today?", "Fine thanks. Busy week at work."]
CANDS = [
    "Sounds tiring!",
    "The moon is made of cheese.",
    "Same here, lots to do.",
    "ok",
    "Want to grab lunch?",
]


@pytest.fixture(scope="module")
def tiny_uni(tmp_path_factory) -> UniEncoder:
    d = make_tiny_backbone(tmp_path_factory.mktemp("uni") / "backbone", seed=3)
    return UniEncoder.from_backbone(str(d), config=SMALL, device="cpu", seed=0)


@pytest.fixture(scope="module")
def default_uni() -> UniEncoder:
    return UniEncoder.from_backbone("default", device="cpu", seed=0)


# -- masks and positions -------------------------------------------------------------------------


def _naive_allowed(spans_row: list[int], length: int, width: int, mask: UniMask) -> np.ndarray:
    """Per (query, key) pair, straight from the rules in the issue."""
    out = np.zeros((width, width), dtype=bool)
    for q in range(width):
        for k in range(width):
            if q >= length:
                out[q, k] = q == k  # a padding query sees itself only
                continue
            if k >= length:
                continue
            sq, sk = spans_row[q], spans_row[k]
            if sq == -1:  # context query
                out[q, k] = sk == -1 or mask is UniMask.ARROW
            else:  # candidate query: the context and its own span
                out[q, k] = sk == -1 or sk == sq
    return out


@pytest.mark.parametrize("mask", list(UniMask))
def test_mask_equals_naive_per_pair_reference(mask):
    rows = [
        np.array([[1, -1], [2, -1], [3, -1], [4, 0], [5, 0], [6, 1], [7, 1], [8, 1], [9, 2]]),
        np.array([[1, -1], [2, -1], [3, 0], [4, 0]]),
        np.array([[1, -1], [3, 0], [4, 1], [5, 2], [6, 3], [7, 3]]),
    ]
    ids, spans, valid = pack_rows(rows, pad_id=0)
    bias = attention_bias(spans, valid, mask)  # (B, 1, T, T)
    assert bias.shape == (3, 1, 9, 9) and bias.dtype == np.float32
    for b, r in enumerate(rows):
        want = _naive_allowed(list(r[:, 1]), len(r), 9, mask)
        np.testing.assert_array_equal(bias[b, 0] == 0, want)
        assert set(np.unique(bias[b, 0])) <= {0.0, np.float32(NEG)}


def test_positions_restart_at_context_length_for_every_candidate():
    rows = [
        np.array([[1, -1], [2, -1], [3, -1], [4, 0], [5, 0], [6, 1], [7, 1], [8, 1]]),
        np.array([[1, -1], [2, 0]]),
    ]
    _, spans, valid = pack_rows(rows, pad_id=0)
    assert position_ids(spans, valid).tolist() == [[0, 1, 2, 3, 4, 3, 4, 5], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert position_ids(spans, valid, offset=2)[0].tolist() == [2, 3, 4, 5, 6, 5, 6, 7]


def test_row_layout_types_and_truncation(tiny_uni):
    tok = tiny_uni.tokenizer
    enc, chunks, ctrunc = tok.encode_groups([(CTX, ["a b", "word " * 40])])
    row = enc.ids[0]
    batch = tok.pad(enc.ids)
    cls, sep = tok.cls_id, tok.sep_id
    spans = row[:, 1]
    h = int((spans == -1).sum())
    assert row[0, 0] == cls and row[h - 1, 0] == sep and row[h, 0] == cls and row[-1, 0] == sep
    assert batch.token_type_ids[0].tolist() == [0] * h + [1] * (len(row) - h)
    assert ctrunc[0].tolist() == [False, True] and int((spans == 1).sum()) == SMALL.max_candidate_tokens
    # the context drops its oldest turn first
    long_ctx = ["oldest " * 60, "newest turn here"]
    ids, trunc = tok.context_ids(long_ctx)
    assert trunc and tok._ids(["newest turn here"])[0] == ids[1:-1]


# -- the model: invariances ------------------------------------------------------------------------


@pytest.mark.parametrize("mask", list(UniMask))
def test_permuting_candidates_permutes_scores(tiny_uni, mask):
    s = tiny_uni.rank(CTX, CANDS, mask=mask)
    perm = [3, 0, 4, 1, 2]
    sp = tiny_uni.rank(CTX, [CANDS[i] for i in perm], mask=mask)
    # 1e-6: the same sums in another key order (float32 reassociation), nothing else differs.
    np.testing.assert_allclose(sp, s[perm], atol=1e-6)
    assert np.ptp(s) > 1e-3  # not a constant model (the test could not fail otherwise)


def _honours_mask(uni: UniEncoder) -> None:
    changed = list(CANDS)
    changed[1] = "Completely different words about trains and weather and music."
    blind_a = uni.rank(CTX, CANDS, mask="context-blind")
    blind_b = uni.rank(CTX, changed, mask="context-blind")
    keep = [0, 2, 3, 4]
    # 1e-5: the two rows differ in length, so padding changes BLAS blocking (observed ~3e-8).
    np.testing.assert_allclose(blind_b[keep], blind_a[keep], atol=1e-5)
    assert abs(blind_b[1] - blind_a[1]) > 1e-3
    arrow_a = uni.rank(CTX, CANDS, mask="arrow")
    arrow_b = uni.rank(CTX, changed, mask="arrow")
    assert np.abs(arrow_b[keep] - arrow_a[keep]).max() > 1e-4  # the context saw the changed candidate


def test_default_backbone_honours_the_4d_mask(default_uni):
    """transformers' BertModel (sdpa and eager attention): a token a candidate must not see
    leaves its score unchanged; with arrow it does not (the context sees every candidate)."""
    _honours_mask(default_uni)
    # arrow scores depend on the chunking (the context sees only its row's candidates): documented
    a1 = default_uni.rank(CTX, CANDS, mask="arrow")
    assert np.abs(default_uni.rank(CTX, CANDS, mask="arrow", max_row_tokens=40) - a1).max() > 1e-4
    bb = default_uni.model.backbone
    old = bb.config._attn_implementation
    try:
        bb.set_attn_implementation("eager")
        _honours_mask(default_uni)
    finally:
        bb.set_attn_implementation(old)


def test_padding_batch_and_chunk_invariance(tiny_uni):
    items = [(CTX, CANDS), ("short", ["x", "yy"]), (["a", "b", "c " * 20], CANDS[:3])]
    for mask in UniMask:
        alone = [tiny_uni.rank(c, k, mask=mask) for c, k in items]
        for bs in (1, 3):
            got = tiny_uni.rank_many(items, mask=mask, batch_size=bs)
            for g, a in zip(got, alone, strict=True):
                np.testing.assert_allclose(g, a, atol=1e-5)  # padding to another width only
    # chunking: context-blind scores do not depend on it; arrow scores do (documented)
    one = tiny_uni.rank(CTX, CANDS, mask="context-blind")
    enc, chunks, _ = tiny_uni.tokenizer.encode_groups([(CTX, CANDS)], max_row_tokens=40)
    assert len(chunks) > 1
    np.testing.assert_allclose(
        tiny_uni.rank(CTX, CANDS, mask="context-blind", max_row_tokens=40), one, atol=1e-5
    )


def test_clear_errors(tiny_uni, tmp_path):
    with pytest.raises(InvalidInput, match="candidates: empty list"):
        tiny_uni.rank(CTX, [])
    with pytest.raises(InvalidInput, match="one string"):
        tiny_uni.rank(CTX, "not a list")
    with pytest.raises(InvalidInput, match=r"candidates\[1\]: expected a string"):
        tiny_uni.rank(CTX, ["ok", 3])
    strict = tiny_uni.tokenizer.with_mask("arrow")
    strict.config = UniConfig(**{**SMALL.to_dict(), "truncate_context": False})
    with pytest.raises(InvalidInput, match=r"context: \d+ tokens, over the limit of 48"):
        strict.encode_groups([("word " * 100, ["a"])])
    with pytest.raises(InvalidInput, match="position embeddings"):
        UniConfig(max_context_tokens=500, max_candidate_tokens=64)
    with pytest.raises(InvalidInput, match="mask"):
        tiny_uni.rank(CTX, CANDS, mask="square")


# -- persistence and ONNX ---------------------------------------------------------------------------


def test_save_load_and_onnx_parity(tiny_uni, tmp_path):
    from pairsmith.encoders.onnx_export import export_onnx
    from pairsmith.encoders.source import fingerprint

    d = tmp_path / "uni"
    tiny_uni.save(d)
    loaded = UniEncoder.load(str(d), device="cpu", backend="torch")
    items = [(CTX, CANDS), ("short", ["x", "yy", "a longer candidate here"])]
    for mask in UniMask:
        want = tiny_uni.rank_many(items, mask=mask)
        for g, w in zip(loaded.rank_many(items, mask=mask), want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
    fp = fingerprint(d)
    res = export_onnx(str(d))  # kind detected from uni_encoder.json
    assert res.kind == "uni" and res.manifest["variants"]["fp32"]["max_abs_diff_vs_torch"] < 1e-4
    onnx = UniEncoder.load(str(d), device="cpu", backend="onnx", auto_export=False)
    for mask in UniMask:
        for g, w in zip(onnx.rank_many(items, mask=mask), loaded.rank_many(items, mask=mask), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-4)  # fp32 graph vs torch: kernel order differs
    # the head is part of the fingerprint: a changed head invalidates the export
    from safetensors.torch import load_file, save_file

    head = load_file(str(d / "uni_head.safetensors"))
    head["head.bias"] = head["head.bias"] + 1.0
    save_file(head, str(d / "uni_head.safetensors"))
    assert fingerprint(d) != fp


# -- data and training ---------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_mutual_reader_and_errors(tmp_path):
    from pairsmith.distill.dialogue import read_mutual

    good = {
        "answers": "C",
        "options": ["m : a", "m : b", "m : c", "m : d"],
        "article": "m : hi . f : hello .",
        "id": "t1",
    }
    ds = read_mutual(_tar(tmp_path / "ok.tar.gz", {"x/t1.txt": json.dumps(good)}))
    assert ds.contexts == [["m : hi .", "f : hello ."]] and ds.positives == [["m : c"]]
    assert ds.negatives == [["m : a", "m : b", "m : d"]]
    bad = _tar(
        tmp_path / "bad.tar.gz",
        {"x/t1.txt": json.dumps(good), "x/t2.txt": json.dumps({**good, "answers": "E"})},
    )
    with pytest.raises(DataFormatError, match=r"bad\.tar\.gz:x/t2\.txt:1: field 'answers'"):
        read_mutual(bad)
    broken = _tar(tmp_path / "broken.tar.gz", {"x/t3.txt": "{not json"})
    with pytest.raises(DataFormatError, match=r"x/t3\.txt:1: invalid JSON"):
        read_mutual(broken)


def test_dailydialog_train_is_refused_when_only_dev_exists(tmp_path):
    from pairsmith.distill.dialogue import load_dialogue
    from pairsmith.errors import NotFound

    (tmp_path / "dialogue/dailydialog-plusplus").mkdir(parents=True)
    with pytest.raises(NotFound, match="never trained on"):
        load_dialogue("dailydialog", tmp_path)


def _dd_file(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    words = "apple bus cat dog egg fish goat hat ice jam kite lamp".split()
    lines = []
    for i in range(n):
        topic = words[i % len(words)]
        lines.append(
            json.dumps(
                {
                    "context": [f"let us talk about the {topic}", f"yes the {topic} is nice"],
                    "positive_responses": [f"i like the {topic} too"],
                    "random_negative_responses": [f"i like the {w} too" for w in rng.choice(words, 2)],
                    "adversarial_negative_responses": ["no idea"],
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def _tiny_train_cfg(data: Path, model, **overrides):
    """The small training run the tests share (short token limits, batches of 4, seed 1, no eval)."""
    from pairsmith.distill.uni_train import UniTrainConfig

    base = dict(
        data=str(data), model=str(model), kind="uni", max_context_tokens=32, max_candidate_tokens=16,
        batch_size=4, eval_sets=(), seed=1, head="cold", select="none",
    )  # fmt: skip
    return UniTrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("kind", ["uni", "cross", "bi"])
def test_training_runs_saves_and_resumes(tmp_path, kind, tiny_bi_dir):
    from pairsmith.distill.uni_train import train_uni
    from pairsmith.errors import FailedPrecondition

    data = _dd_file(tmp_path / "dd.jsonl", 12)
    model = str(tiny_bi_dir)
    cfg = _tiny_train_cfg(data, model, kind=kind, checkpoint_steps=1, eval_sets=(str(data),))
    rep = train_uni(cfg, tmp_path / "out", device="cpu", progress=False)
    assert rep["fit"]["steps"] == 3 and not (tmp_path / "out" / "checkpoint.pt").exists()
    assert set(rep["eval"][data.stem]) == {"R@1", "R@2", "R@5", "MRR", "cases"}
    with pytest.raises(FailedPrecondition, match="--resume"):
        train_uni(cfg, tmp_path / "out", device="cpu", progress=False)
    again = train_uni(cfg, tmp_path / "out", resume=True, device="cpu", progress=False)
    assert again["eval"] == rep["eval"]  # fit not redone: the same saved model is evaluated


@pytest.mark.parametrize("mlm_weight", [0.0, 0.5])
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(
    tmp_path, tiny_bi_dir, monkeypatch, mlm_weight
):
    """Kill the run after step 2 of 3 (checkpoint at 2), resume: the model equals a straight run
    (with the MLM loss too: its head and losses are in the checkpoint, its masks seeded per step)."""
    import pairsmith.distill.uni_train as ut

    data = _dd_file(tmp_path / "dd.jsonl", 12)
    cfg = _tiny_train_cfg(data, tiny_bi_dir, checkpoint_steps=2, mlm_weight=mlm_weight)
    straight = ut.train_uni(cfg, tmp_path / "straight", device="cpu", progress=False)
    real = ut.Trainable.scores
    calls = {"n": 0}

    def dying(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(ut.Trainable, "scores", dying)
    with pytest.raises(KeyboardInterrupt):
        ut.train_uni(cfg, tmp_path / "resumed", device="cpu", progress=False)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(ut.Trainable, "scores", real)
    resumed = ut.train_uni(cfg, tmp_path / "resumed", resume=True, device="cpu", progress=False)
    assert resumed["fit"].get("mlm_loss_curve") == straight["fit"].get("mlm_loss_curve")
    a = UniEncoder.load(str(tmp_path / "straight"), device="cpu", backend="torch").rank(CTX, CANDS)
    b = UniEncoder.load(str(tmp_path / "resumed"), device="cpu", backend="torch").rank(CTX, CANDS)
    np.testing.assert_allclose(a, b, atol=1e-5)  # same batches, same optimiser state


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    from tests.tiny import make_tiny_mpnet_bi_encoder

    return make_tiny_mpnet_bi_encoder(tmp_path_factory.mktemp("mpnet") / "model", seed=2)


@pytest.mark.parametrize("backbone", ["bert", "mpnet"])
def test_baselines_take_token_types_from_the_backbone(backbone, tiny_bi_dir, tiny_mpnet_dir):
    """BERT (type_vocab_size 2): cross rows carry types 0/1; MPNet (no type embeddings): none."""
    from pairsmith.distill.uni_train import ModelKind, Trainable, UniTrainConfig, cross_batch

    model, has_types = (tiny_bi_dir, True) if backbone == "bert" else (tiny_mpnet_dir, False)
    cfg = UniTrainConfig(model=str(model), max_context_tokens=32, max_candidate_tokens=16, head="cold")
    for kind in (ModelKind.CROSS, ModelKind.BI):
        t = Trainable(kind, cfg, "cpu", 4)
        assert t.tok.config.uses_type_ids is has_types, kind
    batch = cross_batch(t.tok, [(CTX, CANDS[:2])])
    if has_types:
        assert batch.token_type_ids is not None and batch.token_type_ids.max() == 1
    else:
        assert batch.token_type_ids is None
    uni = UniEncoder.from_backbone(str(model), config=SMALL, device="cpu", seed=0)
    assert uni.config.uses_type_ids is has_types
    assert uni.config.position_offset == (0 if has_types else 1)  # MPNet: pad id 0 + 1


def test_cross_baseline_trains_on_a_backbone_with_one_token_type(tmp_path):
    """type_vocab_size 1 (RoBERTa-like): a type id of 1 would index past the embedding table."""
    from pairsmith.distill.uni_train import train_uni

    model = make_tiny_backbone(tmp_path / "one-type", seed=4, type_vocab_size=1)
    data = _dd_file(tmp_path / "dd.jsonl", 8)
    cfg = _tiny_train_cfg(data, model, kind="cross", eval_sets=(str(data),))
    rep = train_uni(cfg, tmp_path / "out", device="cpu", progress=False)
    assert rep["fit"]["steps"] == 2 and rep["eval"][data.stem]["cases"] == 8


# -- backends: auto (engine table) and OpenVINO ---------------------------------------------------------


def _table(tmp_path: Path, backend: str, variant: str) -> Path:
    from pairsmith.encoders.onnx_quant import feature_set

    t = tmp_path / f"table-{backend}-{variant}.json"
    row = {"backend": backend, "variant": variant, "measured": "test row"}
    t.write_text(json.dumps({"rows": {feature_set().value: row}}))
    return t


def test_auto_backend_follows_the_engine_table_or_falls_back_to_torch(tiny_uni, tmp_path, monkeypatch):
    import pairsmith.encoders.onnx_quant as q
    from pairsmith.encoders.runtime import Backend

    d = tmp_path / "uni"
    tiny_uni.save(d)
    items = [(CTX, CANDS), ("short", ["x", "yy"])]
    want = tiny_uni.rank_many(items, mask="arrow")
    # the table's int8 (this CPU's shipped row): the Uni-Encoder export has no int8 -> torch, no export
    monkeypatch.setattr(q, "ENGINE_TABLE", _table(tmp_path, "onnx", "int8-static"))
    uni = UniEncoder.load(str(d), device="cpu", backend="auto")
    assert uni.backend_kind is Backend.TORCH and uni.model is not None and not (d / "onnx").exists()
    # an fp32 row: onnxruntime on the fp32 export (made on first use)
    monkeypatch.setattr(q, "ENGINE_TABLE", _table(tmp_path, "onnx", "fp32"))
    uni = UniEncoder.load(str(d), device="cpu", backend="auto")
    assert uni.backend_kind is Backend.ONNX and uni.model is None and (d / "onnx").is_dir()
    for g, w in zip(uni.rank_many(items, mask="arrow"), want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)  # fp32 graph vs torch: kernel order differs
    # an explicit variant is kept: int8 is refused with the reason, not silently replaced
    with pytest.raises(InvalidInput, match="fp32 only"):
        UniEncoder.load(str(d), device="cpu", backend="onnx", onnx_variant="int8")


def test_openvino_backend_runs_the_uni_export(tiny_uni, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="optional: pip install openvino==2026.4.1")
    import pairsmith.encoders.onnx_quant as q
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.runtime import Backend

    d = tmp_path / "uni"
    tiny_uni.save(d)
    items = [(CTX, CANDS), ("short", ["x", "yy", "a longer candidate here"])]
    ov = UniEncoder.load(str(d), device="cpu", backend="openvino")  # the fp32 export made on first use
    assert ov.backend_kind is Backend.OPENVINO and ov.model is None
    for mask in UniMask:
        want = tiny_uni.rank_many(items, mask=mask)
        for g, w in zip(ov.rank_many(items, mask=mask), want, strict=True):
            # 1e-4: fp32 graph vs torch (this CPU has no bf16, so OpenVINO infers in f32)
            np.testing.assert_allclose(g, w, atol=1e-4)
    monkeypatch.setattr(q, "ENGINE_TABLE", _table(tmp_path, "openvino", "fp32"))  # the AMX row's kind
    assert UniEncoder.load(str(d), device="cpu", backend="auto").backend_kind is Backend.OPENVINO
    with pytest.raises(InvalidInput, match="fp32 only"):
        UniEncoder.load(str(d), device="cpu", backend="openvino", onnx_variant="int8-static")
    with pytest.raises(InvalidInput, match="fp32 only"):
        export_onnx(str(d), ExportConfig(quantize="int8"))


# -- MLM auxiliary loss ------------------------------------------------------------------------------

ONE_STEP_GOLDEN = Path(__file__).parent / "golden" / "uni_train_one_step.json"


def _one_step_run(tmp_path: Path, model: Path, **extra) -> dict:
    """One training step (4 contexts, seed 1, no eval): the loss curve and a hash of every weight."""
    import hashlib

    import torch

    from pairsmith.distill.uni_train import train_uni

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _dd_file(tmp_path / "dd.jsonl", 12)
    cfg = _tiny_train_cfg(data, model, max_contexts=4, **extra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bits depend on how a reduction is split over threads
    try:
        rep = train_uni(cfg, tmp_path / "out", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    state = UniEncoder.load(str(tmp_path / "out"), device="cpu", backend="torch").model.state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return {
        "steps": rep["fit"]["steps"],
        "loss_curve": rep["fit"]["loss_curve"],
        "mlm_loss_curve": rep["fit"].get("mlm_loss_curve"),
        "weights_sha256": h.hexdigest(),
    }


def test_mlm_weight_zero_is_the_plain_path_bit_for_bit(tmp_path, tiny_bi_dir, monkeypatch):
    """W = 0: one step gives the very weights the code gave before --mlm-weight existed (golden
    made at that commit, 1 torch thread); the MLM part is never built."""
    import torch

    import pairsmith.distill.uni_mlm as um
    from pairsmith.encoders.onnx_quant import feature_set

    golden = json.loads(ONE_STEP_GOLDEN.read_text())
    if (feature_set().value, torch.__version__) != (golden["feature_set"], golden["torch"]):
        pytest.skip(f"golden bits are from {golden['feature_set']} / torch {golden['torch']}")

    def never(*a, **k):
        raise AssertionError("the MLM head was built with mlm_weight=0")

    monkeypatch.setattr(um, "MlmAux", never)
    got = _one_step_run(tmp_path, tiny_bi_dir, mlm_weight=0.0)
    assert {k: got[k] for k in ("steps", "loss_curve", "weights_sha256")} == {
        k: golden[k] for k in ("steps", "loss_curve", "weights_sha256")
    }
    assert got["mlm_loss_curve"] is None


def test_mlm_weight_reaches_the_weights(tmp_path, tiny_bi_dir):
    """Any ISA (the golden test above runs on one only): W scales the MLM term's effect on the weights,
    with the same RNG and masks, so step 1's MLM loss is the same for every W > 0."""
    w1 = _one_step_run(tmp_path / "w1", tiny_bi_dir, mlm_weight=1.0)
    w2 = _one_step_run(tmp_path / "w2", tiny_bi_dir, mlm_weight=2.0)
    assert w1["weights_sha256"] != w2["weights_sha256"]  # W does reach the weights (same RNG, same masks)
    assert w1["mlm_loss_curve"] == w2["mlm_loss_curve"]  # ... and step 1's MLM loss is the same
    assert np.isfinite(w1["mlm_loss_curve"]).all()


def test_mlm_mask_picks_15_percent_of_real_tokens_only(tiny_uni):
    from pairsmith.distill.uni_mlm import MLM_PROB, MlmAux, mlm_mask

    tok = tiny_uni.tokenizer
    enc, _, _ = tok.encode_groups([(CTX, CANDS), ("short", ["x", "yy"]), (CTX[:1], CANDS[::-1])] * 2)
    batch = tok.pad(enc.ids)
    ids = batch.input_ids
    mlm = MlmAux(tiny_uni.model, tiny_uni.source.path, "cpu")
    assert mlm.mask_id == 103  # [MASK] in the default model's WordPiece vocabulary
    eligible = mlm.eligible(batch)
    real = (batch.attention_mask > 0) & ~np.isin(ids, [tok.cls_id, tok.sep_id, tok.pad_id])
    np.testing.assert_array_equal(eligible, real)  # context + candidate words: no [CLS]/[SEP]/padding
    assert (batch.attention_mask == 0).any() and real.sum() > 100  # there is padding to leave out
    out, picked = mlm_mask(ids, eligible, mlm.mask_id, mlm.vocab, rng=np.random.default_rng(0))
    assert picked.sum() == round(MLM_PROB * eligible.sum()) and not (picked & ~eligible).any()
    np.testing.assert_array_equal(out[~picked], ids[~picked])  # only picked tokens change
    # 80 % of the 23 picks become [MASK]: P(half or fewer) = 6e-4 (binomial); the seed is fixed anyway
    assert (out[picked] == 103).mean() > 0.5


def test_mlm_loss_is_finite_and_falls_on_a_tiny_model(tiny_bi_dir):
    import torch

    from pairsmith.distill.uni_mlm import MlmAux
    from pairsmith.distill.uni_train import ModelKind, Trainable, UniTrainConfig

    cfg = UniTrainConfig(
        model=str(tiny_bi_dir), max_context_tokens=32, max_candidate_tokens=16, mlm_weight=1.0
    )
    torch.manual_seed(0)
    t = Trainable(ModelKind.UNI, cfg, "cpu", 4)
    mlm = MlmAux(t.module, t.uni.source.path, "cpu")
    batch = t.uni_batch([(CTX, CANDS[:4]), (["Any plans?"], ["Hiking.", "No", "Sleep.", "Work."])])
    t.module.eval()  # no dropout: the same masked copy every step, so the loss must fall
    opt = torch.optim.Adam([*t.module.parameters(), *mlm.parameters()], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = mlm.loss(batch, np.random.default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[0] > np.log(30522) - 1.0  # about uniform at the start
    assert losses[-1] < losses[0] - 0.5, losses


def test_mlm_weight_is_validated():
    from pairsmith.distill.uni_train import UniTrainConfig

    with pytest.raises(InvalidInput, match="mlm_weight: must be a finite number >= 0"):
        UniTrainConfig(mlm_weight=-1.0)
    with pytest.raises(InvalidInput, match="kind uni only"):
        UniTrainConfig(kind="cross", mlm_weight=0.5)


def test_eval_response_uni_encoder_limit_and_auto_backend(tiny_uni, tmp_path):
    from pairsmith.cli.main import main

    d = tmp_path / "uni"
    tiny_uni.save(d)
    data = _dd_file(tmp_path / "dd.jsonl", 5)
    out = tmp_path / "res.json"
    args = [
        "eval",
        "response",
        "--model",
        str(d),
        "--uni-encoder",
        "--dataset",
        str(data),
        "--json",
        str(out),
    ]
    assert main([*args, "--limit", "2", "--backend", "auto"]) == 0
    res = json.loads(out.read_text())
    assert res["results"]["cases"] == 2 and res["subset"] == {"limit": 2, "contexts": 2}
    assert res["task"] == "response:dd[:2]"
    assert main([*args, "--limit", "-3"]) == 2


# -- warm start from a bi-encoder ------------------------------------------------------------------


def _bi_cosines(bi_dir, items):
    from pairsmith.distill.evaluation import context_text
    from pairsmith.encoders import BiEncoder

    bi = BiEncoder.load(str(bi_dir), device="cpu", backend="torch")
    return [bi.similarity([context_text(c)] * len(x), list(x)) for c, x in items]


@pytest.mark.parametrize("mask", list(UniMask))
def test_warm_start_scores_are_the_bi_encoder_cosines(tiny_bi_dir, mask):
    """Step 0: candidates restart at position 0 with type 0, the bi-encoder's pooling and cosine,
    cross-segment attention gated shut: every score equals the bi-encoder's own cosine."""
    items = [(CTX, CANDS), (["Any plans for the weekend?"], ["Hiking.", "No", "Sleep all day."])]
    uni = UniEncoder.from_bi_encoder(str(tiny_bi_dir), mask=mask, device="cpu")
    assert uni.config.head == "cosine" and uni.config.candidate_positions == "from-start"
    want = _bi_cosines(tiny_bi_dir, items)
    for got, w in zip(uni.rank_many(items), want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-5)
        assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-w, kind="stable"))
    # the gates are wired: opened, the candidates read the context and the scores move
    opened = UniEncoder.from_bi_encoder(str(tiny_bi_dir), mask=mask, device="cpu", gate_init=0.0)
    moved = max(float(np.abs(g - w).max()) for g, w in zip(opened.rank_many(items), want, strict=True))
    assert moved > 1e-4


def test_warm_start_save_load_and_onnx_parity(tiny_bi_dir, tmp_path):
    import torch

    from pairsmith.encoders.onnx_export import export_onnx

    uni = UniEncoder.from_bi_encoder(str(tiny_bi_dir), device="cpu")
    with torch.no_grad():  # trained-looking gates: some open, so a lost gate would show
        uni.model.gate_c2x[0, 0] = -1.0
        uni.model.gate_x2c[-1, -1] = 0.5
    d = tmp_path / "warm"
    uni.save(d)
    loaded = UniEncoder.load(str(d), device="cpu")
    assert float(loaded.model.gate_c2x[0, 0]) == -1.0 and loaded.config.score_scale == 20.0
    items = [(CTX, CANDS), ("short", ["x", "yy", "a longer candidate here"])]
    for mask in UniMask:
        for g, w in zip(loaded.rank_many(items, mask=mask), uni.rank_many(items, mask=mask), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
    res = export_onnx(str(d))
    assert res.kind == "uni" and res.manifest["variants"]["fp32"]["max_abs_diff_vs_torch"] < 1e-4
    onnx = UniEncoder.load(str(d), device="cpu", backend="onnx", auto_export=False)
    for mask in UniMask:
        for g, w in zip(onnx.rank_many(items, mask=mask), loaded.rank_many(items, mask=mask), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-4)


def test_warm_start_refuses_what_it_cannot_place(tiny_uni, tmp_path):
    d = tmp_path / "plain"
    tiny_uni.save(d)
    with pytest.raises(InvalidInput, match="not a sentence-transformers bi-encoder"):
        UniEncoder.from_bi_encoder(str(d))


@pytest.mark.data
def test_warm_start_equals_the_bi_encoder_on_dailydialog(tmp_path):
    """The default bi-encoder on DailyDialog++ dev contexts that fit its limits: same order, same
    scores to ~1e-5, same R@1."""
    from pairsmith.distill.data import data_root

    path = data_root() / "dialogue/dailydialog-plusplus/dev.json"
    if not path.exists():
        pytest.skip(f"DailyDialog++ dev not found at {path} (set PAIRSMITH_DATA)")
    from pairsmith.distill.dialogue import load_dialogue

    ds = load_dialogue("dailydialog-dev")
    uni = UniEncoder.from_bi_encoder("default", device="cpu")
    items = [(c, [*p, *n]) for c, p, n in zip(ds.contexts[:24], ds.positives, ds.negatives, strict=False)]
    items = [it for it in items if not uni.tokenizer.context_ids(it[0])[1]][:12]  # no truncation
    assert len(items) >= 10
    got, want = uni.rank_many(items), _bi_cosines("default", items)
    r1_uni = r1_bi = 0
    for (_c, x), g, w in zip(items, got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
        assert list(np.argsort(-g, kind="stable")) == list(np.argsort(-w, kind="stable"))
        n_pos = len(x) - 10  # DailyDialog++: 5 random + 5 adversarial negatives
        r1_uni += sum(g[i] > g[n_pos:].max() for i in range(n_pos))
        r1_bi += sum(w[i] > w[n_pos:].max() for i in range(n_pos))
    assert r1_uni == r1_bi


def test_speaker_tokens_alternate_back_from_the_newest_turn(tiny_bi_dir):
    from dataclasses import replace

    uni = UniEncoder.from_bi_encoder(str(tiny_bi_dir), device="cpu")
    cfg = replace(uni.config, speaker_tokens=("[unused1]", "[unused2]"))
    tok = type(uni.tokenizer).from_dir(uni.source.path, cfg)
    u1, u2 = tok.speaker_ids
    ids, _ = tok.context_ids(["a", "b", "c"])
    assert [i for i in ids if i in (u1, u2)] == [u1, u2, u1]  # newest turn ("c") gets the first
    plain, _ = uni.tokenizer.context_ids(["a", "b", "c"])
    assert len(ids) == len(plain) + 3 and u1 not in plain and u2 not in plain  # off by default
    ids, _ = tok.context_ids(["b", "c"])
    assert [i for i in ids if i in (u1, u2)] == [u2, u1]
    with pytest.raises(Exception, match="not in the tokenizer's vocabulary"):
        type(uni.tokenizer).from_dir(uni.source.path, replace(cfg, speaker_tokens=("<spk1>", "<spk2>")))
    with pytest.raises(InvalidInput, match="speaker_tokens"):
        replace(cfg, speaker_tokens=("[unused1]",))
    # round-trips through uni_encoder.json
    assert UniConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_softmax_lives_in_postprocess_at_the_model_temperature(tiny_bi_dir):
    from pairsmith.encoders.postprocess import softmax

    p = softmax(np.array([0.1, 0.5, 0.2], dtype=np.float32), 20.0)
    want = np.exp(20 * np.array([0.1, 0.5, 0.2]))
    np.testing.assert_allclose(p, want / want.sum(), rtol=1e-6)
    assert softmax(np.array([1000.0, 0.0])).tolist() == [1.0, 0.0]  # no overflow
    uni = UniEncoder.from_bi_encoder(str(tiny_bi_dir), device="cpu")
    s = uni.rank(CTX, CANDS)
    np.testing.assert_allclose(uni.probabilities(s), softmax(s, 20.0))


def test_warm_training_moves_the_gates_and_keeps_the_start_when_nothing_beats_it(tmp_path, tiny_bi_dir):
    """Gates: finite, moved by about gate_lr per step (rescaled gradients; no Adam blow-up).
    Selection: with lr tiny nothing beats the start, so the start model is kept, improved false."""
    from pairsmith.distill.uni_train import train_uni

    data = _dd_file(tmp_path / "dd.jsonl", 12)
    cfg = _tiny_train_cfg(
        data, tiny_bi_dir, head="warm", mask="context-blind", select=str(data), warmup=0.0, gate_lr=0.5
    )
    rep = train_uni(cfg, tmp_path / "warm", device="cpu", progress=False)
    assert rep["head"] == "warm" and {"start_score", "best_score", "improved"} <= set(rep)
    gates = UniEncoder.load(str(tmp_path / "warm" / "model"), device="cpu").model.gate_c2x.detach()
    if rep["improved"]:
        moved = (gates + 30.0).abs()
        assert bool(torch_isfinite(gates)) and 0 < float(moved.max()) <= 0.5 * 3 + 1e-4
    assert rep["best_score"] == (rep["trained_score"] if rep["improved"] else rep["start_score"])
    still = _tiny_train_cfg(data, tiny_bi_dir, head="warm", select=str(data), lr=1e-12, gate_lr=1e-12)
    rep2 = train_uni(still, tmp_path / "still", device="cpu", progress=False)
    assert rep2["improved"] is False and rep2["best_score"] == rep2["start_score"]
    assert not (tmp_path / "still" / "start").exists()


def torch_isfinite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def test_max_contexts_counts_contexts_and_refuses_non_positive(tmp_path):
    from pairsmith.distill.data import DialogueSet
    from pairsmith.distill.uni_train import UniTrainConfig, _examples

    ds = DialogueSet(
        "x", [["c0"], ["c1"], ["c2"], ["c3"]], [["p0", "q0"], ["p1"], ["p2", "q2", "r2"], ["p3"]], [["n"]] * 4
    )
    ex, n = _examples(ds, UniTrainConfig(max_contexts=2, seed=0))
    assert n == 2 and len({tuple(c) for c, _, _ in ex}) == 2  # two contexts, all their positives
    assert len(ex) == sum(len(ds.positives[int(c[0][1])]) for c in {tuple(c) for c, _, _ in ex})
    assert _examples(ds, UniTrainConfig())[1] == 4
    for bad in (0, -5):
        with pytest.raises(InvalidInput, match="max_contexts: must be a positive number of contexts"):
            UniTrainConfig(max_contexts=bad)


def test_train_cli_refuses_negative_max_contexts_and_exits_3_without_improvement(tmp_path, tiny_bi_dir):
    import subprocess
    import sys

    data = _dd_file(tmp_path / "dd.jsonl", 8)
    base = [sys.executable, "-m", "pairsmith.cli.main", "train", "uni-encoder", "--data", str(data),
            "--model", str(tiny_bi_dir), "--max-context-tokens", "32", "--max-candidate-tokens", "16",
            "--batch-size", "4", "--eval", "none", "--no-progress", "--device", "cpu"]  # fmt: skip
    bad = subprocess.run(
        [*base, "--max-contexts", "-5", "--out", str(tmp_path / "a")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "max_contexts: must be a positive number" in bad.stderr
    r = subprocess.run(
        [*base, "--select", str(data), "--lr", "1e-12", "--gate-lr", "1e-12", "--require-improvement",
         "--out", str(tmp_path / "b")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 3 and "not improved" in r.stderr, r.stderr[-2000:]
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["improved"] is False and (tmp_path / "b" / "model" / "uni_encoder.json").is_file()


def _mutual_folder(root: Path, n: int) -> Path:
    words = "apple bus cat dog egg fish goat hat ice jam kite lamp".split()
    for split in ("dev", "test"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            w = words[i % len(words)]
            obj = {
                "answers": "ABCD"[i % 4],
                "options": [f"m : the {w} is {j}" for j in range(4)],
                "article": f"m : do you like the {w} ? f : yes , the {w} is fine .",
                "id": f"{split}_{i}",
            }
            (root / split / f"{split}_{i}.txt").write_text(json.dumps(obj))
    return root


@pytest.mark.parametrize("kind", ["bi", "cross", "uni"])
def test_eval_response_reads_a_mutual_folder(kind, tmp_path, tiny_bi_dir, tiny_cross_dir, tiny_uni):
    from pairsmith.cli.main import main

    root = _mutual_folder(tmp_path / "mutual", 6)
    out = tmp_path / "res.json"
    args = ["eval", "response", "--dataset", f"{root}:dev", "--json", str(out), "--device", "cpu"]
    if kind == "bi":
        args += ["--model", str(tiny_bi_dir)]
    elif kind == "cross":
        args += ["--model", str(tiny_bi_dir), "--reranker", str(tiny_cross_dir)]
    else:
        d = tmp_path / "uni"
        tiny_uni.save(d)
        args += ["--model", str(d), "--uni-encoder"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "response:mutual:dev" and res["results"]["cases"] == 6
    assert main([*args[:3], str(root / "test"), *args[4:]]) == 0  # the split folder itself
    assert json.loads(out.read_text())["task"] == "response:mutual:test"
