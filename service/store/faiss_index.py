"""FAISS plumbing for the index store: factory strings, training needs, snapshots, atomic files.

Nothing here knows about SQLite or names; :mod:`pairsmith.service.store.index_store`
owns those. The pieces:

- :func:`new_index` builds an index from any factory string. Indexes that
  cannot take external ids (Flat, HNSW, PQ, SQ, Refine...) are wrapped in
  ``IndexIDMap2``; IVF indexes take ids natively and get a hashtable direct map
  so removals cost O(removed), not a full scan.
- :func:`train_requirement` says how many vectors an index needs before it can
  be trained (IVF: ``nlist``; PQ: ``2**nbits`` per sub-quantizer).
- :class:`Snapshot` is what readers search: an immutable base FAISS index,
  the ids deleted from it but still physically present (filtered at search
  time), and a small exact "delta" of recent vectors not yet merged in.
- :func:`write_index_atomic`: a FAISS file written through :mod:`pairsmith.atomic`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from pairsmith.atomic import atomic_write_bytes
from pairsmith.errors import InvalidInput, parse_enum

SINGLE_THREAD_MAX_QUERIES = 4


class IndexMetric(enum.Enum):
    """Similarity of an index. COSINE = L2-normalise vectors and queries, then inner product."""

    COSINE = "cosine"
    INNER_PRODUCT = "ip"
    L2 = "l2"

    @classmethod
    def parse(cls, value: str | IndexMetric) -> IndexMetric:
        aliases = {"inner_product": "ip", "dot": "ip", "euclidean": "l2"}
        return parse_enum(cls, value, "metric", aliases=aliases, dash_to_underscore=True)

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self is IndexMetric.L2 else faiss.METRIC_INNER_PRODUCT


# FAISS scores in float32 (largest finite value ~3.4e38). For vectors q and v,
# |<q, v>| <= |q| |v| and |q - v|^2 <= (|q| + |v|)^2, and the L2 kernels also form
# |q|^2 + |v|^2 - 2 <q, v>: with both norms at most MAX_VECTOR_NORM every term and partial sum stays
# below 4e36, a hundredfold margin. Inner-product and L2 indexes refuse larger vectors and queries
# (cosine indexes normalise them, so any finite non-zero vector is fine there).
MAX_VECTOR_NORM = 1e18


def check_norms(vecs: np.ndarray, metric: IndexMetric, field: str) -> None:
    """Refuse rows of ``vecs`` whose L2 norm could overflow a float32 score (InvalidInput).

    ``field`` names a row with ``{i}`` (e.g. ``"queries[{i}]"``); the norm is taken in float64 so
    that the check itself cannot overflow.
    """
    if metric is IndexMetric.COSINE:
        return
    rows = np.atleast_2d(np.asarray(vecs))
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    bad = np.flatnonzero(~(norms <= MAX_VECTOR_NORM))
    if len(bad):
        i = int(bad[0])
        raise InvalidInput(
            f"{field.format(i=i)}: L2 norm {norms[i]:.3g} exceeds {MAX_VECTOR_NORM:.0e}, the largest a "
            f"{metric.value!r} index accepts (larger vectors make float32 scores overflow to inf or NaN); "
            "scale the vectors down or use a cosine index"
        )


_FAISS_LOCATION = re.compile(r"Error in .*? at \S+:\d+:\s*")


def _short(exc: BaseException) -> str:
    """FAISS errors carry the C++ function and source path ("Error in ... at /x/IndexIVF.cpp:42:");
    keep only the message, never a path."""
    lines = [_FAISS_LOCATION.sub("", t).strip() for t in str(exc).strip().splitlines()]
    lines = [t.removeprefix("Error: ").strip() for t in lines if t and not t.startswith("Error in ")]
    msg = lines[-1] if lines else type(exc).__name__
    return re.sub(r"(/[\w.+-]+)+\.(cpp|h|hpp|py)(:\d+)?", "<faiss>", msg)[:300]


@dataclass(frozen=True)
class FactoryLimits:
    """What one factory string may allocate, checked before FAISS builds anything.

    FAISS allocates at construction (an ``IVF100000000`` quantizer and its inverted lists took
    17.8 GB) and at training (PQ codebooks grow with ``2**nbits``); these bound each knob.
    """

    max_nlist: int = 262_144  # IVF lists (IMI: total cells)
    max_hnsw_m: int = 256  # HNSW / NSG neighbours per node
    max_pq_m: int = 1024  # PQ / OPQ / RQ / LSQ sub-quantizers
    max_pq_nbits: int = 12  # bits per sub-quantizer code (codebook 2**nbits entries)
    max_out_dim: int = 65_536  # PCA / OPQ / RR output dimension
    max_number: int = 262_144  # largest build parameter (efConstruction)


# The factory components the store accepts (each comma-separated part must match one). FAISS
# parses far more, but some of it aborts or segfaults the process on small or zero parameters
# (HNSW0/HNSW1, PQ8x0, RR0, SQ0, LSQ, NSG hangs): a server must never hand those to FAISS.
_SQ = r"SQ(?:4|6|8|fp16|bf16)"
_PQ = r"PQ(?P<pq_m>\d+)(?:x(?P<pq_bits>\d+))?(?:np)?"
_COMPONENTS = {
    "idmap": re.compile(r"IDMap2?"),
    "opq": re.compile(r"OPQ(?P<opq_m>\d+)(?:_(?P<out>\d+))?"),
    "pca": re.compile(r"PCAW?R?(?P<out>\d+)"),
    "rr": re.compile(r"RR(?P<out>\d+)"),
    "l2norm": re.compile(r"L2norm"),
    "ivf": re.compile(r"IVF(?P<nlist>\d+)(?:_HNSW(?P<hnsw_m>\d+))?"),
    "hnsw": re.compile(rf"HNSW(?P<hnsw_m>\d+)(?:_(?:Flat|{_SQ}|{_PQ}))?"),
    "flat": re.compile(r"Flat"),
    "pq": re.compile(_PQ),
    "sq": re.compile(_SQ),
    "refine": re.compile(r"RFlat|Refine\(Flat\)"),
}
_SUPPORTED = "IDMap2, OPQ{M}[_{D}], PCA{D}, RR{D}, L2norm, IVF{nlist}[_HNSW{M}], HNSW{M}[_Flat|_SQ8|_PQ{M}], Flat, PQ{M}[x{bits}], SQ{4|6|8|fp16|bf16}, RFlat"


def check_factory(factory: str, limits: FactoryLimits) -> None:
    """Refuse a factory string outside the supported grammar or over ``limits`` (InvalidInput).

    Runs before FAISS sees the string: the memory FAISS allocates at construction and training
    grows with nlist, M and ``2**bits``, and some parameter values crash it.
    """

    def bad(what: str) -> InvalidInput:
        return InvalidInput(f"factory: {what} in {factory!r}")

    def within(what: str, value: int, lo: int, hi: int) -> None:
        if value < lo:
            raise bad(f"{what} {value} is below {lo}")
        if value > hi:
            raise bad(
                f"{what} {value} exceeds the server's limit of {hi} (it bounds the memory one CreateIndex may take)"
            )

    parts = factory.split(",")
    for n, part in enumerate(p.strip() for p in parts):
        kind = next((k for k, rx in _COMPONENTS.items() if rx.fullmatch(part)), None)
        if kind is None:
            raise bad(f"component {part!r} is not supported; use {_SUPPORTED}")
        if kind == "idmap" and n != 0:
            raise bad("IDMap may only come first")
        groups = {k: int(v) for k, v in _COMPONENTS[kind].fullmatch(part).groupdict().items() if v}
        if "nlist" in groups:
            within("nlist", groups["nlist"], 1, limits.max_nlist)
        if "hnsw_m" in groups:
            within("graph degree M", groups["hnsw_m"], 2, limits.max_hnsw_m)
        for key in ("pq_m", "opq_m"):
            if key in groups:
                within("sub-quantizers", groups[key], 1, limits.max_pq_m)
        if "pq_bits" in groups:
            within("bits per code", groups["pq_bits"], 1, limits.max_pq_nbits)
        if "out" in groups:
            within("output dimension", groups["out"], 1, limits.max_out_dim)


def _unwrap(index: faiss.Index) -> faiss.Index:
    """The innermost index that holds codes (through IDMap, PreTransform, Refine)."""
    node = faiss.downcast_index(index)
    for _ in range(8):
        if isinstance(node, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            node = faiss.downcast_index(node.index)
        elif isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
        elif isinstance(node, faiss.IndexRefine):
            node = faiss.downcast_index(node.base_index)
        else:
            break
    return node


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    core = _unwrap(index)
    return core if isinstance(core, faiss.IndexIVF) else None


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    core = _unwrap(index)
    return core if isinstance(core, faiss.IndexHNSW) else None


BUILD_PARAM_KEYS = ("efConstruction",)


def new_index(
    factory: str,
    dim: int,
    metric: IndexMetric,
    build_params: Mapping[str, int] | None = None,
    limits: FactoryLimits | None = None,
) -> faiss.Index:
    """An empty index for ``factory`` that accepts ``add_with_ids``.

    ``build_params``: ``efConstruction`` for HNSW (FAISS default 40; higher = better graph, slower build).
    ``limits``: checked before FAISS allocates anything (new indexes; existing ones rebuild as made).
    """
    if limits is not None:
        check_factory(factory, limits)
        for key, value in (build_params or {}).items():
            if isinstance(value, int) and value > limits.max_number:
                raise InvalidInput(f"build_params: {key}={value} exceeds the limit of {limits.max_number}")
    try:
        index = faiss.index_factory(int(dim), factory, metric.faiss_metric)
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput(f"factory: FAISS cannot build {factory!r} for dim {dim}: {_short(exc)}") from None
    top = faiss.downcast_index(index)
    takes_ids = isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexIVF)) or (
        isinstance(top, faiss.IndexPreTransform)
        and isinstance(faiss.downcast_index(top.index), faiss.IndexIVF)
    )
    if not takes_ids:
        index = faiss.IndexIDMap2(index)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    core = _unwrap(index)
    if getattr(core, "do_polysemous_training", False):
        # Polysemous codes serve only polysemous_ht search, which the store never uses, and the
        # training is ~100x slower than the PQ k-means itself (factory suffix "np" does the same).
        core.do_polysemous_training = False
    for key, value in (build_params or {}).items():
        if key not in BUILD_PARAM_KEYS or isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(
                f"build_params: {key}={value!r}; allowed keys {BUILD_PARAM_KEYS}, integers >= 1"
            )
        hnsw = hnsw_of(index)
        if hnsw is None:
            raise InvalidInput(f"build_params: {key} applies to HNSW indexes, not {factory!r}")
        hnsw.hnsw.efConstruction = int(value)
    return index


def train_requirement(index: faiss.Index) -> int:
    """Fewest training vectors FAISS accepts (0 when the index needs no training)."""
    if index.is_trained:
        return 0
    core = _unwrap(index)
    need = 1
    if isinstance(core, faiss.IndexIVF):
        need = max(need, int(core.nlist))
    pq = getattr(core, "pq", None)
    if pq is not None:
        need = max(need, int(pq.ksub))
    return need


def can_remove(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` works (HNSW, NSG and Refine indexes cannot remove)."""
    none = np.zeros(0, dtype=np.int64)
    for sel in (faiss.IDSelectorBatch(none), faiss.IDSelectorArray(none)):
        try:
            index.remove_ids(sel)
            return True
        except RuntimeError:
            continue
    return False


