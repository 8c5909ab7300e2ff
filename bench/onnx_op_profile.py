"""Where an exported encoder's time goes: onnxruntime's per-node profile, summed by operator type.

Exports the model if needed (the same files `pairsmith export onnx` writes), runs STS-B dev sentences
(bi) or pairs (cross: a fresh head on the backbone, as bench/encode_bench.py does) through the chosen
variant on one thread, length-sorted batches, and prints each op type's share of the node time. Use it
before optimising a graph: an op at 5 % cannot give more than 5 %.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/onnx_op_profile.py --kind cross [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_facts, machine_line  # noqa: E402


def profile(model_dir: str, kind: str, variant: str, texts: list, batch: int) -> dict[str, float]:
    """Share of node time per op type (percent) over ``texts`` (strings, or pairs for cross)."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.onnx_runtime import choose_variant, open_export
    from pairsmith.encoders.source import resolve_model

    quantize = {"fp32": "none", "int8-static": "int8-static", "int8-dynamic": "int8-dynamic"}[variant]
    export_onnx(model_dir, ExportConfig(kind=kind, quantize=quantize))
    source = resolve_model(model_dir)
    export = open_export(source, kind)
    path = export.path(choose_variant(export, variant, on_gpu=False))
    tok = AutoTokenizer.from_pretrained(str(source.path))
    with tempfile.TemporaryDirectory(prefix="pairsmith-prof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        key = (lambda p: len(p[0]) + len(p[1])) if kind == "cross" else len
        rows = sorted(texts, key=key)
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            if kind == "cross":
                enc = tok([a for a, _ in chunk], [b for _, b in chunk], padding=True, truncation=True,
                          max_length=512, return_tensors="np")  # fmt: skip
            else:
                enc = tok(chunk, padding=True, truncation=True, max_length=512, return_tensors="np")
            sess.run(None, {n: enc[n].astype(np.int64) for n in names if n in enc})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(per_op.values()) or 1
    return {op: 100.0 * us / total for op, us in per_op.most_common()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--kind", choices=("bi", "cross"), default="cross")
    p.add_argument("--variant", choices=("int8-static", "int8-dynamic", "fp32"), default="int8-static")
    p.add_argument("--n", type=int, default=800, help="STS-B dev sentences (bi) or pairs (cross)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", default=os.environ.get("PAIRSMITH_DATA", "../shared/data"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from pairsmith.distill.data import load_sts_set

    data = Path(args.data)
    if not (data / "sts").is_dir():
        print(f"skip: no STS data under {data} (set PAIRSMITH_DATA)")
        return 0
    dev = load_sts_set("stsb-dev", root=data)
    facts = machine_facts()
    print(machine_line(facts))
    with tempfile.TemporaryDirectory(prefix="pairsmith-prof-model-") as tmp:
        if args.kind == "cross":
            from pairsmith.encoders import CrossEncoder

            CrossEncoder.from_backbone(args.model, device="cpu", seed=0).save(tmp)
            model, texts = tmp, list(zip(dev.s1, dev.s2, strict=True))[: args.n]
        else:
            model, texts = args.model, list(dev.s1 + dev.s2)[: args.n]
        shares = profile(model, args.kind, args.variant, texts, args.batch_size)
    print(
        f"{args.kind} {args.variant}, {len(texts)} inputs, batch {args.batch_size}, 1 thread: node time by op"
    )
    for op, pct in shares.items():
        if pct >= 0.1:
            print(f"  {op:<32} {pct:5.1f}%")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": facts, "args": vars(args), "shares": shares}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
