from __future__ import annotations

import json

import numpy as np
import pytest

from pairsmith.distill import data
from pairsmith.errors import DataFormatError, NotFound


def write(p, text):
    p.write_text(text, encoding="utf-8")
    return p


def test_stsb_layout_extra_columns_and_no_quoting(tmp_path):
    f = write(
        tmp_path / "sts.csv",
        'g\tf\t2012\t0001\t4.5\tA "quoted" man.\tA man.\ng\tf\t2012\t0002\t1.0\tx\ty\textra\tcols\n',
    )
    ps = data.read_sts_tab(f)
    assert ps.s1 == ['A "quoted" man.', "x"]
    assert ps.s2 == ["A man.", "y"]
    np.testing.assert_allclose(ps.scores, [4.5, 1.0])


def test_companion_layout(tmp_path):
    f = write(tmp_path / "c.csv", "OnWN\t2012test\t0000\t3.25\tleft one\tright one\n")
    ps = data.read_sts_tab(f)
    assert ps.pairs == [("left one", "right one")] and ps.scores[0] == pytest.approx(3.25)


def test_sts_bad_score_names_line(tmp_path):
    f = write(tmp_path / "bad.csv", "g\tf\t2012\t1\t4.0\ta\tb\ng\tf\t2012\t2\tfour\tc\td\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: score 'four'"):
        data.read_sts_tab(f)


def test_sts_too_few_fields(tmp_path):
    f = write(tmp_path / "bad.csv", "g\tf\t2012\t1\t4.0\ta\tb\ng\tf\t2012\t2\t3.0\n")
    with pytest.raises(DataFormatError, match=r":2: expected at least 7"):
        data.read_sts_tab(f)


def test_senteval_year_drops_blank_gold_and_skips_orphans(tmp_path):
    d = tmp_path / "STS99"
    d.mkdir()
    write(d / "STS.input.news.txt", "a1\tb1\na2\tb2\na3\tb3\n")
    write(d / "STS.gs.news.txt", "5\n\n1.5\n")
    write(d / "STS.input.nogold.txt", "x\ty\n")
    write(d / "STS.gs.ALL.txt", "1\n")
    ps = data.read_senteval_year(d)
    assert ps.pairs == [("a1", "b1"), ("a3", "b3")]
    np.testing.assert_allclose(ps.scores, [5.0, 1.5])


def test_senteval_length_mismatch(tmp_path):
    d = tmp_path / "STS98"
    d.mkdir()
    write(d / "STS.input.x.txt", "a\tb\nc\td\n")
    write(d / "STS.gs.x.txt", "1\n")
    with pytest.raises(DataFormatError, match="1 gold lines for 2 input lines"):
        data.read_senteval_year(d)


def test_sick(tmp_path):
    f = write(
        tmp_path / "SICK.txt",
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\tA\tB\t4.5\tNEUTRAL\n",
    )
    ps = data.read_sick(f)
    assert ps.pairs == [("A", "B")] and ps.scores[0] == pytest.approx(4.5)
    bad = write(tmp_path / "SICK2.txt", "pair_ID\tsentence_A\n1\tA\n")
    with pytest.raises(DataFormatError, match="header lacks"):
        data.read_sick(bad)


def test_generic_pairs_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "p.tsv", "s1\ts2\tscore\na\tb\t0.5\nc\td\t1\n")
    assert data.read_pair_file(tsv).scores.tolist() == [0.5, 1.0]
    unl = write(tmp_path / "u.tsv", "a\tb\nc\td\n")
    assert data.read_pair_file(unl).scores is None
    js = write(tmp_path / "p.jsonl", json.dumps({"s1": "a", "s2": "b", "score": 1}) + "\n\n")
    assert data.read_pair_file(js).pairs == [("a", "b")]


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("e.tsv", "", "no pairs found"),
        ("m.tsv", "a\tb\t1\nc\td\n", "some pairs have a score"),
        ("f.tsv", "a\tb\tc\td\n", r"f.tsv:1: expected 's1 TAB s2"),
        ("j.jsonl", '{"s1": "a"}\n', r"j.jsonl:1: field 's2' missing"),
        ("k.jsonl", '{"s1": "a", "s2": "b"}\n{bad json\n', r"k.jsonl:2: invalid JSON"),
        ("s.jsonl", '{"s1": "a", "s2": "b", "score": "high"}\n', "must be a number"),
        ("n.tsv", "a\tb\tnan\n", "not finite"),
    ],
)
def test_generic_pairs_errors(tmp_path, name, text, match):
    with pytest.raises(DataFormatError, match=match):
        data.read_pair_file(write(tmp_path / name, text))


def test_not_utf8(tmp_path):
    f = tmp_path / "latin.tsv"
    f.write_bytes(b"caf\xe9\tb\n")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        data.read_pair_file(f)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(NotFound, match="not a known name"):
        data.load_sts_set("sts99", root=tmp_path)
    with pytest.raises(NotFound, match="PAIRSMITH_DATA"):
        data.load_sts_set("stsb-dev", root=tmp_path)


def test_mrpc(tmp_path):
    f = write(
        tmp_path / "m.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA\tB\n0\t3\t4\tC\tD\n"
    )
    ps = data.read_mrpc(f)
    assert ps.scores.tolist() == [1.0, 0.0]
    with pytest.raises(DataFormatError, match=":2:"):
        data.read_mrpc(
            write(tmp_path / "b.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\nyes\t1\t2\tA\tB\n")
        )


def test_detect_layout(tmp_path):
    assert data.read_pair_path(write(tmp_path / "x.csv", "g\tf\t2012\t1\t4.0\ta\tb\n")).scores[0] == 4.0
    sick = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\tA\tB\t2\n"
    assert data.read_pair_path(write(tmp_path / "s.txt", sick)).scores[0] == 2.0


