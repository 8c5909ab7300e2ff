"""Which engine runs a model: torch, onnxruntime, OpenVINO, or ``auto`` (the default).

``backend="auto"`` is the measured fastest batch-invariant engine for the machine. On a
CUDA device it is torch on the GPU (the engine table is about CPUs). On a CPU it reads
the engine table (``encoders/engine_table.json``, filled by ``bench/encode_bench.py
--write-table``) for this CPU's feature set (AVX2, AVX-512, VNNI, AMX); a feature set
with no measured row gets onnxruntime with static int8. A variant the export lacks is
made once on first use (``auto_export``, with a progress line on stderr), exactly as
``pairsmith export onnx --quantize ...`` would.

``backend="onnx"`` means the fp32 ONNX export unless ``onnx_variant`` names another
(``int8``, ``int8-static``, ``int8-dynamic``, ``fp16``, ``auto``).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from pairsmith.encoders.cls_scorer import parse_last_layer
from pairsmith.encoders.runtime import Backend, RunnerBackend
from pairsmith.encoders.source import ModelSource
from pairsmith.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

_INT8 = ("int8", "int8-static", "int8-dynamic")


@dataclass(frozen=True)
class AutoChoice:
    """What ``backend='auto'`` runs on a device, and why (Info and the start-up log say it)."""

    backend: Backend
    variant: str | None
    why: str


def choose_auto(device: str, variant: str | None) -> AutoChoice:
    """The engine ``backend='auto'`` means on ``device`` (resolved: ``cpu``, ``cuda``, ``cuda:N``).

    An explicit ``variant`` is kept.
    """
    if not device.startswith("cpu"):
        return AutoChoice(Backend.TORCH, variant, f"auto: torch on {device} (a GPU is present)")
    from pairsmith.encoders.onnx_quant import choose_engine, feature_set

    choice = choose_engine()
    v = variant or choice.variant
    why = (
        f"auto: {choice.backend} {v}, the fastest batch-invariant engine for this "
        f"{feature_set().value} CPU ({choice.why})"
    )
    log.info("backend %s", why)
    return AutoChoice(Backend(choice.backend), v, why)


def resolve_auto(device: str, variant: str | None) -> tuple[Backend, str | None]:
    """(backend, variant) that ``backend='auto'`` means on ``device``; an explicit variant is kept."""
    c = choose_auto(device, variant)
    return c.backend, c.variant


def engine_for_fingerprint(fingerprint: str) -> tuple[Backend, str | None]:
    """(backend, variant) that reproduces the vectors of an index with ``fingerprint``.

    No ``+VARIANT`` suffix: full precision, which torch and fp32 ONNX share (torch here: nothing
    to export). A suffix names the export variant (e.g. ``qint8_static_avx2``): onnx with it.
    """
    _, _, variant = fingerprint.partition("+")
    return (Backend.ONNX, variant) if variant else (Backend.TORCH, None)


def _export_once(source: ModelSource, kind: str, quantize: str, last_layer: str = "cls") -> None:
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    what = "fp32" if quantize == "none" else quantize
    print(
        f"pairsmith: no {what} ONNX export of {source.ref} yet; exporting it once ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    res = export_onnx(str(source.path), ExportConfig(kind=kind, quantize=quantize, last_layer=last_layer))
    print(
        f"pairsmith: written to {res.onnx_dir} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def ensure_export(
    source: ModelSource, kind: str, variant: str | None, *, auto_export: bool, last_layer: str = "cls"
) -> None:
    """Make sure the export (and the int8 variant asked for) exist; export once when allowed.

    ``last_layer`` (cross-encoders) applies to an export made here; an existing one keeps its own.
    """
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
        quantize = "int8-static" if v == "int8" else v if v in _INT8 else "none"
        _export_once(source, kind, quantize, last_layer)
        return
    if auto_export and v in _INT8 and not _int8_preference(open_export(source, kind).variants, v):
        _export_once(source, kind, "int8-static" if v == "int8" else v, last_layer)


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
    last_layer: str | None = None,
):
    """An ``OnnxModel`` (backend + tokenizer facts) for ``be`` = ONNX or OPENVINO.

    ``last_layer`` (cross-encoders): what an export made on first use computes; an existing
    export made with the other choice is refused with the command that re-exports it.
    """
    from pairsmith.encoders.onnx_runtime import _KIND_OUTPUT, OnnxModel, load_onnx_backend
    from pairsmith.encoders.types import OutputKind

    if be not in (Backend.ONNX, Backend.OPENVINO):
        raise ValueError(f"load_export_backend: {be} is not an export engine")
    if be is Backend.ONNX:
        variant = variant or "fp32"  # backend onnx means what it says: fp32 unless a variant is named
    ensure_export(source, kind, variant, auto_export=auto_export, last_layer=last_layer or "cls")
    if be is Backend.ONNX:
        model = load_onnx_backend(
            source, kind, variant, device, threads=threads, streams=streams, auto_export=False
        )
    else:
        from pairsmith.encoders.openvino_runtime import load_openvino_runner

        runner = load_openvino_runner(source, kind, variant, threads=threads)
        normalizes = bool(runner.export.manifest.get("details", {}).get("normalize"))
        out_kind = _KIND_OUTPUT.get(kind, OutputKind.EMBEDDINGS)
        model = OnnxModel(RunnerBackend(runner, out_kind, normalizes=normalizes), runner.export, source.path)
    made = model.export.manifest.get("details", {}).get("last_layer")
    if last_layer is not None and made is not None and parse_last_layer(made) != last_layer:
        raise FailedPrecondition(
            f"last_layer: the ONNX export in {model.export.onnx_dir} was made with last_layer={made!r}, "
            f"not {last_layer!r}; re-export it: pairsmith export onnx --model {source.ref} "
            f"--last-layer {last_layer}"
        )
    return model
