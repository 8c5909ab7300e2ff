"""Static int8: batch invariance, parity to fp32, calibration recorded, bad calibration refused."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pairsmith.encoders import BiEncoder, CrossEncoder
from pairsmith.encoders.onnx_export import MANIFEST, ExportConfig, export_onnx
from pairsmith.encoders.onnx_quant import Int8Scheme, detect_isa, int8_variant
from pairsmith.encoders.onnx_static import (
    BUILTIN_CALIBRATION,
    CALIBRATION_COPY,
    load_calibration,
    uint8_params,
)
from pairsmith.errors import DataFormatError, InvalidInput, NotFound

# Varied lengths (1 to ~60 tokens) so every batch below carries padding for most rows.
TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "Stocks rallied sharply for three months in anticipation of a rebound in the second half of the year, "
    "while bond yields fell to their lowest level since the crisis and analysts revised forecasts upward.",
    "",
    "Ünïcödé tëxt wörks töö — 東京",
    "two words",
    "How do I reset my router?",
    "The committee postponed its decision until the next meeting in March.",
    "ok",
]
STATIC = int8_variant(detect_isa(), Int8Scheme.STATIC)
DYNAMIC = int8_variant(detect_isa(), Int8Scheme.DYNAMIC)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def default_both(tmp_path_factory):
    """The default model exported with static and dynamic int8 (second export keeps the first's files)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAIRSMITH_CACHE", str(tmp_path_factory.mktemp("static-cache")))
    export_onnx("default", ExportConfig(quantize="int8-dynamic"))
    yield export_onnx("default", ExportConfig(quantize="int8-static"))
    mp.undo()


def _alone_vs_batches(enc: BiEncoder) -> float:
    """Max |alone - in batch| over three batchings: all together, reversed in 3s, with long batch mates."""
    alone = np.stack([enc.encode([t], normalize=False).vectors[0] for t in TEXTS])
    together = enc.encode(TEXTS, batch_size=len(TEXTS), normalize=False).vectors
    rev = enc.encode(TEXTS[::-1], batch_size=3, normalize=False).vectors[::-1]
    mates = [TEXTS[3] * 2, "x " * 200]  # long, unusual rows that widen the dynamic range of a batch
    mixed = enc.encode(TEXTS + mates, batch_size=len(TEXTS) + 2, normalize=False).vectors[: len(TEXTS)]
    return float(max(np.abs(alone - b).max() for b in (together, rev, mixed)))


def test_static_int8_is_batch_invariant_dynamic_is_not(default_both):
    static = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="int8-static")
    dynamic = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="int8-dynamic")
    assert static.pipeline.backend.variant == STATIC and dynamic.pipeline.backend.variant == DYNAMIC
    assert _alone_vs_batches(static) < 1e-6
    # The contrast that shows the check can fail: per-batch scales move rows by far more.
    assert _alone_vs_batches(dynamic) > 1e-3


def test_static_int8_parity_to_fp32(default_both):
    fp32 = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
    static = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="int8")
    assert static.pipeline.backend.variant == STATIC  # int8 prefers static when both exist
    cos = _cos_rows(fp32.encode(TEXTS).vectors, static.encode(TEXTS).vectors)
    # Stated tolerance: on all 3,000 STS-B dev sentences (AVX2 EPYC) mean cosine to fp32 was 0.992
    # and min 0.974 (very short texts are worst); these 10 texts sit inside that.
    assert cos.mean() > 0.985 and cos.min() > 0.96, cos
    assert static.fingerprint.endswith("+" + STATIC)  # int8 vectors never mix with fp32 ones in an index


def test_manifest_records_builtin_calibration(default_both):
    d = default_both.onnx_dir
    facts = json.loads((d / MANIFEST).read_text())["variants"][STATIC]
    cal = facts["calibration"]
    assert facts["scheme"] == "static" and cal["source"] == BUILTIN_CALIBRATION
    used = (d / CALIBRATION_COPY).read_text(encoding="utf-8").splitlines()
    assert len(used) == cal["texts"] == len(load_calibration().texts) >= 300
    assert hashlib.sha256("\n".join(used).encode()).hexdigest() == cal["sha256"]
    assert facts["activation_scales"] == 24  # 4 weight-MatMul inputs x 6 layers: every one frozen
    assert facts["fused_matmuls"] == 36  # q, k, v, out, ffn-in, ffn-out x 6 layers
    assert DYNAMIC in json.loads((d / MANIFEST).read_text())["variants"]  # kept from the first export


