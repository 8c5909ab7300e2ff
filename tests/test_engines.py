"""CPU feature sets, the measured engine table behind backend='auto', and the OpenVINO runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pairsmith.encoders import BiEncoder
from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
from pairsmith.encoders.onnx_quant import (
    ENGINE_TABLE,
    FeatureSet,
    choose_engine,
    cpu_features,
    feature_set,
    read_engine_table,
)
from pairsmith.errors import FailedPrecondition, InvalidInput

TEXTS = ["A man is playing a guitar.", "Hi", "", "The quick brown fox jumps over the lazy dog twice.", "ok"]


def test_feature_sets():
    assert feature_set({"avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"}, "x86_64") is FeatureSet.AMX
    assert feature_set({"avx2", "avx512f", "avx512_vnni"}, "x86_64") is FeatureSet.AVX512_VNNI
    assert (
        feature_set({"avx2", "avx_vnni"}, "x86_64") is FeatureSet.AVX512_VNNI
    )  # VNNI decides the int8 kernel
    assert feature_set({"avx2", "avx512f"}, "x86_64") is FeatureSet.AVX512
    assert feature_set({"avx2", "fma"}, "x86_64") is FeatureSet.AVX2
    assert feature_set({"sse4_2"}, "x86_64") is FeatureSet.GENERIC
    assert feature_set(set(), "aarch64") is FeatureSet.ARM64


def test_engine_choice_follows_the_table(monkeypatch):
    table = {
        "rows": {
            "avx2": {"backend": "onnx", "variant": "int8-dynamic", "measured": "test row"},
            "amx": {"backend": "openvino", "variant": "fp32", "precision": "bf16", "measured": "test row"},
            "avx512": {"backend": "tensorrt", "variant": "fp32"},
        }
    }
    got = choose_engine(FeatureSet.AVX2, table=table)
    assert (got.backend, got.variant) == ("onnx", "int8-dynamic") and "test row" in got.why
    assert choose_engine(FeatureSet.ARM64, table=table).variant == "int8-static"  # no row: the default
    amx = choose_engine(FeatureSet.AMX, table=table, check_installed=False)
    assert (amx.backend, amx.precision) == ("openvino", "bf16")
    import pairsmith.encoders.openvino_runtime as ovr

    monkeypatch.setattr(ovr, "available", lambda: False)
    fallback = choose_engine(FeatureSet.AMX, table=table)
    assert fallback.backend == "onnx" and "not installed" in fallback.why
    with pytest.raises(FailedPrecondition, match="tensorrt"):
        choose_engine(FeatureSet.AVX512, table=table)


def test_shipped_table_is_valid_and_cpu_features_reports_it():
    table = read_engine_table()
    assert table["rows"], f"{ENGINE_TABLE} has no measured rows"
    for fs, row in table["rows"].items():
        FeatureSet(fs)  # every row is a known feature set
        assert row["backend"] in ("onnx", "openvino") and row["variant"] and row["measured"]
    facts = cpu_features()
    assert facts["feature_set"] in {f.value for f in FeatureSet}
    assert facts["engine"]["backend"] in ("onnx", "openvino") and facts["physical_cores"] >= 1
    json.dumps(facts)  # goes into Info / benchmark JSON as is


def test_unreadable_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(FailedPrecondition, match="engine table"):
        read_engine_table(bad)
    assert read_engine_table(tmp_path / "missing.json") == {"rows": {}}


# -- OpenVINO -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tiny_bi_dir, tmp_path_factory):
    pytest.importorskip("openvino", reason="optional: pip install openvino==2026.4.1")
    out = tmp_path_factory.mktemp("ov") / "m"
    export_onnx(str(tiny_bi_dir), ExportConfig(quantize="int8-dynamic"), out=out)
    return export_onnx(str(tiny_bi_dir), ExportConfig(quantize="int8-static"), out=out)


def _with_runner(model_dir, runner) -> BiEncoder:
    enc = BiEncoder.load(str(model_dir), device="cpu")
    enc.runner = runner
    return enc


def test_openvino_fp32_matches_onnxruntime(tiny_export):
    from pairsmith.encoders.onnx_runtime import load_onnx_runner
    from pairsmith.encoders.openvino_runtime import load_openvino_runner

    src = BiEncoder.load(str(tiny_export.model_dir), device="cpu").source
    ov = _with_runner(tiny_export.model_dir, load_openvino_runner(src, "bi", "fp32", precision="f32"))
    ort = _with_runner(tiny_export.model_dir, load_onnx_runner(src, "bi", "fp32", "cpu"))
    assert ov.runner.variant == "fp32"
    np.testing.assert_allclose(ov.encode(TEXTS).vectors, ort.encode(TEXTS).vectors, atol=1e-4)


def test_openvino_static_int8_is_batch_invariant(tiny_export):
    from pairsmith.encoders.openvino_runtime import load_openvino_runner

    src = BiEncoder.load(str(tiny_export.model_dir), device="cpu").source
    enc = _with_runner(tiny_export.model_dir, load_openvino_runner(src, "bi", "int8"))
    assert enc.runner.variant.startswith("qint8_static_")  # int8 on openvino = the static file
    together = enc.encode(TEXTS, batch_size=len(TEXTS), normalize=False).vectors
    alone = np.stack([enc.encode([t], normalize=False).vectors[0] for t in TEXTS])
    assert np.abs(alone - together).max() < 1e-5
    with pytest.raises(InvalidInput, match="dynamic"):
        load_openvino_runner(src, "bi", "int8-dynamic")
    with pytest.raises(InvalidInput, match="precision"):
        load_openvino_runner(src, "bi", "fp32", precision="fp8")
