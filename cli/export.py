"""``pairsmith export onnx``: export an encoder (whole pipeline) to ONNX, optionally int8 / fp16."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to another runtime format")
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    o = sub.add_parser(
        "onnx",
        help="export to ONNX (pooling/normalisation or score head inside the graph)",
        description=(
            "Writes onnx/model.onnx (fp32) into the model directory, plus onnx/model_qint8_<isa>.onnx "
            "(dynamic) or onnx/model_qint8_static_<isa>.onnx (static, + calibration.txt) with --quantize (CPU) and onnx/model_fp16.onnx with --fp16 (GPU). The packaged default "
            "model and read-only directories export into the pairsmith cache ($PAIRSMITH_CACHE, else "
            "~/.cache/pairsmith), where backend=onnx finds them; --out DIR writes a standalone copy "
            "of the model with its onnx/ folder instead."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    o.add_argument("--model", required=True, help="'default', a model directory, or a hub name (with --out)")
    o.add_argument(
        "--kind", default="auto", help="encoder kind: auto, bi, cross (or another registered kind)"
    )
    o.add_argument(
        "--quantize",
        choices=("none", "int8", "int8-static", "int8-dynamic"),
        default="none",
        help="also write an int8 CPU variant: int8 = int8-static (activation scales fixed by calibration: "
        "a text's vector ignores its batch mates); int8-dynamic (scales per batch)",
    )
    o.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help="static int8: calibration sentences, one per line (default: pairsmith's built-in general set)",
    )
    o.add_argument(
        "--isa",
        default="auto",
        help="int8 target: auto (this CPU), avx2, avx512, avx512_vnni, arm64",
    )
    o.add_argument("--fp16", action="store_true", help="also write an fp16 variant (for GPU)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset")
    o.add_argument("--out", default=None, help="write a standalone copy of the model + onnx/ here")
    o.add_argument(
        "--fuse",
        choices=("auto", "on", "off"),
        default="auto",
        help="onnxruntime transformer fusions before quantising: auto = for fp16 only "
        "(measured slower for int8 on CPU); on = also for --quantize int8-dynamic (static int8 "
        "refuses it: its scales are frozen on the plain graph)",
    )
    o.add_argument(
        "--per-tensor",
        action="store_true",
        help="int8 weights with one scale per tensor (default: per channel)",
    )
    o.add_argument(
        "--last-layer",
        choices=("cls", "full"),
        default="cls",
        help="cross-encoders: cls = the last layer for [CLS] only where the model qualifies (exact, "
        "checked at export, ~14%% fewer FLOPs on MiniLM); full = every position",
    )
    o.add_argument("--no-check", action="store_true", help="skip the torch vs ONNX parity check")
    o.add_argument("--json", action="store_true", help="print the manifest as JSON")
    o.set_defaults(func=_run_onnx)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run_onnx(args) -> int:
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    cfg = ExportConfig(
        kind=args.kind,
        quantize=args.quantize,
        calibration=args.calibration,
        isa=args.isa,
        fp16=args.fp16,
        opset=args.opset,
        fuse=args.fuse,
        per_channel=not args.per_tensor,
        check=not args.no_check,
        last_layer=args.last_layer,
    )
    res = export_onnx(args.model, cfg, out=args.out)
    if args.json:
        print(json.dumps(res.manifest, indent=2, sort_keys=True))
        return 0
    print(f"exported {res.kind}-encoder {args.model} -> {res.onnx_dir}")
    for f in res.files:
        print(f"  {f.name:34s} {f.stat().st_size / 1e6:8.1f} MB")
    fp32 = res.manifest["variants"]["fp32"].get("max_abs_diff_vs_torch")
    if fp32 is not None:
        print(f"  fp32 max |onnx - torch| = {fp32:.2e}")
    for key, v in res.manifest["variants"].items():
        if "min_cosine_vs_fp32" in v:
            print(f"  {key}: min cosine vs fp32 = {v['min_cosine_vs_fp32']:.5f}")
    print(f"load with: backend='onnx' on model {res.model_dir if args.out else args.model}")
    return 0
