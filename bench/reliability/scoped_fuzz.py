"""Fuzzing with scoped API keys: every RPC, random requests, each kind of key, on a real server.

Keys: ``read``, ``write``, ``admin``, ``read,write``, one without scopes (all), one with quotas
(``max_indexes=2 max_vectors=50``), a wrong key and none; auth throttling is on but with a budget
large enough for the run (the wrong and missing keys come from the same address). Requests are
random and often malformed (texts, names, ids, vectors of any length and value, limits, enums,
raw bytes on the wire). What must hold, per call:

- no INTERNAL, UNKNOWN or UNIMPLEMENTED;
- no key or a wrong one: UNAUTHENTICATED;
- a key without the RPC's scope: PERMISSION_DENIED naming the scope;
- a key with it: never PERMISSION_DENIED or UNAUTHENTICATED.

    python bench/reliability/scoped_fuzz.py --examples 20 --out bench/results/reliability
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pairsmith.service.auth import SCOPE_OF  # noqa: E402
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb  # noqa: E402

SERVICE = pb.DESCRIPTOR.services_by_name["PairsmithService"]
KEYS = {  # label -> (key line suffix, scopes granted)
    "read": ("scopes=read", {"read"}),
    "write": ("scopes=write", {"write"}),
    "admin": ("scopes=admin", {"admin"}),
    "read,write": ("scopes=read,write", {"read", "write"}),
    "all (no scopes)": ("", {"read", "write", "admin"}),
    "all, quotas": ("max_indexes=2 max_vectors=50", {"read", "write", "admin"}),
    "wrong key": (None, set()),
    "no key": (None, set()),
}
BAD = {"INTERNAL", "UNKNOWN", "UNIMPLEMENTED"}
NAMES = ["docs", "docs", "docs", "q1", "q1", "q1", "new", "q2", "", "..", "a/b", "x" * 70, "Docs", "d\x00"]
TEXTS = ["", " ", "a cat", "\x00\u202e", "💥" * 40, "word " * 400, "x" * 70_000]


def rand_text(rng) -> str:
    if rng.random() < 0.5:
        return str(rng.choice(TEXTS))
    return "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, size=int(rng.integers(0, 60))))


def rand_vector(rng, dim: int) -> pb.FloatVector:
    n = int(rng.choice([0, 1, dim - 1, dim, dim, dim + 1]))
    vals = rng.normal(size=n).astype(np.float32)
    if n and rng.random() < 0.2:
        vals[int(rng.integers(n))] = rng.choice([np.nan, np.inf, 1e38, 0.0])
    return pb.FloatVector(values=vals.tolist())


def request(rng, name: str, dim: int):
    """A random (often invalid) request message for RPC ``name``."""
    u32 = int(rng.choice([0, 1, 5, 50, 1001, 2**32 - 1]))
    texts = [rand_text(rng) for _ in range(int(rng.choice([0, 1, 3, 9])))]
    index = str(rng.choice(NAMES))
    if name in ("Embed", "EmbedStream"):
        r = pb.EmbedRequest(texts=texts, truncate=bool(rng.random() < 0.8))
        if rng.random() < 0.3:
            r.dimensions = u32
        return r
    if name == "Score":
        return pb.ScoreRequest(pairs=[pb.TextPair(text_a=t, text_b=rand_text(rng)) for t in texts],
                               method=int(rng.integers(-1, 5)))  # fmt: skip
    if name == "Rerank":
        r = pb.RerankRequest(query=rand_text(rng), texts=texts, method=int(rng.integers(-1, 5)))
        if rng.random() < 0.5:
            r.top_n = u32
        return r
    if name == "Search":
        r = pb.SearchRequest(index=index, top_k=int(rng.choice([0, 1, 10, 51, 2000])))
        if rng.random() < 0.5:
            r.text = rand_text(rng)
        else:
            r.vector_values.CopyFrom(rand_vector(rng, dim))
        return r
    if name == "Upsert":
        items = []
        for i in range(int(rng.choice([0, 1, 4, 20]))):
            it = pb.UpsertItem(id=str(rng.choice([f"i{i}", "", "x" * 600, f"i{i}"])))
            if rng.random() < 0.5:
                it.vector_values.CopyFrom(rand_vector(rng, dim))
            else:
                it.text = rand_text(rng)
            items.append(it)
        return pb.UpsertRequest(index=index, items=items)
    if name == "Delete":
        return pb.DeleteRequest(
            index=index, ids=[str(rng.choice(["i0", "i1", "", "nope"])) for _ in range(3)]
        )
    if name == "CreateIndex":
        return pb.CreateIndexRequest(name=index, metric=int(rng.integers(-1, 5)),
                                     factory=str(rng.choice(["IDMap2,Flat", "HNSW16", "IVF1000000,Flat", "junk"])))  # fmt: skip
    if name in ("GetIndex", "DropIndex"):
        return getattr(pb, f"{name}Request")(name=index)
    return getattr(pb, f"{name}Request")()


def call(channel, m, key: str | None, raw: bytes) -> tuple[str, str]:
    path = f"/{SERVICE.full_name}/{m.name}"
    kw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    meta = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        if m.client_streaming and m.server_streaming:
            list(channel.stream_stream(path, **kw)(iter([raw, raw]), metadata=meta, timeout=30))
        elif m.client_streaming:
            channel.stream_unary(path, **kw)(iter([raw]), metadata=meta, timeout=30)
        else:
            channel.unary_unary(path, **kw)(raw, metadata=meta, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (a random 2-layer model: fast calls, more of them) or any model",
    )
    ap.add_argument("--examples", type=int, default=200, help="calls per (RPC, key)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reliability")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench_common import machine_facts

    from pairsmith.service.config import ServeConfig
    from pairsmith.service.server import ServerThread

    rng = np.random.default_rng(args.seed)
    secrets = {label: f"fuzz-{i}-" + "k" * 24 for i, label in enumerate(KEYS)}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            from tests.tiny import make_tiny_bi_encoder

            model = str(make_tiny_bi_encoder(Path(tmp) / "tiny"))
        kf = Path(tmp) / "keys"
        named = [
            (f"k{i}", lbl, suffix) for i, (lbl, (suffix, _)) in enumerate(KEYS.items()) if suffix is not None
        ]
        kf.write_text("".join(f"{secrets[lbl]} name={n} {suffix}\n" for n, lbl, suffix in named))
        kf.chmod(0o600)
        n_calls = len(SERVICE.methods) * len(KEYS) * args.examples
        cfg = ServeConfig(model=model, host="127.0.0.1", data_dir=Path(tmp) / "data", api_key_file=kf,
                          auth_failures_per_minute=n_calls, max_texts_per_request=64, max_indexes=8)  # fmt: skip
        st = ServerThread(cfg).start()
        dim = st.server.rt.models.bi.dim
        ch = grpc.insecure_channel(st.target, options=[("grpc.max_send_message_length", 64 << 20)])
        codes: dict[str, collections.Counter] = {lbl: collections.Counter() for lbl in KEYS}
        per_rpc: dict[str, collections.Counter] = {m.name: collections.Counter() for m in SERVICE.methods}
        violations: list[dict] = []
        for name, owner in (("docs", "all (no scopes)"), ("q1", "all, quotas")):  # targets that exist
            meta = (("authorization", f"Bearer {secrets[owner]}"),)
            create = pb.CreateIndexRequest(name=name).SerializeToString()
            ch.unary_unary(f"/{SERVICE.full_name}/CreateIndex")(create, metadata=meta, timeout=30)
        t0 = time.time()
        for m in SERVICE.methods:
            scope = SCOPE_OF[f"/{SERVICE.full_name}/{m.name}"]
            for label, (suffix, granted) in KEYS.items():
                key = (
                    None
                    if label == "no key"
                    else secrets[label]
                    if suffix is not None
                    else "wrong-" + "z" * 24
                )
                for _ in range(args.examples):
                    if rng.random() < 0.1:
                        raw = rng.bytes(int(rng.integers(0, 64)))  # random bytes on the wire
                    else:
                        raw = request(rng, m.name, dim).SerializeToString()
                    code, details = call(ch, m, key, raw)
                    codes[label][code] += 1
                    per_rpc[m.name][code] += 1
                    if suffix is None:
                        want_ok = code == "UNAUTHENTICATED"
                    elif scope in granted:
                        want_ok = code not in ("PERMISSION_DENIED", "UNAUTHENTICATED")
                    else:
                        want_ok = code == "PERMISSION_DENIED" and f"'{scope}' scope" in details
                    if code in BAD or not want_ok:
                        violations.append(
                            {"rpc": m.name, "key": label, "code": code, "details": details[:300]}
                        )
        elapsed = time.time() - t0
        ch.close()
        st.stop()
    rows = [
        [label, ",".join(sorted(KEYS[label][1])) or "-", sum(c.values()),
         ", ".join(f"{k} {v}" for k, v in c.most_common()),
         sum(1 for v in violations if v["key"] == label)]
        for label, c in codes.items()
    ]  # fmt: skip
    facts = machine_facts()
    doc = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "code": facts["code"],
        "machine": facts,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "examples_per_rpc_and_key": args.examples,
        "calls": n_calls,
        "seconds": round(elapsed, 1),
        "violations": violations[:50],
        "violation_count": len(violations),
        "codes_by_key": {k: dict(v) for k, v in codes.items()},
        "codes_by_rpc": {k: dict(v) for k, v in per_rpc.items()},
        "report": {
            "section": "Reliability",
            "title": "Fuzzing with scoped API keys",
            "columns": ["key", "scopes", "calls", "status codes", "violations"],
            "rows": rows,
            "notes": (
                f"{args.examples} random, mostly malformed requests per RPC and key on a real server "
                f"(model {args.model}); a violation is INTERNAL/UNKNOWN/UNIMPLEMENTED, a call past a "
                "missing scope or key, or a refusal of a granted scope. Machine shared with other jobs."
            ),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scoped_fuzz.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"scoped fuzz: {n_calls} calls in {elapsed:.0f} s, {len(violations)} violations")
    for v in violations[:10]:
        print("  ", v)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