def test_user_calibration_changes_scales_and_is_recorded(tiny_bi_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    def scales(onnx_dir):
        m = onnx.load(str(onnx_dir / f"model_{STATIC}.onnx"))
        return {i.name: float(numpy_helper.to_array(i)) for i in m.graph.initializer if i.name.endswith("_scale")
                and i.dims == []}  # fmt: skip

    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(f"short text number {i}" for i in range(20)) + "\n\n", encoding="utf-8")
    a = export_onnx(
        str(tiny_bi_dir), ExportConfig(quantize="int8-static", calibration=str(cal)), out=tmp_path / "a"
    )
    facts = a.manifest["variants"][STATIC]["calibration"]
    assert facts["source"] == str(cal) and facts["texts"] == 20  # blank lines skipped
    b = export_onnx(str(tiny_bi_dir), ExportConfig(quantize="int8-static"), out=tmp_path / "b")
    sa, sb = scales(a.onnx_dir), scales(b.onnx_dir)
    assert sa.keys() == sb.keys() and sa != sb  # the calibration set is what fixes the scales
    assert b.manifest["variants"][STATIC]["calibration"]["sha256"] != facts["sha256"]


def test_bad_calibration_is_refused_before_writing(tiny_bi_dir, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(NotFound, match="not a file"):
        export_onnx(
            str(tiny_bi_dir), ExportConfig(quantize="int8", calibration=str(tmp_path / "no.txt")), out=out
        )
    few = tmp_path / "few.txt"
    few.write_text("one\ntwo\n")
    with pytest.raises(DataFormatError, match=r"few\.txt: 2 non-empty lines"):
        export_onnx(str(tiny_bi_dir), ExportConfig(quantize="int8", calibration=str(few)), out=out)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"fine line\nsecond\n\xff\xfe broken\n")
    with pytest.raises(DataFormatError, match=r"bin\.txt:3: not UTF-8"):
        load_calibration(binary)
    assert not (out / "onnx" / "model.onnx").exists()  # nothing written on a refused calibration
    with pytest.raises(InvalidInput, match="calibration"):
        ExportConfig(quantize="int8-dynamic", calibration=str(few))


def test_uint8_params():
    s, zp = uint8_params(-1.0, 3.0)
    assert s == pytest.approx(4 / 255) and zp == 64  # round(1 / (4/255)) = 63.75 -> 64
    assert uint8_params(0.5, 2.0) == (pytest.approx(2 / 255), 0)  # range widened to include 0
    assert uint8_params(-2.0, -0.5) == (pytest.approx(2 / 255), 255)
    assert uint8_params(0.0, 0.0) == (1.0, 0)  # a dead tensor: any scale, zero maps to 0


def test_static_cross_encoder_is_batch_invariant(tiny_cross_dir, tmp_path):
    res = export_onnx(str(tiny_cross_dir), ExportConfig(quantize="int8"), out=tmp_path / "m")
    assert STATIC in res.manifest["variants"]
    ce = CrossEncoder.load(str(res.model_dir), device="cpu", backend="onnx", onnx_variant="int8")
    assert ce.pipeline.backend.variant == STATIC
    pairs = [(a, b) for a, b in zip(TEXTS, TEXTS[::-1], strict=True)]
    together = ce.score(pairs, batch_size=len(pairs)).values
    alone = np.array([ce.score([p]).values[0] for p in pairs])
    assert np.abs(alone - together).max() < 1e-6


