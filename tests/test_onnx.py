"""ONNX export + onnxruntime backend: parity with torch, variants, manifest checks, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pairsmith.encoders import Activation, BiEncoder, CrossEncoder
from pairsmith.encoders.onnx_export import (
    MANIFEST,
    ExportConfig,
    export_onnx,
    exporter_kinds,
    register_exporter,
)
from pairsmith.encoders.onnx_quant import Int8Scheme, Isa, detect_isa, int8_file
from pairsmith.errors import FailedPrecondition, InvalidInput, NotFound

SENTS = [
    "A man is playing a guitar.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "Stocks rallied sharply for three months in anticipation of a rebound in the second half of the year, "
    "while bond yields fell to their lowest level since the crisis and analysts revised forecasts upward.",
    "",
    "Ünïcödé tëxt wörks töö — 東京",
    "two words",
]
PAIRS = [(SENTS[0], SENTS[2]), (SENTS[1], SENTS[3]), (SENTS[5], SENTS[0]), ("a", "b"), (SENTS[3], SENTS[6])]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Route exports of the packaged default model into a temp cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAIRSMITH_CACHE", str(tmp_path_factory.mktemp("pairsmith-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def default_export(cache):
    return export_onnx("default", ExportConfig(quantize="int8"))


@pytest.fixture(scope="module")
def tiny_bi_export(tiny_bi_dir, tmp_path_factory):
    return export_onnx(
        str(tiny_bi_dir), ExportConfig(quantize="int8"), out=tmp_path_factory.mktemp("tb") / "m"
    )


@pytest.fixture(scope="module")
def tiny_cross_export(tiny_cross_dir, tmp_path_factory):
    return export_onnx(
        str(tiny_cross_dir), ExportConfig(quantize="int8"), out=tmp_path_factory.mktemp("tc") / "m"
    )


# -- parity ---------------------------------------------------------------------------------------


def test_default_bi_fp32_parity(default_export, default_bi):
    assert "site-packages" not in str(default_export.onnx_dir)  # packaged model: exported to the cache
    onnx = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
    ref = default_bi.encode(SENTS, batch_size=3).vectors
    got = onnx.encode(SENTS, batch_size=3).vectors
    assert got.shape == ref.shape == (len(SENTS), 384)
    assert _cos_rows(ref, got).min() >= 0.99999
    assert np.abs(ref - got).max() <= 1e-4
    # Pooling + normalisation live in the graph: the raw graph output is already unit length.
    raw = onnx.encode(SENTS, normalize=False).vectors
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)


def test_fp32_alone_equals_in_batch(default_export):
    onnx = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
    batch = onnx.encode(SENTS, batch_size=len(SENTS)).vectors
    alone = np.stack([onnx.encode([s]).vectors[0] for s in SENTS])
    assert np.abs(alone - batch).max() < 1e-5


def test_int8_close_to_fp32_and_batch_invariant(default_export):
    fp32 = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
    int8 = BiEncoder.load("default", device="cpu", backend="auto")  # static int8 on an x86 CPU
    isa = detect_isa()
    assert int8.pipeline.backend.variant == f"qint8_static_{isa.value}"
    facts = default_export.manifest["variants"][int8.pipeline.backend.variant]
    assert facts["per_channel"] and facts["reduce_range"] == isa.reduce_range
    assert facts["scheme"] == "static" and facts["calibration"]["source"] == "builtin:general_en"
    a = fp32.encode(SENTS).vectors
    b = int8.encode(SENTS).vectors
    # Measured on all STS-B dev sentences (AVX2 EPYC): mean cosine to fp32 0.992, min 0.974
    # (tiny texts are worst).
    cos = _cos_rows(a, b)
    assert cos.mean() > 0.985 and cos.min() > 0.95
    # Static int8 fixes every activation scale: a row alone equals the same row in a batch
    # (dynamic int8 differs by up to ~3e-2 here; tests/test_onnx_static.py checks more batches).
    alone = np.stack([int8.encode([s]).vectors[0] for s in SENTS])
    assert np.abs(alone - b).max() < 1e-6


def test_streams_give_the_same_rows_in_input_order(default_export):
    """Two concurrent single-thread runs (the CPU default) vs one run at a time: same vectors, same
    order, for fp32 and static int8 (batch-invariant), and a lone batch is split over both streams."""
    for variant in ("fp32", "int8-static"):
        one = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant=variant, streams=1)
        two = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant=variant, streams=2)
        assert one.pipeline.backend.streams == 1 and two.pipeline.backend.streams == 2
        assert "2 stream(s)" in two.engine and "1 stream(s)" in one.engine
        texts = SENTS * 5  # several planned batches of 3 rows, run out of order on two threads
        a = one.encode(texts, batch_size=3).vectors
        b = two.encode(texts, batch_size=3).vectors
        assert np.abs(a - b).max() < 1e-6, variant
        lone = two.encode(SENTS[:4], batch_size=32).vectors  # one planned batch -> two halves
        assert np.abs(lone - a[:4]).max() < 1e-6, variant


def test_split_plan_and_thread_plan():
    from pairsmith.encoders.onnx_runtime import thread_plan
    from pairsmith.encoders.pipeline import split_plan
    from pairsmith.errors import InvalidInput

    assert split_plan([(0, 8)], 2) == [(0, 4), (4, 8)]
    assert split_plan([(0, 1)], 2) == [(0, 1)]  # one row cannot be split
    assert split_plan([(0, 5), (5, 7)], 2) == [(0, 5), (5, 7)]  # enough batches already
    assert split_plan([(0, 9)], 3) == [(0, 3), (3, 6), (6, 9)]
    assert split_plan([], 2) == []
    assert thread_plan(4, None, on_gpu=False) == (4, 1)  # one single-thread run per core
    assert thread_plan(16, 0, on_gpu=False) == (16, 1)
    assert thread_plan(1, None, on_gpu=False) == (1, 1)  # never more streams than threads
    assert thread_plan(8, 3, on_gpu=False) == (3, 2)
    assert thread_plan(2, 1, on_gpu=False) == (1, 2)
    assert thread_plan(16, None, on_gpu=True) == (1, 16)  # one device queue on a GPU
    with pytest.raises(InvalidInput, match="streams"):
        thread_plan(2, -1, on_gpu=False)
    with pytest.raises(InvalidInput, match="threads"):
        thread_plan(0, None, on_gpu=False)


def test_cross_encoder_parity_on_default_backbone(tmp_path):
    ce = CrossEncoder.from_backbone("default", device="cpu", seed=0)
    ce.save(tmp_path / "ce")
    export_onnx(str(tmp_path / "ce"))
    torch_ce = CrossEncoder.load(str(tmp_path / "ce"), device="cpu", backend="torch")
    onnx_ce = CrossEncoder.load(str(tmp_path / "ce"), device="cpu", backend="onnx", onnx_variant="fp32")
    ref = torch_ce.score(PAIRS, activation=Activation.RAW, batch_size=2).values
    got = onnx_ce.score(PAIRS, activation=Activation.RAW, batch_size=2).values
    assert np.abs(ref - got).max() <= 1e-4
    alone = np.array([onnx_ce.score([p], activation=Activation.RAW).values[0] for p in PAIRS])
    assert np.abs(alone - got).max() < 1e-5
    np.testing.assert_allclose(onnx_ce.score(PAIRS).values, 1 / (1 + np.exp(-got)), atol=1e-6)
    # The cross-encoder runs on streams too (default 2 on 2+ cores) and says so; one stream, same logits.
    one = CrossEncoder.load(
        str(tmp_path / "ce"), device="cpu", backend="onnx", onnx_variant="fp32", streams=1
    )
    assert "1 stream(s)" in one.engine and torch_ce.engine.startswith("torch cpu")
    assert (
        np.abs(one.score(PAIRS * 3, activation=Activation.RAW, batch_size=2).values - np.tile(got, 3)).max()
        < 1e-5
    )


def test_tiny_cross_graph_outputs_logit_and_sigmoid(tiny_cross_export, tiny_cross_dir):
    import onnxruntime as ort

    m = tiny_cross_export.manifest
    assert m["kind"] == "cross" and m["outputs"] == ["logits", "scores"]
    ce = CrossEncoder.load(str(tiny_cross_export.model_dir), device="cpu", backend="torch")
    enc = ce.tokenizer.encode_pairs(PAIRS[:2])
    idx = np.arange(2)
    batch = ce.tokenizer.pad(enc.ids, enc.type_ids)
    sess = ort.InferenceSession(str(tiny_cross_export.onnx_dir / "model.onnx"))
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    feeds["token_type_ids"] = batch.token_type_ids
    logits, scores = sess.run(["logits", "scores"], feeds)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)
    torch_logits = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch").score(
        PAIRS[:2], activation=Activation.RAW
    )
    np.testing.assert_allclose(logits[:, 0], torch_logits.values[idx], atol=1e-5)


def test_int8_for_a_given_isa(tiny_bi_dir, tmp_path):
    cfg = ExportConfig(quantize="int8-dynamic", isa="avx2", fuse="on")
    res = export_onnx(str(tiny_bi_dir), cfg, out=tmp_path)
    v = res.manifest["variants"]["qint8_avx2"]
    assert v["reduce_range"] and v["file"] == "model_qint8_avx2.onnx" and v["fused"]
    enc = BiEncoder.load(str(tmp_path), device="cpu", backend="onnx", onnx_variant="int8")
    assert enc.pipeline.backend.variant == "qint8_avx2"  # the only int8 file, even if made for another CPU
    ref_enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
    ref = ref_enc.encode(SENTS).vectors
    assert _cos_rows(enc.encode(SENTS).vectors, ref).min() > 0.95
    # Lossy vectors must not silently mix with full-precision ones in an index.
    assert enc.fingerprint == ref_enc.fingerprint + "+qint8_avx2"
    fp32 = BiEncoder.load(str(tmp_path), device="cpu", backend="onnx", onnx_variant="fp32")
    assert fp32.fingerprint == ref_enc.fingerprint


def test_fp16_variant_is_written_and_close(tiny_bi_dir, tmp_path):
    # fp16 is meant for GPU (untested here: no GPU); onnxruntime's CPU kernels still run it, which
    # checks the conversion (io types kept, graph valid, values close).
    import onnx

    res = export_onnx(str(tiny_bi_dir), ExportConfig(fp16=True), out=tmp_path)
    v = res.manifest["variants"]["fp16"]
    assert v["file"] == "model_fp16.onnx" and v["keep_io_types"]
    g = onnx.load(str(tmp_path / "onnx" / "model_fp16.onnx")).graph
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in g.initializer)
    enc = BiEncoder.load(str(tmp_path), device="cpu", backend="onnx", onnx_variant="fp16")
    ref = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch").encode(SENTS).vectors
    assert _cos_rows(enc.encode(SENTS).vectors, ref).min() > 0.999


def test_tiny_bi_layout_and_dynamic_axes(tiny_bi_export, tiny_bi_dir):
    d = tiny_bi_export.onnx_dir
    static = int8_file(detect_isa(), Int8Scheme.STATIC)
    assert (d / "model.onnx").exists() and (d / static).exists() and (d / MANIFEST).exists()
    import onnx

    g = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
    dims = [[x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim] for i in g.input]
    assert all(dd == ["batch", "sequence"] for dd in dims)
    torch_v = (
        BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch").encode(SENTS, normalize=False).vectors
    )
    onnx_v = BiEncoder.load(str(tiny_bi_export.model_dir), device="cpu", backend="onnx", onnx_variant="fp32")
    np.testing.assert_allclose(onnx_v.encode(SENTS, normalize=False).vectors, torch_v, atol=1e-5)


# -- refusals -------------------------------------------------------------------------------------


def test_stale_export_is_refused(tiny_bi_dir, tmp_path):
    res = export_onnx(str(tiny_bi_dir), out=tmp_path / "m")
    cfg = tmp_path / "m" / "sentence_bert_config.json"
    data = json.loads(cfg.read_text())
    data["max_seq_length"] = 32
    cfg.unlink()
    cfg.write_text(json.dumps(data))
    with pytest.raises(FailedPrecondition, match="stale export"):
        BiEncoder.load(str(res.model_dir), device="cpu", backend="onnx")


def test_onnx_backend_exports_on_first_use_and_builds_no_torch_model(tiny_bi_dir, tmp_path, capsys):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bi_dir, plain, ignore=shutil.ignore_patterns("onnx"))
    enc = BiEncoder.load(str(plain), device="cpu", backend="onnx")
    assert "exporting it once" in capsys.readouterr().err
    assert (plain / "onnx" / MANIFEST).is_file()
    assert enc.st_model is None  # the weights are held once, by onnxruntime
    ref = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch").encode(SENTS).vectors
    np.testing.assert_allclose(enc.encode(SENTS).vectors, ref, atol=1e-5)
    BiEncoder.load(str(plain), device="cpu", backend="onnx")  # second load: found, no new export
    assert "exporting" not in capsys.readouterr().err


def test_bad_paths_and_variants(tiny_bi_dir, tiny_bi_export, tiny_cross_export, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        BiEncoder.load(str(tmp_path / "nope"), device="cpu", backend="onnx")
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bi_dir, plain, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(NotFound, match="no export found.*pairsmith export onnx"):
        BiEncoder.load(str(plain), device="cpu", backend="onnx", auto_export=False)
    assert not (plain / "onnx").exists()  # refused before anything was written
    with pytest.raises(InvalidInput, match="onnx_variant"):
        BiEncoder.load(str(tiny_bi_export.model_dir), device="cpu", backend="onnx", onnx_variant="int3")
    with pytest.raises(NotFound, match="fp16"):
        BiEncoder.load(str(tiny_bi_export.model_dir), device="cpu", backend="onnx", onnx_variant="fp16")
    with pytest.raises(FailedPrecondition, match="'cross' export, not a 'bi'"):
        from pairsmith.encoders.onnx_runtime import load_onnx_runner
        from pairsmith.encoders.source import resolve_model

        load_onnx_runner(resolve_model(str(tiny_cross_export.model_dir)), "bi", None, "cpu")
    # A corrupt graph file: a clear error naming the file, not an onnxruntime traceback.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bi_export.model_dir, broken)
    (broken / "onnx" / "model.onnx").unlink()
    (broken / "onnx" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(FailedPrecondition, match="cannot load .*model.onnx"):
        BiEncoder.load(str(broken), device="cpu", backend="onnx", onnx_variant="fp32")
    (broken / "onnx" / MANIFEST).unlink()
    with pytest.raises(FailedPrecondition, match="not a pairsmith export"):
        BiEncoder.load(str(broken), device="cpu", backend="onnx")


def test_variant_choice_per_device(tmp_path):
    from pairsmith.encoders.onnx_runtime import OnnxExport, choose_variant

    isa = detect_isa().value
    variants = {"fp32": {"file": "model.onnx"}, f"qint8_{isa}": {"file": f"model_qint8_{isa}.onnx"}}
    for v in variants.values():
        (tmp_path / v["file"]).write_bytes(b"x")
    exp = OnnxExport(tmp_path, {"variants": variants})
    assert choose_variant(exp, None, on_gpu=False) == f"qint8_{isa}"
    # A static variant beside it wins for auto / int8; int8-dynamic still reaches the dynamic one.
    variants[f"qint8_static_{isa}"] = {"file": f"model_qint8_static_{isa}.onnx", "scheme": "static"}
    (tmp_path / f"model_qint8_static_{isa}.onnx").write_bytes(b"x")
    assert choose_variant(exp, None, on_gpu=False) == f"qint8_static_{isa}"
    assert choose_variant(exp, "int8", on_gpu=False) == f"qint8_static_{isa}"
    assert choose_variant(exp, "int8-dynamic", on_gpu=False) == f"qint8_{isa}"
    assert choose_variant(exp, "int8-static", on_gpu=False) == f"qint8_static_{isa}"
    assert choose_variant(exp, "auto", on_gpu=True) == "fp32"  # never int8 on a GPU
    with pytest.raises(InvalidInput, match="CPU only"):
        choose_variant(exp, "int8", on_gpu=True)
    variants["fp16"] = {"file": "model_fp16.onnx"}
    (tmp_path / "model_fp16.onnx").write_bytes(b"x")
    assert choose_variant(exp, None, on_gpu=True) == "fp16"
    (tmp_path / "model_fp16.onnx").unlink()
    with pytest.raises(NotFound, match="missing"):
        choose_variant(exp, "fp16", on_gpu=True)


def test_export_config_validation(tmp_path):
    with pytest.raises(InvalidInput, match="quantize"):
        ExportConfig(quantize="int4")
    with pytest.raises(InvalidInput, match="opset"):
        ExportConfig(opset=9)
    with pytest.raises(InvalidInput, match="isa"):
        ExportConfig(quantize="int8", isa="sse2")
    with pytest.raises(InvalidInput, match="kind"):
        ExportConfig(kind="tri")
    with pytest.raises(InvalidInput, match="fuse"):
        ExportConfig(fuse="maybe")
    # static int8 quantises the plain graph: a requested fusion would be silently dropped, so it is refused
    for q in ("int8", "int8-static"):
        with pytest.raises(InvalidInput, match="fuse: 'on' applies to --quantize int8-dynamic"):
            ExportConfig(quantize=q, fuse="on")
    assert ExportConfig(quantize="int8-dynamic", fuse="on").fuse == "on"
    assert ExportConfig(quantize="int8-static", fuse="on", fp16=True).fp16  # the fp16 file takes the fusions
    with pytest.raises(NotFound):
        export_onnx(str(tmp_path / "missing"))


def test_isa_detection():
    assert detect_isa({"avx2", "avx512f", "avx512_vnni"}, "x86_64") is Isa.AVX512_VNNI
    assert detect_isa({"avx2", "avx512f"}, "x86_64") is Isa.AVX512
    assert detect_isa({"avx2", "fma"}, "x86_64") is Isa.AVX2
    assert detect_isa(set(), "aarch64") is Isa.ARM64
    assert Isa.AVX2.reduce_range and not Isa.AVX512_VNNI.reduce_range
    assert Isa.parse("vnni") is Isa.AVX512_VNNI


def test_new_encoder_kind_plugs_into_exporter(tiny_bi_dir, tmp_path):
    from pairsmith.encoders.onnx_graphs import _EXPORTERS, _build_bi

    @register_exporter("test-kind")
    def build(source):
        spec = _build_bi(source)
        spec.kind = "test-kind"
        spec.details = {**spec.details, "note": "plugged in"}
        return spec

    try:
        assert "test-kind" in exporter_kinds()
        res = export_onnx(str(tiny_bi_dir), ExportConfig(kind="test-kind"), out=tmp_path / "m")
        assert res.manifest["kind"] == "test-kind" and res.manifest["details"]["note"] == "plugged in"
    finally:
        _EXPORTERS.pop("test-kind", None)


def test_cli_export(tiny_bi_dir, tmp_path, capsys):
    from pairsmith.cli.main import main

    out = tmp_path / "exported"
    assert main(["export", "onnx", "--model", str(tiny_bi_dir), "--out", str(out), "--quantize", "int8"]) == 0
    text = capsys.readouterr().out
    assert (
        "model_qint8_" in text and (out / "onnx" / "model.onnx").exists() and (out / "config.json").exists()
    )
    assert main(["export", "onnx", "--model", str(tmp_path / "nope")]) == 3
    assert main(["export", "onnx", "--model", str(tiny_bi_dir), "--quantize", "int8", "--isa", "sse2"]) == 2
    assert "isa" in capsys.readouterr().err


# -- accuracy --------------------------------------------------------------------------------------


def test_int8_stsb_spearman_within_half_point(default_export, shared_data):
    from scipy.stats import spearmanr

    from pairsmith.distill.data import load_sts_set

    dev = load_sts_set("stsb-dev", root=shared_data)
    # Every 5th pair (300 of 1,500): CI-sized; the full dev figure is in docs/results.md.
    a, b, gold = dev.s1[::5], dev.s2[::5], np.asarray(dev.scores)[::5]
    out = {}
    for variant in ("fp32", "int8"):
        enc = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant=variant)
        out[variant] = 100 * spearmanr(enc.similarity(a, b), gold).statistic
    assert out["fp32"] > 80
    assert abs(out["fp32"] - out["int8"]) <= 0.5, out
