"""Shared data for the Byte2Word tests: sentences whose label one cue word decides."""

from __future__ import annotations

import random

FILLER = "the a film movie plot cast story it was is and of scene actor long short".split()


def cue_rows(n: int, seed: int, *, flip: bool = False, filler: list[str] = FILLER) -> list[tuple[str, int]]:
    """``n`` rows of six random filler words plus "good" (label 1) or "bad" (label 0) at a random
    place; ``flip`` inverts every label. A tiny model learns the cue in tens of steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.randrange(2)
        words = rng.sample(filler, 6)
        words.insert(rng.randrange(7), "good" if y else "bad")
        rows.append((" ".join(words), 1 - y if flip else y))
    return rows
