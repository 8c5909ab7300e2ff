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


def test_openvino_fp32_matches_onnxruntime(tiny_export):
    d = str(tiny_export.model_dir)
    ov = BiEncoder.load(d, device="cpu", backend="openvino", onnx_variant="fp32")
    ort = BiEncoder.load(d, device="cpu", backend="onnx", onnx_variant="fp32")
    # This CPU has no bf16: OpenVINO infers in f32 and the vectors share torch's fingerprint.
    assert ov.pipeline.backend.runner.precision == "f32" or ov.fingerprint.endswith("+ov_bf16")
    assert ov.backend.value == "openvino"
    np.testing.assert_allclose(ov.encode(TEXTS).vectors, ort.encode(TEXTS).vectors, atol=1e-4)


def test_openvino_static_int8_is_batch_invariant(tiny_export):
    from pairsmith.encoders.openvino_runtime import load_openvino_runner

    d = str(tiny_export.model_dir)
    enc = BiEncoder.load(d, device="cpu", backend="openvino", onnx_variant="int8")
    assert enc.pipeline.backend.variant.startswith("qint8_static_")  # int8 on openvino = the static file
    together = enc.encode(TEXTS, batch_size=len(TEXTS), normalize=False).vectors
    alone = np.stack([enc.encode([t], normalize=False).vectors[0] for t in TEXTS])
    assert np.abs(alone - together).max() < 1e-5
    with pytest.raises(InvalidInput, match="dynamic"):
        BiEncoder.load(d, device="cpu", backend="openvino", onnx_variant="int8-dynamic")
    with pytest.raises(InvalidInput, match="precision"):
        load_openvino_runner(enc.source, "bi", "fp32", precision="fp8")


def test_auto_backend_runs_the_table_choice(tiny_bi_dir, tmp_path, monkeypatch):
    import shutil

    import pairsmith.encoders.onnx_quant as q

    model = tmp_path / "m"
    shutil.copytree(tiny_bi_dir, model)
    table = tmp_path / "table.json"
    table.write_text(
        json.dumps(
            {"rows": {q.feature_set().value: {"backend": "onnx", "variant": "int8-static", "measured": "t"}}}
        )
    )
    monkeypatch.setattr(q, "ENGINE_TABLE", table)
    enc = BiEncoder.load(str(model), device="cpu", backend="auto")  # no export yet: made on first use
    assert enc.backend.value == "onnx" and enc.pipeline.backend.variant.startswith("qint8_static_")
    assert (model / "onnx" / "calibration.txt").exists()
    table.write_text(
        json.dumps({"rows": {q.feature_set().value: {"backend": "onnx", "variant": "fp32", "measured": "t"}}})
    )
    assert BiEncoder.load(str(model), device="cpu", backend="auto").pipeline.backend.variant == "fp32"
    # An explicit variant wins over the table's.
    got = BiEncoder.load(str(model), device="cpu", backend="auto", onnx_variant="int8-dynamic")
    assert got.pipeline.backend.variant.startswith("qint8_") and "static" not in got.pipeline.backend.variant


def test_auto_is_the_default_and_says_why(tiny_bi_dir, tmp_path, capsys):
    """No backend named: the encoders run auto (static int8 on an x86 CPU), exported once with a
    progress line, and ``engine`` says what was picked and why; ``onnx`` alone means fp32."""
    import platform
    import shutil

    from pairsmith.encoders.onnx_quant import choose_engine

    model = tmp_path / "m"
    shutil.copytree(tiny_bi_dir, model)
    enc = BiEncoder.load(str(model), device="cpu")
    want = choose_engine()
    assert enc.backend.value == want.backend
    assert "auto:" in enc.engine and feature_set().value in enc.engine
    assert "exporting it once" in capsys.readouterr().err
    if platform.machine().lower() in ("x86_64", "amd64") and want.backend == "onnx":
        assert enc.pipeline.backend.variant.startswith("qint8_static_")
        together = enc.encode(TEXTS, batch_size=len(TEXTS)).vectors
        alone = np.stack([enc.encode([t]).vectors[0] for t in TEXTS])
        assert np.abs(alone - together).max() < 1e-5  # batch-invariant
    fp32 = BiEncoder.load(str(model), device="cpu", backend="onnx")
    assert fp32.pipeline.backend.variant == "fp32" and "auto" not in fp32.engine
    assert BiEncoder.load(str(model), device="cpu", backend="torch").fingerprint == fp32.fingerprint


def test_auto_on_a_cuda_machine_runs_torch_on_the_gpu(monkeypatch):
    """The CUDA branch of auto, on the CPU: only torch's device availability is mocked."""
    import torch

    from pairsmith.encoders.engines import choose_auto
    from pairsmith.encoders.runtime import Backend, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dev = resolve_device("auto")
    assert dev == "cuda"
    choice = choose_auto(dev, None)
    assert choice.backend is Backend.TORCH and choice.variant is None
    assert "cuda" in choice.why and "GPU" in choice.why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert choose_auto("cpu", None).backend is not Backend.TORCH


def test_engine_for_an_index_fingerprint():
    from pairsmith.encoders.engines import engine_for_fingerprint
    from pairsmith.encoders.runtime import Backend

    assert engine_for_fingerprint("abc123") == (Backend.TORCH, None)
    assert engine_for_fingerprint("abc123+qint8_static_avx2") == (Backend.ONNX, "qint8_static_avx2")


def test_serve_with_no_flags_serves_static_int8_and_info_says_why(tmp_path, capsys):
    """``pairsmith serve`` with no backend or device flag, a real server: Info (and ``pairsmith client
    info``) name the engine auto picked and why; on an x86 CPU that is onnxruntime static int8."""
    import platform

    from pairsmith.cli.main import main
    from pairsmith.encoders.onnx_quant import choose_engine
    from tests.service_util import SubprocessServer

    srv = SubprocessServer(tmp_path, "--model", "default", "--data-dir", str(tmp_path / "d")).start(
        timeout=600
    )
    try:
        assert main(["client", "--target", srv.target, "info"]) == 0
        info = json.loads(capsys.readouterr().out)
    finally:
        srv.terminate()
    assert info["backend"] == "auto"
    assert "auto:" in info["engine"] and info["cpuIsa"] in info["engine"]
    if platform.machine().lower() in ("x86_64", "amd64") and choose_engine().backend == "onnx":
        assert info["engine"].startswith("onnxruntime qint8_static_"), info["engine"]
    assert f"pairsmith: engine {info['engine']}" in srv.log.read_text()  # the start-up log says it too
