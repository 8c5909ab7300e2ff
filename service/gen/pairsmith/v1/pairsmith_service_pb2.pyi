import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_METHOD_UNSPECIFIED: _ClassVar[ScoreMethod]
    SCORE_METHOD_BI_ENCODER: _ClassVar[ScoreMethod]
    SCORE_METHOD_CROSS_ENCODER: _ClassVar[ScoreMethod]
    SCORE_METHOD_UNI_ENCODER: _ClassVar[ScoreMethod]

class VectorFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_FORMAT_UNSPECIFIED: _ClassVar[VectorFormat]
    VECTOR_FORMAT_FLOAT32_BYTES: _ClassVar[VectorFormat]
    VECTOR_FORMAT_FLOAT_LIST: _ClassVar[VectorFormat]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_INNER_PRODUCT: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
SCORE_METHOD_UNSPECIFIED: ScoreMethod
SCORE_METHOD_BI_ENCODER: ScoreMethod
SCORE_METHOD_CROSS_ENCODER: ScoreMethod
SCORE_METHOD_UNI_ENCODER: ScoreMethod
VECTOR_FORMAT_UNSPECIFIED: VectorFormat
VECTOR_FORMAT_FLOAT32_BYTES: VectorFormat
VECTOR_FORMAT_FLOAT_LIST: VectorFormat
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric
METRIC_INNER_PRODUCT: Metric
METRIC_L2: Metric

