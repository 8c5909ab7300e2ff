"""Post-processing after the backend, one copy each: normalise, ``dimensions``, sigmoid, pair cosine,
softmax over one context's candidates (Uni-Encoder).

Row normalisation itself lives in :mod:`pairsmith.vectors` (the index store, which imports no
encoder code, uses the same function).

Used by ``BiEncoder``/``CrossEncoder``, the server (``Embed``, ``Score``, ``Search``, ``Upsert``)
and the distillation jobs' evaluation, so the numbers cannot drift between them.
"""

from __future__ import annotations

import numpy as np

from pairsmith.errors import InvalidInput
from pairsmith.vectors import normalize_rows


def finalize_vectors(
    x: np.ndarray, *, dimensions: int | None, normalize: bool, already_normalized: bool = False
) -> np.ndarray:
    """``dimensions`` keeps the first D components (Matryoshka-style), then normalises if asked.

    ``already_normalized`` (the model's own head normalised) skips a second normalisation when
    no prefix is taken.
    """
    out = np.asarray(x, dtype=np.float32)
    if dimensions is not None:
        if not 1 <= dimensions <= out.shape[1]:
            raise InvalidInput(f"dimensions: must be in 1..{out.shape[1]}, got {dimensions}")
        out = out[:, :dimensions]
    elif normalize and already_normalized:
        return out.copy()
    return normalize_rows(out) if normalize and len(out) else out.copy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow warning for large |x|), float32."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out.astype(np.float32)


def softmax(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Probabilities over one group of scores, ``softmax(scale * x)``, float32 (max-subtracted:
    no overflow). ``scale``: the model's temperature (a Uni-Encoder's ``score_scale``: 1 for
    logits, 20 for a warm start's cosines)."""
    z = np.asarray(x, dtype=np.float64) * float(scale)
    if z.size == 0:
        return z.astype(np.float32)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32)


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair ``(a[i], b[i])``; inputs need not be normalised."""
    if a.shape != b.shape:
        raise InvalidInput(f"pair_cosine: shapes differ, {a.shape} vs {b.shape}")
    if len(a) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.einsum("nd,nd->n", normalize_rows(a), normalize_rows(b)).astype(np.float32)
