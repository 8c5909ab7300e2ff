"""Variants of an exported fp32 graph: dynamic int8 for CPU, fp16 for GPU.

int8 routes (measured on the development machine; see README section onnx):
onnxruntime's transformer optimizer first fuses the graph (SkipLayerNorm,
BiasGelu, EmbedLayerNorm, and Attention for the dynamic scheme), then either

- ``blockwise`` (default): every weight MatMul becomes ``MatMulNBits`` with
  8-bit weights in blocks of 32 and ``accuracy_level=4``, so onnxruntime
  quantises activations per row and block at run time and multiplies in int8;
  no activation statistic crosses rows, so results do not depend on the batch;
- ``dynamic``: ``quantize_dynamic`` (per-channel int8 weights, one activation
  scale per tensor, i.e. per batch). The instruction set decides
  ``reduce_range``: without VNNI the u8 x s8 multiply-add saturates 16-bit
  sums, so avx2/avx512 weights use 7 bits.
"""

from __future__ import annotations

import enum
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pairsmith.errors import FailedPrecondition, InvalidInput

if TYPE_CHECKING:
    from pairsmith.encoders.onnx_export import GraphSpec

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"

# Hugging Face model types whose attention the onnxruntime "bert" optimizer understands.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet", "ernie"}
# Which ops int8 covers: the weight MatMuls (incl. the fused QKV Attention). Embeddings and
# Gather stay fp32: they cost no compute and quantising them only loses accuracy.
INT8_OPS = ("MatMul", "Attention")


class Int8Scheme(enum.Enum):
    """How int8 is applied.

    BLOCKWISE: weights int8 in blocks of 32 along the input dim (MatMulNBits, bits=8),
    activations quantised per row and block at run time (accuracy_level 4): int8 compute,
    batch invariant, nearly lossless. DYNAMIC: ``quantize_dynamic`` (per-channel weights,
    one activation scale per tensor, i.e. per batch): results depend on batch composition.
    """

    BLOCKWISE = "blockwise"
    DYNAMIC = "dynamic"

    @classmethod
    def parse(cls, value: str | Int8Scheme) -> Int8Scheme:
        if isinstance(value, Int8Scheme):
            return value
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise InvalidInput(
                f"int8_scheme: unknown {value!r}; choose one of {[s.value for s in cls]}"
            ) from None


BLOCK_SIZE = 32


