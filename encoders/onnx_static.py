"""Static int8: activation scales fixed from a calibration set, so a text's vector ignores its batch mates.

Dynamic int8 (``onnx_quant.make_int8``) quantises each weight MatMul's input
with one scale per *batch*, computed at run time: a long or unusual batch mate
changes every other row's rounding, and a document re-embedded later lands
elsewhere in the index. Static int8 fixes every activation scale and zero point
at export time from a calibration set, and then each row's arithmetic no
longer depends on the rest of the batch (tested at 1e-6).

How the graph is made (measured on an AVX2-only EPYC; docs/results.md, section
onnx / cpu speed, says what was tried):

1. ``quantize_dynamic`` writes the weight side exactly as the dynamic variant
   does: int8 weights per output channel on the weight MatMuls only (7-bit
   with ``reduce_range`` where the ISA has no VNNI), embeddings, LayerNorm,
   softmax, GELU, pooling and normalisation stay fp32.
2. The fp32 graph runs over the calibration texts, one text per run (no
   padding rows in the statistics), recording min/max of every tensor that
   feeds a ``DynamicQuantizeLinear``.
3. Each ``DynamicQuantizeLinear`` becomes a ``QuantizeLinear`` with constant
   scale and zero point (uint8, asymmetric, range widened to include 0 the way
   ``DynamicQuantizeLinear`` does).
4. Each ``MatMulInteger -> Cast -> Mul(scale) [-> Add(bias)]`` chain becomes
   one ``com.microsoft.MatMulIntegerToFloat`` (scales and bias applied inside
   the int8 kernel). onnxruntime fuses this pattern at load time only when the
   scale comes from a ``DynamicQuantizeLinear``, so for the frozen graph
   :func:`fuse_int8_matmuls` does it at export time: bit-identical outputs,
   about 10% faster on the AVX2 EPYC (docs/results.md).

onnxruntime's own ``quantize_static`` (QDQ format, same weight settings) was
measured too: as fast here, but its Q/DQ pairs sit on the residual stream
(every consumer of a quantised tensor, the residual Add included, reads the
de-quantised copy), so its vectors agree less closely with fp32 (mean cosine
0.988 vs 0.992 on STS-B dev); the route above keeps the residual path fp32.

Calibration: sentences the user passes (one per line, UTF-8) or the built-in
general-purpose set ``encoders/calibration/general_en.txt`` (341 sentences
written for pairsmith: everyday, news, science, technical, questions, code,
numbers, a few other languages, short queries and long paragraphs). The texts
used are copied next to the export and their SHA-256 goes into the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pairsmith.atomic import atomic_write_text
from pairsmith.errors import DataFormatError, FailedPrecondition, InvalidInput, NotFound

if TYPE_CHECKING:
    from pairsmith.encoders.onnx_graphs import GraphSpec
    from pairsmith.encoders.onnx_quant import Isa

log = logging.getLogger(__name__)

BUILTIN_CALIBRATION = "builtin:general_en"
_BUILTIN_FILE = Path(__file__).resolve().parent / "calibration" / "general_en.txt"
CALIBRATION_COPY = "calibration.txt"  # the texts used, next to the export
MIN_CALIBRATION_TEXTS = 16  # fewer gives ranges that the first unusual input overflows
MAX_CALIBRATION_TEXTS = 5000  # one forward pass each: keeps an export under a few minutes


@dataclass(frozen=True)
class Calibration:
    """The texts that fix the activation scales, and where they came from."""

    texts: tuple[str, ...]
    source: str  # builtin:general_en or the file path given
    sha256: str  # of the texts as used ("\n".join, UTF-8)

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "texts": len(self.texts),
            "file": CALIBRATION_COPY,
        }


def load_calibration(path: str | Path | None = None) -> Calibration:
    """Calibration texts from ``path`` (one per line; blank lines skipped), else the built-in set."""
    src = Path(path) if path is not None else _BUILTIN_FILE
    label = str(path) if path is not None else BUILTIN_CALIBRATION
    if not src.is_file():
        raise NotFound(f"calibration: {src} is not a file (one sentence per line expected)")
    try:
        raw = src.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        # Find the line for the message: byte offset -> line number.
        line = src.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataFormatError(src, "not UTF-8 text", line=line) from exc
    texts = tuple(t.strip() for t in raw.splitlines() if t.strip())
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise DataFormatError(
            src, f"{len(texts)} non-empty lines; static int8 needs at least {MIN_CALIBRATION_TEXTS} sentences"
        )
    if len(texts) > MAX_CALIBRATION_TEXTS:
        log.info("calibration: using the first %d of %d texts", MAX_CALIBRATION_TEXTS, len(texts))
        texts = texts[:MAX_CALIBRATION_TEXTS]
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    return Calibration(texts=texts, source=label, sha256=digest)


def _feeds(spec: GraphSpec, texts: tuple[str, ...], i: int) -> dict[str, np.ndarray]:
    """One calibration input, alone (batch 1, no padding). Cross-encoders get (text i, text i+1)."""
    if spec.kind == "cross":
        enc = spec.tokenizer(
            [texts[i]], [texts[(i + 1) % len(texts)]], truncation=True, max_length=spec.max_length
        )
    else:
        enc = spec.tokenizer([texts[i]], truncation=True, max_length=spec.max_length)
    return {n: np.asarray(enc[n], dtype=np.int64) for n in spec.input_names}  # each (1, T)


def activation_ranges(fp32: Path, tensors: list[str], spec: GraphSpec, cal: Calibration) -> dict[str, tuple]:
    """Min/max of each named fp32 tensor over the calibration texts (each run alone)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo = dict.fromkeys(tensors, 0.0)  # ranges always include 0 (as DynamicQuantizeLinear's do)
    hi = dict.fromkeys(tensors, 0.0)
    for i in range(len(cal.texts)):
        outs = sess.run(tensors, _feeds(spec, cal.texts, i))
        for t, o in zip(tensors, outs, strict=True):
            lo[t] = min(lo[t], float(o.min()))
            hi[t] = max(hi[t], float(o.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric uint8 over [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return float(scale), zp


def freeze_scales(dynamic_graph, ranges: dict[str, tuple]) -> int:
    """Turn every DynamicQuantizeLinear of ``dynamic_graph`` (an onnx ModelProto) into a fixed QuantizeLinear."""
    from onnx import helper, numpy_helper

    nodes = []
    n_frozen = 0
    for node in dynamic_graph.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in ranges:
            raise FailedPrecondition(f"export: no calibration range for tensor {x!r}")
        scale, zp = uint8_params(*ranges[x])
        q, s_name, zp_name = node.output
        dynamic_graph.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), s_name),
                numpy_helper.from_array(np.array(zp, dtype=np.uint8), zp_name),
            ]
        )
        nodes.append(
            helper.make_node("QuantizeLinear", [x, s_name, zp_name], [q], name=f"{node.name}_static")
        )
        n_frozen += 1
    del dynamic_graph.graph.node[:]
    dynamic_graph.graph.node.extend(nodes)
    return n_frozen


