"""The onnxruntime backend: runs an exported graph on a :class:`TokenBatch`.

``load_onnx_runner`` finds the export (``<model>/onnx`` or the export cache),
refuses one whose source fingerprint no longer matches the model, picks the
variant (``auto``: int8 on CPU, fp16 on GPU, fp32 when those are absent) and
the provider (CUDA where onnxruntime-gpu sees a GPU, else CPU), and sets the
session up for throughput: on the CPU the physical cores available to this
process are split into ``streams`` concurrent runs of one session (default: one
single-thread run per core — measured best on the 2-core AVX2 EPYC, 2 x 1 beats
1 x 2 by ~17%, and on a 16-core Xeon with AMX, 16 x 1 beats 8 x 2 / 4 x 4 / 2 x 8 /
1 x 16 by 1.6-3x, docs/results.md; the pipeline splits a lone batch so every
stream works on it), one inter-op
thread, sequential execution, all graph optimisations. On CUDA the runner uses IO binding (inputs copied once,
output fetched once); that path cannot be exercised on the CPU-only
development machine and is kept deliberately small.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairsmith.encoders.onnx_export import MANIFEST, find_export
from pairsmith.encoders.onnx_quant import FP16_FILE, FP32_FILE, Int8Scheme, detect_isa, int8_variant
from pairsmith.encoders.runtime import RunnerBackend
from pairsmith.encoders.source import ModelSource, fingerprint, read_json
from pairsmith.encoders.tokenize import TextTokenizer, Tokenizer
from pairsmith.encoders.types import OutputKind, TokenBatch
from pairsmith.errors import FailedPrecondition, InvalidInput, NotFound

log = logging.getLogger(__name__)

VARIANT_ALIASES = ("auto", "fp32", "int8", "int8-static", "int8-dynamic", "fp16")


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        sib = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            cores.add(sib.read_text().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def thread_plan(threads: int | None, streams: int | None, on_gpu: bool) -> tuple[int, int]:
    """(concurrent runs, intra-op threads per run) for ``threads`` CPU threads in all.

    ``threads`` None: the physical cores; ``streams`` None or 0: one single-thread run per thread on
    the CPU (throughput: measured best on 2 and on 16 cores, docs/results.md), always 1 on a GPU
    (one device queue).
    """
    if threads is not None and int(threads) < 1:
        raise InvalidInput(f"threads: must be >= 1, got {threads}")
    if streams is not None and int(streams) < 0:
        raise InvalidInput(f"streams: must be >= 0 (0 = automatic), got {streams}")
    total = int(threads) if threads else physical_cores()
    if on_gpu:
        return 1, total
    n = int(streams) if streams else total
    n = max(1, min(n, total))
    return n, max(1, total // n)


@dataclass(frozen=True)
class OnnxExport:
    """A located, validated export: its directory and manifest."""

    onnx_dir: Path
    manifest: dict

    @property
    def variants(self) -> dict[str, dict]:
        return self.manifest.get("variants", {})

    def path(self, variant: str) -> Path:
        return self.onnx_dir / self.variants[variant]["file"]


def open_export(source: ModelSource, kind: str) -> OnnxExport:
    """Find and validate the export of ``source``: kind, fingerprint, files present."""
    onnx_dir = find_export(source)
    manifest = read_json(onnx_dir / MANIFEST)
    hint = f"re-export: pairsmith export onnx --model {source.ref}"
    if manifest.get("kind") != kind:
        raise FailedPrecondition(
            f"onnx: {onnx_dir} holds a {manifest.get('kind')!r} export, not a {kind!r} one; {hint}"
        )
    want = fingerprint(source.path)  # type: ignore[arg-type]
    got = manifest.get("source_fingerprint")
    if got != want:
        raise FailedPrecondition(
            f"onnx: stale export in {onnx_dir}: made from model fingerprint {got}, "
            f"but {source.ref} is now {want}; {hint}"
        )
    return OnnxExport(onnx_dir=onnx_dir, manifest=manifest)


def _int8_preference(have: dict, v: str) -> list[str]:
    """int8 keys in ``have``, best first: this CPU's ISA before others; static before dynamic
    (``int8``/``int8-static``), or only one scheme (``int8-static`` / ``int8-dynamic``)."""
    isa = detect_isa()
    schemes = {
        "int8": (Int8Scheme.STATIC, Int8Scheme.DYNAMIC),
        "int8-static": (Int8Scheme.STATIC,),
        "int8-dynamic": (Int8Scheme.DYNAMIC,),
    }[v]
    order = [sc.value for sc in schemes]
    own = [int8_variant(isa, sc) for sc in schemes]
    other = sorted(
        (k for k in have if k.startswith("qint8_") and have[k].get("scheme", "dynamic") in order),
        key=lambda k: (order.index(have[k].get("scheme", "dynamic")), k),
    )
    return [k for k in own if k in have] + [k for k in other if k not in own]


def choose_variant(export: OnnxExport, variant: str | None, on_gpu: bool) -> str:
    """Resolve ``auto``/``int8``/``int8-static``/``int8-dynamic``/``fp16``/``fp32`` or a manifest key."""
    have = export.variants
    v = (variant or "auto").strip().lower()
    if v in have:
        chosen = v
    elif v in ("int8", "int8-static", "int8-dynamic"):
        pref = _int8_preference(have, v)
        if not pref:
            flag = "int8-dynamic" if v == "int8-dynamic" else "int8"
            raise NotFound(f"onnx: no {v} variant in {export.onnx_dir}; export with --quantize {flag}")
        chosen = pref[0]
        if have[chosen].get("isa") != detect_isa().value:
            log.warning(
                "onnx: int8 variant %s was made for another CPU than this one (%s)",
                chosen,
                detect_isa().value,
            )
    elif v == "auto":
        if on_gpu:
            chosen = "fp16" if "fp16" in have else "fp32"
        else:
            own = [int8_variant(detect_isa(), sc) for sc in (Int8Scheme.STATIC, Int8Scheme.DYNAMIC)]
            chosen = next((k for k in own if k in have), "fp32")
    elif v == "fp16":
        raise NotFound(f"onnx: no fp16 variant in {export.onnx_dir}; export with --fp16")
    else:
        choices = sorted({*VARIANT_ALIASES, *have})
        raise InvalidInput(f"onnx_variant: unknown {variant!r}; choose one of {choices}")
    if on_gpu and chosen.startswith("qint8_"):
        raise InvalidInput(
            "onnx_variant: int8 variants are for CPU only (slower than fp16 on GPU); use fp16 or fp32"
        )
    if not export.path(chosen).exists():
        raise NotFound(f"onnx: {export.path(chosen)} is listed in the manifest but missing; re-export")
    return chosen


def _providers(device: str) -> tuple[list, bool]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_gpu = device.startswith("cuda") or device == "auto"
    if want_gpu and "CUDAExecutionProvider" in available:
        dev_id = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"], True
    if device.startswith("cuda"):
        raise FailedPrecondition(
            f"device: {device} asked for, but onnxruntime has no CUDA provider "
            f"(available: {available}); pip install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"], False


def session_options(threads: int | None = None):
    """Options for one session; ``threads`` = intra-op threads of each run (None: the physical cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else physical_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OnnxRunner:
    """Runs one export variant; ``run`` returns the primary output as float32 numpy.

    ``run`` may be called from ``streams`` threads at once (onnxruntime sessions are thread-safe
    and release the GIL); each run uses ``intra_threads`` threads.
    """

    def __init__(
        self,
        path: Path,
        export: OnnxExport,
        variant: str,
        device: str,
        threads: int | None = None,
        streams: int | None = None,
    ):
        import onnxruntime as ort

        providers, self.on_gpu = _providers(device)
        self.streams, self.intra_threads = thread_plan(threads, streams, self.on_gpu)
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(self.intra_threads), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            raise FailedPrecondition(f"onnx: cannot load {path}: {exc}") from exc
        self.path = path
        self.variant = variant
        self.export = export
        self.output = export.manifest.get("primary_output") or self.session.get_outputs()[0].name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_dtypes = {
            i.name: (np.float32 if "float" in i.type else np.int64) for i in self.session.get_inputs()
        }
        self.device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        log.info(
            "onnx runner: %s on %s, %d stream(s) x %d thread(s)",
            path.name,
            self.session.get_providers()[0],
            self.streams,
            self.intra_threads,
        )

    def describe(self) -> str:
        """The engine in one line (Info, benchmark lines)."""
        where = "cuda" if self.on_gpu else f"{self.streams} stream(s) x {self.intra_threads} thread(s)"
        return f"onnxruntime {self.variant}, {where}"

    def _feeds(self, batch: TokenBatch) -> dict[str, np.ndarray]:
        """The batch's arrays the graph asks for, by name, in the graph's dtypes."""
        have = batch.feeds()
        if "token_type_ids" in self.input_names and "token_type_ids" not in have:
            have["token_type_ids"] = np.zeros_like(batch.input_ids)
        missing = [n for n in self.input_names if n not in have]
        if missing:
            raise FailedPrecondition(
                f"onnx: the graph needs inputs {missing} that this token batch does not carry"
            )
        return {n: np.ascontiguousarray(have[n], dtype=self.input_dtypes[n]) for n in self.input_names}

    def run(self, batch: TokenBatch) -> np.ndarray:
        feeds = self._feeds(batch)
        if self.on_gpu:
            return self._run_bound(feeds)
        return np.asarray(self.session.run([self.output], feeds)[0], dtype=np.float32)

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # GPU: copy inputs to the device once, let onnxruntime allocate the output there,
        # copy only the (small) primary output back. Untested here: no GPU on the dev machine.
        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        binding.bind_output(self.output, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def load_onnx_runner(
    source: ModelSource,
    kind: str,
    variant: str | None,
    device: str,
    *,
    threads: int | None = None,
    streams: int | None = None,
) -> OnnxRunner:
    """Open ``source``'s export of ``kind`` and a session on the chosen variant."""
    from pairsmith.encoders.onnx_graphs import exporter_kinds

    if kind not in exporter_kinds():
        raise InvalidInput(f"kind: expected one of {list(exporter_kinds())}, got {kind!r}")
    export = open_export(source, kind)
    _, on_gpu = _providers(device)
    chosen = choose_variant(export, variant, on_gpu)
    if not on_gpu and chosen == "fp16":
        log.warning("onnx: fp16 variant on CPU is slow and not what it is for; use fp32 or int8 on CPU")
    log.info("onnx: %s uses variant %s (%s)", source.ref, chosen, export.variants[chosen]["file"])
    return OnnxRunner(export.path(chosen), export, chosen, device, threads, streams)


@dataclass(frozen=True)
class OnnxModel:
    """What an encoder needs to run an export without torch: the backend, its tokenizer, facts."""

    backend: RunnerBackend
    export: OnnxExport
    model_dir: Path

    @property
    def dim(self) -> int:
        dim = int(self.export.manifest.get("details", {}).get("dim") or 0)
        if dim == 0 and self.backend.kind is OutputKind.EMBEDDINGS:  # exports made before "dim" was recorded
            ids = np.array([[1, 2]], dtype=np.int64)
            dim = int(
                self.backend.embed(TokenBatch(ids, np.ones_like(ids), np.zeros_like(ids))).values.shape[1]
            )
        return dim

    def tokenizer(self, max_length: int | None) -> Tokenizer:
        """The model's tokenizer, without ``transformers`` and without its torch weights.

        A WordPiece/BPE model: the fast tokenizer from ``tokenizer.json``. A model whose first
        module owns its tokenizer (e.g. a byte-level word embedder): that class's
        ``load_tokenizer(module_dir, max_length)``.
        """
        runner = self.backend.runner
        length = int(max_length or self.export.manifest.get("max_length") or 512)
        first = _first_module(self.model_dir)
        if first is not None:
            cls, module_dir = first
            return cls.load_tokenizer(module_dir, length)
        return TextTokenizer.from_dir(
            self.model_dir, length, uses_type_ids="token_type_ids" in runner.input_names
        )


def _first_module(model_dir: Path):
    """(class, folder) of a custom first module with its own tokenizer, else None."""
    import importlib

    mj = model_dir / "modules.json"
    if not mj.is_file():
        return None
    mods = read_json(mj)
    if not mods:
        return None
    ref = str(mods[0].get("type", ""))
    if ref.startswith("sentence_transformers."):
        return None
    from pairsmith.encoders.bi_encoder import trusted_custom_modules

    trusted_custom_modules(model_dir)  # refuses classes from outside pairsmith
    mod_name, _, cls_name = ref.rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if not hasattr(cls, "load_tokenizer"):
        return None
    return cls, model_dir / str(mods[0].get("path", ""))


_KIND_OUTPUT = {"bi": OutputKind.EMBEDDINGS, "cross": OutputKind.SCORES, "uni": OutputKind.GROUPED_SCORES}


def load_onnx_backend(
    source: ModelSource,
    kind: str,
    variant: str | None,
    device: str,
    *,
    threads: int | None = None,
    streams: int | None = None,
    auto_export: bool = True,
    output: OutputKind | None = None,
) -> OnnxModel:
    """The backend BiEncoder / CrossEncoder use with ``backend='onnx'``.

    With no export yet (or no int8 variant when one is asked for) and ``auto_export``, the model
    is exported once (:func:`pairsmith.encoders.engines.ensure_export`: into the model's ``onnx/``
    or the cache for packaged/read-only models), with a progress line on stderr.
    """
    if source.path is None:
        raise NotFound(
            f"onnx: {source.ref} is a hub name; export a local copy first: "
            f"pairsmith export onnx --model {source.ref} --out DIR"
        )
    from pairsmith.encoders.engines import ensure_export

    ensure_export(source, kind, variant, auto_export=auto_export)  # the one export-on-first-use step
    runner = load_onnx_runner(source, kind, variant, device, threads=threads, streams=streams)
    out_kind = output or _KIND_OUTPUT.get(kind, OutputKind.EMBEDDINGS)
    normalizes = bool(runner.export.manifest.get("details", {}).get("normalize"))
    return OnnxModel(RunnerBackend(runner, out_kind, normalizes=normalizes), runner.export, source.path)


__all__ = [
    "FP16_FILE",
    "FP32_FILE",
    "OnnxExport",
    "OnnxRunner",
    "choose_variant",
    "load_onnx_backend",
    "load_onnx_runner",
    "open_export",
    "physical_cores",
    "session_options",
    "thread_plan",
]
