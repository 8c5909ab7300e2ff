"""Which engine runs an exported model: onnxruntime, OpenVINO, or ``auto`` (measured per CPU).

``backend="auto"`` reads the engine table (``encoders/engine_table.json``, filled by
``bench/encode_bench.py --write-table``) for this CPU's feature set (AVX2, AVX-512,
VNNI, AMX) and runs the measured fastest batch-invariant path: on the AVX2-only
EPYC that is onnxruntime with static int8. On a GPU ``auto`` keeps torch (the
table is about CPUs). A variant the export lacks is made once on first use
(``auto_export``), exactly as ``pairsmith export onnx --quantize ...`` would.
"""

from __future__ import annotations

import logging
import sys
import time

from pairsmith.encoders.runtime import Backend, RunnerBackend
from pairsmith.encoders.source import ModelSource
from pairsmith.errors import NotFound

log = logging.getLogger(__name__)

_INT8 = ("int8", "int8-static", "int8-dynamic")


def resolve_auto(device: str, variant: str | None) -> tuple[Backend, str | None]:
    """(backend, variant) that ``backend='auto'`` means on ``device``; an explicit variant is kept."""
    if not device.startswith("cpu"):
        return Backend.TORCH, variant
    from pairsmith.encoders.onnx_quant import choose_engine

    choice = choose_engine()
    log.info("backend auto: %s %s (%s)", choice.backend, choice.variant, choice.why)
    return Backend(choice.backend), variant or choice.variant


def _export_once(source: ModelSource, kind: str, quantize: str) -> None:
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    what = "fp32" if quantize == "none" else quantize
    print(
        f"pairsmith: no {what} ONNX export of {source.ref} yet; exporting it once ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    res = export_onnx(str(source.path), ExportConfig(kind=kind, quantize=quantize))
    print(
        f"pairsmith: written to {res.onnx_dir} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def ensure_export(source: ModelSource, kind: str, variant: str | None, *, auto_export: bool) -> None:
    """Make sure the export (and the int8 variant asked for) exist; export once when allowed."""
    from pairsmith.encoders.onnx_export import find_export
    from pairsmith.encoders.onnx_runtime import _int8_preference, open_export

    if source.path is None:
        return  # load_onnx_backend gives the hub-name error
    v = (variant or "").strip().lower()
    try:
        find_export(source)
    except NotFound:
        if not auto_export:
            raise
        _export_once(source, kind, "int8-static" if v == "int8" else v if v in _INT8 else "none")
        return
    if auto_export and v in _INT8 and not _int8_preference(open_export(source, kind).variants, v):
        _export_once(source, kind, "int8-static" if v == "int8" else v)


def load_export_backend(
    be: Backend,
    source: ModelSource,
    *,
    kind: str,
    variant: str | None,
    device: str,
    auto_export: bool = True,
    threads: int | None = None,
    streams: int | None = None,
):
    """An ``OnnxModel`` (backend + tokenizer facts) for ``be`` = ONNX or OPENVINO."""
    from pairsmith.encoders.onnx_runtime import _KIND_OUTPUT, OnnxModel, load_onnx_backend
    from pairsmith.encoders.types import OutputKind

    if be is Backend.ONNX:
        return load_onnx_backend(
            source, kind, variant, device, threads=threads, streams=streams, auto_export=auto_export
        )
    if be is not Backend.OPENVINO:
        raise ValueError(f"load_export_backend: {be} is not an export engine")
    from pairsmith.encoders.openvino_runtime import load_openvino_runner

    ensure_export(source, kind, variant, auto_export=auto_export)

    runner = load_openvino_runner(source, kind, variant, threads=threads)
    normalizes = bool(runner.export.manifest.get("details", {}).get("normalize"))
    out_kind = _KIND_OUTPUT.get(kind, OutputKind.EMBEDDINGS)
    return OnnxModel(RunnerBackend(runner, out_kind, normalizes=normalizes), runner.export, source.path)
