"""Trainable cross-attention poolers: multi-layer (Tang & Yang 2024) and last-layer, small and general.

:class:`LayerPooling` is a self-saving sentence-transformers module that replaces ``Pooling``:

- ``multi-layer``: one vector per hidden layer (masked mean of the layer's tokens, or the last
  token for causal models; embeddings output included) ``+`` a learned layer embedding ``->``
  LayerNorm ``->`` ``n_latents`` learned latents cross-attend over the L layer vectors (packed,
  ``cu_seqlens = [0, L, 2L, ...]``) through :func:`pairsmith.kernels.cross_attention_pool_projected`.
- ``last-layer``: the same latents attend over the last layer's tokens, packed by ``cu_seqlens``
  (no padding rows are attended, and none are computed on the packed/Triton paths).

Then, Perceiver-style as in the released code (METHODS.md §5a)::

    Z' = Z + to_out(attn)          Z'' = Z' + FF(LN(Z'))          (per latent, B x Nq x H)
    residual=True  (default): e = anchor + mean_i (Z''_i - Z_i)    anchor = the last layer's own pooled
                                                                  vector (masked mean / last token)
    residual=False (the paper): e = mean_i Z''_i

``to_out`` and the last FF layer start at zero when ``residual``, so an untrained pooler gives
exactly the backbone's mean pooling (a pretrained sentence encoder keeps its quality at step 0 and
the pooler learns a correction); normalisation is left to the pipeline (a ``Normalize`` module or
pairsmith's post-processing). Sizes default to about 4 % of a BERT-family encoder
(``n_latents`` 16, heads of 64 dims, FF width = hidden size); all are configurable.

Under ``torch.jit`` tracing (ONNX export) the kernel runs its ``reference`` path for the
multi-layer variant (every item has L keys, so its padded shapes are fixed), and the last-layer
variant uses an equivalent dense masked attention over the padded tokens: the kernel's padded
reference fixes the longest item's length at trace time, which would silently give wrong
results for longer inputs in the exported graph.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import torch
import torch.nn.functional as F

from pairsmith.encoders.modules import PairsmithModule
from pairsmith.errors import InvalidInput, parse_enum
from pairsmith.kernels import cross_attention_pool_projected


class PoolerKind(enum.Enum):
    MULTI_LAYER = "multi-layer"  # latents over one vector per hidden layer
    LAST_LAYER = "last-layer"  # latents over the last layer's tokens


class TokenReduce(enum.Enum):
    """How a layer's tokens become one vector (multi-layer keys, and the residual anchor)."""

    MEAN = "mean"  # masked mean (bidirectional encoders)
    LAST_TOKEN = "last-token"  # the last non-padding token (causal models; either padding side)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (B, T, H), mask (B, T) -> (B, H); an all-padding row gives zeros."""
    m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)


