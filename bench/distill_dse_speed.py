"""DSE speed: one query against 1,000 candidates, student (cached candidate embeddings) vs teacher.

Both measured side by side in one process, median of ``--repeats`` runs each
(interleaved), so the ratio holds when other work shares the CPU. The student
embeds only the query and scores the 1,000 cached candidate vectors (cosine
head: one matrix-vector product; mlp head: the pair MLP); the teacher runs the
cross-encoder on all 1,000 (query, candidate) pairs.

    HF_HUB_OFFLINE=1 flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/distill_dse_speed.py \
        --teacher runs/teacher-stsb --student runs/dse-stsb/student --candidates 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument(
        "--sentences", default="stsb-dev", help="STS set whose sentences serve as queries/candidates"
    )
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=3, help="distinct queries per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from pairsmith.distill.data import load_sts_set
    from pairsmith.distill.dse import DSEStudent
    from pairsmith.distill.supervised import resolve_cross_dir
    from pairsmith.encoders import Activation, CrossEncoder

    ps = load_sts_set(args.sentences)
    sents = list(dict.fromkeys([*ps.s1, *ps.s2]))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(sents), size=args.candidates + args.queries * args.repeats, replace=False)
    cands = [sents[i] for i in pick[: args.candidates]]
    queries = [sents[i] for i in pick[args.candidates :]]

    teacher = CrossEncoder.load(resolve_cross_dir(args.teacher), device="cpu")
    student = DSEStudent.load(args.student, device="cpu")
    t0 = time.perf_counter()
    cache = student.encoder.encode(cands, batch_size=args.batch_size, normalize=student.head is None).vectors
    cache_s = time.perf_counter() - t0

    def run_student(q: str) -> np.ndarray:
        qv = student.encoder.encode([q], normalize=student.head is None).vectors  # (1, D)
        if student.head is None:
            return cache @ qv[0]  # (N,)
        return student.pair_scores_from_vectors(np.repeat(qv, len(cache), axis=0), cache)

    def run_teacher(q: str) -> np.ndarray:
        return teacher.score(
            [(q, c) for c in cands], activation=Activation.RAW, batch_size=args.batch_size
        ).values

    run_student(queries[0])  # warm-up both
    run_teacher(queries[0])
    ts, tt = [], []
    for r in range(args.repeats):
        qs = queries[r * args.queries : (r + 1) * args.queries]
        t0 = time.perf_counter()
        for q in qs:
            run_student(q)
        ts.append((time.perf_counter() - t0) / len(qs))
        t0 = time.perf_counter()
        for q in qs:
            run_teacher(q)
        tt.append((time.perf_counter() - t0) / len(qs))
    res = {
        "candidates": args.candidates,
        "repeats": args.repeats,
        "queries_per_repeat": args.queries,
        "threads": torch.get_num_threads(),
        "student_head": "mlp" if student.head is not None else "cosine",
        "student_ms_per_query": round(statistics.median(ts) * 1000, 3),
        "teacher_ms_per_query": round(statistics.median(tt) * 1000, 1),
        "speedup": round(statistics.median(tt) / statistics.median(ts), 1),
        "candidate_cache_build_s": round(cache_s, 2),
        "student_runs_ms": [round(x * 1000, 3) for x in ts],
        "teacher_runs_ms": [round(x * 1000, 1) for x in tt],
    }
    print(json.dumps(res, indent=2))
    if args.json:
        from pairsmith.distill.runstate import write_json_atomic

        write_json_atomic(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
