"""pairsmith: train, distill, export and serve sentence encoders.

The importable subpackages are ``pairsmith.encoders``, ``pairsmith.distill``,
``pairsmith.kernels`` and ``pairsmith.service`` (mapped from the repository's
top-level folders). Import order is one-way: kernels <- encoders <- distill,
encoders <- service; this root package holds only what all of them share
(the version and the error table).
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# Run from a source checkout's root folder (``python -m pytest``, ``python -c`` there), Python finds
# this folder before the installed package, and the subpackages live in sibling folders (pyproject's
# package-dir mapping). The checkout root then joins the search path of ``pairsmith``, so that
# ``pairsmith.encoders`` is ``encoders/``. An installed wheel has no pyproject.toml beside it.
_root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "encoders", "__init__.py")
):
    __path__.append(_root)  # noqa: F821 - the package's own search path
