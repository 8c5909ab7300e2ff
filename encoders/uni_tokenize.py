"""Uni-Encoder input packing: one row = a context and several candidates, with shared positions.

A row is ``[CLS] context [SEP] [CLS] cand_1 [SEP] ... [CLS] cand_k [SEP]``:

- token types 0 for the context, ``candidate_type`` (1; 0 for a warm start) for candidates
  (models without segments get none);
- position ids: the context uses ``0..H-1`` and every candidate restarts at ``H``
  (``candidate_positions="after-context"``, the paper) or at 0 (``"from-start"``: each
  candidate sits where a bi-encoder would put it alone; the warm start's choice), so
  candidates are positionally identical (permuting them permutes the scores exactly) and a
  row may be longer than the model's maximum position;
- optional speaker tokens (``speaker_tokens``, e.g. ``[unused1]``/``[unused2]``, the paper's
  turn separators): each context turn starts with one, alternating back from the newest turn
  (the newest turn always gets the first), so dropping old turns never relabels the others;
- ``spans``: -1 for the context, ``k`` for every token of the row's k-th candidate (its
  [CLS] and [SEP] included: the score is the mean over the whole span);
- ``attention_bias`` (B, 1, T, T) additive, built vectorised from ``spans`` (a ``block``
  tokenizer leaves it out and names the mask in ``uni_arrow``: the torch scorer then attends
  segment by segment, ``uni_block.py``):

  ==============  ==========================================  ==============================
  mask            context rows attend to                      candidate rows attend to
  ==============  ==========================================  ==============================
  arrow           the context and every candidate (paper)     the context and their own span
  context-blind   the context only                            the context and their own span
  ==============  ==========================================  ==============================

  With ``context-blind`` a candidate's score depends only on the context and itself (not on
  which other candidates share its row or chunk); with ``arrow`` it does. Padding keys are
  blocked for every query; a padding query attends to itself only (no all-masked softmax row).

Truncation: the context drops its oldest turns until it fits ``max_context_tokens`` (the most
recent turn keeps its last tokens if it alone is too long); a candidate keeps its last
``max_candidate_tokens - 2`` tokens (the paper's ``response[-254:]``). Both are reported.

A unit of an :class:`Encoded` row is one ``(token id, span id)`` pair: rows are (L, 2) int64
arrays, so the core's batch planner sees their length and :meth:`UniTokenizer.pad` builds the
rest. Numpy only: the ONNX runtime path imports no torch.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from pairsmith.encoders.types import Encoded, TokenBatch
from pairsmith.errors import FailedPrecondition, InvalidInput, parse_enum

# A block tokenizer still builds the dense mask for batches narrower than this: there one fused
# masked attention per layer costs less than the blocks' several smaller ones (measured crossover
# ~150-180 tokens, MiniLM, one CPU thread); the two compute the same scores.
BLOCK_MIN_TOKENS = 160
NEG = -1.0e4  # additive bias for a blocked key: exp(-1e4) is exactly 0 in fp32 and fp16; fits fp16
CANDIDATE_POSITIONS = ("after-context", "from-start")
HEADS = ("linear", "cosine")
POOLINGS = ("mean", "cls", "max")


class UniMask(enum.Enum):
    """Which attention pattern a Uni-Encoder row uses (see the module docstring)."""

    ARROW = "arrow"
    CONTEXT_BLIND = "context-blind"

    @classmethod
    def parse(cls, value: str | UniMask) -> UniMask:
        return parse_enum(
            cls,
            value.replace("_", "-").lower() if isinstance(value, str) else value,
            "mask",
            aliases={"blind": "context-blind"},
        )


@dataclass(frozen=True)
class UniConfig:
    """Packing limits, head and defaults; saved as ``uni_encoder.json`` beside the weights."""

    max_context_tokens: int = 256  # [CLS] context [SEP], after dropping the oldest turns
    max_candidate_tokens: int = 64  # [CLS] candidate [SEP], after dropping leading tokens
    max_row_tokens: int = 1024  # token budget of one row (context + a chunk of candidates)
    max_groups: int = 64  # candidates per row (fixed width of the score output)
    mask: str = "context-blind"  # default mask for rank(); arrow is the paper's
    truncate_context: bool = True  # False: a context over max_context_tokens is an error
    position_offset: int = 0  # first position id (2 for RoBERTa/MPNet-style embeddings)
    max_positions: int = 512  # the backbone's max_position_embeddings
    uses_type_ids: bool = True  # the backbone has token types (type_vocab_size >= 2)
    candidate_positions: str = "after-context"  # after-context (paper) | from-start (warm start)
    candidate_type: int = 1  # token type of candidate tokens (0: as a bi-encoder sees them)
    speaker_tokens: tuple[str, ...] = ()  # () or two tokens marking alternating turns
    head: str = "linear"  # linear: span mean -> Linear (paper) | cosine: gated warm start
    pooling: str = "mean"  # cosine head: the bi-encoder's pooling (mean | cls | max)
    gate_init: float = -30.0  # cosine head: initial cross-segment attention bias (closed)
    score_scale: float = 1.0  # softmax temperature: probabilities = softmax(score_scale x scores)

    def __post_init__(self) -> None:
        object.__setattr__(self, "speaker_tokens", tuple(self.speaker_tokens))
        if self.candidate_positions not in CANDIDATE_POSITIONS:
            raise InvalidInput(
                f"candidate_positions: expected one of {CANDIDATE_POSITIONS}, got {self.candidate_positions!r}"
            )
        if self.head not in HEADS:
            raise InvalidInput(f"head: expected one of {HEADS}, got {self.head!r}")
        if self.pooling not in POOLINGS:
            raise InvalidInput(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
        if self.candidate_type not in (0, 1):
            raise InvalidInput(f"candidate_type: must be 0 or 1, got {self.candidate_type}")
        if len(self.speaker_tokens) not in (0, 2) or not all(
            isinstance(t, str) and t for t in self.speaker_tokens
        ):
            raise InvalidInput(
                f"speaker_tokens: give none or two tokens (e.g. [unused1], [unused2]), got {self.speaker_tokens!r}"
            )
        if not (self.score_scale > 0 and np.isfinite(self.score_scale)):
            raise InvalidInput(f"score_scale: must be a finite number > 0, got {self.score_scale}")
        if not np.isfinite(self.gate_init):
            raise InvalidInput(f"gate_init: must be finite, got {self.gate_init}")
        for name in ("max_context_tokens", "max_candidate_tokens"):
            if getattr(self, name) < 3:
                raise InvalidInput(f"{name}: must be >= 3, got {getattr(self, name)}")
        if self.max_groups < 1:
            raise InvalidInput(f"max_groups: must be >= 1, got {self.max_groups}")
        if self.max_row_tokens < self.max_context_tokens + self.max_candidate_tokens:
            raise InvalidInput(
                f"max_row_tokens: {self.max_row_tokens} cannot hold a full context "
                f"({self.max_context_tokens}) and one full candidate ({self.max_candidate_tokens})"
            )
        if self.candidate_positions == "from-start":
            last = self.position_offset + max(self.max_context_tokens, self.max_candidate_tokens)
        else:
            last = self.position_offset + self.max_context_tokens + self.max_candidate_tokens
        if last > self.max_positions:
            raise InvalidInput(
                f"max_context_tokens + max_candidate_tokens: {self.max_context_tokens} + "
                f"{self.max_candidate_tokens} positions (offset {self.position_offset}, candidates "
                f"{self.candidate_positions}) exceed the backbone's {self.max_positions} position embeddings"
            )
        UniMask.parse(self.mask)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speaker_tokens"] = list(self.speaker_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UniConfig:
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidInput(f"uni-encoder config: unknown keys {unknown}")
        return cls(**d)


# -- vectorised batch building ---------------------------------------------------------------------


def pack_rows(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L_r, 2) unit rows -> ids (B, T), spans (B, T) (-1 outside candidates), valid (B, T) bool."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))  # (B,)
    b, t = len(rows), int(lens.max())
    flat = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in rows])  # (sum L, 2)
    row_of = np.repeat(np.arange(b), lens)  # (sum L,)
    col_of = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)  # (sum L,)
    ids = np.full((b, t), pad_id, dtype=np.int64)
    spans = np.full((b, t), -1, dtype=np.int64)
    valid = np.zeros((b, t), dtype=bool)
    ids[row_of, col_of] = flat[:, 0]
    spans[row_of, col_of] = flat[:, 1]
    valid[row_of, col_of] = True
    return ids, spans, valid


def position_ids(
    spans: np.ndarray, valid: np.ndarray, offset: int = 0, from_start: bool = False
) -> np.ndarray:
    """Context 0..H-1, every candidate span restarting at H (``from_start``: at 0); spans are
    contiguous runs."""
    b, t = spans.shape
    ctx = (spans < 0) & valid  # (B, T)
    h = ctx.sum(1, keepdims=True)  # (B, 1)
    cols = np.broadcast_to(np.arange(t), (b, t))  # (B, T)
    change = np.ones((b, t), dtype=bool)
    change[:, 1:] = spans[:, 1:] != spans[:, :-1]
    run_start = np.maximum.accumulate(np.where(change, cols, 0), axis=1)  # (B, T)
    pos = np.where(ctx, cols, (0 if from_start else h) + cols - run_start)  # (B, T)
    return np.where(valid, pos + offset, 0).astype(np.int64)


def allowed_matrix(spans: np.ndarray, valid: np.ndarray, mask: UniMask) -> np.ndarray:
    """(B, T, T) bool, [query, key]: which key each query may attend to."""
    ctx = (spans < 0) & valid  # (B, T)
    cand = (spans >= 0) & valid  # (B, T)
    q_ctx, k_ctx = ctx[:, :, None], ctx[:, None, :]  # (B, T, 1), (B, 1, T)
    q_cand, k_cand = cand[:, :, None], cand[:, None, :]
    same = spans[:, :, None] == spans[:, None, :]  # (B, T, T)
    ctx_sees = k_ctx | k_cand if mask is UniMask.ARROW else k_ctx  # (B, 1, T)
    allowed = (q_ctx & ctx_sees) | (q_cand & (k_ctx | (same & k_cand)))  # (B, T, T)
    pad_self = ~valid[:, :, None] & np.eye(spans.shape[1], dtype=bool)[None]  # (B, T, T)
    return allowed | pad_self


def attention_bias(spans: np.ndarray, valid: np.ndarray, mask: UniMask) -> np.ndarray:
    """(B, 1, T, T) float32 additive mask: 0 where allowed, :data:`NEG` where blocked."""
    allowed = allowed_matrix(spans, valid, mask)  # (B, T, T)
    return np.where(allowed, np.float32(0.0), np.float32(NEG))[:, None].astype(np.float32)


# -- the tokenizer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Which candidates of which context one row holds."""

    item: int  # index of the (context, candidates) item
    start: int  # first candidate index in that item
    stop: int


