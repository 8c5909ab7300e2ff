"""Protobuf <-> numpy / store types, in one place (the edge of the wire layer).

Nothing past this module sees a protobuf message; nothing before it sees a
tensor. Every check here raises :class:`InvalidInput` naming the field.
"""

from __future__ import annotations

import json
import math

import numpy as np
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from pairsmith.errors import InvalidInput
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb

METRIC_TO_PB = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_INNER_PRODUCT, "l2": pb.METRIC_L2}
PB_TO_METRIC = {v: k for k, v in METRIC_TO_PB.items()}
MAX_ID_CHARS = 512


def vector_from(msg, which: str, field: str, dim: int) -> np.ndarray:
    """A float32 vector from a ``bytes vector`` / ``FloatVector vector_values`` oneof member."""
    if which == "vector":
        raw = msg.vector
        if len(raw) != 4 * dim:
            raise InvalidInput(
                f"{field}.vector: {len(raw)} bytes, expected {4 * dim} (packed float32, dimension {dim})"
            )
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        values = msg.vector_values.values
        if len(values) != dim:
            raise InvalidInput(f"{field}.vector_values: {len(values)} values, expected dimension {dim}")
        vec = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vec).all():
        raise InvalidInput(f"{field}: vector holds NaN or infinity")
    return vec


def embeddings_pb(vectors: np.ndarray, token_counts, truncated, fmt: int) -> list:
    """``Embedding`` messages for rows of ``vectors`` in the requested format."""
    out = []
    as_list = fmt == pb.VECTOR_FORMAT_FLOAT_LIST
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    for i in range(vectors.shape[0]):
        if as_list:
            e = pb.Embedding(
                values=vectors[i].tolist(), token_count=int(token_counts[i]), truncated=bool(truncated[i])
            )
        else:
            e = pb.Embedding(
                vector=vectors[i].tobytes(), token_count=int(token_counts[i]), truncated=bool(truncated[i])
            )
        out.append(e)
    return out


def check_format(fmt: int, field: str = "format") -> int:
    if fmt not in (pb.VECTOR_FORMAT_UNSPECIFIED, pb.VECTOR_FORMAT_FLOAT32_BYTES, pb.VECTOR_FORMAT_FLOAT_LIST):
        raise InvalidInput(f"{field}: unknown VectorFormat {fmt}")
    return fmt


def payload_to_dict(msg, field: str = "item") -> dict | None:
    if not msg.HasField("payload"):
        return None
    try:
        return json_format.MessageToDict(msg.payload)
    except (ValueError, json_format.Error) as exc:  # NaN / Infinity numbers have no JSON form
        raise InvalidInput(f"{field}.payload: not representable as JSON ({exc})") from None


def payload_pb(payload: dict | None) -> struct_pb2.Struct | None:
    if payload is None:
        return None
    s = struct_pb2.Struct()
    s.update(_jsonable(payload))
    return s


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def check_payload_size(payload: dict | None, field: str, *, text_stored: bool) -> None:
    """Refuse a payload over the store's limit before any embedding, naming the real cause."""
    from pairsmith.service.store.index_store import MAX_PAYLOAD_BYTES

    if not payload:
        return
    try:
        size = len(json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field}.payload: not JSON-serialisable ({exc})") from None
    if size <= MAX_PAYLOAD_BYTES:
        return
    if text_stored:
        raise InvalidInput(
            f"{field}.text: stored as payload.text (store_text=true), the payload is {size} bytes as JSON; "
            f"the limit is {MAX_PAYLOAD_BYTES}. Shorten the text or set store_text=false"
        )
    raise InvalidInput(f"{field}.payload: {size} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}")


def check_id(item_id: str, field: str) -> str:
    if not item_id:
        raise InvalidInput(f"{field}.id: must not be empty")
    if len(item_id) > MAX_ID_CHARS:
        raise InvalidInput(f"{field}.id: {len(item_id)} characters, at most {MAX_ID_CHARS}")
    return item_id


def index_info_pb(info) -> pb.IndexInfo:
    metric = getattr(info.metric, "value", info.metric)
    return pb.IndexInfo(
        name=info.name,
        dim=int(info.dim),
        factory=str(info.factory),
        metric=METRIC_TO_PB.get(str(metric), pb.METRIC_UNSPECIFIED),
        count=int(info.count),
        encoder_fingerprint=str(info.encoder_fingerprint or ""),
        encoder_id=str(info.encoder_id or ""),
        size_bytes=int(info.size_bytes or 0),
        created_at=_timestamp(info.created_at),
        updated_at=_timestamp(info.updated_at),
        needs_rebuild_on_delete=bool(info.needs_rebuild_on_delete),
    )


def _timestamp(value) -> timestamp_pb2.Timestamp:
    """A Timestamp from an RFC 3339 string or epoch seconds (unset when unknown)."""
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, str) and value:
        try:
            ts.FromJsonString(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and value:
        ts.FromNanoseconds(int(value * 1e9))
    return ts
