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
    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
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


# --------------------------------------------------------------------------- eval classify

CLS_ROWS = [
    ("the film is a charming and funny ride", 1),
    ("a dull , tedious mess of a movie", 0),
    ("one of the best pictures of the year", 1),
    ("it never finds its footing and drags on", 0),
    ("warm performances carry the simple story", 1),
    ("the plot is thin and the jokes fall flat", 0),
]


@pytest.fixture(scope="module", params=["bytes", "wordpiece"])
def tiny_classifier(request, tmp_path_factory):
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer

    d = tmp_path_factory.mktemp(f"clf-{request.param}") / "model"
    cfg = Byte2WordTrainConfig(out=str(d), mlm_corpus="", unit=request.param, size="tiny", batch_size=6)
    tr = Trainer(cfg, n_labels=2)
    tr.finetune(CLS_ROWS, 30)
    tr.save(d)
    return tr, d


def test_eval_classify_reads_what_the_trainer_predicts(tiny_classifier, tmp_path, capsys):
    tr, d = tiny_classifier
    f = tmp_path / "set.tsv"
    f.write_text("".join(f"{t}\t{y}\n" for t, y in CLS_ROWS))
    out = tmp_path / "res.json"
    assert main(["eval", "classify", "--model", str(d), "--dataset", str(f), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "classify:set.tsv" and res["scorer"] == f"{tr.cfg.unit} classifier"
    want = tr.accuracy(CLS_ROWS)  # the trainer's own forward pass on the in-memory model
    assert res["results"]["accuracy"] == round(100 * want, 2) and res["results"]["n"] == len(CLS_ROWS)
    assert "classify:set.tsv" in capsys.readouterr().out
    # a flipped label set scores 100 - accuracy: the labels are read, not ignored
    flipped = tmp_path / "flipped.tsv"
    flipped.write_text("".join(f"{t}\t{1 - y}\n" for t, y in CLS_ROWS))
    assert main(["eval", "classify", "--model", str(d), "--dataset", str(flipped), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["accuracy"] == round(100 * (1 - want), 2)


def test_word_classifier_logits_equal_the_trainers(tiny_classifier):
    import torch

    from pairsmith.distill.evaluation import WordClassifier

    tr, d = tiny_classifier
    tr.encoder.eval()
    tr.clf.eval()
    with torch.inference_mode():
        want = tr.logits([t for t, _ in CLS_ROWS]).numpy()
    got = WordClassifier(d).logits([t for t, _ in CLS_ROWS])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_eval_classify_errors(tiny_classifier, tiny_bi_dir, tmp_path, capsys):
    _, d = tiny_classifier
    f = tmp_path / "set.tsv"
    f.write_text("good film\t1\nbad film\t0\n")
    assert main(["eval", "classify", "--model", str(tiny_bi_dir), "--dataset", str(f)]) == 5
    assert "has no classifier head" in capsys.readouterr().err
    assert main(["eval", "classify", "--model", str(tmp_path / "nope"), "--dataset", str(f)]) == 3
    assert "not a model directory" in capsys.readouterr().err
    assert main(["eval", "classify", "--model", str(d), "--dataset", "no-such-set"]) == 3
    assert "not a known set (sst2-train" in capsys.readouterr().err
    assert main(["eval", "classify", "--model", str(d), "--data", "sst2-dev"]) == 2
    assert "name the set with --dataset" in capsys.readouterr().err
    three = tmp_path / "three.tsv"
    three.write_text("good film\t1\nmeh film\t2\n")
    assert main(["eval", "classify", "--model", str(d), "--dataset", str(three)]) == 2
    assert "labels [2] but the classifier outputs 0..1" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("no label\n")
    assert main(["eval", "classify", "--model", str(d), "--dataset", str(bad)]) == 2
    assert "bad.tsv:1" in capsys.readouterr().err


def test_eval_classify_refuses_heads_without_a_classifier(tiny_classifier, tmp_path, capsys):
    import shutil

    _, d = tiny_classifier
    m = tmp_path / "mlm-only"
    shutil.copytree(d, m)
    cfg = json.loads((m / "heads/config.json").read_text())
    (m / "heads/config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "classifier"}))
    f = tmp_path / "set.tsv"
    f.write_text("good film\t1\n")
    assert main(["eval", "classify", "--model", str(m), "--dataset", str(f)]) == 5
    assert "none is a classifier" in capsys.readouterr().err


@pytest.mark.data
def test_eval_classify_knows_the_sst2_sets(shared_data):
    from pairsmith.distill.byte2word_data import load_classification_set

    assert len(load_classification_set("sst2-dev", shared_data)[1]) == 872
    assert load_classification_set("advglue-sst2", shared_data)[1]