def gather_scores(
    chunks: Sequence[Chunk], groups: Sequence[np.ndarray], sizes: Sequence[int]
) -> list[np.ndarray]:
    """Per item, its candidates' scores in input order, from the rows' grouped scores."""
    out = [np.empty(n, dtype=np.float32) for n in sizes]
    for ch, g in zip(chunks, groups, strict=True):
        out[ch.item][ch.start : ch.stop] = g
    return out


class UniTokenizer:
    """(context, candidates) -> rows of (token id, span id) units -> :class:`TokenBatch`.

    ``mask`` decides the attention pattern :meth:`pad` builds; :meth:`with_mask` returns a copy
    sharing the Rust tokenizer.
    """

    def __init__(self, rust: RustTokenizer, config: UniConfig, cls_id: int, sep_id: int, pad_id: int):
        self._tok = rust
        self._tok.no_padding()
        self._tok.no_truncation()
        self.config = config
        self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
        self.mask = UniMask.parse(config.mask)
        self.block = False  # True: pad() leaves out the (B, 1, T, T) mask (see with_mask)
        self.max_length = int(config.max_row_tokens)
        self.speaker_ids: list[int] = []
        for t in config.speaker_tokens:
            i = rust.token_to_id(t)
            if i is None:
                raise FailedPrecondition(f"speaker_tokens: {t!r} is not in the tokenizer's vocabulary")
            self.speaker_ids.append(int(i))

    @classmethod
    def from_dir(cls, directory: str | Path, config: UniConfig) -> UniTokenizer:
        """From ``tokenizer.json`` (+ ``tokenizer_config.json``), without ``transformers``."""
        root = Path(directory)
        if not (root / "tokenizer.json").is_file():
            raise FailedPrecondition(
                f"uni-encoder: {root}/tokenizer.json missing (a fast tokenizer is needed)"
            )
        rust = RustTokenizer.from_file(str(root / "tokenizer.json"))
        cfg_path = root / "tokenizer_config.json"
        tcfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

        def tid(key: str, default: str) -> int:
            tok = tcfg.get(key) or default
            tok = tok.get("content") if isinstance(tok, dict) else tok
            i = rust.token_to_id(str(tok))
            if i is None:
                raise FailedPrecondition(f"uni-encoder: {root}: token {tok!r} ({key}) not in the vocabulary")
            return int(i)

        return cls(
            rust, config, tid("cls_token", "[CLS]"), tid("sep_token", "[SEP]"), tid("pad_token", "[PAD]")
        )

    def with_mask(self, mask: str | UniMask, *, block: bool | None = None) -> UniTokenizer:
        """A copy for ``mask``. ``block=True``: batches of at least :data:`BLOCK_MIN_TOKENS` tokens
        carry no ``attention_bias``, only the mask's name (``uni_arrow``) for a torch scorer that
        computes attention per segment (``uni_block.py``); ``None`` keeps this tokenizer's choice.
        ONNX graphs need the dense mask.
        """
        other = object.__new__(UniTokenizer)
        other.__dict__.update(self.__dict__)
        other.mask = UniMask.parse(mask)
        if block is not None:
            other.block = bool(block)
        return other

    # -- pieces ---------------------------------------------------------------------------------

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)] if texts else []

    def context_ids(
        self, context: str | Sequence[str], field: str = "context", truncate: bool | None = None
    ) -> tuple[list[int], bool]:
        """[CLS] context [SEP], the oldest turns dropped to fit; (ids, truncated)."""
        turns = [context] if isinstance(context, str) else list(context)
        for i, t in enumerate(turns):
            if not isinstance(t, str):
                raise InvalidInput(f"{field}[{i}]: expected a string, got {type(t).__name__}")
        per_turn = self._ids(turns)
        if self.speaker_ids:  # newest turn: the first token; alternating back from there
            n = len(per_turn)
            per_turn = [[self.speaker_ids[(n - 1 - i) % 2], *ids] for i, ids in enumerate(per_turn)]
        room = self.config.max_context_tokens - 2
        total = sum(len(x) for x in per_turn)
        if total > room and not (self.config.truncate_context if truncate is None else truncate):
            raise InvalidInput(
                f"{field}: {total + 2} tokens, over the limit of {self.config.max_context_tokens} "
                "(max_context_tokens; truncation is off)"
            )
        kept: list[int] = []
        for ids in reversed(per_turn):  # newest first
            if len(kept) + len(ids) > room:
                if not kept:  # the newest turn alone is too long: keep its last tokens
                    kept = ids[len(ids) - room :]
                break
            kept = ids + kept
        return [self.cls_id, *kept, self.sep_id], total > room

    def candidate_ids(
        self, candidates: Sequence[str], field: str = "candidates", truncate: bool = True
    ) -> tuple[list[list[int]], np.ndarray]:
        if isinstance(candidates, str):
            raise InvalidInput(f"{field}: expected a list of strings, got one string")
        for i, c in enumerate(candidates):
            if not isinstance(c, str):
                raise InvalidInput(f"{field}[{i}]: expected a string, got {type(c).__name__}")
        room = self.config.max_candidate_tokens - 2
        out, trunc = [], []
        for i, ids in enumerate(self._ids(list(candidates))):
            if len(ids) > room and not truncate:
                raise InvalidInput(
                    f"{field}[{i}]: {len(ids) + 2} tokens, over the limit of "
                    f"{self.config.max_candidate_tokens} (max_candidate_tokens; truncation is off)"
                )
            trunc.append(len(ids) > room)
            out.append([self.cls_id, *ids[max(0, len(ids) - room) :], self.sep_id])
        return out, np.array(trunc, dtype=bool)

    @staticmethod
    def row(ctx: list[int], cands: Sequence[list[int]]) -> np.ndarray:
        """One (L, 2) unit row: token ids and span ids (-1 context, k for candidate k)."""
        ids = np.fromiter((i for c in (ctx, *cands) for i in c), dtype=np.int64)
        spans = np.concatenate(
            [np.full(len(ctx), -1, np.int64)] + [np.full(len(c), k, np.int64) for k, c in enumerate(cands)]
        )
        return np.stack([ids, spans], axis=1)  # (L, 2)

    def chunks(
        self, ctx_len: int, cand_lens: Sequence[int], budget: int | None = None
    ) -> list[tuple[int, int]]:
        """Greedy split of the candidates, in order, into rows under the token and group budgets."""
        budget = int(budget or self.config.max_row_tokens)
        out, start, used = [], 0, ctx_len
        for i, n in enumerate(cand_lens):
            if i > start and (used + n > budget or i - start >= self.config.max_groups):
                out.append((start, i))
                start, used = i, ctx_len
            used += n
        out.append((start, len(cand_lens)))
        return out

    # -- the protocol -----------------------------------------------------------------------------

    def encode_groups(
        self,
        items: Sequence[tuple[str | Sequence[str], Sequence[str]]],
        *,
        max_row_tokens: int | None = None,
        truncate: bool | None = None,
    ) -> tuple[Encoded, list[Chunk], list[np.ndarray]]:
        """Every (context, candidates) item as one or more rows (candidate chunks).

        ``truncate=False``: a context or candidate over its limit is an error (None: the config's
        ``truncate_context`` for the context; candidates are truncated).

        Returns the rows, which chunk each row is, and per item the candidates' truncation flags.
        A row's ``truncated`` flag is its context's.
        """
        rows: list[np.ndarray] = []
        chunks: list[Chunk] = []
        trunc_rows: list[bool] = []
        cand_trunc: list[np.ndarray] = []
        for n, (context, candidates) in enumerate(items):
            field = f"items[{n}]" if len(items) > 1 else ""
            cands, ct = self.candidate_ids(
                candidates, f"{field}.candidates" if field else "candidates", truncate is not False
            )
            if not cands:
                raise InvalidInput(
                    f"{field + '.' if field else ''}candidates: empty list; give at least one candidate"
                )
            ctx, trunc = self.context_ids(context, f"{field}.context" if field else "context", truncate)
            for a, b in self.chunks(len(ctx), [len(c) for c in cands], max_row_tokens):
                rows.append(self.row(ctx, cands[a:b]))
                chunks.append(Chunk(n, a, b))
                trunc_rows.append(trunc)
            cand_trunc.append(ct)
        enc = Encoded(ids=rows, type_ids=[[] for _ in rows], truncated=np.array(trunc_rows, dtype=bool))
        return enc, chunks, cand_trunc

    def encode(self, texts: Sequence[str]) -> Encoded:
        raise InvalidInput("uni-encoder: scores (context, candidates) items; use rank, not encode")

    def encode_pairs(self, pairs: Sequence[tuple[str | Sequence[str], Sequence[str]]]) -> Encoded:
        """(context, candidates) items as rows (chunked when over the row budget)."""
        return self.encode_groups(pairs)[0]

    def pad(self, ids: list[np.ndarray], type_ids: list[list[int]] | None = None) -> TokenBatch:
        """Rows -> padded batch with position ids, the additive mask and spans (vectorised)."""
        input_ids, spans, valid = pack_rows(ids, self.pad_id)  # (B, T) x3
        cfg = self.config
        types = (spans >= 0).astype(np.int64) * cfg.candidate_type if cfg.uses_type_ids else None  # (B, T)
        if self.block and spans.shape[1] >= BLOCK_MIN_TOKENS:  # the scorer reads the pattern from spans
            bias, extras = None, {"uni_arrow": np.array([self.mask is UniMask.ARROW])}
        else:
            bias, extras = attention_bias(spans, valid, self.mask), {}
        return TokenBatch(
            input_ids,
            valid.astype(np.int64),
            types,
            position_ids=position_ids(
                spans, valid, cfg.position_offset, cfg.candidate_positions == "from-start"
            ),
            attention_bias=bias,
            spans=np.where(valid, spans, -1),
            extras=extras,
        )
