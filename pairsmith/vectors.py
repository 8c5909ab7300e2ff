"""Vector arithmetic shared by the encoders and the index store (no model code here)."""

from __future__ import annotations

import numpy as np

from pairsmith.errors import InvalidInput


def normalize_rows(x: np.ndarray, *, field: str = "vectors") -> np.ndarray:
    """L2-normalise rows (new array, float32). Safe for huge and tiny finite values.

    Rows are first scaled by their largest magnitude, so 1e38 does not overflow and 1e-30
    does not underflow; a row that is all zeros or holds NaN/Inf cannot be normalised and
    is refused with its index.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidInput(f"{field}: expected a (N, D) array, got shape {x.shape}")
    if x.size == 0:
        return x.copy()

    def where(i: int) -> str:
        return field if len(x) == 1 else f"{field}[{i}]"

    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise InvalidInput(f"{where(int(np.flatnonzero(~finite)[0]))}: holds NaN or Inf")
    scale = np.abs(x).max(axis=1, keepdims=True).astype(np.float64)  # (N, 1)
    zero = scale[:, 0] == 0
    if zero.any():
        raise InvalidInput(
            f"{where(int(np.flatnonzero(zero)[0]))}: a zero vector has no direction (cosine needs a non-zero vector)"
        )
    y = x.astype(np.float64) / scale
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return y.astype(np.float32)
