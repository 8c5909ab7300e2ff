"""`make reliability`: the whole reliability and security suite with full sizes, then a summary.

1. pytest over ``tests/reliability`` (fuzzing: ``--fuzz-examples`` per request message; kill -9:
   ``--kill-rounds``; full disk; corrupted files; security), the defect regressions and the
   README error table (``tests/test_service_defects.py``, ``tests/test_service_errors.py``,
   ``tests/test_service_auth.py``, ``tests/test_service_security.py``, ``tests/test_service_hardening.py``);
2. fuzzing with scoped API keys (``bench/reliability/scoped_fuzz.py``: ``--scoped-examples`` per RPC and key);
3. the load run (``bench/reliability/load.py``: 16 and 64 mixed clients, saturation, recovery);
4. the resource and shutdown cases (``bench/reliability/cases.py``: EmbedStream pace through the
   SIGTERM drain, more indexes than the descriptor limit holds open, CreateIndex on a full disk);
5. ``summary.md`` beside the JSON figures (``--out``): the figures in short, readable.

    python bench/reliability/run.py [--quick]   # --quick: small sizes, ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = [
    "tests/reliability",
    "tests/test_service_defects.py",
    "tests/test_service_errors.py",
    "tests/test_service_auth.py",
    "tests/test_service_security.py",
    "tests/test_service_hardening.py",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reliability")
    ap.add_argument("--fuzz-examples", type=int, default=1000)
    ap.add_argument("--kill-rounds", type=int, default=24)
    ap.add_argument("--clients", default="16,64")
    ap.add_argument("--seconds", default="60,300")
    ap.add_argument("--scoped-examples", type=int, default=200)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-cases", action="store_true")
    ap.add_argument("--case-indexes", type=int, default=2000, help="descriptor case: indexes to create")
    ap.add_argument("--quick", action="store_true", help="50 examples, 3 rounds, 20 s load phases")
    args = ap.parse_args()
    if args.quick:
        args.fuzz_examples, args.kill_rounds, args.seconds, args.scoped_examples = 50, 3, "20,20", 20
        args.case_indexes = min(args.case_indexes, 300)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PAIRSMITH_FUZZ_EXAMPLES=str(args.fuzz_examples),
        PAIRSMITH_KILL_ROUNDS=str(args.kill_rounds),
        PAIRSMITH_RELIABILITY_OUT=str(args.out),
        HF_HUB_OFFLINE="1",
    )
    # The commit under test, taken before anything runs (a merge during a long run must not relabel it).
    args.commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    t0 = time.time()
    junit = args.out / "pytest.xml"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *TESTS,
        ],
        cwd=REPO,
        env=env,
    )
    tests_s = time.time() - t0
    scoped_rc = subprocess.run(
        [sys.executable, "bench/reliability/scoped_fuzz.py", "--examples", str(args.scoped_examples),
         "--out", str(args.out)],
        cwd=REPO,
        env=env,
    ).returncode  # fmt: skip
    load_rc = 0
    if not args.skip_load:
        load_rc = subprocess.run(
            [sys.executable, "bench/reliability/load.py", "--clients", args.clients, "--seconds", args.seconds,
             "--out", str(args.out)],
            cwd=REPO,
            env=env,
        ).returncode  # fmt: skip
    cases_rc = 0 if args.skip_cases else run_cases(args, env)
    summary = render(args, res.returncode, tests_s, junit) + render_cases(args.out)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return res.returncode or scoped_rc or load_rc or cases_rc


def run_cases(args, env: dict) -> int:
    """The resource and shutdown cases against real servers; figures in ``cases.json``."""
    cmd = [
        sys.executable,
        "bench/reliability/cases.py",
        "--out",
        str(args.out),
        "--indexes",
        str(args.case_indexes),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def render_cases(out: Path) -> str:
    path = out / "cases.json"
    if not path.exists():
        return ""
    c = json.loads(path.read_text())
    lines = [""]
    d = c.get("drain_pace")
    if d:
        lines.append(
            f"- Drain: EmbedStream of {d['messages']} messages (16 texts, one per 100 ms), SIGTERM at "
            f"{d['sigterm_at_s']} s: {d['replies']}/{d['messages']} replies, last at {d['last_reply_s']} s, "
            f"largest gap after SIGTERM {d['max_gap_after_sigterm_s']} s, largest burst {d['largest_burst']} "
            f"replies, errors {d['errors'] or 'none'}, exit code {d['server_exit_code']}."
        )
    f = c.get("descriptors")
    if f:
        lines.append(
            f"- Descriptors: RLIMIT_NOFILE={f['rlimit_nofile']}, {f['indexes']} indexes each created, upserted "
            f"and searched: {f['codes']}; ListIndexes of {f['list_indexes']} indexes {f['list_indexes_ms_median']} ms "
            f"(median of 3); `.creating-*` left: {len(f['creating_leftovers'])}."
        )
    z = c.get("full_disk_create")
    if z and "skipped" in z:
        lines.append(f"- Full disk CreateIndex: skipped ({z['skipped']}).")
    elif z:
        lines.append(
            f"- Full disk CreateIndex ({z['filesystem_mb']} MB tmpfs, filled): {z['create_codes']}; left behind: "
            f"{z['leftovers'] or 'nothing'}; Search {z['search_while_full']}, ListIndexes {z['list_while_full']} "
            f"while full; CreateIndex after freeing space: {z['create_after_space_freed']}."
        )
    return "\n".join(lines) + "\n"


def render(args, tests_rc: int, tests_s: float, junit: Path) -> str:
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    lines = [
        f"Command: `make reliability` (`python bench/reliability/run.py --fuzz-examples {args.fuzz_examples} "
        f"--kill-rounds {args.kill_rounds} --scoped-examples {args.scoped_examples} --clients {args.clients} --seconds {args.seconds}`), "
        f"{time.strftime('%Y-%m-%d')}, commit {args.commit}, {platform.machine()} ({os.cpu_count()} cores, shared).",
        "",
        f"- Tests: {suite.get('tests')} run, {suite.get('failures')} failed, {suite.get('errors')} errors, "
        f"{suite.get('skipped')} skipped, {tests_s:.0f} s (exit {tests_rc}).",
    ]
    faults = args.out / "faults.json"
    if faults.exists():
        f = json.loads(faults.read_text())
        lines.append(
            f"- kill -9: {f['rounds_passed']}/{f['rounds']} rounds with zero acknowledged writes lost "
            f"({f['acknowledged_ops']} acknowledged operations; {f['live_items_checked']} live items checked "
            f"after the rounds, summed; killed during {f['killed_during']})."
        )
    fuzz = args.out / "fuzz.json"
    if fuzz.exists():
        z = json.loads(fuzz.read_text())
        total = sum(v["examples"] for v in z.values())
        bad = sum(n for v in z.values() for c, n in v["codes"].items() if c in ("INTERNAL", "UNKNOWN"))
        lines.append(f"- Fuzzing: {total} calls over {len(z)} RPC/wire targets, INTERNAL/UNKNOWN: {bad}.")
        lines.append("")
        lines.append("| target | calls | status codes |")
        lines.append("|---|---|---|")
        for k, v in z.items():
            codes = ", ".join(f"{c} {n}" for c, n in sorted(v["codes"].items(), key=lambda x: -x[1]))
            lines.append(f"| {k} | {v['examples']} | {codes} |")
    scoped = args.out / "scoped_fuzz.json"
    if scoped.exists():
        z = json.loads(scoped.read_text())
        lines.append(
            f"- Fuzzing with scoped keys: {z['calls']} calls over {len(z['codes_by_key'])} kinds of key, "
            f"violations (INTERNAL, a call past a missing scope or key, a granted scope refused): "
            f"{z['violation_count']}."
        )
    load = args.out / "load.json"
    if load.exists():
        d = json.loads(load.read_text())
        lines += [
            "",
            "| clients | seconds | calls/s | p50 ms | p99 ms | status codes | RSS MB first -> last (max) | growth |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for p in [d["baseline"], *d["load"], d["recovery"]]:
            r = p.get("rss_mb", {})
            lines.append(
                f"| {p['clients']} | {p['seconds']} | {p['throughput_rps']} | {p['p50_ms']} | {p['p99_ms']} | "
                f"{p['codes']} | {r.get('first')} -> {r.get('last')} ({r.get('max')}) | {r.get('growth_pct')}% |"
            )
        if "saturation" in d:
            s = d["saturation"]
            lines.append(f"\nSaturation: {s['in_flight']} Embed calls in flight at once -> {s['codes']}.")
        lines.append(f"Server exit code after SIGTERM: {d.get('server_exit_code')}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
