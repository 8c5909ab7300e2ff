"""What the lower layers offer a pooler, before any training: Spearman of each hidden layer's masked mean.

Multi-layer trainable pooling can only beat mean pooling of the last layer if the other
layers carry something the task wants. This probe encodes a scored pair file (by default the
selection split of STS-B train made by ``bench/experiments/stsb_split.py``, never an evaluation set)
with the backbone untouched, pools every hidden layer (embeddings output included) by its masked
mean, and reports the cosine-vs-score Spearman (x100) of each layer and of a few fixed mixes (the
mean of the first transformer layer and the last, of the last two, the last three, all), raw and
after normalising each layer's vector. No training, no parameters: a ceiling for nothing, a hint for where to look.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/pooling_layer_probe.py \
        --pairs runs/stsb-split/select.tsv --json bench/results/pooling/layer-probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, default=Path("runs/stsb-split/select.tsv"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.pairs.exists():
        raise SystemExit(
            f"{args.pairs}: not found; make the split with "
            "`.venv/bin/python bench/experiments/stsb_split.py --out runs/stsb-split`"
        )

    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModel, AutoTokenizer

    from pairsmith.distill.data import load_sts_set
    from pairsmith.distill.provenance import code_version
    from pairsmith.encoders.modules.layer_pooling import masked_mean
    from pairsmith.encoders.source import resolve_model
    from pairsmith.errors import PairsmithError

    torch.set_num_threads(args.threads)
    code = code_version()
    source = resolve_model(args.model)
    if source.path is None:
        raise SystemExit(f"--model {args.model}: not a local model directory")
    tok = AutoTokenizer.from_pretrained(str(source.path))
    model = AutoModel.from_pretrained(str(source.path)).eval()
    try:  # a scored pair file (s1 TAB s2 TAB score, .jsonl, or any STS layout); errors name the line
        pairs = load_sts_set(str(args.pairs))
    except PairsmithError as e:
        raise SystemExit(f"--pairs: {e}") from None
    if pairs.scores is None or len(pairs) < 3:
        raise SystemExit(f"--pairs {args.pairs}: need at least 3 scored pairs")
    a, b, y = pairs.s1, pairs.s2, pairs.scores

    def layer_means(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            t = tok(
                texts[i : i + 64],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = model(**t, output_hidden_states=True).hidden_states  # L x (B, T, H)
            out.append(torch.stack([masked_mean(h, t["attention_mask"]) for h in hidden], 1))  # (B, L, H)
        return torch.cat(out)  # (N, L, H)

    ea, eb = layer_means(a), layer_means(b)
    n_layers = ea.shape[1]
    gold = np.asarray(y, dtype=np.float64)

    def spearman(x: torch.Tensor, z: torch.Tensor) -> float:
        cos = torch.nn.functional.cosine_similarity(x, z).numpy()
        return round(float(spearmanr(cos, gold).correlation) * 100, 2)

    def normed(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)

    layers = {str(i): spearman(ea[:, i], eb[:, i]) for i in range(n_layers)}
    mixes = {}
    for name, idx in (
        ("first+last", [1, n_layers - 1]),
        ("last two", [n_layers - 2, n_layers - 1]),
        ("last three", [n_layers - 3, n_layers - 2, n_layers - 1]),
        ("all", list(range(n_layers))),
    ):
        mixes[name] = {
            "raw": spearman(ea[:, idx].mean(1), eb[:, idx].mean(1)),
            "normalised": spearman(normed(ea[:, idx]).mean(1), normed(eb[:, idx]).mean(1)),
        }
    print(f"{args.model} on {args.pairs} ({len(y)} pairs); layer 0 = embeddings output")
    for i, v in layers.items():
        print(f"layer {i:>2}: {v:6.2f}{'   <- last (mean pooling)' if int(i) == n_layers - 1 else ''}")
    for name, v in mixes.items():
        print(f"mean of {name:<11}: {v['raw']:6.2f} raw, {v['normalised']:6.2f} normalised per layer")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "bench": "pooling_layer_probe",
                    "model": args.model,
                    "pairs": str(args.pairs),
                    "n": len(y),
                    "layers": layers,
                    "mixes": mixes,
                    "code": code,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
