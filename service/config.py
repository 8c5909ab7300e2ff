"""Server configuration: one validated dataclass, read once at start-up.

Sources, later wins: defaults < TOML file (``--config``) < CLI flags. An
unknown TOML key is an error (a typo must not silently fall back to a
default). Paths are resolved at load time; secrets (the API key) are read
from a file, never from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pairsmith.errors import InvalidInput, NotFound

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464


def default_data_dir() -> Path:
    """The index store's default root: ``$PAIRSMITH_HOME``, else the user's data dir + ``pairsmith``."""
    from pairsmith.service.store.index_store import default_root

    return default_root()


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``pairsmith serve`` needs. Validated in ``__post_init__``."""

    model: str = "default"  # bi-encoder: 'default', a directory or a hub name
    cross_encoder: str | None = None  # enables Score/Rerank CROSS_ENCODER
    uni_encoder: str | None = None  # Rerank UNI_ENCODER (a Uni-Encoder directory)
    backend: str = "auto"  # auto (measured fastest here) | torch | onnx (fp32) | openvino
    auto_export: bool = True  # export engines: export a model with no export yet on first use
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    cross_last_layer: str = "cls"  # cls ([CLS]-only last layer where exact) | full
    data_dir: Path | None = None  # index store root; None: default_data_dir()
    # None: loopback (127.0.0.1) unless an API key is configured, then all interfaces (0.0.0.0).
    # An explicit host always wins. A non-loopback host without TLS needs insecure=True.
    host: str | None = None
    insecure: bool = False  # allow plaintext on a non-loopback address (keys and data in clear)
    port: int = DEFAULT_PORT
    api_key_file: Path | None = None  # one key per line; none: no auth
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a cert signed by it (mTLS)
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"  # /metrics has no auth: loopback unless asked
    max_batch_tokens: int = 8192  # tokens per merged batch (and padded tokens per forward pass)
    max_batch_rows: int = 32  # rows per forward pass (length-sorted within a merged batch)
    batch_hold_fraction: float = 0.0  # optional bounded adaptive hold after a batch (0: never); see batcher
    max_concurrent_requests: int = 512  # in-flight model calls; beyond: RESOURCE_EXHAUSTED
    max_texts_per_request: int = 1024
    max_text_chars: int = 65_536  # per text; longer ones are refused before tokenisation
    # Tokenising a request with more characters than this (all texts together) runs on its own
    # one-thread pool, so big requests queue behind each other, not in front of small ones.
    big_request_chars: int = 262_144
    max_message_bytes: int = 32 * 1024 * 1024
    max_top_k: int = 1000
    max_stream_inflight: int = 32  # EmbedStream messages processed ahead of the reply
    tokenizer_threads: int = 2
    # backend onnx on the CPU: batches run at once on one session, the cores split between them
    # (0: automatic = 2 on 2+ cores, measured fastest on 2 cores; 1: one batch at a time).
    streams: int = 0
    # What one CreateIndex factory string may allocate (checked before FAISS builds anything).
    max_factory_nlist: int = 262_144
    max_factory_hnsw_m: int = 256
    max_factory_pq_nbits: int = 12
    # Requests per second per API key (token bucket, burst = 2 x rate); 0: no limit.
    rate_limit_per_key: float = 0.0
    # Request bytes per second per API key (the cost of a call; burst = 2 x rate); 0: no limit.
    rate_limit_bytes_per_key: float = 0.0
    # Failed authentications per peer address per minute (the burst too); beyond, that address
    # is refused without looking at its key until the budget refills. 0: no throttling.
    auth_failures_per_minute: int = 20
    # Server-wide quotas on the index store (0: none); per-key ones live in the key file.
    max_indexes: int = 0
    max_vectors: int = 0
    shutdown_grace_s: float = 10.0
    # Indexes kept open at once (idle ones beyond it are closed, least recently used first, and
    # reopened on demand); 0: from the file-descriptor limit (see IndexStore).
    max_open_indexes: int = 0
    warmup: bool = True

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise InvalidInput("model: must not be empty")
        if self.backend not in ("torch", "onnx", "openvino", "auto"):
            raise InvalidInput(f"backend: must be torch, onnx, openvino or auto, got {self.backend!r}")
        if self.cross_last_layer not in ("cls", "full"):
            raise InvalidInput(f"cross_last_layer: must be cls or full, got {self.cross_last_layer!r}")
        for name in ("port", "metrics_port"):
            v = getattr(self, name)
            if v is not None and not (0 <= int(v) <= 65535):
                raise InvalidInput(f"{name}: must be in 0..65535, got {v}")
        positive = (
            "max_batch_tokens",
            "max_batch_rows",
            "max_concurrent_requests",
            "max_texts_per_request",
            "max_text_chars",
            "big_request_chars",
            "max_factory_nlist",
            "max_factory_hnsw_m",
            "max_factory_pq_nbits",
            "max_message_bytes",
            "max_top_k",
            "max_stream_inflight",
            "tokenizer_threads",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_batch_tokens < 64:
            raise InvalidInput(f"max_batch_tokens: must be >= 64, got {self.max_batch_tokens}")
        if self.max_message_bytes < 64 * 1024:
            raise InvalidInput(f"max_message_bytes: must be >= 65536, got {self.max_message_bytes}")
        if not 0.0 <= self.batch_hold_fraction <= 1.0:
            raise InvalidInput(f"batch_hold_fraction: must be in 0..1, got {self.batch_hold_fraction}")
        if self.streams < 0:
            raise InvalidInput(f"streams: must be >= 0 (0 = automatic), got {self.streams}")
        for name in ("rate_limit_per_key", "rate_limit_bytes_per_key"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name}: must be >= 0, got {getattr(self, name)}")
            if getattr(self, name) > 0 and self.api_key_file is None:
                raise InvalidInput(f"{name}: limits are per API key; set api_key_file as well")
        for name in ("auth_failures_per_minute", "max_indexes", "max_vectors"):
            if int(getattr(self, name)) < 0:
                raise InvalidInput(f"{name}: must be >= 0 (0 = no limit), got {getattr(self, name)}")
        if self.host is not None and not str(self.host).strip():
            raise InvalidInput("host: must not be empty (omit it for the default)")
        if self.max_open_indexes < 0:
            raise InvalidInput(f"max_open_indexes: must be >= 0 (0 = automatic), got {self.max_open_indexes}")
        if self.shutdown_grace_s < 0:
            raise InvalidInput(f"shutdown_grace_s: must be >= 0, got {self.shutdown_grace_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("tls_cert / tls_key: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInput("tls_client_ca: mutual TLS needs tls_cert and tls_key as well")
        for name in ("api_key_file", "tls_cert", "tls_key", "tls_client_ca"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise NotFound(f"{name}: file {p} does not exist")

    @property
    def store_root(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else default_data_dir()

    @property
    def bind_host(self) -> str:
        """The address to bind: ``host``, else loopback without a key and all interfaces with one."""
        if self.host is not None:
            return self.host
        return "0.0.0.0" if self.api_key_file is not None else "127.0.0.1"

    def check_exposure(self) -> None:
        """A non-loopback address in plaintext needs ``insecure``: say what would cross the network."""
        host = self.bind_host
        if self.tls or self.insecure or is_loopback(host):
            return
        what = (
            "bearer API keys (and every request) would cross the network in clear text, where anyone "
            "on the path can read and replay them"
            if self.api_key_file is not None
            else "anyone who can reach it could call every RPC, unencrypted and without a key"
        )
        raise InvalidInput(
            f"host: binding {host} without TLS: {what}. Give --tls-cert and --tls-key, bind a loopback "
            "--host (127.0.0.1), or pass --insecure (insecure = true) to accept plaintext"
        )

    @property
    def store_config(self):
        """The index store's configuration (factory limits from this config)."""
        from pairsmith.service.store.faiss_index import FactoryLimits
        from pairsmith.service.store.live import StoreConfig

        return StoreConfig(
            factory_limits=FactoryLimits(
                max_nlist=self.max_factory_nlist,
                max_hnsw_m=self.max_factory_hnsw_m,
                max_pq_nbits=self.max_factory_pq_nbits,
                max_number=max(self.max_factory_nlist, FactoryLimits.max_number),
            ),
            max_open_indexes=self.max_open_indexes,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in d.items()}, indent=2)

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, source: str = "config") -> ServeConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInput(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = {}
        for key, value in values.items():
            kwargs[key] = _coerce(known[key], value, source)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> ServeConfig:
        """Read ``path`` (top-level keys, or a ``[serve]`` table) and apply ``overrides``."""
        values = read_toml(Path(path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values, source=str(path))

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` (other names are not resolved: treated as exposed)."""
    import ipaddress

    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not path.is_file():
        raise NotFound(f"config: file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML ({exc})") from exc
    if set(data) == {"serve"} and isinstance(data["serve"], dict):
        data = data["serve"]
    return dict(data)


_PATH_FIELDS = {"data_dir", "api_key_file", "tls_cert", "tls_key", "tls_client_ca"}


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    name = f.name
    if value is None:
        return None
    if name in _PATH_FIELDS:
        if not isinstance(value, (str, os.PathLike)):
            raise InvalidInput(f"{source}: {name} must be a path string, got {type(value).__name__}")
        return Path(value).expanduser()
    default = f.default if f.default is not dataclasses.MISSING else None
    want: tuple[type, ...]
    if name == "metrics_port" or isinstance(default, int) and not isinstance(default, bool):
        want = (int,)
    elif isinstance(default, bool):
        want = (bool,)
    elif isinstance(default, float):
        want = (int, float)
    else:
        want = (str,)
    if isinstance(value, bool) and bool not in want or not isinstance(value, want):
        raise InvalidInput(f"{source}: {name} must be {want[0].__name__}, got {value!r}")
    return float(value) if float in want else value


__all__ = ["ServeConfig", "default_data_dir", "is_loopback", "DEFAULT_PORT", "DEFAULT_METRICS_PORT"]