def test_fused_int8_matmuls_equal_the_unfused_chain(tiny_bi_dir, tmp_path):
    """The export-time fusion (MatMulInteger -> Cast -> Mul -> Add as one MatMulIntegerToFloat)
    leaves no unfused chain and gives the same numbers as the chain it replaced."""
    import onnx
    import onnxruntime as ort

    from pairsmith.encoders.onnx_static import fuse_int8_matmuls

    res = export_onnx(str(tiny_bi_dir), ExportConfig(quantize="int8-static"), out=tmp_path / "m")
    path = res.onnx_dir / f"model_{STATIC}.onnx"
    fused = onnx.load(str(path))
    ops = [n.op_type for n in fused.graph.node]
    assert "MatMulInteger" not in ops and ops.count("MatMulIntegerToFloat") == res.manifest["variants"][STATIC][
        "fused_matmuls"] > 0  # fmt: skip
    # Compare a frozen graph with its fused copy, both run by onnxruntime with its own fusions off.
    from onnx import numpy_helper

    from pairsmith.encoders.onnx_quant import _quantize_dynamic
    from pairsmith.encoders.onnx_static import freeze_scales

    # A fresh tiny model's Linear biases are all zero, which would hide a dropped bias: fill them.
    fp32 = onnx.load(str(res.onnx_dir / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in fp32.graph.initializer:
        if init.name.endswith(".bias"):
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(rng.normal(0, 0.5, arr.shape).astype(arr.dtype), init.name))
    onnx.save(fp32, str(tmp_path / "biased.onnx"))
    dyn = tmp_path / "dyn.onnx"
    _quantize_dynamic(tmp_path / "biased.onnx", dyn, isa=detect_isa(), per_channel=True)
    plain = onnx.load(str(dyn))
    ranges = {n.input[0]: (-3.0, 4.0) for n in plain.graph.node if n.op_type == "DynamicQuantizeLinear"}
    freeze_scales(plain, ranges)
    again = onnx.load(str(dyn))
    freeze_scales(again, ranges)
    assert fuse_int8_matmuls(again) == ops.count("MatMulIntegerToFloat")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for m in (plain, again)
    ]
    ids = rng.integers(5, 90, size=(3, 9))
    feeds = {i.name: (ids if i.name == "input_ids" else np.ones_like(ids) if "mask" in i.name else np.zeros_like(ids))
             for i in run[0].get_inputs()}  # fmt: skip
    a, b = (r.run(None, feeds)[0] for r in run)
    # Same int8 products and the same fp32 scale/bias arithmetic, in another kernel: fp32 rounding only.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert np.abs(a).max() > 1e-3  # a real output, not zeros on both sides


def test_frozen_ranges_are_the_extremes_over_every_calibration_text(tiny_bi_dir, tmp_path):
    """Each frozen (scale, zero point) is uint8 over [min, max] of its tensor across *all* calibration
    texts, each run alone (the documented min/max statistic), recomputed here without the export code."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from transformers import AutoTokenizer

    # The widest inputs come first and the last line is short: a range taken from a subset is narrower.
    texts = [TEXTS[3] * 2, TEXTS[2], "Ünïcödé tëxt wörks töö — 東京 " * 3]
    texts += [f"plain sentence number {i} about the weather" for i in range(17)] + ["ok"]
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = export_onnx(
        str(tiny_bi_dir), ExportConfig(quantize="int8-static", calibration=str(cal)), out=tmp_path / "m"
    )
    static = onnx.load(str(res.onnx_dir / f"model_{STATIC}.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in static.graph.initializer}
    frozen = {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
              for n in static.graph.node if n.op_type == "QuantizeLinear"}  # fmt: skip
    assert len(frozen) == res.manifest["variants"][STATIC]["activation_scales"] > 0

    fp32 = onnx.load(str(res.onnx_dir / "model.onnx"))
    names = sorted(frozen)
    fp32.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names)
    sess = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(str(tiny_bi_dir))
    max_len = res.manifest["max_length"]  # the export's truncation (64 for the tiny model)
    wanted = {i.name for i in sess.get_inputs()}
    per_text = []
    for t in texts:
        enc = tok([t], truncation=True, max_length=max_len)
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in wanted}
        per_text.append([(float(o.min()), float(o.max())) for o in sess.run(names, feeds)])

    def params(lo: float, hi: float) -> tuple[float, int]:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        return (hi - lo) / 255.0, int(np.clip(np.round(-lo * 255.0 / (hi - lo)), 0, 255))

    narrower = 0
    for j, t in enumerate(names):
        lo = min(r[j][0] for r in per_text)
        hi = max(r[j][1] for r in per_text)
        scale, zp = params(lo, hi)
        assert frozen[t][0] == pytest.approx(scale, rel=1e-5), t
        assert abs(frozen[t][1] - zp) <= 1, t  # rounding at .5 may differ by one step
        narrower += params(*per_text[-1][j])[0] < scale * 0.99
    assert narrower > len(names) // 2  # the last text alone would give other scales: the check can fail
