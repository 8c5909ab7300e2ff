"""Batch index building on Ray Data: corpus files -> encoder actors -> shards -> FAISS, same index format.

The pipeline (``pairsmith index build ... --engine ray``):

1. **Plan** (driver): the corpus is one file, a directory or a glob of
   ``.jsonl``/``.tsv``/``.parquet`` files (sorted by name). Records are
   numbered globally in that order and cut into shards of ``shard_docs``
   records that never span two files.
2. **Encode** (Ray Data): one read task per shard parses its records with
   pairsmith's own corpus reader (same validation, errors name file:line),
   ``map_batches`` sends them to a pool of :class:`EncoderActor` (one model
   load per actor), and the driver writes each finished shard as one atomic
   ``.npz`` (vectors, global rows, ids, payload JSON) under
   ``<home>/ray-builds/<name>/``.
3. **Ingest** (driver, overlapping 2): shards go into the index's SQLite
   store in corpus order through :meth:`IndexStore.upsert` in bulk mode, with
   the same progress record as the local engine (``rows_done``), so ids,
   payloads and replace-on-duplicate-id semantics are those of the local
   build, and either engine can resume the other's single-file build.
4. **FAISS** (FAISS's recipe for large indexes): train once on a uniform
   sample of the stored vectors (the same sample the local build draws),
   add each shard's vectors in parallel Ray tasks to copies of the trained
   empty index, merge them (``merge_from``) and hand the result to
   :meth:`IndexStore.end_bulk`, which checks and snapshots it. Indexes that
   cannot merge (HNSW) are added in the driver.

Resuming: rerun the same command. Ingested shards are skipped by
``rows_done``; encoded but not ingested shards are read back from their
files (a file from another plan, model or corpus is ignored); only the rest
is encoded. Corpus files must be readable from every Ray node (shared
storage); everything is written by the driver.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import io
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairsmith.atomic import atomic_write_bytes
from pairsmith.errors import FailedPrecondition, InvalidInput, NotFound
from pairsmith.service.ray_engine import (
    READ_CPUS,
    EncoderActor,
    RayOptions,
    _bar,
    carry,
    pairsmith_errors,
    ray_session,
)
from pairsmith.service.store.build import (
    BUILD_META_KEY,
    BuildConfig,
    BuildReport,
    _payload,
    finish_build,
    open_build,
)
from pairsmith.service.store.corpus import FORMATS, Corpus
from pairsmith.service.store.faiss_index import ivf_of, new_index
from pairsmith.service.store.index_store import IndexStore, UpsertItem

log = logging.getLogger(__name__)

SHARD_FORMAT = 2


@dataclass(frozen=True)
class RayBuildConfig:
    """Ray-engine knobs beside :class:`~pairsmith.service.store.build.BuildConfig`."""

    shard_docs: int = 50_000  # records per shard (unit of encoding, resuming and parallel FAISS add)
    keep_shards: bool = False  # keep the shard files after a finished build
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        if isinstance(self.shard_docs, bool) or not isinstance(self.shard_docs, int) or self.shard_docs < 1:
            raise InvalidInput(f"shard-docs: must be a positive integer, got {self.shard_docs!r}")


@dataclass(frozen=True)
class Shard:
    no: int  # position in the plan
    path: str  # corpus file
    skip: int  # records of that file before this shard
    start: int  # global records before this shard (its rows are start+1 .. stop)
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start


# --------------------------------------------------------------------------- plan


def corpus_files(corpus: str | Path) -> list[Path]:
    """The corpus files: one file, every known-format file in a directory, or a glob (sorted)."""
    p = Path(corpus).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FORMATS)
        where = f"directory {p}"
    else:
        files = sorted(Path(f) for f in glob.glob(str(p)) if Path(f).is_file())
        where = f"pattern {p}"
        if not files:
            raise NotFound(f"corpus: no file matches {p}")
    if not files:
        raise NotFound(f"corpus: {where} holds no {sorted(FORMATS)} files")
    bad = [f.name for f in files if f.suffix.lower() not in FORMATS]
    if bad:
        raise InvalidInput(f"corpus: unknown format for {bad[:3]}; use one of {sorted(FORMATS)}")
    return files


def corpus_stamp(corpus: str | Path, files: list[Path]) -> dict:
    """Identity of the corpus for resuming; for one file exactly the local engine's stamp."""
    stamps = [Corpus(f).stamp() for f in files]
    if len(files) == 1 and Path(corpus).expanduser().is_file():
        return stamps[0]
    return {
        "path": str(Path(corpus).expanduser().resolve()) if Path(corpus).exists() else str(corpus),
        "size": sum(s["size"] for s in stamps),
        "mtime_ns": max(s["mtime_ns"] for s in stamps),
        "files": stamps,
    }


