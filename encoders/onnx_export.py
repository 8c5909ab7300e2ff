"""Export encoders to ONNX: the whole pipeline in one graph, plus int8 / fp16 variants.

A bi-encoder graph holds backbone + pooling (+ normalisation when the model
has it) and outputs ``sentence_embedding`` (B, D) next to ``last_hidden_state``
(B, T, H); a cross-encoder graph holds backbone + score head and outputs
``logits`` (B, L) and ``scores`` (sigmoid for one label, softmax otherwise).
Batch and sequence axes are dynamic.

Files follow sentence-transformers' layout inside ``<model>/onnx/``::

    model.onnx                    fp32, plain export (the parity reference)
    model_qint8_static_<isa>.onnx static int8 for CPU (activation scales fixed by calibration)
    model_qint8_<isa>.onnx        dynamic int8 for CPU (isa: avx2, avx512, avx512_vnni, arm64)
    calibration.txt               the calibration texts the static variant was made with
    model_fp16.onnx               fp16 for GPU
    pairsmith_onnx.json           manifest: kind, source fingerprint, variants, export config

The manifest records the source model's fingerprint; the runtime
(``onnx_runtime.py``) refuses an export whose source has changed since.

Extension point (``onnx_graphs.py``): an encoder kind registers a
:class:`GraphBuilder` with :func:`register_exporter`; the builder turns a model
directory into a torch module with the input/output contract above, and
everything after that (export, checks, quantisation, manifest) is shared.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairsmith.atomic import atomic_write_json, replace_file
from pairsmith.encoders.cls_scorer import parse_last_layer
from pairsmith.encoders.onnx_graphs import (  # noqa: F401  (re-exported: the extension point)
    _EXPORTERS,
    GraphBuilder,
    GraphSpec,
    _build_bi,
    _build_cross,
    detect_kind,
    exporter_kinds,
    register_exporter,
)
from pairsmith.encoders.onnx_quant import (
    FP16_FILE,
    FP32_FILE,
    Int8Scheme,
    Isa,
    detect_isa,
    int8_file,
    int8_variant,
    make_fp16,
    make_int8,
)
from pairsmith.encoders.source import ModelSource, default_model_dir, fingerprint, read_json, resolve_model
from pairsmith.errors import FailedPrecondition, InvalidInput, NotFound

log = logging.getLogger(__name__)

MANIFEST = "pairsmith_onnx.json"
MANIFEST_FORMAT = 1
DEFAULT_OPSET = 17
QUANTIZE_CHOICES = ("none", "int8", "int8-static", "int8-dynamic")  # int8 = int8-static
# Kinds whose export is fp32 only, and why (int8 calibration and the int8/fp16 agreement check
# feed plain tokenizer rows).
FP32_ONLY: dict[str, str] = {
    "uni": "the Uni-Encoder export is fp32 only: int8 calibration and the int8/fp16 agreement check "
    "feed plain tokenizer rows, not packed context + candidate rows with their 4-D attention mask",
}


# -- configuration and placement -----------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    """One export run; saved in the manifest."""

    kind: str = "auto"  # auto | bi | cross (or another registered kind)
    quantize: str = "none"  # none | int8 (= int8-static) | int8-static | int8-dynamic
    isa: str = "auto"  # auto | avx2 | avx512 | avx512_vnni | arm64 (int8 only)
    fp16: bool = False
    opset: int = DEFAULT_OPSET
    fuse: str = "auto"  # onnxruntime transformer fusions first: auto (fp16 yes, int8 no) | on | off
    per_channel: bool = True  # int8 weights: one scale per output channel
    calibration: str | None = None  # static int8: sentences file (one per line); None = built-in set
    check: bool = True  # compare fp32 ONNX with torch after export
    last_layer: str = "cls"  # cross: cls ([CLS]-only last layer where the model qualifies; exact) | full

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_CHOICES:
            raise InvalidInput(f"quantize: must be one of {list(QUANTIZE_CHOICES)}, got {self.quantize!r}")
        if self.calibration is not None and self.int8_scheme is not Int8Scheme.STATIC:
            raise InvalidInput("calibration: only used with --quantize int8-static (or int8)")
        if self.kind != "auto" and self.kind not in _EXPORTERS:
            raise InvalidInput(f"kind: unknown {self.kind!r}; choose one of {['auto', *_EXPORTERS]}")
        if not 14 <= self.opset <= 21:
            raise InvalidInput(f"opset: must be between 14 and 21, got {self.opset}")
        if self.isa != "auto":
            Isa.parse(self.isa)
        parse_last_layer(self.last_layer)
        if self.fuse not in ("auto", "on", "off"):
            raise InvalidInput(f"fuse: must be auto, on or off, got {self.fuse!r}")
        if self.fuse == "on" and self.int8_scheme is Int8Scheme.STATIC and not self.fp16:
            raise InvalidInput(
                "fuse: 'on' applies to --quantize int8-dynamic and --fp16; static int8 (int8, int8-static) "
                "quantises the plain graph (its frozen scales sit on the unfused MatMuls), so nothing would "
                "be fused: drop --fuse or use --quantize int8-dynamic"
            )

    @property
    def int8_scheme(self) -> Int8Scheme | None:
        if self.quantize == "none":
            return None
        return Int8Scheme.DYNAMIC if self.quantize == "int8-dynamic" else Int8Scheme.STATIC


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path  # the directory to load (model files + onnx/)
    onnx_dir: Path
    kind: str
    files: tuple[Path, ...]  # written this run
    manifest: dict


def cache_root() -> Path:
    """Where exports of read-only models (e.g. the packaged default) go: ``$PAIRSMITH_CACHE/onnx``."""
    base = os.environ.get("PAIRSMITH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pairsmith"
    )
    return Path(base) / "onnx"


def cached_export_dir(fp: str) -> Path:
    return cache_root() / fp


def _is_packaged_or_readonly(path: Path) -> bool:
    try:
        if path.resolve() == default_model_dir().resolve():
            return True
    except FailedPrecondition:
        pass
    return "site-packages" in path.resolve().parts or not os.access(path, os.W_OK)


def _copy_model(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of model directory ``src``, without its onnx/.

    Real copies, not hard links: a later in-place save into ``dst`` must not rewrite ``src``.
    """
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if rel.parts[0] == "onnx" or p.is_dir():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)