def fuse_int8_matmuls(model) -> int:
    """Rewrite ``MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add(bias)]`` as one
    ``com.microsoft.MatMulIntegerToFloat`` node (in place); returns how many were fused.

    Only chains whose scale is a ``Mul`` of two constants (the frozen activation scale and the
    per-channel weight scale) and whose bias is a constant vector are touched, and only when each
    intermediate tensor has exactly one consumer, so the rewrite cannot change what else reads them.
    """
    from collections import defaultdict

    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    for o in g.output:
        consumers[o.name].append(None)  # a graph output is a consumer nobody may remove

    def only(tensor: str, op: str):
        c = consumers[tensor]
        return c[0] if len(c) == 1 and c[0] is not None and c[0].op_type == op else None

    replaced: dict[int, object] = {}
    dropped: set[int] = set()
    for n in g.node:
        if n.op_type != "MatMulInteger" or len(n.input) != 4:
            continue
        cast = only(n.output[0], "Cast")
        mul = cast and only(cast.output[0], "Mul")
        if mul is None:
            continue
        scale = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        sm = producer.get(scale)
        if sm is None or sm.op_type != "Mul" or not all(x in inits for x in sm.input):
            continue
        a_scale, b_scale = sm.input
        if numpy_helper.to_array(inits[a_scale]).size != 1:  # the activation's scale is the scalar one
            a_scale, b_scale = b_scale, a_scale
        out, bias, chain = mul.output[0], [], [cast, mul]
        add = only(out, "Add")
        if add is not None:
            b = add.input[1] if add.input[0] == out else add.input[0]
            if b in inits and numpy_helper.to_array(inits[b]).ndim == 1:
                out, bias = add.output[0], [b]
                chain.append(add)
        a, w, a_zp, w_zp = n.input
        replaced[id(n)] = helper.make_node(
            "MatMulIntegerToFloat",
            [a, w, a_scale, b_scale, a_zp, w_zp, *bias],
            [out],
            name=f"{n.name}_to_float",
            domain="com.microsoft",
        )
        dropped.update(id(x) for x in chain)
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in dropped]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def make_int8_static(
    fp32: Path,
    dst: Path,
    *,
    spec: GraphSpec,
    isa: Isa,
    per_channel: bool,
    calibration: Calibration,
    tmp: Path,
) -> dict:
    """Write a static-int8 variant of ``fp32`` to ``dst`` (and the calibration texts beside it)."""
    import onnx

    from pairsmith.encoders.onnx_quant import _agreement, _quantize_dynamic

    if spec.kind == "cross" and len(calibration.texts) < 2:
        raise InvalidInput("calibration: a cross-encoder needs at least 2 texts (pairs are built from them)")
    dyn = tmp / "dynamic_for_static.onnx"
    _quantize_dynamic(fp32, dyn, isa=isa, per_channel=per_channel)
    model = onnx.load(str(dyn))
    tensors = sorted({n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"})
    if not tensors:
        raise FailedPrecondition(f"export: {fp32.name} has no weight MatMul to quantise")
    ranges = activation_ranges(fp32, tensors, spec, calibration)
    n = freeze_scales(model, ranges)
    n_fused = fuse_int8_matmuls(model)
    out_tmp = tmp / dst.name
    onnx.save(model, str(out_tmp))
    agreement = _agreement(fp32, out_tmp, spec)
    if agreement < 0.95:
        raise FailedPrecondition(
            f"export: static int8 graph disagrees with fp32 (min cosine {agreement:.4f} < 0.95); not written"
        )
    atomic_write_text(dst.parent / CALIBRATION_COPY, "\n".join(calibration.texts) + "\n")
    with open(out_tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(out_tmp, dst)
    log.info(
        "static int8 (%s) written: %s; %d activation scales; min cosine vs fp32 %.5f",
        isa.value,
        dst,
        n,
        agreement,
    )
    widest = max(ranges.values(), key=lambda r: r[1] - r[0])
    return {
        "scheme": "static",
        "isa": isa.value,
        "per_channel": per_channel,
        "reduce_range": isa.reduce_range,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calibration": {**calibration.manifest(), "method": "minmax", "one_text_per_run": True},
        "activation_scales": n,
        "fused_matmuls": n_fused,
        "widest_range": [round(widest[0], 4), round(widest[1], 4)],
        "min_cosine_vs_fp32": agreement,
    }
