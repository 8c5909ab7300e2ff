"""A seeded character noiser: adjacent swaps, drops and case flips at fixed per-character rates.

Applied to raw text *before* segmentation. For each character, in order, one draw decides:
with probability ``swap`` a letter is swapped with the next character when that is a letter too
(the pair is then consumed), with ``drop`` the letter is deleted, with ``case`` its case is
flipped; otherwise it is kept. Only letters (``str.isalpha``) are touched, so spaces and
punctuation (word boundaries) stay. The same (text, seed, rates) always gives the same output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseConfig:
    swap: float = 0.0
    drop: float = 0.0
    case: float = 0.0

    @property
    def name(self) -> str:
        return f"swap{self.swap:g}-drop{self.drop:g}-case{self.case:g}"


def add_noise(text: str, cfg: NoiseConfig, rng: random.Random) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not ch.isalpha():
            out.append(ch)
            i += 1
            continue
        r = rng.random()
        if r < cfg.swap and i + 1 < len(text) and text[i + 1].isalpha():
            out += [text[i + 1], ch]
            i += 2
            continue
        if r < cfg.swap + cfg.drop:
            i += 1
            continue
        if r < cfg.swap + cfg.drop + cfg.case:
            out.append(ch.lower() if ch.isupper() else ch.upper())
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def noisy_texts(texts: list[str], cfg: NoiseConfig, seed: int) -> list[str]:
    """Noise every text with one ``random.Random(seed)`` stream (deterministic for a list)."""
    rng = random.Random(seed)
    return [add_noise(t, cfg, rng) for t in texts]


__all__ = ["NoiseConfig", "add_noise", "noisy_texts"]
