"""Reliability suite: `make reliability` runs it with large counts; `make test` with small ones.

Sizes come from the environment so the same tests serve both:
``PAIRSMITH_FUZZ_EXAMPLES`` (hypothesis examples per request message, default 15) and
``PAIRSMITH_KILL_ROUNDS`` (kill -9 rounds, default 2).
"""

from __future__ import annotations

import os

FUZZ_EXAMPLES = int(os.environ.get("PAIRSMITH_FUZZ_EXAMPLES", "15"))
KILL_ROUNDS = int(os.environ.get("PAIRSMITH_KILL_ROUNDS", "2"))
RESULTS_DIR = os.environ.get("PAIRSMITH_RELIABILITY_OUT")  # JSON figures go here when set
