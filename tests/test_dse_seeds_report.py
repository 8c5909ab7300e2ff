"""bench/dse_seeds_report.py: the seed aggregation behind the issue-13 DSE table (fake report.json files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "dse_seeds_report", Path(__file__).resolve().parents[1] / "bench" / "dse_seeds_report.py"
)
rep = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rep)


def _write(
    runs: Path, alpha: str, seed: int, student: tuple[float, float], teacher=(90.0, 88.0), start=(84.0, 86.7)
):
    d = runs / f"dse-x-a{alpha}-s{seed}"
    d.mkdir(parents=True)
    row = lambda dv, tv: {"dev": {"spearman": dv}, "test": {"spearman": tv}}  # noqa: E731
    body = {
        "metric": "spearman",
        "rows": {"teacher": row(*teacher), "student_start": row(*start), "student": row(*student)},
    }
    (d / "report.json").write_text(json.dumps(body))


def _runs(tmp_path: Path, dse_test=(87.0, 88.0, 89.0), base_test=(87.5, 87.5, 87.5)) -> Path:
    for seed, dt, bt in zip((1, 2, 3), dse_test, base_test, strict=True):
        _write(tmp_path, "0.5", seed, (91.0 + seed, dt))  # selection column differs from the test column
        _write(tmp_path, "0", seed, (90.0, bt))
    return tmp_path


def test_summary_is_mean_sample_sd_min_max():
    s = rep.summarize([87.0, 88.0, 89.0])
    assert s == {"mean": 88.0, "sd": 1.0, "min": 87.0, "max": 89.0, "n": 3}  # ddof 1: sd 1.0, not 0.816
    assert rep.summarize([5.0])["sd"] == 0.0
    with pytest.raises(ValueError):
        rep.summarize([])


def test_columns_rows_and_goals_are_read_from_the_right_fields(tmp_path):
    data = rep.collect(_runs(tmp_path), "dse-x", [1, 2, 3], ["0.5", "0"])
    assert data["missing"] == [] and data["fixed_rows_agree"]
    assert data["rows"]["dse_a0.5"]["test"] == [87.0, 88.0, 89.0]
    assert data["rows"]["dse_a0.5"]["dev"] == [92.0, 93.0, 94.0]  # selection split kept apart from test
    assert data["rows"]["labels_only"]["test"] == [87.5] * 3
    g = rep.goals(data, "dse_a0.5")
    # DSE mean 88.0 vs teacher 88.0 -> within 5%; above labels-only on the mean (88.0 > 87.5) but not every seed
    assert g["within_5pct_of_teacher"] and g["gap_to_teacher_pct"] == pytest.approx(0.0)
    assert g["above_undistilled"] and g["above_labels_only_mean"]
    assert g["dse_minus_labels_only_per_seed"] == {1: -0.5, 2: 0.5, 3: 1.5}
    assert not g["above_labels_only_every_seed"]
    lines = rep.table(data, "dse_a0.5")
    assert "**88.00 ± 1.00 [87.00, 89.00]**" in lines[4]  # the DSE row's test cell
    assert "| teacher (cross-encoder) | 6 | 90.00 | **88.00** |" in lines[5]


def test_goal_not_reached_when_below_a_baseline_or_far_from_the_teacher(tmp_path):
    data = rep.collect(_runs(tmp_path, dse_test=(80.0, 81.0, 82.0)), "dse-x", [1, 2, 3], ["0.5", "0"])
    g = rep.goals(data, "dse_a0.5")
    assert not g["within_5pct_of_teacher"]  # 81.0 < 0.95 * 88.0 = 83.6
    assert not g["above_undistilled"] and not g["above_labels_only_mean"]


def test_missing_runs_and_disagreeing_fixed_rows_are_reported(tmp_path):
    _write(tmp_path, "0.5", 1, (91.0, 87.0))
    _write(tmp_path, "0", 1, (90.0, 87.0), teacher=(90.0, 87.9))  # another teacher
    data = rep.collect(tmp_path, "dse-x", [1, 2], ["0.5", "0"])
    assert len(data["missing"]) == 2
    assert not data["fixed_rows_agree"]


def test_committed_json_prints_the_same_table_without_the_runs(tmp_path, monkeypatch, capsys):
    runs = _runs(tmp_path / "runs")
    out = tmp_path / "committed.json"
    argv = ["dse_seeds_report.py", "--runs", str(runs), "--prefix", "dse-x", "--seeds", "1", "2", "3"]
    monkeypatch.setattr("sys.argv", [*argv, "--json", str(out)])
    assert rep.main() == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"command", "code", "machine", "date", "report", "goals"} <= doc.keys()
    assert doc["report"]["section"] == "Distillation" and len(doc["report"]["rows"]) == 4
    import shutil

    shutil.rmtree(runs)  # the committed file alone regenerates the table
    monkeypatch.setattr("sys.argv", ["dse_seeds_report.py", "--from-json", str(out)])
    assert rep.main() == 0
    again = capsys.readouterr().out
    assert "88.00 ± 1.00 [87.00, 89.00]" in again
    table = [ln for ln in printed.splitlines() if ln.startswith("| ")]
    assert [ln.replace("**", "") for ln in table] == [ln for ln in again.splitlines() if ln.startswith("| ")]