class Isa(enum.Enum):
    """Instruction set an int8 file is tuned for (sentence-transformers' file-name suffixes)."""

    AVX2 = "avx2"
    AVX512 = "avx512"
    AVX512_VNNI = "avx512_vnni"
    ARM64 = "arm64"

    @property
    def reduce_range(self) -> bool:
        # Without VNNI, vpmaddubsw adds two u8*s8 products into int16 and can saturate: 7-bit weights avoid it.
        return self in (Isa.AVX2, Isa.AVX512)

    @classmethod
    def parse(cls, value: str | Isa) -> Isa:
        if isinstance(value, Isa):
            return value
        norm = value.strip().lower().replace("-", "_")
        if norm == "vnni":
            norm = "avx512_vnni"
        for i in cls:
            if i.value == norm:
                return i
        raise InvalidInput(f"isa: unknown {value!r}; choose one of {['auto', *[i.value for i in cls]]}")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_isa(flags: set[str] | None = None, machine: str | None = None) -> Isa:
    """The best int8 instruction set of this CPU (VNNI > AVX-512 > AVX2; arm64 on ARM)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return Isa.ARM64
    flags = cpu_flags() if flags is None else flags
    if {"avx512_vnni", "avx_vnni"} & flags:
        return Isa.AVX512_VNNI
    if "avx512f" in flags:
        return Isa.AVX512
    return Isa.AVX2


DEFAULT_INT8_SCHEME = Int8Scheme.BLOCKWISE


def int8_variant(isa: Isa, scheme: Int8Scheme = DEFAULT_INT8_SCHEME) -> str:
    """Manifest key of an int8 file: ``qint8_block32`` (any x86/ARM CPU) or ``qint8_<isa>`` (dynamic)."""
    return f"qint8_block{BLOCK_SIZE}" if scheme is Int8Scheme.BLOCKWISE else f"qint8_{isa.value}"


def int8_file(isa: Isa, scheme: Int8Scheme = DEFAULT_INT8_SCHEME) -> str:
    return f"model_{int8_variant(isa, scheme)}.onnx"


def int8_preference(isa: Isa | None = None) -> list[str]:
    """int8 manifest keys in the order ``auto`` / ``int8`` try them on this CPU."""
    isa = isa or detect_isa()
    other = Int8Scheme.DYNAMIC if DEFAULT_INT8_SCHEME is Int8Scheme.BLOCKWISE else Int8Scheme.BLOCKWISE
    return [int8_variant(isa, DEFAULT_INT8_SCHEME), int8_variant(isa, other)]


def _optimizer_type(spec: GraphSpec) -> str | None:
    return "bert" if spec.model_type in _BERT_LIKE and spec.num_heads and spec.hidden_size else None


def _optimize(src: Path, dst: Path, spec: GraphSpec, *, gpu: bool, attention: bool = True) -> dict:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    mtype = _optimizer_type(spec)
    if mtype is None:
        log.info("no transformer fusions for model type %s: using the plain graph", spec.model_type)
        return {}
    opts = FusionOptions(mtype)
    # A fused Attention op carries the QKV weights itself, where MatMulNBits cannot reach them.
    opts.enable_attention = attention
    m = optimizer.optimize_model(
        str(src),
        model_type=mtype,
        num_heads=spec.num_heads,
        hidden_size=spec.hidden_size,
        optimization_options=opts,
        opt_level=0,  # python fusions only; the session applies its own at load time
        use_gpu=gpu,
    )
    fused = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
    m.save_model_to_file(str(dst))
    return fused


def _quantize_blockwise(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=8,
        block_size=BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=4,  # int8 compute: activations quantised per row and block
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _quantize_dynamic(src: Path, dst: Path, *, isa: Isa, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(INT8_OPS),
        per_channel=per_channel,
        reduce_range=isa.reduce_range,
        weight_type=QuantType.QInt8,
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,  # optimizer output lacks some type info
            "MatMulConstBOnly": True,  # only weight MatMuls; activation x activation stays fp32
        },
    )


def make_int8(
    fp32: Path,
    dst: Path,
    *,
    spec: GraphSpec,
    isa: Isa,
    scheme: Int8Scheme,
    optimize: bool,
    per_channel: bool,
    tmp: Path,
) -> dict:
    """Write an int8 variant of ``fp32`` to ``dst``; returns facts for the manifest."""
    src = fp32
    fused: dict = {}
    if optimize and _optimizer_type(spec):
        src = tmp / "opt_int8.onnx"
        fused = _optimize(fp32, src, spec, gpu=False, attention=scheme is Int8Scheme.DYNAMIC)
    out_tmp = tmp / dst.name
    if scheme is Int8Scheme.BLOCKWISE:
        _quantize_blockwise(src, out_tmp)
        facts = {"bits": 8, "block_size": BLOCK_SIZE, "accuracy_level": 4, "symmetric": True}
    else:
        _quantize_dynamic(src, out_tmp, isa=isa, per_channel=per_channel)
        facts = {"per_channel": per_channel, "reduce_range": isa.reduce_range, "op_types": list(INT8_OPS)}
    agreement = _agreement(fp32, out_tmp, spec)
    if agreement < 0.95:
        raise FailedPrecondition(
            f"export: int8 graph disagrees with fp32 (min cosine {agreement:.4f} < 0.95); not written"
        )
    out_tmp.replace(dst)
    log.info("int8 (%s, %s) written: %s; min cosine vs fp32 %.5f", scheme.value, isa.value, dst, agreement)
    return {
        "scheme": scheme.value,
        "isa": isa.value,
        **facts,
        "fused": fused,
        "min_cosine_vs_fp32": agreement,
    }


def make_fp16(fp32: Path, dst: Path, *, spec: GraphSpec, optimize: bool, tmp: Path) -> dict:
    """Write an fp16 variant (inputs/outputs stay int64/float32) for GPU execution."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    fused: dict = {}
    src = fp32
    if optimize and _optimizer_type(spec):
        src = tmp / "opt_fp16.onnx"
        fused = _optimize(fp32, src, spec, gpu=True)
    model = OnnxModel(onnx.load(str(src)))
    try:
        model.convert_float_to_float16(keep_io_types=True, use_symbolic_shape_infer=True)
    except Exception as exc:  # symbolic shape inference is best effort on custom graphs
        log.info("fp16: symbolic shape inference failed (%s); converting without it", exc)
        model = OnnxModel(onnx.load(str(src)))
        model.convert_float_to_float16(keep_io_types=True, use_symbolic_shape_infer=False)
    out_tmp = tmp / dst.name
    model.save_model_to_file(str(out_tmp))
    out_tmp.replace(dst)
    return {"fused": fused, "keep_io_types": True}


def _agreement(ref: Path, cand: Path, spec: GraphSpec) -> float:
    """Min cosine between two graphs' primary outputs on a few real-looking inputs (CPU)."""
    import onnxruntime as ort

    texts = [
        "A man is playing a guitar on the stage.",
        "Two dogs run through a snowy field.",
        "The stock market fell sharply after the announcement of new tariffs on imported goods.",
        "Hello",
    ]
    if spec.kind == "cross":
        enc = spec.tokenizer(texts, texts[::-1], padding=True, truncation=True, max_length=spec.max_length)
    else:
        enc = spec.tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length)
    feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in spec.input_names}
    outs = []
    for p in (ref, cand):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs.append(s.run([spec.primary_output], feeds)[0].astype(np.float64))
    a, b = outs
    if spec.kind == "cross":
        # One logit per row: compare the vectors of logits over the rows.
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-12)).min())
