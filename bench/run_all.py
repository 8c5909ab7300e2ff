"""`make bench`: run every benchmark in sequence (never two at once: they share the cores).

Each benchmark prints its own table and ratios; scripts that write JSON under
bench/results/ feed `make bench-report` (docs/benchmarks.md).
A benchmark script that is not present is skipped with a note. Pass names to run a subset:
``python bench/run_all.py encode serve``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "baseline": ["bash", str(HERE / "baseline_eval.sh")],
    "encode": [sys.executable, str(HERE / "encode_bench.py")],
    "serve": [sys.executable, str(HERE / "serve_bench.py")],
    "search": [sys.executable, str(HERE / "search_bench.py")],
    "ray": [sys.executable, str(HERE / "ray_build_bench.py")],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        cmd = BENCHES[name]
        script = Path(cmd[1])
        if not script.exists():
            print(f"== {name}: {script.name} not present, skipped")
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
