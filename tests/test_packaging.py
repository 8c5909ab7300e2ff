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
SUBPACKAGES = [
    "pairsmith.encoders",
    "pairsmith.distill",
    "pairsmith.kernels",
    "pairsmith.service",
    "pairsmith.cli",
    "pairsmith.service.store",
]


def test_every_subpackage_and_module_imports():
    for name in SUBPACKAGES:
        pkg = importlib.import_module(name)
        for mod in pkgutil.iter_modules(pkg.__path__, name + "."):
            if ".gen" in mod.name:
                continue
            importlib.import_module(mod.name)


# -- the import layout (DESIGN.md): kernels <- encoders <- distill; service may import encoders and
# the store; the store imports only the root package; only the CLI imports distill; nothing imports
# the CLI (but ``python -m pairsmith``). Every import counts, lazy ones inside functions too, and
# ``importlib.import_module("...")`` with a literal name.
ROOT = "pairsmith"
LAYERS = {  # layer -> the pairsmith layers it may import (besides itself and the root package)
    "root": set(),
    "kernels": set(),
    "encoders": {"kernels"},
    "distill": {"kernels", "encoders"},
    "store": set(),
    "service": {"encoders", "store"},
    "cli": {"kernels", "encoders", "distill", "store", "service"},
}
FOLDERS = {"pairsmith": "pairsmith", "kernels": "pairsmith.kernels", "encoders": "pairsmith.encoders",
           "distill": "pairsmith.distill", "service": "pairsmith.service", "cli": "pairsmith.cli"}  # fmt: skip
ENTRY_POINTS = {"pairsmith.__main__"}  # may import the CLI


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != ROOT:
        raise ValueError(module)
    if len(parts) == 1 or parts[1] not in ("kernels", "encoders", "distill", "service", "cli"):
        return "root"  # pairsmith, pairsmith.errors, pairsmith.atomic, pairsmith.__version__...
    if parts[1] == "service" and len(parts) > 2 and parts[2] == "store":
        return "store"
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    pkg = FOLDERS[rel.parts[0]]
    rest = [p for p in rel.with_suffix("").parts[1:] if p != "__init__"]
    return ".".join([pkg, *rest])


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every pairsmith module ``path`` imports: (line, absolute module name)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from pairsmith.service import convert`` imports the submodule: check the full name
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names] or [(node.lineno, name)]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return [(line, n) for line, n in out if n == ROOT or n.startswith(ROOT + ".")]


