"""Self-saving model parts, sentence-transformers compatible.

A pairsmith module is a ``sentence_transformers`` :class:`Module`: it reads named features
from the dict the previous module wrote and writes its own (``token_embeddings``,
``sentence_embedding``, ...). It saves its configuration (``config.json``, the keys in
``config_keys``) and its weights (``model.safetensors``) into its own folder, and
``modules.json`` names its import path, so a model that pairsmith trains loads in plain
sentence-transformers (with pairsmith installed) and through pairsmith's runtime.

Contracts a module can opt into:

- ``wants_all_layers = True``: the module reads ``features["all_layer_embeddings"]`` (every
  hidden layer, embeddings first); :func:`enable_all_layers` switches the backbone's
  ``output_hidden_states`` on (saved in its ``config.json``, so plain sentence-transformers
  does the same).
- ``pairsmith_tokenizer(max_length)`` on a *first* module: a module that is its own input
  stage (e.g. a byte-level word embedder) returns the :class:`~pairsmith.encoders.tokenize.Tokenizer`
  the pipeline must use; the classmethod ``load_tokenizer(module_dir, max_length)`` builds the
  same tokenizer from the saved config alone (used by the ONNX backend, which loads no torch
  weights); ``onnx_input_names`` lists the graph inputs it reads.
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.module import Module


class PairsmithModule(Module):
    """Base class: config keys + safetensors weights in the module's folder."""

    wants_all_layers: bool = False

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ):
        hub = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path=model_name_or_path, **hub)
        model = cls(**config)
        return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=model, **hub)


def enable_all_layers(st_model) -> bool:
    """Turn on every-layer output in the backbone when any module of ``st_model`` wants it."""
    modules = list(st_model._modules.values())
    if not any(getattr(m, "wants_all_layers", False) for m in modules):
        return False
    body = modules[0]
    hf = getattr(body, "auto_model", None) or getattr(body, "model", None)
    if hf is None or not hasattr(hf, "config"):
        raise TypeError(f"{type(body).__name__}: cannot switch on all hidden layers for this first module")
    hf.config.output_hidden_states = True
    return True


__all__ = ["PairsmithModule", "enable_all_layers"]