def test_nfcorpus_and_beir(tmp_path):
    nf = tmp_path / "nf"
    nf.mkdir()
    write(nf / "dev.docs", "D1\tdoc one\nD2\tdoc two\n")
    write(nf / "dev.titles.queries", "Q1\tquery one\nQ2\tno qrels\n")
    write(nf / "dev.3-2-1.qrel", "Q1\t0\tD1\t3\n")
    ds = data.read_nfcorpus(nf)
    assert ds.queries == {"Q1": "query one"} and ds.qrels == {"Q1": {"D1": 3}}
    write(nf / "dev.3-2-1.qrel", "Q1 0 D1\n")
    with pytest.raises(DataFormatError, match=r"dev.3-2-1.qrel:1"):
        data.read_nfcorpus(nf)
    be = tmp_path / "beir"
    (be / "qrels").mkdir(parents=True)
    write(be / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "body"}\n')
    write(be / "queries.jsonl", '{"_id": "q1", "text": "q"}\n')
    write(be / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    ds = data.load_retrieval_set(str(be))
    assert ds.docs == {"d1": "T body"} and ds.qrels == {"q1": {"d1": 1}}


def test_answer_selection_drops_questions_without_positive(tmp_path):
    w = write(
        tmp_path / "w.tsv",
        "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n"
        "Q1\tq one\tD\tT\tS0\tans a\t0\nQ1\tq one\tD\tT\tS1\tans b\t1\nQ2\tq two\tD\tT\tS2\tans c\t0\n",
    )
    ds = data.read_wikiqa(w)
    assert list(ds.queries.values()) == ["q one"]
    (qid,) = ds.queries
    assert [ds.docs[d] for d in ds.candidates[qid]] == ["ans a", "ans b"]
    t = write(tmp_path / "t.csv", 'qtext,label,atext\nq,1,"a, with comma"\nq,0,b\n')
    ds = data.read_trecqa(t)
    assert sorted(ds.docs.values()) == ["a, with comma", "b"]
    with pytest.raises(DataFormatError, match="label must be 0/1"):
        data.read_trecqa(write(tmp_path / "u.csv", "qtext,label,atext\nq,yes,a\n"))


def test_dailydialog(tmp_path):
    obj = {
        "context": ["hi", "hello"],
        "positive_responses": ["p"],
        "random_negative_responses": ["r1", "r2"],
        "adversarial_negative_responses": ["a1"],
    }
    ds = data.read_dailydialog_pp(write(tmp_path / "d.json", json.dumps(obj) + "\n"))
    assert ds.negatives == [["r1", "r2", "a1"]]
    obj["positive_responses"] = []
    with pytest.raises(DataFormatError, match=r"d2.json:1: field 'positive_responses'"):
        data.read_dailydialog_pp(write(tmp_path / "d2.json", json.dumps(obj) + "\n"))


@pytest.mark.data
def test_real_sts_sets_have_expected_sizes(shared_data):
    sizes = {n: len(data.load_sts_set(n, shared_data)) for n in data.STS7}
    # SentEval's published counts for the 7-task STS evaluation.
    assert sizes == {
        "sts12": 3108,
        "sts13": 1500,
        "sts14": 3750,
        "sts15": 3000,
        "sts16": 1186,
        "stsb-dev": 1500,
        "sickr-dev": 500,
    }


def test_byte_order_mark_is_not_data(tmp_path):
    # The published MRPC train/test files start with a UTF-8 BOM.
    f = tmp_path / "bom.tsv"
    f.write_bytes(b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA\tB\n")
    assert data.read_mrpc(f).pairs == [("A", "B")]


def test_overlap_covers_every_known_evaluation_set(tmp_path):
    from pairsmith.distill.pairsets import KNOWN_EVAL_SETS, overlap

    stsb = tmp_path / "sts/stsbenchmark"
    stsb.mkdir(parents=True)
    write(stsb / "sts-dev.csv", "g\tf\t2012\t0001\t4.5\tdev left\tdev right\n")
    sick = tmp_path / "sts/sick"
    sick.mkdir(parents=True)
    write(
        sick / "SICK_trial.txt",
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\tSick left.\tSick right.\t4.0\n"
        "2\tother a\tother b\t2.0\n",
    )
    # the pool holds one SICK trial pair (other order, other casing) and nothing of STS-B dev
    pool = data.PairSet("pool", ["sick RIGHT", "x"], ["sick left", "y"])
    ov = overlap(pool, ["stsb-dev"], tmp_path)
    assert ov.per_set == {"stsb-dev": 0.0} and ov.setting == "inductive"  # what the run reports on
    d = ov.as_dict()
    assert d["known_eval_pairs_in_pool"] == {"stsb-dev": 0.0, "sickr-dev": 0.5}
    assert d["transductive_for"] == ["sickr-dev"]  # a set the run did not name is not held-out
    assert set(d["known_unavailable"]) == set(KNOWN_EVAL_SETS) - {"stsb-dev", "sickr-dev"}


@pytest.mark.data
def test_sts_all_pool_count_and_overlap_with_every_known_set(shared_data):
    from pairsmith.distill.pairsets import load_pairs, overlap

    pool = load_pairs("sts-all", shared_data)
    assert len(pool) == 19103  # distinct pairs on normalised text (29,575 strings before)
    ov = overlap(pool, ["stsb-dev"], shared_data)
    assert set(ov.as_dict()["transductive_for"]) >= {"sts12", "sts13", "sts14", "sts15", "sts16", "sickr-dev"}
