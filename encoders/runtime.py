"""Runtimes: run a padded :class:`TokenBatch` through a model, return numpy.

The torch runtime drives a sentence-transformers module pipeline; the ONNX
runtime (``encoders/onnx_runtime.py``) runs an exported graph. Both take the
same hand-off, so tokenisation, batching and ordering live in one place.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

import numpy as np
import torch

from pairsmith.encoders.types import TokenBatch
from pairsmith.errors import InvalidInput, parse_enum

log = logging.getLogger(__name__)


class Backend(enum.Enum):
    TORCH = "torch"
    ONNX = "onnx"

    @classmethod
    def parse(cls, value: str | Backend) -> Backend:
        return parse_enum(cls, value, "backend")


class Runner(Protocol):
    """Turns one token batch into one row of floats per input row."""

    def run(self, batch: TokenBatch) -> np.ndarray: ...


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device: {device!r} requested but no CUDA device is available")
    return device


def to_features(batch: TokenBatch, device: str) -> dict[str, torch.Tensor]:
    feats = {
        "input_ids": torch.from_numpy(batch.input_ids).to(device),
        "attention_mask": torch.from_numpy(batch.attention_mask).to(device),
    }
    if batch.token_type_ids is not None:
        feats["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(device)
    return feats


class TorchRunner:
    """Runs a sentence-transformers pipeline (bi-encoder or cross-encoder) on torch.

    ``output`` is the pipeline key to read: ``sentence_embedding`` for a
    bi-encoder, ``scores`` for a cross-encoder.
    """

    def __init__(self, model: torch.nn.Module, device: str, output: str) -> None:
        self.model = model
        self.device = device
        self.output = output

    @torch.inference_mode()
    def run(self, batch: TokenBatch) -> np.ndarray:
        self.model.eval()
        out = self.model(to_features(batch, self.device))[self.output]
        return out.float().cpu().numpy()
