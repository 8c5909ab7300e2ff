"""The ``pairsmith`` command line (entry point :func:`pairsmith.cli.main.main`).

The only package allowed to import :mod:`pairsmith.distill`; nothing imports it
(except ``python -m pairsmith``). Subcommand modules build their parsers
without importing torch, transformers or FAISS, so ``--help`` is instant.
"""
