"""Variants of an exported fp32 graph: int8 for CPU (static: ``onnx_static.py``; dynamic here), fp16 for GPU.

int8 route (measured on the development machine; README section onnx says why):
the plain exported graph goes straight to ``quantize_dynamic``: the weight
MatMuls become int8 with one scale per output channel (per-tensor loses 0.2
Spearman and agrees far worse with fp32 row by row), activations get one
scale per batch at run time, embeddings stay fp32. onnxruntime's own session
optimisations then fuse the quantised graph at load time. Running the Python
transformer optimizer (attention / SkipLayerNorm fusion) first was measured
*slower* on CPU with onnxruntime 1.32 (~735 vs ~900 sentences per CPU-second),
so it is off by default for int8 (``fuse='on'`` turns it on); fp16 for GPU
uses it, where the fused attention kernels matter.

The instruction set decides ``reduce_range``: without VNNI the u8 x s8
multiply-add (vpmaddubsw) saturates 16-bit sums, so avx2/avx512 weights use
7 bits; VNNI and ARM use all 8. The file name carries the ISA
(sentence-transformers' names: ``model_qint8_avx512_vnni.onnx`` ...).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pairsmith.atomic import replace_file
from pairsmith.encoders.postprocess import pair_cosine
from pairsmith.errors import FailedPrecondition, parse_enum

if TYPE_CHECKING:
    from pairsmith.encoders.onnx_graphs import GraphSpec

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"

# Hugging Face model types whose attention the onnxruntime "bert" optimizer understands.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet", "ernie"}
# Which ops int8 covers: the weight MatMuls (and a fused QKV Attention when fusions ran).
# Embeddings (Gather) stay fp32: they cost no compute and quantising them only loses accuracy.
INT8_OPS = ("MatMul", "Attention")


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
        return parse_enum(
            cls,
            value,
            "isa",
            aliases={"vnni": "avx512_vnni"},
            dash_to_underscore=True,
            extra_choices=("auto",),
        )


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


class Int8Scheme(enum.Enum):
    """How int8 activations get their scale: fixed from calibration (static) or per batch (dynamic)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


def int8_variant(isa: Isa, scheme: Int8Scheme = Int8Scheme.DYNAMIC) -> str:
    """Manifest key of an int8 file: ``qint8_<isa>`` (dynamic) or ``qint8_static_<isa>``."""
    return f"qint8_{isa.value}" if scheme is Int8Scheme.DYNAMIC else f"qint8_static_{isa.value}"


def int8_file(isa: Isa, scheme: Int8Scheme = Int8Scheme.DYNAMIC) -> str:
    return f"model_{int8_variant(isa, scheme)}.onnx"


def _optimizer_type(spec: GraphSpec) -> str | None:
    return "bert" if spec.model_type in _BERT_LIKE and spec.num_heads and spec.hidden_size else None


def _optimize(src: Path, dst: Path, spec: GraphSpec, *, gpu: bool) -> dict:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    mtype = _optimizer_type(spec)
    if mtype is None:
        log.info("no transformer fusions for model type %s: using the plain graph", spec.model_type)
        return {}
    opts = FusionOptions(mtype)
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


class _NoPreprocessHint(logging.Filter):
    """Drops quantize_dynamic's root-logger hint to run shape pre-processing (meant for CNNs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize_dynamic(
    src: Path, dst: Path, *, isa: Isa, per_channel: bool, exclude: tuple[str, ...] = ()
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, hint = logging.getLogger(), _NoPreprocessHint()
    root.addFilter(hint)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(INT8_OPS),
            per_channel=per_channel,
            reduce_range=isa.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),  # MatMuls kept fp32 (the most sensitive ones)
            extra_options={
                "DefaultTensorType": onnx.TensorProto.FLOAT,  # optimizer output lacks some type info
                "MatMulConstBOnly": True,  # only weight MatMuls; activation x activation stays fp32
            },
        )
    finally:
        root.removeFilter(hint)


def make_int8(
    fp32: Path, dst: Path, *, spec: GraphSpec, isa: Isa, fuse: bool, per_channel: bool, tmp: Path
) -> dict:
    """Write a dynamic-int8 variant of ``fp32`` to ``dst``; returns facts for the manifest."""
    src = fp32
    fused: dict = {}
    if fuse and _optimizer_type(spec):
        src = tmp / "opt_int8.onnx"
        fused = _optimize(fp32, src, spec, gpu=False)
    out_tmp = tmp / dst.name
    _quantize_dynamic(src, out_tmp, isa=isa, per_channel=per_channel)
    agreement = _agreement(fp32, out_tmp, spec)
    if agreement < 0.95:
        raise FailedPrecondition(
            f"export: int8 graph disagrees with fp32 (min cosine {agreement:.4f} < 0.95); not written"
        )
    replace_file(out_tmp, dst)
    log.info("int8 (%s) written: %s; min cosine vs fp32 %.5f", isa.value, dst, agreement)
    return {
        "scheme": "dynamic",
        "isa": isa.value,
        "per_channel": per_channel,
        "reduce_range": isa.reduce_range,
        "op_types": list(INT8_OPS),
        "fused": fused,
        "min_cosine_vs_fp32": agreement,
    }


def make_fp16(fp32: Path, dst: Path, *, spec: GraphSpec, fuse: bool, tmp: Path) -> dict:
    """Write an fp16 variant (inputs/outputs stay int64/float32) for GPU execution."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    fused: dict = {}
    src = fp32
    if fuse and _optimizer_type(spec):
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
    replace_file(out_tmp, dst)
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
    return float(pair_cosine(a, b).min())


