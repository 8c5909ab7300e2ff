"""Regenerate (with plain sentence-transformers) tests/golden/default_embeddings.json (only when a change of numbers is intended).

.venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sentence_transformers
import torch

from pairsmith.encoders import default_model_dir
from pairsmith.encoders.source import fingerprint

SENTENCES = [
    "A man is playing a guitar.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "",
    "Ünïcödé tëxt wörks töö — 東京",
]

if __name__ == "__main__":
    # The reference library, not pairsmith: the test then checks pairsmith against stored numbers.
    st = sentence_transformers.SentenceTransformer(
        str(default_model_dir()), device="cpu", local_files_only=True
    )
    vecs = st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    out = {
        "model": str(default_model_dir().name),
        "fingerprint": fingerprint(default_model_dir()),
        "versions": {"torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__},
        "sentences": SENTENCES,
        "vectors": np.round(vecs.astype(np.float64), 8).tolist(),
    }
    path = Path(__file__).with_name("default_embeddings.json")
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")
