"""Shared bits of the CPU benchmarks: the machine line every figure carries."""

from __future__ import annotations

import os
import time


def machine_facts() -> dict:
    """CPU model, feature set, int8 ISA, flags, cores, the engine `auto` picks, versions, date, load."""
    import onnxruntime
    import torch

    from pairsmith.encoders.onnx_quant import cpu_features

    facts = cpu_features()
    try:
        import openvino

        ov = openvino.__version__.split("-")[0]
    except ImportError:
        ov = None
    from pairsmith.distill.provenance import code_version

    facts.update(
        code=code_version(),  # commit, dirty flag and diff hash of the code that ran
        cpus=os.cpu_count(),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        openvino=ov,
        load_avg_1m=round(os.getloadavg()[0], 2),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    return facts


def machine_line(facts: dict | None = None) -> str:
    """One line naming the ISA, for every printed figure."""
    f = facts or machine_facts()
    eng = f["engine"]
    return (
        f"{f['cpu']} [{f['feature_set']}; flags {','.join(f['flags']) or '-'}; int8 {f['int8_isa']}], "
        f"{f['physical_cores']} cores, auto engine {eng['backend']}/{eng['variant']}, "
        f"load {f['load_avg_1m']}, {f['date']}"
    )


def provenance(argv: list[str], repo) -> dict:
    """The keys every result JSON starts with: the command line (repo paths made relative), the
    commit, the machine (ISA included) and the date."""
    import shlex
    import subprocess

    return {
        "command": "python " + " ".join(shlex.quote(a.replace(f"{repo}/", "")) for a in argv),
        "code": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine_facts(),
        "date": time.strftime("%Y-%m-%d"),
    }
