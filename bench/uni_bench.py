"""Time to rank 1 context + N candidates: Uni-Encoder (arrow, context-blind) vs cross-encoder.

Same backbone (``--model``, default the default model all-MiniLM-L6-v2; speed does not depend on
the trained weights), the Uni-Encoder warm-started from it (``--head warm``, the default: gated
cross-segment attention, cosine; ``--head cold``: the paper's linear head), same process, same thread count, interleaved per context so background load
hits all three alike. Contexts and candidates come from DailyDialog++ dev (its 15 responses per
context; N > 15 borrows responses of the next contexts) or, with ``--data mutual-heldout``, from
MuTual's held-out part (longer contexts, 4 options per context; N > 4 borrows likewise). The
cross-encoder runs through pairsmith's pipeline (``CrossEncoder.score``, batch 32); the Uni-Encoder
through ``rank`` (on a BERT/RoBERTa backbone its block attention, ``encoders/uni_block.py``, for
batches of ``BLOCK_MIN_TOKENS`` or more; each row's ``uni_attention`` says which path its cases took).

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/uni_bench.py --json runs/uni/bench.json

Prints per N the median milliseconds per context, the cross / uni ratios, the tokens each side
encodes (mean per context, counted by each model's own tokenizer) and ``ceiling``: the ratio of the
two sides' linear-layer work (token-layers), the speed-up exact fp32 compute could reach if time were
proportional to it, and each speed-up as a share of it (``*_of_ceiling``). The cross-encoder computes its last layer for [CLS] only where pairsmith does
(plain BERT classifiers; keys and values for every token: 2 of the layer's 12 d x d products per
token, the other 10 for one row; the JSON's ``cross_last_layer`` says which); the
Uni-Encoder runs all its layers on every token of its row. Attention's T^2 terms are left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,10,20,50")
    ap.add_argument("--model", default="default", help="backbone of both sides: default, mpnet or a dir")
    ap.add_argument("--data", default="dailydialog-dev", choices=["dailydialog-dev", "mutual-heldout"])
    ap.add_argument("--contexts", type=int, default=8, help="contexts timed per size")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per context (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-context-tokens", type=int, default=128)
    ap.add_argument("--max-candidate-tokens", type=int, default=48)
    ap.add_argument(
        "--head", default="warm", choices=["warm", "cold"], help="Uni-Encoder head (default warm)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from bench_common import machine_facts

    torch.set_num_threads(args.threads)
    from pairsmith.distill.dialogue import load_dialogue
    from pairsmith.distill.provenance import code_version

    code = code_version()  # taken at the start: a commit during the run must not relabel it
    from pairsmith.encoders import Activation, CrossEncoder, UniConfig, UniEncoder
    from pairsmith.encoders.cls_scorer import last_layer

    ds = load_dialogue(args.data)
    cfg = UniConfig(
        max_context_tokens=args.max_context_tokens, max_candidate_tokens=args.max_candidate_tokens
    )
    if args.head == "warm":
        uni = UniEncoder.from_bi_encoder(args.model, config=cfg, device="cpu")
    else:
        uni = UniEncoder.from_backbone(args.model, config=cfg, device="cpu", seed=0)
    ce = CrossEncoder.from_backbone(
        args.model, device="cpu", max_length=args.max_context_tokens + args.max_candidate_tokens, seed=0
    )
    pool = [r for i in range(len(ds.contexts)) for r in (*ds.positives[i], *ds.negatives[i])]
    starts = [0]
    for i in range(len(ds.contexts)):
        starts.append(starts[-1] + len(ds.positives[i]) + len(ds.negatives[i]))

    def case(i: int, n: int) -> tuple[str, list[str]]:
        if starts[i] + n > len(pool):
            raise SystemExit(f"--data {args.data}: not enough candidates for context {i} at N = {n}")
        return " ".join(ds.contexts[i]), pool[starts[i] : starts[i] + n]

    layers = int(uni.model.backbone.config.num_hidden_layers)
    from pairsmith.encoders.uni_tokenize import BLOCK_MIN_TOKENS

    block_ok = uni.pipeline().tokenizer.block
    uni_attention = f"block for batches of >= {BLOCK_MIN_TOKENS} tokens" if block_ok else "dense"

    def attention_path(c: str, k: list[str]) -> str:
        """Which attention rank() ran for this case: a batch's padded width decides, and one case's
        rows share a batch (a chunk of 1,024 tokens is the longest), so its longest row does."""
        rows = uni.tokenizer.encode_groups([(c, k)])[0]
        return "block" if block_ok and max(len(r) for r in rows.ids) >= BLOCK_MIN_TOKENS else "dense"

    def tokens(c: str, k: list[str]) -> tuple[int, int]:
        """(tokens of the Uni-Encoder's rows, tokens of the N cross-encoder pairs) for one case."""
        rows = uni.tokenizer.encode_groups([(c, k)])[0]
        pairs = ce.tokenizer.encode_pairs([(c, x) for x in k])
        return sum(len(r) for r in rows.ids), sum(len(r) for r in pairs.ids)

    # pairsmith's cross-encoder computes its last layer for [CLS] only on plain BERT classifiers
    # (encoders/cls_scorer.py); other backbones (MPNet) run the full forward.
    cross_last_layer = last_layer(ce.pipeline.backend.module)

    def ceiling(uni_tokens: float, cross_tokens: float, n: int) -> float:
        if (
            cross_last_layer == "cls-only"
        ):  # token-layers: keys/values (2 of 12 products) for every token, the rest for [CLS]
            cross_work = cross_tokens * (layers - 1 + 2 / 12) + n * 10 / 12
        else:
            cross_work = cross_tokens * layers
        return cross_work / (uni_tokens * layers)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000.0

    runners = {
        "uni-arrow": lambda c, k: uni.rank(c, k, mask="arrow"),
        "uni-context-blind": lambda c, k: uni.rank(c, k, mask="context-blind"),
        "cross": lambda c, k: ce.score([(c, x) for x in k], activation=Activation.RAW, batch_size=32),
    }
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(args.contexts):
            c, k = case(i, n)
            for fn in runners.values():
                fn(c, k)  # warm-up (allocator, first-call paths)
            for _ in range(args.reps):
                for name, fn in runners.items():
                    times[name].append(timed(lambda fn=fn, c=c, k=k: fn(c, k)))
        med = {name: statistics.median(v) for name, v in times.items()}
        counts = [tokens(*case(i, n)) for i in range(args.contexts)]
        uni_tok = statistics.mean(u for u, _ in counts)
        cross_tok = statistics.mean(x for _, x in counts)
        row = {
            "N": n,
            **{f"{name}_ms": round(v, 1) for name, v in med.items()},
            "speedup_arrow": round(med["cross"] / med["uni-arrow"], 2),
            "speedup_context_blind": round(med["cross"] / med["uni-context-blind"], 2),
            "uni_tokens": round(uni_tok, 1),
            "cross_tokens": round(cross_tok, 1),
            "ceiling": round(ceiling(uni_tok, cross_tok, n), 2),
            "uni_attention": "/".join(sorted({attention_path(*case(i, n)) for i in range(args.contexts)})),
        }
        for m in ("arrow", "context_blind"):
            row[f"{m}_of_ceiling"] = round(row[f"speedup_{m}"] / row["ceiling"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    facts = machine_facts()
    out = {
        "command": " ".join(["python", *sys.argv]),
        "code": code,
        "machine": facts,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bench": "uni_bench",
        "rows": rows,
        "threads": args.threads,
        "model": args.model,
        "head": args.head,
        "data": args.data,
        "contexts": args.contexts,
        "layers": layers,
        "cross_last_layer": cross_last_layer,
        "uni_attention": uni_attention,
        "reps": args.reps,
        "limits": {"context": args.max_context_tokens, "candidate": args.max_candidate_tokens},
        "platform": platform.platform(),
        "cpu": _cpu(),
        "torch": torch.__version__,
        "shared_machine": f"load average {facts['load_avg_1m']} on {facts['cpus']} CPUs; ratios are from "
        "interleaved runs in one process (medians)",
        "report": {
            "section": "Uni-Encoder",
            "title": f"Ranking speed: cross-encoder time / Uni-Encoder time per context ({args.data}, "
            f"{args.head} head, {args.threads} thread)",
            "columns": [
                "N",
                "cross ms",
                "uni context-blind ms",
                "uni arrow ms",
                "speed-up context-blind",
                "speed-up arrow",
                "ceiling",
                "context-blind / ceiling",
                "arrow / ceiling",
            ],
            "rows": [
                [
                    r["N"],
                    r["cross_ms"],
                    r["uni-context-blind_ms"],
                    r["uni-arrow_ms"],
                    r["speedup_context_blind"],
                    r["speedup_arrow"],
                    r["ceiling"],
                    r["context_blind_of_ceiling"],
                    r["arrow_of_ceiling"],
                ]
                for r in rows
            ],
            "notes": f"Median of {args.reps} interleaved runs x {args.contexts} contexts per N; ceiling = the "
            f"cross-encoder's linear-layer token work over the Uni-Encoder's ({cross_last_layer} last layer); "
            f"Uni-Encoder attention: {uni_attention}. "
            "ratios measured side by side, not absolute times, are the result.",
        },  # fmt: skip
    }
    if args.json:
        from pairsmith.atomic import atomic_write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, out)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
