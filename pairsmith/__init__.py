"""pairsmith: train, distill, export and serve sentence encoders.

The importable subpackages are ``pairsmith.encoders``, ``pairsmith.distill``,
``pairsmith.kernels`` and ``pairsmith.service`` (mapped from the repository's
top-level folders). Import order is one-way: kernels <- encoders <- distill,
encoders <- service; this root package holds only what all of them share
(the version and the error table).
"""

from __future__ import annotations

__version__ = "0.1.0"
