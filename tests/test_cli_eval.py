from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pairsmith.cli.main import main
from pairsmith.distill.data import DialogueSet, RetrievalSet
from pairsmith.distill.evaluation import bi_scorer, eval_response, eval_retrieval, eval_sts
from pairsmith.encoders import BiEncoder


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "eval" in out


def test_console_script_runs():
    res = subprocess.run(
        [sys.executable, "-m", "pairsmith", "eval", "sts", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--sets" in res.stdout


def test_eval_sts_on_a_file_with_json(tmp_path, tiny_bi_dir, capsys):
    f = tmp_path / "mine.tsv"
    f.write_text("a cat\ta cat\t5\na cat\ta dog\t3\nthe sun\tan invoice\t0\nred car\tred auto\t4\n")
    out = tmp_path / "res.json"
    code = main(["eval", "sts", "--model", str(tiny_bi_dir), "--sets", str(f), "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"mine", "avg"}
    assert -100 <= res["results"]["mine"] <= 100
    assert "mine" in capsys.readouterr().out


def test_eval_errors_are_one_line_with_exit_codes(tmp_path, tiny_bi_dir, capsys):
    assert main(["eval", "sts", "--model", str(tmp_path / "nope"), "--sets", "stsb-dev"]) == 3
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tzero\n")
    assert main(["eval", "sts", "--model", str(tiny_bi_dir), "--sets", str(bad)]) == 2
    assert "bad.tsv:1: score 'zero' is not a number" in capsys.readouterr().err
    assert main(["eval", "rerank", "--model", str(tiny_bi_dir), "--dataset", "nope-dev"]) == 3
    assert main(["eval", "sts", "--model", str(tiny_bi_dir), "--batch-size", "0", "--sets", str(bad)]) == 2


def test_retrieval_and_response_with_a_perfect_scorer(tiny_bi_dir):
    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu")
    # Identical query/doc texts: cosine 1.0 puts the relevant doc first for any encoder.
    docs = {f"d{i}": f"document number {i} about topic {i * 7}" for i in range(20)}
    queries = {f"q{i}": docs[f"d{i}"] for i in range(5)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(5)}
    res = eval_retrieval(RetrievalSet("t", docs, queries, qrels), enc)
    assert res.ndcg_at_10 == pytest.approx(1.0) and res.mrr_at_10 == pytest.approx(1.0)
    ds = DialogueSet("d", [["hello there"]], [["exact"]], [["other one", "third thing"]])
    rr = eval_response(ds, lambda a, b: np.array([1.0 if y == "exact" else 0.0 for y in b]))
    assert rr.r_at_1 == 1.0 and rr.mrr == 1.0
    rr = eval_response(ds, lambda a, b: np.array([0.0 if y == "exact" else 1.0 for y in b]))
    assert rr.r_at_1 == 0.0 and rr.mrr == pytest.approx(1 / 3)


@pytest.mark.data
def test_default_model_stsb_dev_integration(default_bi, shared_data):
    res = eval_sts(bi_scorer(default_bi), ["stsb-dev"], shared_data)
    # sentence-transformers gives 86.72 for all-MiniLM-L6-v2 here.
    assert res["stsb-dev"] >= 86.0, res


def _dd_lines(path, n: int):
    rows = [
        {
            "context": [f"we talk about topic {i}", f"yes topic {i} is nice"],
            "positive_responses": [f"i like topic {i} too"],
            "random_negative_responses": ["the bus is late", "blue"],
            "adversarial_negative_responses": [f"topic {i} is not a topic"],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_response_limit_evaluates_the_first_n_and_records_it(tmp_path, tiny_bi_dir, capsys):
    data = _dd_lines(tmp_path / "dd.jsonl", 5)
    out = tmp_path / "res.json"
    args = ["eval", "response", "--model", str(tiny_bi_dir), "--dataset", str(data), "--json", str(out)]
    assert main([*args, "--limit", "2"]) == 0
    res = json.loads(out.read_text())
    assert res["results"]["cases"] == 2  # one positive per context: 2 contexts, not 5
    assert res["task"] == "response:dd[:2]" and res["subset"] == {"limit": 2, "contexts": 2}
    assert "first 2 contexts only: --limit 2" in capsys.readouterr().out
    assert main(args) == 0
    assert json.loads(out.read_text())["results"]["cases"] == 5
    assert main([*args, "--limit", "0"]) == 2
    assert "--limit: must be >= 1, got 0" in capsys.readouterr().err
