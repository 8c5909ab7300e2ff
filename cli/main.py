"""The ``pairsmith`` command: one entry point, subcommands registered by modules.

Each ``cli_*`` module adds its subcommands through ``register(subparsers)``
and sets ``func`` on them; this file only parses, sets up logging, and maps
:class:`PairsmithError` to a one-line message and an exit code (never a bare
traceback for a user error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The hub stays off unless the user opts in: no network at run time.
if os.environ.get("PAIRSMITH_ALLOW_HUB") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pairsmith import __version__  # noqa: E402
from pairsmith.errors import ErrorKind, PairsmithError  # noqa: E402

# Subcommand modules, in --help order, with the top-level commands each registers.
_MODULES = {
    "pairsmith.cli.eval": ("eval",),
    "pairsmith.cli.serve": ("serve", "client"),
    "pairsmith.cli.index": ("index",),
    "pairsmith.cli.export": ("export",),
    "pairsmith.cli.distill": ("distill", "train"),
    "pairsmith.cli.byte2word": ("train",),
    "pairsmith.cli.train_embedding": ("train",),
    "pairsmith.cli.models": ("models",),
    "pairsmith.cli.data": ("data",),
}

EXIT_CODES = {
    ErrorKind.INVALID_ARGUMENT: 2,
    ErrorKind.NOT_FOUND: 3,
    ErrorKind.ALREADY_EXISTS: 4,
    ErrorKind.FAILED_PRECONDITION: 5,
    ErrorKind.RESOURCE_EXHAUSTED: 6,
    ErrorKind.UNAUTHENTICATED: 7,
    ErrorKind.UNAVAILABLE: 8,
    ErrorKind.PERMISSION_DENIED: 9,
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (first word not starting with '-'), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given and known) one with only that command's module.

    Registering one module keeps ``pairsmith client ...`` from importing the others
    (``distill`` reads its defaults from :mod:`pairsmith.distill`).
    """
    import importlib

    modules = [m for m, cmds in _MODULES.items() if command in cmds] or list(_MODULES)

    parser = argparse.ArgumentParser(
        prog="pairsmith",
        description="Train, distill, export and serve sentence encoders.",
    )
    parser.add_argument("--version", action="version", version=f"pairsmith {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand module not present in this build
            raise
        mod.register(sub)
    return parser


def _quiet_transformers() -> None:
    """Hide transformers' per-load weight bars and load reports; ours show progress instead.

    Through the environment when transformers is not imported yet (most commands never
    import it: ``client``, ``index list``...), so this costs nothing.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "sentence_transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if args.verbose < 2:
        _quiet_transformers()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PairsmithError as exc:
        print(f"pairsmith: error: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.kind, 1)
    except KeyboardInterrupt:
        print("pairsmith: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
