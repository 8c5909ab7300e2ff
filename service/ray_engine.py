"""Ray plumbing for pairsmith's batch jobs (the ``distributed`` extra): connect, actors, pair scoring.

Everything here imports Ray lazily: without ``--engine ray`` nothing imports it,
and when it is missing :func:`require_ray` names the extra to install.

- :class:`RayOptions` (address, actors, CPUs/GPUs per actor, batch size) and
  :func:`ray_session` (connect to a cluster or start a local one; leaves an
  already-initialised Ray alone, so tests and notebooks share one).
- :class:`EncoderActor` / :class:`PairScorerActor`: Ray Data ``map_batches``
  callables that load their model once per actor.
- :func:`score_pairs`: pairs -> scores with a cross-encoder (logits or
  sigmoid, optionally both orders) or a bi-encoder (cosine) on a Ray actor
  pool; the teacher-scoring step of DSE and the pseudo-labelling step of
  Trans-Encoder call it through their ``pair_scorer`` hook.

Ray facts this module handles (measured on Ray 2.60, see ENVIRONMENT.md):
an actor pool of ``n`` actors with ``num_cpus=1`` each on an ``n``-CPU node
leaves nothing for the read tasks and deadlocks, so local actors get a
fractional CPU share; a dataset made of one block feeds one actor, so inputs
are split into several blocks explicitly; token authentication is set
deliberately (``RAY_AUTH_MODE``); Ray Data's progress logging is turned off
off a TTY; user-code errors are unwrapped back into pairsmith errors.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pairsmith.errors import ErrorKind, FailedPrecondition, InvalidInput, PairsmithError, parse_enum

log = logging.getLogger(__name__)

READ_CPUS = 0.25  # CPU share a read task asks for (parsing is light; Ray's CPUs are scheduling tokens)
RAY_HINT = 'pip install "pairsmith[distributed]"  (installs ray[data])'


class Engine(enum.Enum):
    """Where a batch job runs."""

    LOCAL = "local"  # this process (the default; never imports Ray)
    RAY = "ray"  # a Ray cluster (--ray-address) or a local Ray started for the job


class PairModel(enum.Enum):
    """What scores a pair in :func:`score_pairs`."""

    CROSS = "cross"  # a cross-encoder: one forward pass per pair
    BI = "bi"  # a bi-encoder: cosine of the two embeddings


def require_ray(*, local: bool = True):
    """Import ``ray`` and ``ray.data`` or raise FailedPrecondition naming the extra.

    Ray reads ``RAY_AUTH_MODE`` once, at import. For a local Ray that pairsmith starts
    (``local``) an unset mode becomes ``token``: Ray 2.60's own default for new local
    clusters (it writes ``~/.ray/auth_token``), made explicit so that the driver, the
    GCS and the workers agree and Ray does not warn. Joining a cluster (``--ray-address``)
    leaves the mode to the environment: set ``RAY_AUTH_MODE=token`` and the cluster's
    token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) when the cluster uses token auth.
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise FailedPrecondition(
            f"--engine ray needs Ray Data, which is not installed ({exc.msg}); install the distributed "
            f"extra: {RAY_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How a job uses Ray. ``address`` None starts a local Ray for the job (and stops it after)."""

    address: str | None = None  # "auto", "HOST:PORT" or "ray://HOST:10001"; None: local
    actors: int | None = None  # encoder/scorer actors; None: one per GPU, else max(1, CPUs - 1)
    cpus_per_actor: float | None = None  # None: 1 on a cluster with GPUs, else a share that leaves room
    gpus_per_actor: float = 0.0  # > 0 puts each actor on (a share of) a GPU
    batch_size: int = 256  # rows per map_batches call
    local_cpus: int | None = None  # CPUs of a local Ray (None: Ray detects them)

    def __post_init__(self) -> None:
        if self.actors is not None and (isinstance(self.actors, bool) or self.actors < 1):
            raise InvalidInput(f"ray-actors: must be a positive integer, got {self.actors!r}")
        if self.cpus_per_actor is not None and not 0 < self.cpus_per_actor <= 1024:
            raise InvalidInput(f"ray-cpus-per-actor: must be > 0, got {self.cpus_per_actor!r}")
        if not 0 <= self.gpus_per_actor <= 64:
            raise InvalidInput(f"ray-gpus-per-actor: must be >= 0, got {self.gpus_per_actor!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInput(f"batch-size: must be a positive integer, got {self.batch_size!r}")

    def pool(self, ray) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) for the connected cluster.

        Read tasks ask for :data:`READ_CPUS`; on CPU-only clusters the actors share what is left.
        """
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        if self.gpus_per_actor > 0:
            n = self.actors or max(1, int(gpus / self.gpus_per_actor))
            return n, self.cpus_per_actor or 1.0, self.gpus_per_actor
        n = self.actors or max(1, int(cpus) - 1)
        # n actors x 1 CPU on an n-CPU node leave nothing for the read tasks: the job deadlocks.
        share = self.cpus_per_actor or max(0.05, min(1.0, (cpus - 2 * READ_CPUS) / n))
        if n * share > cpus - READ_CPUS:
            log.warning(
                "ray: %d actors x %.2f CPUs leave less than %.2f CPU for reading on a %.0f-CPU cluster; "
                "the job may stall: lower --ray-actors or --ray-cpus-per-actor",
                n,
                share,
                READ_CPUS,
                cpus,
            )
        return n, share, 0.0


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator:
    """Ray, connected and configured for a batch job; a Ray this call started is shut down after."""
    ray = require_ray(local=opts.address is None)
    started = False
    if not ray.is_initialized():
        t0 = time.perf_counter()
        kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
        if opts.address is None:
            kwargs.update(num_cpus=opts.local_cpus, _node_ip_address="127.0.0.1")
        try:
            ray.init(address=opts.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FailedPrecondition(
                f"ray: cannot connect to {opts.address or 'a local Ray'} ({exc})"
            ) from None
        started = True
        log.info("ray: connected to %s in %.1fs", opts.address or "a new local Ray", time.perf_counter() - t0)
    configure_data(ray)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def configure_data(ray) -> None:
    """Ray Data settings every pairsmith job relies on."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order (ids, resume)
    ctx.raise_original_map_exception = True  # a DataFormatError stays one (see unwrap_error)
    if not sys.stderr.isatty():
        ctx.enable_progress_bars = False  # pairsmith reports its own progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)


class CarriedError(Exception):
    """A pairsmith error crossing a Ray process boundary.

    Ray pickles task exceptions and rebuilds them from ``args`` (plus ``__dict__``), and
    Ray Data appends retry advice to ``args[0]``. Errors whose ``__init__`` takes other
    arguments than the message (e.g. :class:`~pairsmith.errors.DataFormatError`) cannot
    be rebuilt that way; this one can, and keeps the class, the clean message and the
    kind as attributes for :func:`unwrap_error`.
    """

    def __init__(
        self, message: str, cls_path: str = "", kind: str = ErrorKind.INVALID_ARGUMENT.value
    ) -> None:
        super().__init__(message)
        self.clean_message = message
        self.cls_path = cls_path
        self.kind_value = kind


def carry(fn):
    """Decorate code that runs in Ray workers: pairsmith errors leave it as :class:`CarriedError`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PairsmithError as exc:
            cls = type(exc)
            raise CarriedError(exc.message, f"{cls.__module__}:{cls.__qualname__}", exc.kind.value) from None

    return wrapper


def unwrap_error(exc: BaseException) -> BaseException:
    """The pairsmith error inside a Ray task failure (Ray wraps user exceptions), else ``exc``."""
    node: BaseException | None = exc
    for _ in range(16):
        if node is None:
            break
        if isinstance(node, CarriedError) and getattr(node, "cls_path", ""):
            return _rebuild(node)
        if isinstance(node, PairsmithError) and not type(node).__module__.startswith("ray"):
            return node
        node = getattr(node, "cause", None) or node.__cause__
    return exc


def _rebuild(carried: CarriedError) -> PairsmithError:
    import importlib

    mod, _, name = carried.cls_path.partition(":")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        cls = PairsmithError
    if not (isinstance(cls, type) and issubclass(cls, PairsmithError)):
        cls = PairsmithError
    err = cls.__new__(cls)
    Exception.__init__(err, carried.clean_message)
    err.kind = ErrorKind(carried.kind_value)
    return err


@contextlib.contextmanager
def pairsmith_errors() -> Iterator[None]:
    """Re-raise a pairsmith error that failed inside a Ray task as itself (its message, its kind)."""
    try:
        yield
    except Exception as exc:
        inner = unwrap_error(exc)
        if inner is exc:
            raise
        raise inner from None


# --------------------------------------------------------------------------- actors


class EncoderActor:
    """Ray Data callable: rows with ``text`` -> the same rows with ``vector`` (L2-normalised), no text.

    Loads the bi-encoder once per actor and refuses to run when its
    fingerprint differs from the driver's (a node with other model files).
    """

    @carry
    def __init__(
        self,
        model: str,
        backend: str,
        fingerprint: str,
        batch_tokens: int,
        device: str = "auto",
        onnx_variant: str | None = None,
    ):
        from pairsmith.encoders import BiEncoder

        self.encoder = BiEncoder.load(model, backend=backend, device=device, onnx_variant=onnx_variant)
        if self.encoder.fingerprint != fingerprint:
            raise FailedPrecondition(
                f"ray worker: model {model!r} loads with fingerprint {self.encoder.fingerprint}, the driver's "
                f"is {fingerprint}; every node must see the same model files"
            )
        self.batch_tokens = batch_tokens

    @carry
    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        emb = self.encoder.encode(texts, batch_size=len(texts), max_tokens=self.batch_tokens, normalize=True)
        out = {k: v for k, v in batch.items() if k != "text"}
        out["vector"] = emb.vectors  # (n, dim) float32
        out["truncated"] = np.asarray(emb.truncated, dtype=bool)
        return out


class PairScorerActor:
    """Ray Data callable: rows ``i, a, b`` -> ``i, score`` with one model loaded per actor."""

    @carry
    def __init__(
        self,
        model: str,
        kind: str,
        activation: str,
        symmetric: bool,
        pooling: str | None,
        device: str = "auto",
    ):
        from pairsmith.encoders import Activation, BiEncoder, CrossEncoder

        self.kind = PairModel(kind)
        self.symmetric = symmetric
        self.activation = Activation(activation)
        if self.kind is PairModel.CROSS:
            self.model = CrossEncoder.load(model, device=device, backend="torch")
        else:
            self.model = BiEncoder.load(model, pooling=pooling, device=device, backend="torch")

    @carry
    def __call__(self, batch: dict) -> dict:
        a = [str(x) for x in batch["a"]]
        b = [str(x) for x in batch["b"]]
        if self.kind is PairModel.CROSS:
            pairs = list(zip(a, b, strict=True))
            s = self.model.score(pairs, activation=self.activation, symmetric=self.symmetric, batch_size=32)
            scores = s.values
        else:
            scores = self.model.similarity(a, b, batch_size=64)
        return {"i": batch["i"], "score": np.asarray(scores, dtype=np.float32)}


# --------------------------------------------------------------------------- pair scoring


def score_pairs(
    model: str,
    pairs: Sequence[tuple[str, str]],
    *,
    kind: PairModel | str = PairModel.CROSS,
    activation: str = "sigmoid",
    symmetric: bool = False,
    pooling: str | None = None,
    opts: RayOptions | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Scores of ``pairs`` (input order) by ``model`` on a Ray actor pool; float32, one per pair.

    ``kind`` CROSS: a cross-encoder directory, ``activation`` "sigmoid" or
    "raw" (logits), ``symmetric`` averages both orders. BI: a bi-encoder
    (``pooling`` optional override), cosine of the pair. The numbers equal
    the local :class:`~pairsmith.encoders.CrossEncoder` /
    :class:`~pairsmith.encoders.BiEncoder` ones (same code, fp32).
    """
    kind = parse_enum(PairModel, kind, "kind")
    opts = opts or RayOptions()
    pairs = list(pairs)
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    import pyarrow as pa

    with ray_session(opts) as ray, pairsmith_errors():
        n_actors, cpus, gpus = opts.pool(ray)
        table = pa.table(
            {
                "i": np.arange(len(pairs), dtype=np.int64),
                "a": [p[0] for p in pairs],
                "b": [p[1] for p in pairs],
            }
        )
        # Several blocks, or one actor gets everything (a single-block dataset feeds one actor).
        n_blocks = max(1, min(len(pairs) // max(1, opts.batch_size // 4), 4 * n_actors))
        step = -(-len(pairs) // n_blocks)
        blocks = [table.slice(s, step) for s in range(0, len(pairs), step)]
        ds = ray.data.from_arrow(blocks).map_batches(
            PairScorerActor,
            fn_constructor_kwargs={
                "model": model,
                "kind": kind.value,
                "activation": activation,
                "symmetric": symmetric,
                "pooling": pooling,
            },
            batch_size=opts.batch_size,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus,
            num_gpus=gpus or None,
        )
        out = np.full(len(pairs), np.nan, dtype=np.float32)
        bar = _bar(len(pairs), f"score ({kind.value}, ray)", "pair", progress)
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            out[b["i"]] = b["score"]
            bar.update(len(b["i"]))
        bar.close()
    if np.isnan(out).any():
        raise FailedPrecondition(
            f"ray scoring returned {int(np.isnan(out).sum())} of {len(out)} scores missing"
        )
    return out


def pair_scorer(opts: RayOptions, *, progress: bool = False) -> Callable[..., np.ndarray]:
    """The ``pair_scorer`` hook that distillation jobs take: ``fn(model, pairs, kind=..., ...)``."""

    def fn(model: str, pairs: Sequence[tuple[str, str]], **kw) -> np.ndarray:
        return score_pairs(model, pairs, opts=opts, progress=progress, **kw)

    return fn


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, smoothing=0.1)


# --------------------------------------------------------------------------- CLI wiring


def add_engine_args(p, *, what: str) -> None:
    """``--engine``, ``--ray-address`` and the actor-pool flags on a subcommand parser."""
    p.add_argument(
        "--engine",
        default=Engine.LOCAL.value,
        choices=[e.value for e in Engine],
        help=f"where {what} runs: this process (default) or Ray ({RAY_HINT})",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join: 'auto' (RAY_ADDRESS / the local head), HOST:PORT or ray://HOST:10001; "
        "default: start a local Ray for the job",
    )
    p.add_argument("--ray-actors", type=int, default=None, help="model actors (default: GPUs, else CPUs - 1)")
    p.add_argument(
        "--ray-cpus-per-actor", type=float, default=None, help="CPUs per actor (fractional allowed)"
    )
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (e.g. 1 or 0.5)")


def options_from_args(args, *, batch_size: int = 256) -> RayOptions | None:
    """RayOptions from parsed ``add_engine_args`` flags; None for the local engine."""
    engine = parse_enum(Engine, args.engine, "--engine")
    if engine is Engine.LOCAL:
        if args.ray_address is not None:
            raise InvalidInput("--ray-address: only with --engine ray")
        return None
    require_ray(local=args.ray_address is None)
    return RayOptions(
        address=args.ray_address,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        batch_size=batch_size,
    )
