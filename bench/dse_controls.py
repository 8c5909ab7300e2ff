"""DSE with few gold pairs and many teacher-labelled ones, against its two controls; and Trans-Encoder
on an inductive pool. Resumable: every step is a separate ``pairsmith`` command whose output folder
holds a ``report.json`` when done; run the script again to continue.

.venv/bin/python bench/dse_controls.py [--work runs/dse-controls] [--seeds 0 1 2] [--steps all]

Steps (each job uses one thread: ``OMP_NUM_THREADS=1``):

- ``split``: STS-B train is split into a training part and a 500-pair selection part that share no
  text (:func:`pairsmith.distill.selection.selection_split`); files under ``--work``.
- ``teacher``: a cross-encoder (from all-mpnet-base-v2: ``--teacher-init``) trained on the training
  part plus SICK-R train (``--teacher-extra``, scores mapped onto 0..5), its checkpoint chosen on
  the selection part (``pairsmith train cross-encoder``).
- ``unlabeled``: pairs the teacher never saw (STS12-16 and the STS companion, unscored), minus every
  pair that occurs, normalised, in STS-B train, the teacher's extra sets, STS-B dev or SICK-R dev; a
  seeded subset.
- per seed, three students from the same start, selected on the selection part, reported on STS-B dev
  and SICK-R dev: ``labels`` (the ``--gold`` gold pairs only), ``self`` (the same recipe with the
  student's own start labelling the unlabeled pairs: no teacher), ``dse`` (the teacher labels them).
- per seed, ``te``: one Trans-Encoder cycle on ``sts-inductive`` minus the selection pairs, mutual
  between the default model and all-mpnet-base-v2 (``--te-models``), selected on the selection part;
  the default model's bi-encoder is reported on STS-B dev and SICK-R dev.

``--report`` (the default last step) writes ``bench/results/distill/dse_controls.json`` and
``bench/results/distill/trans_encoder_inductive.json`` from whatever runs have finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

REPORTED = ["stsb-dev", "sickr-dev"]
ARMS = {"labels": "labels-only (gold only)", "self": "no-teacher control", "dse": "DSE student"}
EXTRA_RANGES = {"sickr-train": (1.0, 5.0)}  # gold score ranges of the extra teacher sets
STEPS = ["split", "teacher", "unlabeled", "arms", "te", "report"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _run(cmd: list[str], out: Path, log: Path) -> None:
    """Run one job unless its report exists; resume it when its folder holds a started run."""
    if (out / "report.json").exists():
        print(f"done already: {out}", flush=True)
        return
    if (out / "state.json").exists():
        cmd = [*cmd, "--resume"]
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    with log.open("a") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    print(f"  rc {rc} in {time.time() - t0:.0f} s (log {log})", flush=True)
    if rc != 0 and not (out / "report.json").exists():
        raise SystemExit(f"step failed: {shlex.join(cmd)} (see {log})")


def _write_tsv(path: Path, ps, with_scores: bool) -> None:
    from pairsmith.atomic import atomic_write_bytes

    lines = []
    for i, (a, b) in enumerate(zip(ps.s1, ps.s2, strict=True)):
        lines.append(f"{a}\t{b}\t{float(ps.scores[i]):g}" if with_scores else f"{a}\t{b}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def step_split(work: Path, args) -> None:
    from pairsmith.distill.data import PairSet
    from pairsmith.distill.pairsets import load_pairs
    from pairsmith.distill.selection import selection_split

    if not (work / "split.json").exists():
        train, sel, info = selection_split(load_pairs("stsb-train", labeled=True), args.selection, 0)
        _write_tsv(work / "stsb-train-part.tsv", train, True)
        _write_tsv(work / "stsb-selection.tsv", sel, True)
        (work / "split.json").write_text(json.dumps(info))
        print("split:", info, flush=True)
    path = work / "teacher-train.tsv"
    if path.exists():
        return
    train = load_pairs(str(work / "stsb-train-part.tsv"), labeled=True)
    for name in args.teacher_extra.split(",") if args.teacher_extra else []:
        extra = load_pairs(name, labeled=True)
        lo, hi = EXTRA_RANGES.get(name, (0.0, 5.0))  # onto STS-B's 0..5
        scores = [(float(y) - lo) * 5.0 / (hi - lo) for y in extra.scores]
        train = PairSet(
            "teacher-train",
            [*train.s1, *extra.s1],
            [*train.s2, *extra.s2],
            [*map(float, train.scores), *scores],
        )
    _write_tsv(path, train, True)
    print(f"teacher data: {len(train)} pairs", flush=True)


def step_teacher(work: Path, args) -> None:
    cmd = [
        *args.ps,
        "train",
        "cross-encoder",
        "--data",
        str(work / "teacher-train.tsv"),
        "--dev",
        str(work / "stsb-selection.tsv"),
        "--score-range",
        "0,5",
        "--init",
        args.teacher_init,
        "--epochs",
        str(args.teacher_epochs),
        "--max-length",
        "64",
        "--batch-size",
        str(args.teacher_batch_size),
        "--eval-steps",
        str(args.teacher_eval_steps),
        "--seed",
        "0",
        "--no-progress",
        "--device",
        args.device,
        "--out",
        str(work / "teacher"),
        *(["--one-order"] if args.teacher_one_order else []),
    ]
    _run(cmd, work / "teacher", work / "teacher.log")


def step_unlabeled(work: Path, args) -> None:
    import numpy as np

    from pairsmith.distill.data import PairSet
    from pairsmith.distill.pairsets import drop_pairs_in, load_pairs

    path = work / "unlabeled.tsv"
    if path.exists():
        return
    pool = load_pairs(args.unlabeled_from)
    extra = args.teacher_extra.split(",") if args.teacher_extra else []
    pool = drop_pairs_in(pool, ["stsb-train", *extra, *REPORTED])
    idx = np.sort(
        np.random.default_rng(0).choice(len(pool), size=min(args.unlabeled, len(pool)), replace=False)
    )
    sub = PairSet("unlabeled", [pool.s1[i] for i in idx], [pool.s2[i] for i in idx])
    _write_tsv(path, sub, False)
    print(f"unlabeled: {len(sub)} of {len(pool)} pairs", flush=True)


def _run_tail(args, seed: int, out: Path) -> list[str]:
    """The options every student and Trans-Encoder job ends with."""
    return ["--seed", str(seed), "--no-progress", "--device", args.device, "--out", str(out)]


def _dse_cmd(work: Path, args, arm: str, seed: int) -> list[str]:
    cmd = [
        *args.ps,
        "distill",
        "dse",
        "--pairs",
        str(work / "stsb-train-part.tsv"),
        "--score-range",
        "0,5",
        "--gold-limit",
        str(args.gold),
        "--dev",
        str(work / "stsb-selection.tsv"),
        "--eval-sets",
        ",".join(REPORTED),
        "--teacher-cache",
        str(work / ("student_cache.npz" if arm == "self" else "teacher_cache.npz")),
        "--epochs",
        str(args.epochs),
        "--max-length",
        "64",
        *_run_tail(args, seed, work / f"{arm}-s{seed}"),
    ]
    if arm == "labels":
        return [*cmd, "--teacher", str(work / "teacher"), "--alpha", "0"]
    teacher = "student" if arm == "self" else str(work / "teacher")
    return [
        *cmd,
        "--teacher",
        teacher,
        "--unlabeled",
        str(work / "unlabeled.tsv"),
        "--alpha",
        str(args.alpha),
    ]


def step_arms(work: Path, args, seed: int) -> None:
    for arm in ARMS:
        _run(_dse_cmd(work, args, arm, seed), work / f"{arm}-s{seed}", work / f"{arm}-s{seed}.log")


def step_te(work: Path, args, seed: int) -> None:
    cmd = [
        *args.ps,
        "distill",
        "trans-encoder",
        "--pairs",
        args.te_pool,
        "--models",
        *args.te_models,
        "--max-pairs",
        str(args.te_pairs),
        "--dev",
        str(work / "stsb-selection.tsv"),
        "--eval-sets",
        ",".join(REPORTED),
        "--exclude-eval-pairs",
        "--cycles",
        "1",
        "--cross-epochs",
        "1",
        "--bi-epochs",
        str(args.te_bi_epochs),
        "--cross-max-length",
        "64",
        "--cross-batch-size",
        "16",
        "--bi-batch-size",
        "32",
        *_run_tail(args, seed, work / f"te-s{seed}"),
    ]
    _run(cmd, work / f"te-s{seed}", work / f"te-s{seed}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/dse-controls")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", default="all", help=f"comma list of {STEPS} or 'all'")
    ap.add_argument("--selection", type=int, default=500, help="selection pairs split off STS-B train")
    ap.add_argument("--gold", type=int, default=500, help="gold STS-B train pairs per student")
    ap.add_argument("--unlabeled", type=int, default=2000, help="teacher-labelled pairs per student")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1, help="student epochs (every arm)")
    ap.add_argument(
        "--teacher-init", default="mpnet", help="transformer the teacher cross-encoder starts from"
    )
    ap.add_argument(
        "--teacher-extra",
        default="sickr-train",
        help="labeled sets the teacher also trains on (scores mapped onto 0..5; '' for none); their "
        "pairs are dropped from the unlabeled pool",
    )
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--teacher-batch-size", type=int, default=16)
    ap.add_argument("--teacher-one-order", action="store_true", help="teacher trains on (a, b) only")
    ap.add_argument("--teacher-eval-steps", type=int, default=200)
    ap.add_argument(
        "--unlabeled-from",
        default="sts12,sts13,sts14,sts15,sts16,sts-companion",
        help="sets the unlabeled pairs are drawn from (scores dropped)",
    )
    ap.add_argument("--te-pool", default="sts-inductive", help="Trans-Encoder unlabeled pool")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--te-pairs", type=int, default=1000)
    ap.add_argument(
        "--te-models",
        nargs="+",
        default=["default", "mpnet"],
        help="Trans-Encoder models: one is self-distillation, several mutual (the first is reported)",
    )
    ap.add_argument("--te-bi-epochs", type=int, default=1)
    ap.add_argument("--results", default=str(ROOT / "bench/results/distill"))
    ap.add_argument("--pairsmith", default=str(ROOT / ".venv/bin/pairsmith"))
    args = ap.parse_args()
    args.ps = [args.pairsmith]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = STEPS if args.steps == "all" else args.steps.split(",")
    if "split" in steps or not (work / "setting.json").exists():  # what the report reads back
        keys = ("gold", "unlabeled", "alpha", "epochs", "teacher_init", "teacher_extra", "teacher_epochs",
                "teacher_one_order", "unlabeled_from", "te_pool", "te_pairs", "te_models", "te_bi_epochs")  # fmt: skip
        setting = {k: getattr(args, k) for k in keys}
        argv = sys.argv[1:]
        if "--steps" in argv:  # the experiment is every step
            i = argv.index("--steps")
            argv = argv[:i] + argv[i + 2 :]
        setting["command"] = ".venv/bin/python bench/dse_controls.py " + " ".join(map(shlex.quote, argv))
        (work / "setting.json").write_text(json.dumps(setting, indent=1))
    for s in ("split", "teacher", "unlabeled"):
        if s in steps:
            globals()[f"step_{s}"](work, args)
    for seed in args.seeds:
        if "arms" in steps:
            step_arms(work, args, seed)
        if "te" in steps:
            step_te(work, args, seed)
    if "report" in steps:
        from dse_controls_report import write_reports

        write_reports(work, args, " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