# -- the engine per CPU feature set -----------------------------------------------------------------

ENGINE_TABLE = Path(__file__).resolve().parent / "engine_table.json"
ENGINE_BACKENDS = ("onnx", "openvino")
_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


class FeatureSet(enum.Enum):
    """The CPU features that decide the fastest CPU path (rows of ``engine_table.json``)."""

    GENERIC = "generic"  # x86 without AVX2
    AVX2 = "avx2"
    AVX512 = "avx512"
    AVX512_VNNI = "avx512_vnni"
    AMX = "amx"
    ARM64 = "arm64"


def feature_set(flags: set[str] | None = None, machine: str | None = None) -> FeatureSet:
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return FeatureSet.ARM64
    flags = cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_int8"} & flags:
        return FeatureSet.AMX
    if {"avx512_vnni", "avx_vnni"} & flags:
        return FeatureSet.AVX512_VNNI
    if "avx512f" in flags:
        return FeatureSet.AVX512
    return FeatureSet.AVX2 if "avx2" in flags else FeatureSet.GENERIC


@dataclass(frozen=True)
class EngineChoice:
    """What ``backend='auto'`` runs on this CPU, and why."""

    backend: str  # onnx | openvino
    variant: str  # an onnx_variant alias: int8-static, fp32, ...
    precision: str = "auto"  # openvino inference precision
    why: str = "default: no measured row for this CPU"


# No row for a feature set: static int8 on onnxruntime (batch-invariant, ISA-tuned weights).
_DEFAULT_ENGINE = EngineChoice("onnx", "int8-static")


def read_engine_table(path: Path | None = None) -> dict:
    p = path or ENGINE_TABLE
    try:
        table = json.loads(p.read_text())
    except FileNotFoundError:
        return {"rows": {}}
    except (OSError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(
            f"engine table {p}: unreadable ({exc}); restore it from the package"
        ) from exc
    return table


def choose_engine(
    fs: FeatureSet | None = None, *, table: dict | None = None, check_installed: bool = True
) -> EngineChoice:
    """The measured fastest batch-invariant path for ``fs`` (this CPU by default)."""
    fs = fs or feature_set()
    row = (table if table is not None else read_engine_table()).get("rows", {}).get(fs.value)
    if not row:
        return _DEFAULT_ENGINE
    choice = EngineChoice(
        backend=row["backend"],
        variant=row["variant"],
        precision=row.get("precision", "auto"),
        why=f"measured: {row.get('measured', '?')}",
    )
    if choice.backend not in ENGINE_BACKENDS:
        raise FailedPrecondition(f"engine table: row {fs.value} names unknown backend {choice.backend!r}")
    if check_installed and choice.backend == "openvino":
        from pairsmith.encoders.openvino_runtime import available

        if not available():
            log.info(
                "engine table picks openvino for %s, but it is not installed: onnx %s",
                fs.value,
                _DEFAULT_ENGINE.variant,
            )
            return dataclasses.replace(_DEFAULT_ENGINE, why="openvino measured faster here but not installed")
    return choice


def cpu_features() -> dict:
    """This CPU's ISA facts and the path ``backend='auto'`` takes on it (for Info and benchmark lines)."""
    from pairsmith.encoders.onnx_runtime import physical_cores

    flags = cpu_flags()
    fs = feature_set(flags)
    choice = choose_engine(fs)
    return {
        "cpu": cpu_model(),
        "feature_set": fs.value,
        "int8_isa": detect_isa(flags).value,
        "flags": [f for f in _RELEVANT_FLAGS if f in flags],
        "physical_cores": physical_cores(),
        "engine": dataclasses.asdict(choice),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