def layout_violations(files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        module = _module_name(f)
        layer = _layer(module)
        for line, name in _imports(f, module):
            # ``from pairsmith.x import Name``: Name may be a class, not a module; layer of the prefix
            target = _layer(name)
            where = f"{f.relative_to(REPO)}:{line}: {module} ({layer}) imports {name} ({target})"
            if target == "cli" and layer != "cli" and module not in ENTRY_POINTS:
                bad.append(where + ": nothing imports the CLI")
            elif target not in LAYERS[layer] | {layer, "root"} and not (
                target == "cli" and module in ENTRY_POINTS
            ):
                bad.append(where)
    return bad


def _package_files() -> list[Path]:
    return [
        f
        for folder in FOLDERS
        for f in sorted((REPO / folder).rglob("*.py"))
        if "gen" not in f.relative_to(REPO).parts
    ]


def test_import_layout_holds_for_every_module():
    files = _package_files()
    assert len(files) > 40, "the walk found too few modules: the test would check nothing"
    assert layout_violations(files) == []


@pytest.mark.parametrize(
    ("folder", "source", "why"),
    [
        ("encoders", "from pairsmith.distill.train import FitConfig\n", "encoders imports distill"),
        ("kernels", "def f():\n    import pairsmith.encoders.types\n", "kernels imports encoders (lazily)"),
        ("service", "from pairsmith.distill import fit_config\n", "service (not CLI) imports distill"),
        ("service/store", "from pairsmith.service import servicer\n", "the store imports the servicer"),
        ("service/store", "from ..servicer import X\n", "relative import of the servicer"),
        ("distill", "import importlib\nimportlib.import_module('pairsmith.cli.main')\n", "CLI"),
        ("pairsmith", "from pairsmith.encoders import BiEncoder\n", "root imports a layer"),
        ("service/store", "from pairsmith.distill import runstate\n", "the store imports distill"),
        ("kernels", "def f():\n    from pairsmith.distill.dse import DSEConfig\n", "kernels imports distill"),
        ("pairsmith", "import pairsmith.distill.metrics\n", "the root package imports distill"),
    ],
)
def test_import_layout_catches_each_violation(folder, source, why):
    # A probe module inside the real tree (removed at once) must be reported.
    probe = REPO / folder / "_layout_probe.py"
    probe.write_text(source)
    try:
        assert layout_violations([probe]), why
    finally:
        probe.unlink()


def test_only_the_cli_imports_distill():
    """The CLI is the one layer above distill: a probe in cli/ importing it is no violation, and the
    real tree has modules that do (the rule is not vacuous)."""
    probe = REPO / "cli" / "_layout_probe.py"
    probe.write_text("from pairsmith.distill.dse import DSEConfig\nfrom pairsmith.service import server\n")
    try:
        assert layout_violations([probe]) == []
    finally:
        probe.unlink()
    importers = {
        _layer(_module_name(f))
        for f in _package_files()
        if any(_layer(n) == "distill" for _, n in _imports(f, _module_name(f)))
    }
    assert importers == {"cli", "distill"}, importers


def test_cli_parser_imports_no_heavy_module():
    # ``pairsmith --help`` and each subcommand's help build every parser: no torch, transformers,
    # FAISS or distillation training code may load for that; a client call loads no distill at all.
    code = (
        "import sys\n"
        "from pairsmith.cli.main import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers', 'scipy',"
        " 'pairsmith.distill.train', 'pairsmith.encoders.runtime') if m in sys.modules]\n"
        "build_parser('client')\n"
        "print(heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
    client = (
        "import sys\n"
        "from pairsmith.cli.main import build_parser\n"
        "build_parser('client').parse_args(['client', 'embed', 'x'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'pairsmith.distill'))))\n"
    )
    res = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_help_answers_fast_without_torch():
    # ``python -X importtime -m pairsmith --help``: the import log must not name torch.
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pairsmith", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "COMMAND" in res.stdout
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    for heavy in ("torch", "transformers", "faiss"):
        assert heavy not in imported, f"--help imported {heavy}"


def _source_packages() -> dict[str, str]:
    """Every folder of the source tree with an ``__init__.py`` -> its import name (pyproject's mapping)."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {"pairsmith": "pairsmith", "encoders": "pairsmith.encoders", "distill": "pairsmith.distill",
            "kernels": "pairsmith.kernels", "service": "pairsmith.service", "cli": "pairsmith.cli"}  # fmt: skip
    found = {}
    for top, name in tops.items():
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found[".".join((name, *rel))] = init.parent.relative_to(REPO).as_posix()
    assert set(cfg["package-dir"]) == set(cfg["packages"])
    return found


def test_pyproject_lists_every_source_package():
    """A folder missing from [tool.setuptools] packages is absent from a regular install (an editable one
    hides it): pairsmith.encoders.byte2word and .modules were, until session 7."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = _source_packages()
    missing = sorted(set(found) - set(cfg["packages"]))
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
    for name, folder in found.items():
        assert cfg["package-dir"][name] == folder, name


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
    for sub in [*SUBPACKAGES, *_source_packages()]:
        assert f"{sub.replace('.', '/')}/__init__.py" in names, sub
    assert "pairsmith/cli/main.py" in names
    assert "pairsmith/service/store/index_store.py" in names
    assert "pairsmith/py.typed" in names  # PEP 561: type checkers read the inline annotations