def _placement(source: ModelSource, out: Path | None, fp: str) -> tuple[Path, Path]:
    """(model dir to load afterwards, onnx dir to write)."""
    if out is not None:
        out = out.expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise InvalidInput(f"out: {out} is a file, expected a directory")
        if source.path is not None and out == source.path.resolve():
            return out, out / "onnx"
        if out.exists() and any(p.name != "onnx" for p in out.iterdir()):
            if not (out / "config.json").exists() or fingerprint(out) != fp:
                raise InvalidInput(f"out: {out} exists and holds other files; give an empty or new directory")
        out.mkdir(parents=True, exist_ok=True)
        if source.path is not None:
            _copy_model(source.path, out)
        return out, out / "onnx"
    if _is_packaged_or_readonly(source.path):
        d = cached_export_dir(fp)
        log.info("model directory %s is packaged or read-only: export goes to %s", source.path, d)
        return source.path, d
    return source.path, source.path / "onnx"


# -- export ----------------------------------------------------------------------------------------


def _torch_export(spec: GraphSpec, path: Path, opset: int) -> None:
    import warnings

    import torch

    feeds = spec.feeds(["A man is playing a guitar.", "Hi"])
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names)
    axes = dict(spec.input_axes) if spec.input_axes is not None else {}
    for n in spec.input_names:
        axes.setdefault(n, {0: "batch", 1: "sequence"})
    axes.update(spec.output_axes)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for every input
        # The TorchScript exporter: its graphs match onnxruntime's BERT fusion patterns.
        torch.onnx.export(
            spec.module,
            args,
            str(path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _parity(spec: GraphSpec, path: Path) -> float:
    """Max abs difference between torch and the fp32 graph on sentences of varied length."""
    import onnxruntime as ort
    import torch

    texts = [
        "A man is playing a guitar.",
        "Hi",
        "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn, twice.",
    ]
    feeds = spec.feeds(texts)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {i.name: (np.float32 if "float" in i.type else np.int64) for i in sess.get_inputs()}
    got = sess.run([spec.primary_output], {n: feeds[n].astype(types[n]) for n in types})[0]
    with torch.no_grad():
        ref = spec.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names])
        ref = ref[spec.output_names.index(spec.primary_output)].float().numpy()
    return float(np.abs(got - ref).max())


