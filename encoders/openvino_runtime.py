"""The OpenVINO backend: runs a pairsmith ONNX export with OpenVINO's CPU plugin.

Optional (``pip install openvino==2026.4.1``); it reads the same export as the
onnxruntime backend (``<model>/onnx`` or the export cache, fingerprint-checked),
so there is nothing extra to export. Variants:

- ``fp32``: ``model.onnx``. OpenVINO picks its own inference precision: bf16
  on CPUs with AMX / AVX512-BF16 (measured 3.73x sentence-transformers on a
  Xeon with AMX, no Spearman loss), f32 elsewhere. ``precision="f32"`` forces
  full precision.
- ``int8``: the static int8 file (``model_qint8_static_<isa>.onnx``); its
  fixed ``QuantizeLinear`` scales keep rows independent of their batch mates.

Whether OpenVINO is worth it is decided per CPU feature set by measurement
(``encoders/engine_table.json``, filled by ``bench/encode_bench.py``); on the
AVX2-only EPYC it lost to onnxruntime (docs/results.md, onnx / cpu speed).

The runner holds one compiled model and one infer request (OpenVINO's requests
are not thread-safe: calls are serialised with a lock; the server runs one
model thread per model anyway).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from pairsmith.encoders.onnx_runtime import OnnxExport, choose_variant, open_export, physical_cores
from pairsmith.encoders.source import ModelSource
from pairsmith.encoders.types import TokenBatch
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install openvino==2026.4.1"
PRECISIONS = ("auto", "f32", "bf16", "f16")


def _openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise FailedPrecondition(
            f"backend openvino: the openvino package is not installed; {INSTALL_HINT}"
        ) from exc
    return ov


def available() -> bool:
    try:
        _openvino()
    except FailedPrecondition:
        return False
    return True


class OpenVinoRunner:
    """Runs one export variant on OpenVINO's CPU plugin; ``run`` returns the primary output (float32)."""

    def __init__(
        self,
        path: Path,
        export: OnnxExport,
        variant: str,
        *,
        threads: int | None = None,
        precision: str = "auto",
    ) -> None:
        ov = _openvino()
        if precision not in PRECISIONS:
            raise InvalidInput(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the whole request on all threads
            "INFERENCE_NUM_THREADS": int(threads) if threads else physical_cores(),
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for unreadable graphs
            raise FailedPrecondition(f"backend openvino: cannot compile {path}: {exc}") from exc
        self.path = path
        self.export = export
        self.file_variant = variant  # the manifest key of the file compiled
        self.precision = self.compiled.get_property(
            "INFERENCE_PRECISION_HINT"
        ).get_type_name()  # f32, bf16 ...
        # Reduced-precision inference gives other vectors: its own fingerprint suffix (never mixed in an index).
        self.variant = variant if self.precision == "f32" else f"{variant}+ov_{self.precision}"
        name = export.manifest.get("primary_output") or self.compiled.outputs[0].get_any_name()
        self.output = self.compiled.output(name)
        # (the name the request is fed by, every name of the input, its numpy dtype): OpenVINO may
        # name an input after the node it feeds (the Uni-Encoder's float attention_bias).
        self._inputs = [
            (i.get_any_name(), frozenset(i.get_names()), i.get_element_type().to_dtype())
            for i in self.compiled.inputs
        ]
        self.input_names = {n for _, names, _ in self._inputs for n in names}
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.threads = int(threads) if threads else physical_cores()
        log.info("openvino runner: %s (inference precision %s)", path.name, self.precision)

    def describe(self) -> str:
        return f"openvino {self.variant} ({self.precision}), 1 stream x {self.threads} thread(s)"

    def run(self, batch: TokenBatch) -> np.ndarray:
        have = batch.feeds()  # every array the batch carries (ids, mask, types, positions, bias, spans)
        if have.get("token_type_ids") is None:
            have["token_type_ids"] = np.zeros_like(batch.input_ids)
        feeds = {}
        for key, names, dtype in self._inputs:
            name = next((n for n in sorted(names) if n in have), None)
            if name is None:
                raise FailedPrecondition(
                    f"backend openvino: the graph needs input {sorted(names)}, "
                    "which this token batch does not carry"
                )
            feeds[key] = np.ascontiguousarray(have[name], dtype=dtype)
        with self._lock:
            out = self._request.infer(feeds)[self.output]
            return np.array(out, dtype=np.float32, copy=True)  # the request reuses its output buffer


def load_openvino_runner(
    source: ModelSource,
    kind: str,
    variant: str | None,
    *,
    threads: int | None = None,
    precision: str = "auto",
) -> OpenVinoRunner:
    """The runner BiEncoder / CrossEncoder / UniEncoder use with ``backend='openvino'`` (CPU only)."""
    if kind not in ("bi", "cross", "uni"):
        raise InvalidInput(f"kind: expected 'bi', 'cross' or 'uni', got {kind!r}")
    _openvino()
    export = open_export(source, kind)
    v = (variant or "auto").strip().lower()
    v = {"auto": "fp32", "int8": "int8-static"}.get(v, v)  # auto: OpenVINO picks bf16 itself where it pays
    if v == "int8-dynamic" or (
        v.startswith("qint8_") and export.variants.get(v, {}).get("scheme") != "static"
    ):
        raise InvalidInput(
            f"onnx_variant: {variant!r} with backend openvino: dynamic int8 graphs are not supported "
            "there; use int8-static or fp32"
        )
    chosen = choose_variant(export, v, on_gpu=False)
    if chosen == "fp16":
        raise InvalidInput(
            "onnx_variant: fp16 is a GPU variant; use fp32 or int8-static with backend openvino"
        )
    log.info("openvino: %s uses variant %s (%s)", source.ref, chosen, export.variants[chosen]["file"])
    return OpenVinoRunner(export.path(chosen), export, chosen, threads=threads, precision=precision)