def default_search_params(index: faiss.Index) -> dict[str, int]:
    """nprobe for IVF (32 or nlist), efSearch for HNSW (64): recall >= ~0.95 on real embeddings."""
    params: dict[str, int] = {}
    ivf = ivf_of(index)
    if ivf is not None:
        params["nprobe"] = int(min(ivf.nlist, 32))
    if hnsw_of(index) is not None:
        params["efSearch"] = 64
    return params


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set nprobe / efSearch on an index (before it is published to readers)."""
    ps = faiss.ParameterSpace()
    for key, value in params.items():
        if key == "nprobe" and ivf_of(index) is None:
            continue
        if key == "efSearch" and hnsw_of(index) is None:
            continue
        try:
            ps.set_index_parameter(index, key, int(value))
        except RuntimeError as exc:
            raise InvalidInput(f"search_params.{key}: {_short(exc)}") from None


def _selector_params(index: faiss.Index, sel: faiss.IDSelector, params: dict[str, int]):
    if ivf_of(index) is not None:
        p = faiss.SearchParametersIVF(sel=sel, nprobe=int(params.get("nprobe", ivf_of(index).nprobe)))
    elif hnsw_of(index) is not None:
        p = faiss.SearchParametersHNSW(
            sel=sel, efSearch=int(params.get("efSearch", hnsw_of(index).hnsw.efSearch))
        )
    else:
        p = faiss.SearchParameters(sel=sel)
    return p


@dataclass(frozen=True, eq=False)
class Snapshot:
    """What readers search; never mutated after publication (writers publish a new one).

    ``base`` holds the bulk of the vectors (None while an index waits for
    training), ``dead`` the ids removed logically but still inside ``base``,
    ``delta_ids``/``delta_vecs`` recent vectors searched exactly. Vectors are
    stored already normalised for COSINE.
    """

    dim: int
    metric: IndexMetric
    base: faiss.Index | None
    dead: np.ndarray  # (n_dead,) int64, sorted
    delta_ids: np.ndarray  # (m,) int64
    delta_vecs: np.ndarray  # (m, dim) float32
    params: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Built once per snapshot, shared by every search on it (FAISS selectors are read-only).
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.dead)) if len(self.dead) else None
        object.__setattr__(self, "_sel", sel)

    @property
    def base_count(self) -> int:
        return 0 if self.base is None else int(self.base.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query: (scores (Q, k), ids (Q, k)); higher score is better, id -1 pads."""
        if queries.shape[0] <= SINGLE_THREAD_MAX_QUERIES:
            # A 2-thread OpenMP region for one query waits on the OS scheduler whenever the cores
            # are busy (HNSW batch-1 measured 92 vs ~3,600 QPS on 2 shared cores). The setting is
            # per calling thread in libgomp, so concurrent batch searches and builds keep theirs.
            prev = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                return self._search(queries, k)
            finally:
                faiss.omp_set_num_threads(prev)
        return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq = queries.shape[0]
        parts_s: list[np.ndarray] = []
        parts_i: list[np.ndarray] = []
        if self.base is not None and self.base.ntotal > 0:
            s, i = self._search_base(queries, k)
            parts_s.append(s)
            parts_i.append(i)
        if len(self.delta_ids):
            s, i = exact_search(self.delta_vecs, self.delta_ids, queries, k, self.metric)
            parts_s.append(s)
            parts_i.append(i)
        if not parts_s:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        return merge_topk(parts_s, parts_i, k)

    def _search_base(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        base = self.base
        assert base is not None
        kk = min(k, int(base.ntotal))
        if len(self.dead):
            try:
                dist, ids = base.search(queries, kk, params=_selector_params(base, self._sel, self.params))
            except RuntimeError:
                # Index types without selector support (PQ, Refine): over-fetch and filter.
                kk = min(int(base.ntotal), k + len(self.dead))
                dist, ids = base.search(queries, kk)
                drop = np.isin(ids, self.dead)
                ids = np.where(drop, -1, ids)
        else:
            dist, ids = base.search(queries, kk)
        scores = -dist if self.metric is IndexMetric.L2 else dist
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids


def exact_search(
    vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: IndexMetric
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k in numpy (the reference for every approximate index)."""
    sims = queries @ vecs.T  # (Q, m)
    if metric is IndexMetric.L2:
        sims = -(
            np.sum(queries * queries, axis=1, keepdims=True) - 2 * sims + np.sum(vecs * vecs, axis=1)[None, :]
        )
    kk = min(k, vecs.shape[0])
    part = (
        np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        if kk < vecs.shape[0]
        else np.tile(np.arange(vecs.shape[0]), (queries.shape[0], 1))
    )
    s = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, axis=1).astype(np.float32), ids[
        np.take_along_axis(part, order, axis=1)
    ]


def merge_topk(parts_s: list[np.ndarray], parts_i: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate(parts_s, axis=1)
    i = np.concatenate(parts_i, axis=1)
    s = np.where(i < 0, -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s.astype(np.float32), i


# -- atomic files (the shared helpers live in pairsmith.atomic) ----------------------------


def write_index_atomic(index: faiss.Index, path: Path) -> str:
    """Write ``index`` to ``path`` with :func:`pairsmith.atomic.atomic_write_bytes` (temp + fsync +
    rename); returns the file's sha256.

    The index is serialised in memory first (one extra copy of it while the file is written;
    compaction already holds a clone of the same size), so the checksum needs no second read.
    """
    data = faiss.serialize_index(index)  # (n_bytes,) uint8
    digest = hashlib.sha256(memoryview(data)).hexdigest()
    atomic_write_bytes(path, memoryview(data))
    return digest


def sha256_file(path: Path, *, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return h.hexdigest()
