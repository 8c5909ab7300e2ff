from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = ["pairsmith.encoders", "pairsmith.distill", "pairsmith.kernels", "pairsmith.service"]


def test_every_subpackage_and_module_imports():
    for name in SUBPACKAGES:
        pkg = importlib.import_module(name)
        for mod in pkgutil.iter_modules(pkg.__path__, name + "."):
            if ".gen" in mod.name:
                continue
            importlib.import_module(mod.name)


def test_library_imports_are_one_way():
    # kernels <- encoders <- distill; encoders <- service. Library code never imports service/distill.
    forbidden = {"encoders": ("pairsmith.service", "pairsmith.distill"), "kernels": ("pairsmith.",)}
    for folder, bad in forbidden.items():
        for f in (REPO / folder).glob("*.py"):
            text = f.read_text()
            for b in bad:
                allowed = "pairsmith.kernels" if folder == "kernels" else None
                for line in text.splitlines():
                    if ("import " in line) and b in line and not (allowed and allowed in line):
                        if folder == "kernels" and "pairsmith.errors" in line:
                            continue
                        raise AssertionError(f"{f.name}: {line.strip()}")


@pytest.mark.slow
def test_wheel_contains_all_subpackages(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git needed")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("pairsmith-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"{sub.replace('.', '/')}/__init__.py" in names
    assert "pairsmith/service/cli.py" in names