def last_token(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (B, T, H), mask (B, T) -> (B, H): the last position whose mask is set (left or right padding)."""
    pos = torch.arange(h.shape[1], device=h.device)  # (T,)
    idx = (mask.to(torch.long) * (pos + 1)).argmax(1)  # (B,) highest masked position
    return h[torch.arange(h.shape[0], device=h.device), idx]  # (B, H)


def tracing() -> bool:
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class LayerPooling(PairsmithModule):
    """Learned latents cross-attend over layer vectors (multi-layer) or last-layer tokens.

    Reads ``token_embeddings``, ``attention_mask`` and (multi-layer) ``all_layer_embeddings``;
    writes ``sentence_embedding`` (B, hidden_size).
    """

    config_keys = [
        "hidden_size",
        "num_layers",
        "kind",
        "reduce",
        "n_latents",
        "heads",
        "head_dim",
        "ffn_dim",
        "residual",
        "impl",
    ]

    def __init__(
        self,
        hidden_size: int,
        num_layers: int = 0,
        kind: str = "multi-layer",
        reduce: str = "mean",
        n_latents: int = 16,
        heads: int | None = None,
        head_dim: int = 64,
        ffn_dim: int | None = None,
        residual: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.kind = parse_enum(PoolerKind, kind, "kind")
        self.reduce = parse_enum(TokenReduce, reduce, "reduce")
        self.hidden_size, self.num_layers = int(hidden_size), int(num_layers)
        self.n_latents, self.head_dim = int(n_latents), int(head_dim)
        self.heads = int(heads) if heads else max(1, self.hidden_size // self.head_dim)
        self.ffn_dim = int(ffn_dim) if ffn_dim else self.hidden_size
        self.residual, self.impl = bool(residual), str(impl)
        bad = {
            "hidden_size": self.hidden_size >= 1,
            "n_latents": self.n_latents >= 1,
            "heads": self.heads >= 1,
            "head_dim": 1 <= self.head_dim <= 256,
            "ffn_dim": self.ffn_dim >= 1,
            "num_layers": self.kind is PoolerKind.LAST_LAYER or self.num_layers >= 1,
        }
        wrong = [k for k, ok in bad.items() if not ok]
        if wrong:
            raise InvalidInput(
                f"LayerPooling: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in wrong)} "
                "(multi-layer needs num_layers = hidden layers + 1; head_dim 1..256)"
            )
        self.wants_all_layers = self.kind is PoolerKind.MULTI_LAYER  # instance attribute: per kind
        h, inner = self.hidden_size, self.heads * self.head_dim
        if self.kind is PoolerKind.MULTI_LAYER:
            self.layer_embedding = torch.nn.Parameter(torch.zeros(self.num_layers, h))  # (L, H)
        self.norm_x = torch.nn.LayerNorm(h)
        self.latents = torch.nn.Parameter(torch.randn(self.n_latents, h) * 0.02)  # (Nq, H)
        self.norm_z = torch.nn.LayerNorm(h)
        self.to_q = torch.nn.Linear(h, inner, bias=False)
        self.to_k = torch.nn.Linear(h, inner, bias=False)
        self.to_v = torch.nn.Linear(h, inner, bias=False)
        self.to_out = torch.nn.Linear(inner, h)
        self.norm_ff = torch.nn.LayerNorm(h)
        self.ff = torch.nn.Sequential(
            torch.nn.Linear(h, self.ffn_dim), torch.nn.GELU(), torch.nn.Linear(self.ffn_dim, h)
        )
        if self.residual:  # start as the backbone's own pooling: the correction begins at zero
            for lin in (self.to_out, self.ff[2]):
                torch.nn.init.zeros_(lin.weight)
                torch.nn.init.zeros_(lin.bias)

    # -- forward -------------------------------------------------------------------------------

    def _reduce(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(h, mask) if self.reduce is TokenReduce.MEAN else last_token(h, mask)

    def _kernel_impl(self, device: torch.device) -> str:
        # ONNX export traces the padded reference (no data-dependent shapes); otherwise the kernel's
        # own dispatch ("auto": packed on the CPU, Triton on CUDA).
        return "reference" if tracing() else self.impl

    def queries(self) -> torch.Tensor:
        """The latents' queries (Nq, heads, head_dim): input-independent, computed once per batch."""
        return self.to_q(self.norm_z(self.latents)).view(self.n_latents, self.heads, self.head_dim)

    def _dense_attend(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Padded keys x (B, T, H) with mask (B, T) -> (B, Nq, heads, Dh); the kernel's semantics."""
        b, t, _ = x.shape
        k = self.to_k(x).view(b, t, self.heads, self.head_dim)  # (B, T, h, Dh)
        v = self.to_v(x).view(b, t, self.heads, self.head_dim)  # (B, T, h, Dh)
        s = torch.einsum("ihd,bjhd->bhij", q.float(), k.float()) / math.sqrt(self.head_dim)  # (B,h,Nq,T)
        s = s.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)  # (B, h, Nq, T)
        p = torch.where(mask.bool().any(1)[:, None, None, None], p, torch.zeros_like(p))  # empty row: 0
        return torch.einsum("bhij,bjhd->bihd", p, v.float()).to(x.dtype)  # (B, Nq, h, Dh)

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        tokens = features["token_embeddings"]  # (B, T, H)
        mask = features["attention_mask"]  # (B, T)
        b = tokens.shape[0]
        q = self.queries()  # (Nq, h, Dh)
        impl = self._kernel_impl(tokens.device)
        if self.kind is PoolerKind.MULTI_LAYER:
            layers = features.get("all_layer_embeddings")
            if layers is None or len(layers) != self.num_layers:
                got = "none" if layers is None else str(len(layers))
                raise InvalidInput(
                    f"LayerPooling(multi-layer): expected all_layer_embeddings with {self.num_layers} "
                    f"layers, got {got}; the backbone needs output_hidden_states=True"
                )
            x = torch.stack([self._reduce(h, mask) for h in layers], dim=1)  # (B, L, H)
            anchor = x[:, -1]  # (B, H) the last layer's own pooled vector
            keys = self.norm_x(x + self.layer_embedding).reshape(-1, self.hidden_size)  # (B*L, H)
            cu = torch.arange(b + 1, device=x.device) * self.num_layers  # (B+1,)
            o, _ = cross_attention_pool_projected(q, keys, self.to_k.weight, self.to_v.weight, cu, impl=impl)
        else:
            anchor = self._reduce(tokens, mask)  # (B, H)
            if tracing():  # dense masked attention: shape-generic in the exported graph
                o = self._dense_attend(q, self.norm_x(tokens), mask)  # (B, Nq, h, Dh)
            else:
                keep = mask.bool()  # (B, T)
                keys = self.norm_x(tokens[keep])  # (total, H) packed, row-major: each item contiguous
                cu = F.pad(keep.sum(1).cumsum(0), (1, 0))  # (B+1,)
                o, _ = cross_attention_pool_projected(
                    q, keys, self.to_k.weight, self.to_v.weight, cu, impl=impl
                )  # (B, Nq, h, Dh)
        z0 = self.latents  # (Nq, H)
        z = z0 + self.to_out(o.reshape(b, self.n_latents, -1))  # (B, Nq, H)
        z = z + self.ff(self.norm_ff(z))  # (B, Nq, H)
        if self.residual:
            emb = anchor + (z - z0).mean(1)  # (B, H)
        else:
            emb = z.mean(1)  # (B, H)
        features["sentence_embedding"] = emb
        return features

    def get_embedding_dimension(self) -> int:
        return self.hidden_size

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_config_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.config_keys}
        d["kind"], d["reduce"] = self.kind.value, self.reduce.value
        return d


def make_pooler(st_model, kind: str | PoolerKind, **sizes: Any) -> LayerPooling:
    """A pooler sized for ``st_model``'s backbone (hidden size, layer count, causal or not)."""
    kind = parse_enum(PoolerKind, kind, "kind")
    body = next(iter(st_model._modules.values()))
    hf = getattr(body, "auto_model", None)
    if hf is None or not hasattr(hf, "config"):
        raise InvalidInput(f"{type(body).__name__}: the first module has no Hugging Face config to size from")
    cfg = hf.config
    causal = bool(getattr(cfg, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") for a in (getattr(cfg, "architectures", None) or [])
    )
    sizes.setdefault("reduce", TokenReduce.LAST_TOKEN.value if causal else TokenReduce.MEAN.value)
    return LayerPooling(
        hidden_size=int(cfg.hidden_size),
        num_layers=int(cfg.num_hidden_layers) + 1 if kind is PoolerKind.MULTI_LAYER else 0,
        kind=kind.value,
        **sizes,
    )


__all__ = [
    "LayerPooling",
    "PoolerKind",
    "TokenReduce",
    "last_token",
    "make_pooler",
    "masked_mean",
]