def plan_shards(files: list[Path], counts: list[int], shard_docs: int) -> list[Shard]:
    shards: list[Shard] = []
    offset = 0
    for f, n in zip(files, counts, strict=True):
        for skip in range(0, n, shard_docs):
            m = min(shard_docs, n - skip)
            shards.append(Shard(len(shards), str(f.resolve()), skip, offset + skip, offset + skip + m))
        offset += n
    return shards


def _plan_digest(stamp: dict, shard_docs: int, fingerprint: str, store_text: bool) -> str:
    doc = json.dumps([SHARD_FORMAT, stamp, shard_docs, fingerprint, store_text], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- Ray stages


@carry
def read_shards(batch: dict, store_text: bool = True) -> dict:
    """Ray Data read stage: shard specs -> their records (global row, id, text, payload JSON)."""
    out: dict[str, list] = {"shard": [], "row": [], "id": [], "text": [], "payload": []}
    for no, path, skip, start, stop in zip(
        batch["no"], batch["path"], batch["skip"], batch["start"], batch["stop"], strict=True
    ):
        n = int(stop) - int(start)
        got = 0
        for doc in itertools.islice(Corpus(str(path)).docs(skip=int(skip)), n):
            payload = _payload(doc, store_text)
            out["shard"].append(int(no))
            out["row"].append(int(start) + (doc.row - int(skip)))
            out["id"].append(doc.id)
            out["text"].append(doc.text)
            out["payload"].append("" if payload is None else json.dumps(payload, ensure_ascii=False))
            got += 1
        if got != n:
            raise FailedPrecondition(
                f"corpus: {path} has fewer records than planned ({got} of {n}); it changed"
            )
    return {
        "shard": np.asarray(out["shard"], dtype=np.int64),
        "row": np.asarray(out["row"], dtype=np.int64),
        "id": np.asarray(out["id"], dtype=object),
        "text": np.asarray(out["text"], dtype=object),
        "payload": np.asarray(out["payload"], dtype=object),
    }


def _encoded_stream(
    ray, shards: list[Shard], encoder, cfg: BuildConfig, rcfg: RayBuildConfig
) -> Iterator[dict]:
    """Encoded shards in plan order, each as one dict of arrays (rows complete and checked)."""
    n_actors, cpus, gpus = rcfg.ray.pool(ray)
    specs = [{"no": s.no, "path": s.path, "skip": s.skip, "start": s.start, "stop": s.stop} for s in shards]
    ds = (
        ray.data.from_items(specs, override_num_blocks=len(specs))  # one block per shard: parallel reads
        .map_batches(read_shards, batch_size=1, fn_kwargs={"store_text": cfg.store_text}, num_cpus=READ_CPUS)
        .map_batches(
            EncoderActor,
            fn_constructor_kwargs={
                "model": cfg.model_ref,
                **actor_engine(encoder),
                "fingerprint": encoder.fingerprint,
                "batch_tokens": cfg.batch_tokens,
            },
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus,
            num_gpus=gpus or None,
        )
    )
    log.info("ray: %d shards, %d encoder actors x %.2f CPU / %.2f GPU", len(shards), n_actors, cpus, gpus)
    pending = iter(shards)
    current = next(pending, None)
    parts: list[dict] = []
    have = 0
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        # preserve_order: rows arrive in plan order; one batch may end one shard and start the next.
        edges = np.flatnonzero(np.diff(b["shard"])) + 1
        for lo, hi in zip([0, *edges], [*edges, len(b["shard"])], strict=True):
            no = int(b["shard"][lo])
            if current is None or no != current.no:
                raise FailedPrecondition(
                    f"ray: rows of shard {no} arrived while shard {current} was incomplete"
                )
            parts.append({k: v[lo:hi] for k, v in b.items()})
            have += hi - lo
            if have == current.n:
                data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                if not np.array_equal(data["row"], np.arange(current.start + 1, current.stop + 1)):
                    raise FailedPrecondition(f"ray: shard {current.no} came back out of order or incomplete")
                yield data
                parts, have = [], 0
                current = next(pending, None)
    if current is not None:
        raise FailedPrecondition(f"ray: the encode stage ended before shard {current.no} was complete")


# --------------------------------------------------------------------------- shard files


def actor_engine(encoder) -> dict:
    """The driver encoder's engine, for the actors: backend and, for an export engine, its variant
    (``backend="onnx"`` alone would mean fp32, not the driver's int8)."""
    backend = getattr(getattr(encoder, "backend", None), "value", "torch")
    if backend in ("onnx", "openvino"):
        return {"backend": backend, "onnx_variant": encoder.pipeline.backend.variant}
    return {"backend": backend}


def _shard_file(work: Path, s: Shard) -> Path:
    return work / f"shard-{s.no:06d}.npz"


def _write_shard(path: Path, data: dict, digest: str) -> None:
    ids, id_offs = _pack([str(x) for x in data["id"]])
    pays, pay_offs = _pack([str(x) for x in data["payload"]])
    buf = io.BytesIO()
    np.savez(
        buf,
        digest=np.array(digest),
        rows=data["row"].astype(np.int64),
        vectors=np.ascontiguousarray(data["vector"], dtype=np.float32),
        truncated=data["truncated"].astype(bool),
        id_bytes=ids,
        id_offsets=id_offs,
        payload_bytes=pays,
        payload_offsets=pay_offs,
    )
    atomic_write_bytes(path, buf.getvalue())


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 strings as one byte array + offsets (no pickles, any characters)."""
    parts = [x.encode() for x in strings]
    return np.frombuffer(b"".join(parts), dtype=np.uint8), np.cumsum([0] + [len(p) for p in parts]).astype(
        np.int64
    )


def _unpack(blob: np.ndarray, offs: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[offs[i] : offs[i + 1]].decode() for i in range(len(offs) - 1)]


def _read_shard(path: Path, digest: str, s: Shard) -> dict | None:
    """A shard file's arrays, or None when it is missing, unreadable or from another plan."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) != digest or len(z["rows"]) != s.n:
                return None
            return {
                "row": z["rows"],
                "vector": z["vectors"],
                "truncated": z["truncated"],
                "id": _unpack(z["id_bytes"], z["id_offsets"]),
                "payload": _unpack(z["payload_bytes"], z["payload_offsets"]),
            }
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        log.warning("shard file %s unusable (%s); encoding it again", path, exc)
        return None


# --------------------------------------------------------------------------- the build


def build_index_ray(
    store: IndexStore,
    encoder,
    cfg: BuildConfig,
    rcfg: RayBuildConfig | None = None,
    *,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> BuildReport:
    """Build (or resume) index ``cfg.name`` from ``cfg.corpus`` (file, directory or glob) on Ray.

    ``encoder`` is the driver's :class:`~pairsmith.encoders.BiEncoder` (dim,
    fingerprint, model id; actors load ``cfg.model_ref`` themselves).
    ``on_shard(rows_done)`` runs after each ingested shard (tests interrupt with it).
    """
    rcfg = rcfg or RayBuildConfig()
    t_start = time.perf_counter()
    files = corpus_files(cfg.corpus)
    stamp = corpus_stamp(cfg.corpus, files)
    counts = [Corpus(f).count() for f in files]
    total = sum(counts)
    label = files[0].name if len(files) == 1 else f"{len(files)} files under {cfg.corpus}"
    state, done = open_build(store, encoder, cfg, stamp, total, label, t_start)
    if done is not None:
        return done
    resumed = int(state["rows_done"])

    shards = [s for s in plan_shards(files, counts, rcfg.shard_docs) if s.stop > resumed]
    work = store.root / "ray-builds" / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    digest = _plan_digest(stamp, rcfg.shard_docs, encoder.fingerprint, cfg.store_text)
    cached = {s.no: d for s in shards if (d := _read_shard(_shard_file(work, s), digest, s)) is not None}
    to_encode = [s for s in shards if s.no not in cached]
    log.info(
        "index %s: %d records in %d file(s); %d shards left (%d encoded earlier), %d records done",
        cfg.name, total, len(files), len(shards), len(cached), resumed,
    )  # fmt: skip

    store.begin_bulk(cfg.name)
    encoded = truncated = 0
    t_enc = time.perf_counter()
    bar = _bar(total, f"index {cfg.name} (ray)", "doc", progress)
    bar.update(resumed)
    with ray_session(rcfg.ray) as ray, pairsmith_errors():
        stream = _encoded_stream(ray, to_encode, encoder, cfg, rcfg) if to_encode else iter([])
        try:
            for s in shards:
                data = cached.pop(s.no, None)
                if data is None:
                    data = next(stream)
                    _write_shard(_shard_file(work, s), data, digest)
                    encoded += s.n
                    truncated += int(np.sum(data["truncated"]))
                _ingest(store, cfg, state, s, data, resumed)
                state = {**state, "rows_done": s.stop}
                bar.update(s.stop - max(s.start, resumed))
                if on_shard is not None:
                    on_shard(s.stop)
            if next(stream, None) is not None:  # also runs the stream's final completeness check
                raise FailedPrecondition("ray: the encode stage returned more shards than planned")
        except BaseException:
            if hasattr(stream, "close"):
                stream.close()  # an interrupted run releases its actors now, not at garbage collection
                _wait_released(ray)
            raise
        encode_s = time.perf_counter() - t_enc
        bar.close()
        t_faiss = time.perf_counter()
        base = _faiss_base(ray, store, cfg.name, rcfg, progress)
    store.end_bulk(cfg.name, base=base)
    log.info(
        "index %s: FAISS train + parallel add + merge took %.1fs", cfg.name, time.perf_counter() - t_faiss
    )
    report = finish_build(store, cfg, state, total, encoded, resumed, truncated, encode_s, t_start)
    if not rcfg.keep_shards:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _wait_released(ray, timeout_s: float = 60.0) -> None:
    """Wait (bounded) until the closed dataset's actors gave their CPUs back to the cluster.

    Ray Data stops an abandoned pipeline's actors asynchronously; a resume in the same Ray
    session would otherwise queue its new actor pool behind them.
    """
    want = float(ray.cluster_resources().get("CPU", 0.0)) - 0.01
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and float(ray.available_resources().get("CPU", 0.0)) < want:
        time.sleep(0.2)


def _ingest(store: IndexStore, cfg: BuildConfig, state: dict, s: Shard, data: dict, resumed: int) -> None:
    """Upsert one shard's records (those after ``resumed``) with the progress record, in one call."""
    keep = np.flatnonzero(np.asarray(data["row"]) > resumed)
    items = [
        UpsertItem(
            str(data["id"][i]),
            data["vector"][i],
            json.loads(data["payload"][i]) if data["payload"][i] else None,
        )
        for i in keep
    ]
    store.upsert(cfg.name, items, meta={BUILD_META_KEY: json.dumps({**state, "rows_done": s.stop})})


def _add_part(index_bytes: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Ray task: the trained empty index plus one part's vectors (serialised both ways)."""
    import faiss

    index = faiss.deserialize_index(index_bytes)
    index.add_with_ids(vecs, ids)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # merge_from refuses IVF parts with a direct map
    return faiss.serialize_index(index)


def _faiss_base(ray, store: IndexStore, name: str, rcfg: RayBuildConfig, progress: bool):
    """Train once on a sample, add shard-sized parts in parallel Ray tasks, merge: the index's FAISS base."""
    import faiss

    info = store.get(name)
    db = store.bulk_vectors(name)
    try:
        meta = db.all_meta()
        index = new_index(info.factory, info.dim, info.metric, json.loads(meta.get("build_params", "{}")))
        min_train = int(meta["min_train"])
        count = db.count()
        if min_train:
            n = min(count, max(store.config.train_sample_max, min_train))
            t0 = time.perf_counter()
            index.train(db.sample_vectors(n))  # the local build's sample: same seed, same iids
            log.info(
                "index %s: trained %s on %d vectors in %.1fs", name, info.factory, n, time.perf_counter() - t0
            )
        empty = faiss.serialize_index(index)
        if not _mergeable(empty):
            log.info("index %s: %s cannot merge parts; adding in the driver", name, info.factory)
            for ids, vecs in db.iter_vectors():
                index.add_with_ids(vecs, ids)
            return index
        ref = ray.put(empty)
        task = ray.remote(num_cpus=1)(_add_part)
        merged = faiss.deserialize_index(empty)
        ivf = ivf_of(merged)
        if ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # bounded vectors in flight
        bar = _bar(-(-count // rcfg.shard_docs), f"index {name}: FAISS add", "shard", progress)
        inflight: collections.deque = collections.deque()
        for ids, vecs in db.iter_vectors(chunk=rcfg.shard_docs):
            inflight.append(task.remote(ref, ids, vecs))
            while len(inflight) >= window:
                merged.merge_from(faiss.deserialize_index(ray.get(inflight.popleft())), 0)  # iid order
                bar.update(1)
        while inflight:
            merged.merge_from(faiss.deserialize_index(ray.get(inflight.popleft())), 0)
            bar.update(1)
        bar.close()
        return merged
    finally:
        db.close()


def _mergeable(empty: np.ndarray) -> bool:
    """Whether two copies of this index type can be merged with ``merge_from`` (HNSW cannot)."""
    import faiss

    a, b = faiss.deserialize_index(empty), faiss.deserialize_index(empty)
    for x in (a, b):
        ivf = ivf_of(x)
        if ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    try:
        a.merge_from(b, 0)
        return True
    except RuntimeError:
        return False
