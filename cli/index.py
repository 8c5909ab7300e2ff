"""``pairsmith index build|stats|list|search|drop``: build and inspect indexes on disk.

The data directory is ``--home``, else ``$PAIRSMITH_HOME``, else the user
data directory (see :func:`pairsmith.service.store.index_store.default_root`); the
server reads the same layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pairsmith.errors import InvalidInput


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="build and inspect vector indexes",
        description="Build and inspect vector indexes. Data directory: --home, else $PAIRSMITH_HOME, "
        "else the user data directory; the server reads the same layout.",
    )
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")

    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--home",
            type=Path,
            default=None,
            help="data directory (default: $PAIRSMITH_HOME or the user data dir)",
        )

    b = sub.add_parser("build", help="encode a corpus and build (or resume building) an index")
    b.add_argument(
        "--corpus", type=Path, required=True, help=".jsonl, .tsv or .parquet with id, text[, payload]"
    )
    b.add_argument("--name", required=True, help="index name ([a-z0-9][a-z0-9._-]{0,63})")
    b.add_argument(
        "--factory",
        default=None,
        help='FAISS factory string (default "IDMap2,Flat"; e.g. "IVF1024,Flat", "HNSW32", "IVF1024,PQ48")',
    )
    b.add_argument(
        "--ef-construction", type=int, default=None, help="HNSW graph quality at build (FAISS default 40)"
    )
    b.add_argument(
        "--metric", default="cosine", choices=["cosine", "ip", "l2"], help="similarity (default cosine)"
    )
    b.add_argument(
        "--model", default="default", help="bi-encoder: 'default', a model directory or a hub name"
    )
    b.add_argument(
        "--backend",
        default="auto",
        choices=["torch", "onnx", "openvino", "auto"],
        help="encoder runtime (default auto: the engine `pairsmith serve` runs by default; torch and "
        "onnx (fp32) make the same vectors, an int8 engine its own)",
    )
    b.add_argument(
        "--batch-tokens", type=int, default=16_384, help="padded tokens per encoder batch (default 16384)"
    )
    b.add_argument(
        "--chunk-docs", type=int, default=2048, help="records per read/encode/commit step (default 2048)"
    )
    b.add_argument(
        "--no-store-text",
        action="store_true",
        help="do not keep each doc's text as payload['text'] (Search's rerank stage then needs its own text field)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    from pairsmith.service.ray_engine import add_engine_args  # no Ray import; flags only

    add_engine_args(b, what="encoding and the FAISS build")
    b.add_argument(
        "--shard-docs", type=int, default=50_000, help="--engine ray: records per shard (default 50000)"
    )
    b.add_argument("--keep-shards", action="store_true", help="--engine ray: keep the shard files after")
    home(b)
    b.set_defaults(func=_build)

    s = sub.add_parser("stats", help="show an index's manifest facts as JSON")
    s.add_argument("name")
    home(s)
    s.set_defaults(func=_stats)

    ls = sub.add_parser("list", help="list indexes")
    home(ls)
    ls.set_defaults(func=_list)

    q = sub.add_parser("search", help="search an index with query texts (encoded by the index's model)")
    q.add_argument("name")
    q.add_argument("queries", nargs="+", help="query texts")
    q.add_argument("-k", "--k", type=int, default=5, help="hits per query (default 5)")
    q.add_argument("--model", default=None, help="encoder (default: the one the index was built with)")
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    home(q)
    q.set_defaults(func=_search)

    d = sub.add_parser("drop", help="delete an index and its files")
    d.add_argument("name")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    home(d)
    d.set_defaults(func=_drop)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _store(args):
    from pairsmith.service.store.index_store import IndexStore

    return IndexStore(args.home)


def _info_dict(info) -> dict:
    d = asdict(info)
    d["metric"] = info.metric.value
    d["search_params"] = dict(info.search_params)
    return d


def _build(args) -> int:
    from pairsmith.encoders import BiEncoder
    from pairsmith.service.store.build import BuildConfig, build_index
    from pairsmith.service.store.faiss_index import IndexMetric

    cfg = BuildConfig(
        corpus=args.corpus,
        name=args.name,
        factory=args.factory,
        metric=IndexMetric.parse(args.metric),
        batch_tokens=args.batch_tokens,
        chunk_docs=args.chunk_docs,
        model_ref=_model_ref(args.model),
        build_params={"efConstruction": args.ef_construction} if args.ef_construction else None,
        store_text=not args.no_store_text,
    )
    from pairsmith.service.ray_engine import options_from_args

    ray_opts = options_from_args(args)  # None: local engine (Ray never imported)
    encoder = BiEncoder.load(args.model, backend=args.backend)
    with _store(args) as store:
        if ray_opts is None:
            report = build_index(store, encoder, cfg, progress=not args.no_progress)
        else:
            from pairsmith.service.ray_build import RayBuildConfig, build_index_ray

            rcfg = RayBuildConfig(shard_docs=args.shard_docs, keep_shards=args.keep_shards, ray=ray_opts)
            report = build_index_ray(store, encoder, cfg, rcfg, progress=not args.no_progress)
    r = report
    print(
        f"index {r.name}: {r.info.count} vectors ({r.info.factory}, dim {r.info.dim}, "
        f"{r.info.size_bytes / 2**20:.1f} MiB); this run encoded {r.docs_encoded} docs "
        f"({r.docs_per_s:.0f} docs/s), {r.docs_resumed} resumed, {r.docs_truncated} truncated, "
        f"{r.total_seconds:.1f}s total"
    )
    return 0


def _model_ref(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _stats(args) -> int:
    with _store(args) as store:
        print(json.dumps(_info_dict(store.get(args.name)), indent=2))
    return 0


def _list(args) -> int:
    with _store(args) as store:
        infos = store.list()
    if not infos:
        print(f"no indexes under {store.dir}")
        return 0
    print(f"{'name':<24} {'count':>10} {'dim':>5} {'metric':<7} {'MiB':>8}  factory")
    for i in infos:
        print(
            f"{i.name:<24} {i.count:>10} {i.dim:>5} {i.metric.value:<7} {i.size_bytes / 2**20:>8.1f}  {i.factory}"
        )
    return 0


def _search(args) -> int:
    from pairsmith.encoders import BiEncoder
    from pairsmith.service.store.build import MODEL_META_KEY

    with _store(args) as store:
        info = store.get(args.name)
        model = args.model or store.read_meta(args.name, MODEL_META_KEY)
        if model is None:
            raise InvalidInput(f"model: index {args.name!r} does not record its model; pass --model")
        from pairsmith.encoders.engines import engine_for_fingerprint

        backend, variant = engine_for_fingerprint(info.encoder_fingerprint)  # the engine it was built with
        encoder = BiEncoder.load(model, backend=backend, onnx_variant=variant)
        store.check_encoder(args.name, encoder.fingerprint)
        vecs = encoder.encode(args.queries, normalize=True).vectors
        results = store.search(args.name, vecs, args.k)
    for query, hits in zip(args.queries, results, strict=True):
        if args.json:
            print(json.dumps({"query": query, "hits": [asdict(h) for h in hits]}, ensure_ascii=False))
            continue
        print(f"query: {query}  ({info.count} vectors, {info.factory})")
        for rank, h in enumerate(hits, 1):
            payload = json.dumps(h.payload, ensure_ascii=False) if h.payload is not None else ""
            print(f"  {rank:>2}. {h.score:+.4f}  {h.id}  {payload[:100]}")
    return 0


def _drop(args) -> int:
    with _store(args) as store:
        info = store.get(args.name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise InvalidInput("drop: pass --yes to drop without a terminal to confirm on")
            answer = input(f"drop index {info.name!r} ({info.count} vectors)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not dropped")
                return 1
        store.drop(args.name)
    print(f"dropped index {args.name}")
    return 0
