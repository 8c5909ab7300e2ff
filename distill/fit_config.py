"""Fit hyper-parameters and their defaults, and the default seed, in one torch-free place.

The CLI builds its ``--help`` from these without importing torch; the
training code (:mod:`pairsmith.distill.train` and the methods) uses the same
objects:

- ``CROSS_DEFAULT`` / ``BI_DEFAULT``: the Trans-Encoder cross- and bi-encoder fits of the
  official code (``src/self_distill.py``);
- ``DSE_FIT_DEFAULT``: the DSE student; ``TRAIN_CROSS_DEFAULT``: ``pairsmith train
  cross-encoder`` (sentence-transformers' STS-B cross-encoder example).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pairsmith.errors import InvalidInput

DEFAULT_SEED = 2021  # the Trans-Encoder paper's seed; every job's --seed default
# ``--require-improvement``: the exit code of a job whose trained models did not beat its start model.
EXIT_NOT_IMPROVED = 3
# Collapse-guard floors (:class:`pairsmith.distill.selection.CollapseGuard`, docs/distillation.md).
LABEL_STD_FLOOR = 0.02  # standard deviation of pseudo-labels, [0, 1] scale
RANK_FLOOR = 0.3  # Spearman (-1..1) between a model's pseudo-labels and the other model's scores
DROP_MARGIN = 5.0  # selection points (x100) a fit may fall below its start before it counts as collapse


@dataclass(frozen=True)
class FitConfig:
    """One fit's hyper-parameters (defaults: the Trans-Encoder cross-encoder fit)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 64
    eval_steps: int = 0  # evaluate every N optimiser steps (0: only at epoch ends); ST2/official: 200
    seed: int = DEFAULT_SEED
    # Batches of similar length (shuffled chunks sorted by length): less padding on CPU. Pointwise
    # losses (MSE/BCE) do not depend on batch composition, so this changes speed, not the objective.
    length_grouping: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
            "weight_decay": self.weight_decay >= 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "max_length": self.max_length >= 4,
            "eval_steps": self.eval_steps >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InvalidInput(f"fit config: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidInput(f"fit config: unknown keys {unknown}")
        return cls(**d)


# Trans-Encoder (Liu et al., ICLR 2022; official code): cross fit and bi fit per cycle.
CROSS_DEFAULT = FitConfig(epochs=1, batch_size=32, lr=2e-5, warmup_ratio=0.1, max_length=64, eval_steps=200)
BI_DEFAULT = FitConfig(epochs=10, batch_size=128, lr=5e-5, warmup_ratio=0.0, max_length=32, eval_steps=200)
# DSE student and supervised cross-encoder training.
DSE_FIT_DEFAULT = FitConfig(epochs=4, batch_size=16, lr=2e-5, warmup_ratio=0.1, max_length=128, eval_steps=0)
TRAIN_CROSS_DEFAULT = FitConfig(epochs=4, batch_size=16, lr=2e-5, max_length=128, eval_steps=0)