class Timing(_message.Message):
    __slots__ = ("queue_ms", "tokenize_ms", "inference_ms", "search_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    tokenize_ms: float
    inference_ms: float
    search_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., tokenize_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class FloatVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_id", "encoder_fingerprint", "dim", "similarity", "backend", "cross_encoder_id", "uni_encoder_id", "rerank_methods", "max_texts_per_request", "max_input_tokens", "max_batch_tokens", "max_message_bytes", "max_top_k", "version", "runtime_versions", "max_text_chars", "timing", "engine", "cpu_isa")
    class RuntimeVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CROSS_ENCODER_ID_FIELD_NUMBER: _ClassVar[int]
    UNI_ENCODER_ID_FIELD_NUMBER: _ClassVar[int]
    RERANK_METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CPU_ISA_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    encoder_fingerprint: str
    dim: int
    similarity: str
    backend: str
    cross_encoder_id: str
    uni_encoder_id: str
    rerank_methods: _containers.RepeatedScalarFieldContainer[ScoreMethod]
    max_texts_per_request: int
    max_input_tokens: int
    max_batch_tokens: int
    max_message_bytes: int
    max_top_k: int
    version: str
    runtime_versions: _containers.ScalarMap[str, str]
    max_text_chars: int
    timing: Timing
    engine: str
    cpu_isa: str
    def __init__(self, model_id: _Optional[str] = ..., encoder_fingerprint: _Optional[str] = ..., dim: _Optional[int] = ..., similarity: _Optional[str] = ..., backend: _Optional[str] = ..., cross_encoder_id: _Optional[str] = ..., uni_encoder_id: _Optional[str] = ..., rerank_methods: _Optional[_Iterable[_Union[ScoreMethod, str]]] = ..., max_texts_per_request: _Optional[int] = ..., max_input_tokens: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_top_k: _Optional[int] = ..., version: _Optional[str] = ..., runtime_versions: _Optional[_Mapping[str, str]] = ..., max_text_chars: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., engine: _Optional[str] = ..., cpu_isa: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "normalize", "truncate", "dimensions", "format")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    truncate: bool
    dimensions: int
    format: VectorFormat
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., truncate: _Optional[bool] = ..., dimensions: _Optional[int] = ..., format: _Optional[_Union[VectorFormat, str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector", "values", "token_count", "truncated")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    values: _containers.RepeatedScalarFieldContainer[float]
    token_count: int
    truncated: bool
    def __init__(self, vector: _Optional[bytes] = ..., values: _Optional[_Iterable[float]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "total_tokens", "timing")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    total_tokens: int
    timing: Timing
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., total_tokens: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("texts", "normalize", "truncate", "dimensions", "format")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    truncate: bool
    dimensions: int
    format: VectorFormat
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., truncate: _Optional[bool] = ..., dimensions: _Optional[int] = ..., format: _Optional[_Union[VectorFormat, str]] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("sequence", "embeddings", "dim", "total_tokens", "timing")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    total_tokens: int
    timing: Timing
    def __init__(self, sequence: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., total_tokens: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class TextPair(_message.Message):
    __slots__ = ("text_a", "text_b")
    TEXT_A_FIELD_NUMBER: _ClassVar[int]
    TEXT_B_FIELD_NUMBER: _ClassVar[int]
    text_a: str
    text_b: str
    def __init__(self, text_a: _Optional[str] = ..., text_b: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("pairs", "method", "raw_scores", "truncate")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[TextPair]
    method: ScoreMethod
    raw_scores: bool
    truncate: bool
    def __init__(self, pairs: _Optional[_Iterable[_Union[TextPair, _Mapping]]] = ..., method: _Optional[_Union[ScoreMethod, str]] = ..., raw_scores: _Optional[bool] = ..., truncate: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "method", "truncated", "timing")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    method: ScoreMethod
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    timing: Timing
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., method: _Optional[_Union[ScoreMethod, str]] = ..., truncated: _Optional[_Iterable[bool]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "texts", "method", "top_n", "return_text", "raw_scores", "truncate")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    query: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    method: ScoreMethod
    top_n: int
    return_text: bool
    raw_scores: bool
    truncate: bool
    def __init__(self, query: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[ScoreMethod, str]] = ..., top_n: _Optional[int] = ..., return_text: _Optional[bool] = ..., raw_scores: _Optional[bool] = ..., truncate: _Optional[bool] = ...) -> None: ...

class RerankResult(_message.Message):
    __slots__ = ("index", "score", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    text: str
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("results", "method", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RerankResult]
    method: ScoreMethod
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[RerankResult, _Mapping]]] = ..., method: _Optional[_Union[ScoreMethod, str]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class RerankStage(_message.Message):
    __slots__ = ("method", "candidates", "text_field")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    method: ScoreMethod
    candidates: int
    text_field: str
    def __init__(self, method: _Optional[_Union[ScoreMethod, str]] = ..., candidates: _Optional[int] = ..., text_field: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("index", "text", "vector", "vector_values", "top_k", "rerank", "omit_payload")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_VALUES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    OMIT_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    index: str
    text: str
    vector: bytes
    vector_values: FloatVector
    top_k: int
    rerank: RerankStage
    omit_payload: bool
    def __init__(self, index: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[bytes] = ..., vector_values: _Optional[_Union[FloatVector, _Mapping]] = ..., top_k: _Optional[int] = ..., rerank: _Optional[_Union[RerankStage, _Mapping]] = ..., omit_payload: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "payload", "vector_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    payload: _struct_pb2.Struct
    vector_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector_score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timing")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timing: Timing
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("name", "factory", "metric")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    factory: str
    metric: Metric
    def __init__(self, name: _Optional[str] = ..., factory: _Optional[str] = ..., metric: _Optional[_Union[Metric, str]] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "dim", "factory", "metric", "count", "encoder_fingerprint", "encoder_id", "size_bytes", "created_at", "updated_at", "needs_rebuild_on_delete")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REBUILD_ON_DELETE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    factory: str
    metric: Metric
    count: int
    encoder_fingerprint: str
    encoder_id: str
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    needs_rebuild_on_delete: bool
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., factory: _Optional[str] = ..., metric: _Optional[_Union[Metric, str]] = ..., count: _Optional[int] = ..., encoder_fingerprint: _Optional[str] = ..., encoder_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., needs_rebuild_on_delete: _Optional[bool] = ...) -> None: ...

class CreateIndexResponse(_message.Message):
    __slots__ = ("index", "timing")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    index: IndexInfo
    timing: Timing
    def __init__(self, index: _Optional[_Union[IndexInfo, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("id", "text", "vector", "vector_values", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_VALUES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    vector: bytes
    vector_values: FloatVector
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[bytes] = ..., vector_values: _Optional[_Union[FloatVector, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("index", "items", "store_text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STORE_TEXT_FIELD_NUMBER: _ClassVar[int]
    index: str
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    store_text: bool
    def __init__(self, index: _Optional[str] = ..., items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ..., store_text: _Optional[bool] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "count", "timing")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    count: int
    timing: Timing
    def __init__(self, upserted: _Optional[int] = ..., count: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("index", "ids")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    index: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "count", "timing")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    count: int
    timing: Timing
    def __init__(self, deleted: _Optional[int] = ..., count: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GetIndexRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetIndexResponse(_message.Message):
    __slots__ = ("index", "timing")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    index: IndexInfo
    timing: Timing
    def __init__(self, index: _Optional[_Union[IndexInfo, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes", "timing")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    timing: Timing
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class DropIndexRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropIndexResponse(_message.Message):
    __slots__ = ("timing",)
    TIMING_FIELD_NUMBER: _ClassVar[int]
    timing: Timing
    def __init__(self, timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...
