"""Shared fixtures: the packaged default model, tiny random models, the data dir."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run on the CPU only in its interpreter, and triton reads this when first imported
# (transformers imports it early): set before anything else. Set TRITON_INTERPRET=0 to use a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
# ONNX exports of packaged models (backend auto exports static int8 on first use: ~25 s for the default
# model) go to a cache that outlives one run but stays inside the checkout (pytest ignores .pytest_cache).
os.environ.setdefault(
    "PAIRSMITH_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "pairsmith")
)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pairsmith.encoders.bi_encoder import TRUSTED_MODULE_PREFIXES  # noqa: E402
from tests.tiny import make_tiny_bi_encoder, make_tiny_cross_encoder  # noqa: E402

TRUSTED_MODULE_PREFIXES.append("tests.")  # the test-only example modules (tests/core_examples.py)

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("PAIRSMITH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not (d / "sts").is_dir():
        pytest.skip(f"evaluation data not found at {d} (set PAIRSMITH_DATA to the shared data folder)")
    return d


@pytest.fixture(scope="session")
def default_bi():
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load("default", device="cpu", backend="torch")


@pytest.fixture(scope="session")
def tiny_bi_dir(tmp_path_factory) -> Path:
    return make_tiny_bi_encoder(tmp_path_factory.mktemp("tiny-bi") / "model")


@pytest.fixture(scope="session")
def tiny_cross_dir(tmp_path_factory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross") / "model")