def export_onnx(
    model: str | os.PathLike[str], config: ExportConfig | None = None, *, out=None
) -> ExportResult:
    """Export ``model`` (``default``, a directory, or a hub name with ``out``) to ONNX.

    Writes ``onnx/model.onnx`` always, plus ``model_qint8_<isa>.onnx`` with
    ``quantize='int8'`` and ``model_fp16.onnx`` with ``fp16=True``. Packaged or
    read-only model directories export into :func:`cache_root` (found again by
    the runtime through the fingerprint); ``out`` writes a standalone copy.
    """
    cfg = config or ExportConfig()
    source = resolve_model(model)
    kind = detect_kind(source) if cfg.kind == "auto" else cfg.kind
    if kind not in _EXPORTERS:
        raise InvalidInput(f"kind: no exporter registered for {kind!r}")
    if kind in FP32_ONLY and (cfg.quantize != "none" or cfg.fp16):
        raise InvalidInput(f"quantize/fp16: {FP32_ONLY[kind]}; export without them (fp32)")
    if source.path is None and out is None:
        raise InvalidInput(f"export: {source.ref} is a hub name; give --out DIR for a local copy with onnx/")
    spec = _EXPORTERS[kind](source, **({"last_layer": cfg.last_layer} if kind == "cross" else {}))
    if source.path is None:  # a hub model: save a local copy into ``out`` and export that
        local = Path(out).expanduser().resolve()
        local.mkdir(parents=True, exist_ok=True)
        if spec.save is None:
            raise InvalidInput(f"export: kind {kind!r} cannot save a hub model; download it first")
        spec.save(str(local))
        source = resolve_model(str(local))
    fp = fingerprint(source.path)  # type: ignore[arg-type]
    model_dir, onnx_dir = _placement(source, Path(out) if out is not None else None, fp)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    old = _read_manifest_or_none(onnx_dir)
    keep = {}
    if old and old.get("source_fingerprint") == fp and old.get("kind") == kind:
        keep = {k: v for k, v in old.get("variants", {}).items() if (onnx_dir / v["file"]).exists()}

    calibration = None
    if cfg.int8_scheme is Int8Scheme.STATIC:  # read (and reject) the calibration file before writing anything
        from pairsmith.encoders.onnx_static import load_calibration, make_int8_static

        calibration = load_calibration(cfg.calibration)
    written: list[Path] = []
    t0 = time.perf_counter()
    fp32 = onnx_dir / FP32_FILE
    with tempfile.TemporaryDirectory(prefix="pairsmith-onnx-", dir=onnx_dir) as tmp:
        tmp_fp32 = Path(tmp) / FP32_FILE
        _torch_export(spec, tmp_fp32, cfg.opset)
        diff = _parity(spec, tmp_fp32) if cfg.check else None
        if diff is not None and diff > 1e-3:
            raise FailedPrecondition(
                f"export: fp32 ONNX differs from torch by {diff:.2e} (> 1e-3); not written"
            )
        replace_file(tmp_fp32, fp32)
        written.append(fp32)
        keep["fp32"] = {"file": FP32_FILE, "dtype": "float32", "max_abs_diff_vs_torch": diff}
        log.info("exported %s in %.1fs (max |onnx - torch| = %s)", fp32, time.perf_counter() - t0, diff)

        scheme = cfg.int8_scheme
        if scheme is not None:
            isa = Isa.parse(cfg.isa) if cfg.isa != "auto" else detect_isa()
            dst = onnx_dir / int8_file(isa, scheme)
            if scheme is Int8Scheme.STATIC:
                info = make_int8_static(
                    fp32,
                    dst,
                    spec=spec,
                    isa=isa,
                    per_channel=cfg.per_channel,
                    calibration=calibration,
                    tmp=Path(tmp),
                )
            else:
                info = make_int8(
                    fp32,
                    dst,
                    spec=spec,
                    isa=isa,
                    fuse=cfg.fuse == "on",
                    per_channel=cfg.per_channel,
                    tmp=Path(tmp),
                )
            written.append(dst)
            keep[int8_variant(isa, scheme)] = {"file": dst.name, "dtype": "int8", **info}
        if cfg.fp16:
            dst = onnx_dir / FP16_FILE
            info = make_fp16(fp32, dst, spec=spec, fuse=cfg.fuse != "off", tmp=Path(tmp))
            written.append(dst)
            keep["fp16"] = {"file": FP16_FILE, "dtype": "float16", **info}

    manifest = _manifest(spec, source, fp, cfg, keep)
    atomic_write_json(onnx_dir / MANIFEST, manifest, sort_keys=True)
    return ExportResult(
        model_dir=model_dir, onnx_dir=onnx_dir, kind=kind, files=tuple(written), manifest=manifest
    )


def _manifest(spec: GraphSpec, source: ModelSource, fp: str, cfg: ExportConfig, variants: dict) -> dict:
    import onnxruntime
    import torch

    from pairsmith import __version__

    return {
        "format": MANIFEST_FORMAT,
        "kind": spec.kind,
        "source": str(source.path) if source.path is not None else source.hub_id,
        "source_fingerprint": fp,
        "inputs": list(spec.input_names),
        "outputs": list(spec.output_names),
        "primary_output": spec.primary_output,
        "max_length": spec.max_length,
        "details": spec.details,
        "variants": variants,
        "config": dataclasses.asdict(cfg),
        "versions": {
            "pairsmith": __version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _read_manifest_or_none(onnx_dir: Path) -> dict | None:
    p = onnx_dir / MANIFEST
    return read_json(p) if p.exists() else None


def find_export(source: ModelSource) -> Path:
    """The onnx directory holding ``source``'s export: ``<model>/onnx`` or the cache."""
    if source.path is None:
        raise NotFound(
            f"onnx: {source.ref} is a hub name; export a local copy first: pairsmith export onnx --model {source.ref} --out DIR"
        )
    local = source.path / "onnx"
    if (local / MANIFEST).exists():
        return local
    cached = cached_export_dir(fingerprint(source.path))
    if (cached / MANIFEST).exists():
        return cached
    hint = f"pairsmith export onnx --model {source.ref}"
    if (local / FP32_FILE).exists():
        raise FailedPrecondition(
            f"onnx: {local} has model.onnx but no {MANIFEST} (not a pairsmith export); run: {hint}"
        )
    raise NotFound(f"onnx: no export found for {source.ref} (looked in {local} and {cached}); run: {hint}")
