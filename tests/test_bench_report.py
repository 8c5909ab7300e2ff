"""bench/report.py (`make bench-report`): docs/benchmarks.md is current and carries every figure as computed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"

_SPEC = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
rep = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_report"] = rep  # dataclasses look their module up while the file runs
_SPEC.loader.exec_module(rep)


def _row_of(text: str, first_cell: str, within: str) -> str:
    """The row starting with ``first_cell`` in the first table (heading to command line) mentioning ``within``."""
    block = next(b for b in text.split("\n#### ") if within in b)
    return next(line for line in block.splitlines() if line.startswith(f"| {first_cell} |"))


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A copy of bench/results to change freely."""
    dest = tmp_path / "bench" / "results"
    shutil.copytree(RESULTS, dest)
    return dest


def _full_history() -> bool:
    """Result files that record no date are dated by their first commit, which a shallow clone lacks."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return out == "false"


@pytest.mark.skipif(not _full_history(), reason="needs the git history (dates of older result files)")
def test_the_committed_page_is_current():
    assert PAGE.read_text(encoding="utf-8") == rep.generate(RESULTS), (
        "docs/benchmarks.md differs from what bench/report.py renders: run `make bench-report`"
    )
    assert rep.main(["--check"]) == 0


def test_a_figure_typed_by_hand_is_caught(tmp_path: Path):
    text = PAGE.read_text(encoding="utf-8")
    row = _row_of(text, "pairsmith onnx int8 static", "Cross-encoder scoring")
    edited = tmp_path / "benchmarks.md"
    edited.write_text(text.replace(row, row.replace("| 2.75 |", "| 2.85 |"), 1), encoding="utf-8")
    assert edited.read_text(encoding="utf-8") != text
    assert rep.main(["--check", "--out", str(edited)]) == 1


def test_a_changed_result_file_changes_the_page(results: Path):
    path = results / "kernels" / "cpu-s6b.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    d["rows"][0]["fwd"]["speedup"] = 9.87
    path.write_text(json.dumps(d), encoding="utf-8")
    text = rep.generate(results)
    assert text != PAGE.read_text(encoding="utf-8")
    assert "| 9.87 |" in text


def test_report_objects_render_every_figure_with_command_commit_and_date(results: Path):
    (results / "serving").mkdir()
    body = {
        "command": "python bench/serve_bench.py --clients 16",
        "code": {"version": "0.2.0", "commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "machine": {"cpu": "Test CPU", "feature_set": "avx512_vnni", "flags": ["avx512_vnni"]},
        "date": "2026-12-07 20:00 UTC",
        "report": {
            "section": "Serving",
            "title": "gRPC embed throughput, 16 clients",
            "columns": ["server", "texts/s", "× peer", "p99 ms"],
            "rows": [["pairsmith int8", 1234.5, 3.26, 361], ["peer: infinity-emb", 378.9, 1.0, 1090]],
            "notes": "Side by side in one run.",
        },
    }
    (results / "serving" / "grpc.json").write_text(json.dumps(body), encoding="utf-8")
    text = rep.generate(results)
    assert "## Serving" in text and "### Serving: Test CPU · avx512_vnni" in text
    assert "- [Serving](#serving)" in text
    assert _cells(_row_of(text, "pairsmith int8", "gRPC embed throughput")) == [
        "pairsmith int8",
        "1234.5",
        "3.26",
        "361",
    ]
    assert _cells(_row_of(text, "peer: infinity-emb", "gRPC embed throughput")) == [
        "peer: infinity-emb",
        "378.9",
        "1.0",
        "1090",
    ]
    assert (
        "Command: `python bench/serve_bench.py --clients 16` · commit 0123456 · 2026-12-07 20:00 UTC" in text
    )
    assert "Side by side in one run." in text


def test_adapters_compute_the_figures_from_the_files():
    """Figures recomputed here from the raw JSON, independently of the adapters, appear in the page."""
    text = PAGE.read_text(encoding="utf-8")
    # encode bench: median pairs/s over the baseline's median
    d = json.loads((RESULTS / "cpuspeed" / "cross-cls-s6a.json").read_text(encoding="utf-8"))
    speed = d["cross"]["speed"]
    ratio = statistics.median(speed["pairsmith onnx int8 static"]) / statistics.median(
        speed["sentence-transformers predict (baseline)"]
    )
    row = _row_of(text, "pairsmith onnx int8 static", "commit 02ef2ed")
    assert f"{ratio:.2f}" in _cells(row)
    # kernels: each shape's forward speed-up
    d = json.loads((RESULTS / "kernels" / "cpu-s9-avx512.json").read_text(encoding="utf-8"))
    for r in d["rows"]:
        cells = _cells(
            _row_of(
                text, r["name"], "kernel_bench.py --repeats 7 (command line not recorded)` · commit 93cab58"
            )
        )
        assert f"{r['fwd']['speedup']:.2f}" == cells[6] and f"{r['fwd+bwd']['speedup']:.2f}" == cells[7]
    # Byte2Word: mean dev accuracy over the seeds of the longest fine-tuning budget
    accs = [
        json.loads(p.read_text(encoding="utf-8"))["dev_acc"] * 100
        for p in sorted((RESULTS / "byte2word").glob("*ft9600-bytes-s*.report.json"))
    ]
    row = _row_of(text, "bytes", "9,600 fine-tuning steps, mean ± sd")
    assert _cells(row)[2] == f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}"
    # Uni-Encoder speed: every N's speed-up of the AVX-512 run
    d = json.loads((RESULTS / "uni" / "bench-s9-dd-avx512.json").read_text(encoding="utf-8"))
    for r in d["rows"]:
        cells = _cells(_row_of(text, str(r["N"]), "cross-encoder, dailydialog-dev, model default"))
        assert cells[4] == f"{r['speedup_arrow']:.2f}"


def test_every_table_of_every_file_is_on_the_page():
    tables, _ = rep.collect(RESULTS)
    text = PAGE.read_text(encoding="utf-8")
    sources = {s for t in tables for s in t.sources}
    assert sources == {str(p.relative_to(ROOT)) for p in RESULTS.rglob("*.json")}
    for t in tables:
        for r in t.rows:
            assert "| " + " | ".join(rep.esc(c) for c in r) + " |" in text, (t.title, r)


def test_no_work_period_names_on_the_page():
    text = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"\bs\d+-|-s\d+\b|runs/s\d|session", text)


def test_unknown_files_and_bad_reports_are_refused_naming_the_file(results: Path):
    (results / "x").mkdir()
    odd = results / "x" / "odd.json"
    odd.write_text(json.dumps({"something": 1}), encoding="utf-8")
    with pytest.raises(rep.ReportError, match="odd.json: no 'report' object"):
        rep.generate(results)
    odd.write_text(
        json.dumps({"report": {"section": "S", "title": "T", "columns": ["a", "b"], "rows": [[1]]}})
    )
    with pytest.raises(rep.ReportError, match=r"odd.json: report.rows\[0\] is not a list of 2 cells"):
        rep.generate(results)
    odd.write_text(json.dumps({"report": None, "note": "raw data, no table"}), encoding="utf-8")
    assert "## Files without a table" in rep.generate(results)


def test_a_file_may_carry_several_tables(results: Path):
    table = {"section": "Indexes", "columns": ["index", "recall@10"], "notes": ""}
    body = {
        "command": "python bench/search_bench.py --sizes 1000",
        "code": "abcdef0123456789",
        "machine": {"cpu": "Test CPU", "feature_set": "avx2"},
        "date": "2026-12-07",
        "report": [
            {**table, "title": "Recall at 1k vectors", "rows": [["HNSW32", 0.987]]},
            {**table, "title": "Recall at 10k vectors", "rows": [["HNSW32", 0.912]]},
        ],
    }
    (results / "search.json").write_text(json.dumps(body), encoding="utf-8")
    text = rep.generate(results)
    assert _cells(_row_of(text, "HNSW32", "Recall at 1k vectors")) == ["HNSW32", "0.987"]
    assert _cells(_row_of(text, "HNSW32", "Recall at 10k vectors")) == ["HNSW32", "0.912"]
    assert (
        text.count("Command: `python bench/search_bench.py --sizes 1000` · commit abcdef0 · 2026-12-07") == 2
    )
