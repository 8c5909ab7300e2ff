"""DSE: teacher-score cache alignment, cosine and mlp students, CLI, on tiny models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pairsmith.distill.dse import DSEConfig, DSEStudent, MLPHead, TeacherCache, run_dse, teacher_logits
from pairsmith.distill.fit_config import FitConfig
from pairsmith.distill.pairsets import pair_key
from pairsmith.errors import FailedPrecondition, InvalidInput
from tests.tiny import make_tiny_bi_encoder, make_tiny_cross_encoder

WORDS = (
    "cat dog man woman plays guitar runs park eats food sings song reads book car drives fast slow".split()
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("dse")
    rng = random.Random(1)

    def sent() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))

    rows = [(sent(), sent(), rng.choice([0, 1])) for _ in range(24)]
    (d / "train.tsv").write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    (d / "val.tsv").write_text("".join(f"{sent()}\t{sent()}\t{rng.choice([0, 1])}\n" for _ in range(12)))
    # a test split of its own (a dev/test "split" that is one file cannot show where a threshold came from)
    (d / "test.tsv").write_text("".join(f"{sent()}\t{sent()}\t{rng.choice([0, 1])}\n" for _ in range(14)))
    (d / "unlabeled.tsv").write_text("".join(f"{a}\t{b}\n" for a, b, _ in rows))
    make_tiny_bi_encoder(d / "student", seed=3)
    make_tiny_cross_encoder(d / "teacher", seed=4)
    return d


def _cfg(toy, **kw) -> DSEConfig:
    base = dict(
        teacher=str(toy / "teacher"),
        student=str(toy / "student"),
        pairs=str(toy / "train.tsv"),
        dev=str(toy / "val.tsv"),
        test=str(toy / "test.tsv"),
        fit=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32),
    )
    base.update(kw)
    return DSEConfig(**base)


def test_cache_keys_by_text_not_order(toy, tmp_path):
    from pairsmith.encoders import CrossEncoder

    ce = CrossEncoder.load(str(toy / "teacher"), device="cpu", backend="torch")
    lines = (toy / "unlabeled.tsv").read_text().splitlines()
    pairs = [tuple(x.split("\t")) for x in lines]
    calls = []

    def fn(ps):
        calls.append(len(ps))
        return teacher_logits(ce, ps, False, False)

    cache = TeacherCache(tmp_path / "c.npz", {"t": 1})
    first, n_new = cache.lookup(pairs, fn)
    assert n_new == len(set(pairs)) and calls == [len(set(pairs))]
    # shuffled input: same label for each pair, no new teacher calls
    perm = np.random.default_rng(0).permutation(len(pairs))
    shuffled, n_new = TeacherCache(tmp_path / "c.npz", {"t": 1}).lookup([pairs[i] for i in perm], fn)
    assert n_new == 0 and calls == [len(set(pairs))]
    np.testing.assert_array_equal(shuffled, first[perm])
    # and equal to scoring each pair on its own (no batch/order leakage)
    alone = np.array([teacher_logits(ce, [p], False, False)[0] for p in pairs[:5]])
    np.testing.assert_allclose(first[:5], alone, atol=1e-5)
    # the key is order-sensitive: (b, a) is another pair
    assert pair_key("a", "b") != pair_key("b", "a") and pair_key("a b", "c") != pair_key("a", "b c")
    # another teacher's cache is not reused
    other = TeacherCache(tmp_path / "c.npz", {"t": 2})
    assert other.table == {}


def test_shuffled_pair_file_trains_on_same_labels(toy, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    run_dse(_cfg(toy, dev=None, test=None), out1, device="cpu", progress=False)
    lines = (toy / "train.tsv").read_text().splitlines()
    random.Random(7).shuffle(lines)
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text("\n".join(lines) + "\n")
    run_dse(_cfg(toy, pairs=str(shuffled), dev=None, test=None), out2, device="cpu", progress=False)

    def table(out):
        with np.load(out / "teacher_cache.npz") as z:
            return dict(zip(z["keys"].tolist(), z["logits"].tolist(), strict=True))

    assert table(out1) == table(out2)


def test_cosine_student_end_to_end(toy, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "cos"
    rep = run_dse(_cfg(toy, keep_start=False), out, device="cpu", progress=False)  # always the trained one
    assert rep["metric"] == "accuracy"
    for row in ("teacher", "student_start", "student"):
        assert {"accuracy", "f1", "threshold"} <= set(rep["rows"][row]["test"]), row
    # test threshold comes from the dev set, and test accuracy is measured at it
    from pairsmith.distill.pairsets import load_pairs
    from pairsmith.distill.selection import binary_metrics

    thr = rep["rows"]["student"]["dev"]["threshold"]
    assert rep["rows"]["student"]["test"]["threshold"] == thr
    test = load_pairs(str(toy / "test.tsv"), labeled=True, dedup=False, for_training=False)
    st_scores = DSEStudent.load(out, device="cpu").score(test.s1, test.s2)
    assert rep["rows"]["student"]["test"]["accuracy"] == pytest.approx(
        binary_metrics(st_scores, test.scores, thr)["accuracy"]
    )
    assert rep["teacher_cache"]["pairs_scored"] == 24
    SentenceTransformer(str(out / "student"), device="cpu").encode(["a cat"])
    st = DSEStudent.load(out, device="cpu")
    assert st.head is None
    s = st.score(["cat runs", "dog eats"], ["cat runs", "man sings"])
    assert s.shape == (2,) and abs(s[0] - 1.0) < 1e-5
    start = DSEStudent.load(toy / "student", device="cpu").score(["cat runs"], ["dog eats"])
    assert abs(float(start[0]) - float(st.score(["cat runs"], ["dog eats"])[0])) > 1e-5  # it trained
    # resume of a finished run does no work and gives the same report
    again = run_dse(_cfg(toy, keep_start=False), out, resume=True, device="cpu", progress=False)
    assert again["rows"] == rep["rows"]


def test_mlp_head_student(toy, tmp_path):
    out = tmp_path / "mlp"
    rep = run_dse(_cfg(toy, head="mlp", alpha=1.0, test=None), out, device="cpu", progress=False)
    assert (out / "student" / "dse_head" / "head.safetensors").exists()
    st = DSEStudent.load(out / "student", device="cpu")
    assert isinstance(st.head, MLPHead)
    s = st.score(["cat runs", "dog eats"], ["man sings", "car drives"])
    import torch

    u = st.encoder.encode(["cat runs", "dog eats"], normalize=False).vectors
    v = st.encoder.encode(["man sings", "car drives"], normalize=False).vectors
    with torch.inference_mode():
        manual = torch.sigmoid(st.head(torch.from_numpy(u), torch.from_numpy(v))).numpy()
    np.testing.assert_allclose(s, manual, atol=1e-6)  # sigmoid of the head's logit over [u, v, u*v, |u-v|]
    assert "dev" in rep["rows"]["student"]


def test_labels_only_and_errors(toy, tmp_path):
    rep = run_dse(_cfg(toy, alpha=0.0, dev=None, test=None), tmp_path / "lab", device="cpu", progress=False)
    assert "teacher" not in rep["rows"]  # alpha 0 and no eval sets: the teacher is never run
    with pytest.raises(InvalidInput, match="alpha"):
        _cfg(toy, alpha=1.5)
    with pytest.raises(InvalidInput, match="head"):
        _cfg(toy, head="dot")
    with pytest.raises(InvalidInput, match="labels only"):
        run_dse(_cfg(toy, pairs=str(toy / "unlabeled.tsv"), use_labels=False, alpha=0.0), tmp_path / "x")
    with pytest.raises(FailedPrecondition, match="--resume"):
        run_dse(_cfg(toy, alpha=0.0, dev=None, test=None), tmp_path / "lab", device="cpu", progress=False)


def test_unlabeled_pairs_teacher_only(toy, tmp_path):
    rep = run_dse(
        _cfg(toy, pairs=str(toy / "unlabeled.tsv"), use_labels=False, alpha=1.0, metric="accuracy"),
        tmp_path / "u",
        device="cpu",
        progress=False,
    )
    assert rep["train_pairs"] == 24 and rep["fit"]["steps"] == 3


def test_cli_dse(toy, tmp_path, capsys):
    from pairsmith.cli.main import main

    out = tmp_path / "cli"
    argv = ["distill", "dse", "--teacher", str(toy / "teacher"), "--student", str(toy / "student"),
            "--pairs", str(toy / "train.tsv"), "--dev", str(toy / "val.tsv"), "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["rows"]) == {"teacher", "student_start", "student"}
    assert json.loads((out / "config.json").read_text())["kind"] == "dse"
    # gold + unlabeled, reported sets, a shared teacher cache, and the no-teacher control
    extra = ["--gold-limit", "10", "--unlabeled", str(toy / "unlabeled.tsv"), "--eval-sets", str(toy / "test.tsv"),
             "--silver-weight", "0.5", "--teacher-cache", str(tmp_path / "cache.npz")]  # fmt: skip
    argv2 = [
        *argv[: argv.index("--out")],
        *extra,
        "--out",
        str(tmp_path / "cli2"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv2) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"]["student"]["eval"][str(toy / "test.tsv")] is not None
    assert printed["unlabeled"]["used"] == 14 and printed["unlabeled"]["dropped_overlap"]["gold pairs"] == 10
    assert (tmp_path / "cache.npz").exists() and (tmp_path / "cache.start.json").exists()
    argv3 = [a if a != str(toy / "teacher") else "student" for a in argv2]
    argv3[argv3.index("--teacher-cache") + 1] = str(tmp_path / "self.npz")
    argv3[argv3.index("--out") + 1] = str(tmp_path / "cli3")
    assert main(argv3) == 0


# --------------------------------------------------------------------------- gold + unlabeled, controls, never worse


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" {i}" for i in range(n)]


def test_gold_limit_unlabeled_silver_rows_and_overlap(toy, tmp_path):
    """--gold-limit takes a seeded subset; --unlabeled pairs become silver rows (teacher term only),
    minus those found in the gold or the selection/reported sets, and the overlap is reported."""
    dev_lines = (toy / "val.tsv").read_text().splitlines()
    fresh = _sentences(20, 5)
    unl = [f"{fresh[i]}\t{fresh[i + 10]}" for i in range(10)]
    unl += ["\t".join(x.split("\t")[:2]).upper() for x in dev_lines[:3]]  # dev pairs, other casing
    gold_lines = (toy / "train.tsv").read_text().splitlines()
    unl += ["\t".join(gold_lines[0].split("\t")[:2][::-1])]  # a training pair in the other order
    (tmp_path / "unl.tsv").write_text("\n".join(unl) + "\n")
    cfg = _cfg(toy, gold_limit=24, unlabeled=str(tmp_path / "unl.tsv"), alpha=0.5, silver_weight=2.0)
    rep = run_dse(cfg, tmp_path / "u", device="cpu", progress=False)
    assert rep["train_pairs"] == 24
    assert rep["unlabeled"]["given"] == 14 and rep["unlabeled"]["used"] == 10
    assert rep["unlabeled"]["dropped_overlap"][str(toy / "val.tsv")] == 3
    assert rep["unlabeled"]["dropped_overlap"]["gold pairs"] == 1
    assert rep["overlap"][str(toy / "val.tsv")]["silver"] == 0.0
    # the silver rows are trained on: every epoch sees gold + silver, the teacher scored them all
    assert rep["fit"]["examples"] == 24 + 10
    assert rep["teacher_cache"]["pairs_scored"] == 34
    assert {"start_score", "best_score", "improved"} <= set(rep)
    small = run_dse(
        _cfg(toy, gold_limit=5, alpha=0.0, dev=None, test=None), tmp_path / "g", device="cpu", progress=False
    )
    assert small["train_pairs"] == 5 and small["fit"]["examples"] == 5
    with pytest.raises(InvalidInput, match="alpha"):
        _cfg(toy, unlabeled=str(tmp_path / "unl.tsv"), alpha=0.0)


def test_silver_weight_scales_the_teacher_term_of_silver_rows():
    import torch

    from pairsmith.distill.losses import DSELoss

    s = torch.tensor([0.5, 0.5])
    gold = torch.tensor([1.0, float("nan")])
    t = torch.tensor([0.0, 0.0])  # sigmoid 0.5: no teacher error on either row
    t_far = torch.tensor([0.0, 10.0])  # the silver row's teacher says ~1
    base = DSELoss(0.5, silver_weight=1.0)
    assert float(base(s, gold, t)) == pytest.approx(0.5 * 0.25 / 2)
    w1, w3 = DSELoss(0.5, silver_weight=1.0)(s, gold, t_far), DSELoss(0.5, silver_weight=3.0)(s, gold, t_far)
    silver_err = (0.5 - float(torch.sigmoid(torch.tensor(10.0)))) ** 2
    assert float(w3) - float(w1) == pytest.approx(2 * silver_err / 2, rel=1e-5)
    with pytest.raises(InvalidInput, match="silver"):
        DSELoss(0.5, silver_weight=-1.0)


def test_no_teacher_control_uses_the_start_student(toy, tmp_path):
    """--teacher student: the student's own start labels the silver pairs (the control arm)."""
    fresh = _sentences(16, 9)
    (tmp_path / "unl.tsv").write_text("".join(f"{fresh[i]}\t{fresh[i + 8]}\n" for i in range(8)))
    rep = run_dse(
        _cfg(toy, teacher="student", unlabeled=str(tmp_path / "unl.tsv"), test=None, metric="spearman"),
        tmp_path / "self",
        device="cpu",
        progress=False,
    )
    # the "teacher" row is the start student's own cosine: same ranking, same dev Spearman
    assert rep["rows"]["teacher"]["dev"]["spearman"] == pytest.approx(
        rep["rows"]["student_start"]["dev"]["spearman"], abs=1e-6
    )
    assert rep["fit"]["examples"] == 24 + 8 and "teacher_selected_on" not in rep


def _embeddings(folder, texts):
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load(str(folder), device="cpu").encode(texts, normalize=False).vectors


def start_labelled_dev(student, path, n: int = 16, seed: int = 11):
    """A selection set scored by the start model itself: nothing trained can rank it better."""
    from pairsmith.encoders import BiEncoder

    sents = _sentences(2 * n, seed)
    a, b = sents[:n], sents[n:]
    cos = BiEncoder.load(str(student), device="cpu").similarity(a, b)
    path.write_text("".join(f"{x}\t{y}\t{float(c):.6f}\n" for x, y, c in zip(a, b, cos, strict=True)))
    return path


def test_never_worse_than_the_start(toy, tmp_path, capsys):
    """A fit that cannot beat the start on the selection set exports the start unchanged, says so,
    reports improved false, and --require-improvement turns that into exit code 3."""
    from pairsmith.cli.main import main
    from pairsmith.distill.selection import EXIT_NOT_IMPROVED

    dev = start_labelled_dev(toy / "student", tmp_path / "dev.tsv")
    texts = ["cat runs fast", "a man plays guitar", "dog eats food"]
    argv = ["distill", "dse", "--teacher", str(toy / "teacher"), "--student", str(toy / "student"),
            "--pairs", str(toy / "train.tsv"), "--dev", str(dev), "--metric", "spearman", "--score-range", "0,1",
            "--epochs", "2", "--lr", "1e-2", "--batch-size", "8", "--max-length", "32",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["improved"] is False and rep["best_score"] == rep["start_score"] >= rep["trained_score"]
    assert rep["fit"]["history"] and rep["fit"]["best_step"] == 0
    assert "nothing trained beat the start model" in capsys.readouterr().err
    np.testing.assert_array_equal(
        _embeddings(tmp_path / "a" / "student", texts), _embeddings(toy / "student", texts)
    )
    assert main([*argv, "--out", str(tmp_path / "b"), "--require-improvement"]) == EXIT_NOT_IMPROVED


# --------------------------------------------------------------------------- augmentation (silver pairs)


def test_augment_knn_pairs_nearest_and_excluded():
    from pairsmith.distill.augment import Sampling, augment_pairs
    from pairsmith.distill.data import PairSet

    # four sentences on a line: x0 -- x1 ---- x2 -- x3 (vectors chosen by hand)
    vec = {"s0": [1.0, 0.0], "s1": [0.95, 0.31], "s2": [0.31, 0.95], "s3": [0.0, 1.0]}
    train = PairSet("t", ["s0", "s2"], ["s3", "s1"], np.array([1.0, 0.0], dtype=np.float32))

    def encode(texts):
        return np.array([vec[t] for t in texts])

    aug = augment_pairs(train, Sampling.KNN, 1, encode=encode)
    got = {frozenset(p) for p in aug.pairs}
    # nearest neighbours: s0<->s1 and s2<->s3 (each unordered pair once); no training pair, no self pair
    assert got == {frozenset({"s0", "s1"}), frozenset({"s2", "s3"})} and len(aug) == 2
    assert aug.scores is None
    # pairs of the excluded (dev/test) set are skipped in either order
    aug2 = augment_pairs(train, Sampling.KNN, 1, encode=encode, exclude=[("s1", "s0")])
    assert {frozenset(p) for p in aug2.pairs} == {frozenset({"s2", "s3"})}
    # k=3 reaches every other sentence; training pairs (either order) still never come back
    aug3 = augment_pairs(train, Sampling.KNN, 3, encode=encode)
    assert {frozenset(p) for p in aug3.pairs}.isdisjoint({frozenset({"s0", "s3"}), frozenset({"s2", "s1"})})
    assert len(aug3) == 4  # 6 unordered pairs of 4 sentences minus the 2 training pairs


def test_augment_random_and_errors():
    from pairsmith.distill.augment import Sampling, augment_pairs
    from pairsmith.distill.data import PairSet

    s = [f"sentence {i}" for i in range(40)]
    train = PairSet("t", s[:20], s[20:])
    aug = augment_pairs(train, Sampling.RANDOM, 2, seed=1)
    # 80 draws; a few repeat an unordered pair or hit a training pair (seed 1: measured 77)
    assert len(aug) >= 70 and all(a != b for a, b in aug.pairs)
    keys = {frozenset(p) for p in aug.pairs}
    assert len(keys) == len(aug)  # each unordered pair once
    assert keys.isdisjoint({frozenset(p) for p in train.pairs})
    assert augment_pairs(train, Sampling.RANDOM, 2, seed=1).pairs == aug.pairs  # seeded
    with pytest.raises(InvalidInput, match="augment-k"):
        augment_pairs(train, Sampling.RANDOM, 0)
    with pytest.raises(InvalidInput, match="encoder"):
        augment_pairs(train, Sampling.KNN, 1)
    with pytest.raises(InvalidInput, match="fewer than 2"):
        augment_pairs(PairSet("one", ["a"], ["a"]), Sampling.RANDOM, 1)


def test_dse_with_knn_augmentation(toy, tmp_path):
    out = tmp_path / "aug"
    cfg = _cfg(toy, augment="knn", augment_k=2, test=None)
    rep = run_dse(cfg, out, device="cpu", progress=False)
    n_aug = rep["augment"]["pairs"]
    assert n_aug > 0 and rep["augment"]["sampling"] == "knn"
    assert rep["teacher_cache"]["pairs_scored"] == 24 + n_aug  # silver pairs are teacher-labelled
    saved_pairs = json.loads((out / "augment_pairs.json").read_text())
    with np.load(out / "teacher_cache.npz") as z:
        table = dict(zip(z["keys"].tolist(), z["logits"].tolist(), strict=True))
    silver = [table[pair_key(a, b)] for a, b in zip(saved_pairs["s1"], saved_pairs["s2"], strict=True)]
    expect = float(np.mean(1 / (1 + np.exp(-np.array(silver)))))
    # the report rounds to 4 decimals
    assert rep["teacher_cache"]["silver_teacher_score"]["mean"] == pytest.approx(expect, abs=1e-4)
    assert rep["fit"]["examples"] == 24 + n_aug
    saved = json.loads((out / "augment_pairs.json").read_text())
    assert len(saved["s1"]) == n_aug
    again = run_dse(cfg, out, resume=True, device="cpu", progress=False)
    assert again["augment"] == rep["augment"] and again["rows"] == rep["rows"]
    with pytest.raises(InvalidInput, match="alpha > 0"):
        run_dse(_cfg(toy, augment="knn", alpha=0.0), tmp_path / "bad", device="cpu", progress=False)
    with pytest.raises(InvalidInput, match="augment"):
        _cfg(toy, augment="bm25")
    with pytest.raises(InvalidInput, match="augment-k"):
        _cfg(toy, augment="knn", augment_k=0)


# --------------------------------------------------------------------------- thresholds, seeds, resume


def test_test_threshold_is_chosen_on_dev_not_test():
    """Dev and test whose own best thresholds differ: the test row must use dev's."""
    from pairsmith.distill.data import PairSet
    from pairsmith.distill.dse import _rows_eval
    from pairsmith.distill.selection import PairMetric, binary_metrics

    dev = PairSet("dev", ["a"] * 6, ["b"] * 6, np.array([0, 0, 0, 1, 1, 1], dtype=np.float32))
    test = PairSet("test", ["c"] * 6, ["d"] * 6, np.array([0, 1, 1, 1, 1, 1], dtype=np.float32))
    s_dev = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    s_test = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])  # its own best threshold is ~0.15, dev's ~0.5
    row = _rows_eval(lambda ps: s_dev if ps is dev else s_test, dev, test, {}, PairMetric.ACCURACY)
    thr = row["dev"]["threshold"]
    assert 0.3 < thr < 0.7 and row["test"]["threshold"] == thr
    assert row["test"]["accuracy"] == pytest.approx(100 * 3 / 6)  # 0.4 and 0.3 wrong, 0.1 right, ...
    assert binary_metrics(s_test, test.scores)["accuracy"] > row["test"]["accuracy"]  # test-tuned is higher


def test_supervised_test_threshold_from_dev(toy, tmp_path):
    from pairsmith.distill.supervised import TrainCrossConfig, train_cross_encoder

    cfg = TrainCrossConfig(
        data=str(toy / "train.tsv"),
        init=str(toy / "student"),
        dev=str(toy / "val.tsv"),
        test=str(toy / "test.tsv"),
        fit=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32),
    )
    rep = train_cross_encoder(cfg, tmp_path / "t", device="cpu", progress=False)
    assert rep["metric"] == "accuracy" and rep["selected_on"] == str(toy / "val.tsv")
    assert rep["test"]["threshold"] == rep["dev"]["threshold"]
    from pairsmith.distill.pairsets import load_pairs
    from pairsmith.distill.selection import binary_metrics, cross_scores
    from pairsmith.encoders import CrossEncoder

    test = load_pairs(str(toy / "test.tsv"), labeled=True, dedup=False, for_training=False)
    ce = CrossEncoder.load(str(tmp_path / "t" / "model"), device="cpu", backend="torch")
    s = cross_scores(ce.st_model, ce.source, test.s1, test.s2)
    assert rep["test"]["accuracy"] == pytest.approx(
        binary_metrics(s, test.scores, rep["dev"]["threshold"])["accuracy"]
    )


def _weights(folder):
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def test_mlp_student_is_seeded_and_a_resumed_run_equals_an_uninterrupted_one(toy, tmp_path, monkeypatch):
    import torch

    from pairsmith.distill import dse

    cfg = _cfg(toy, head="mlp", alpha=0.5, test=None)
    run_dse(cfg, tmp_path / "a", device="cpu", progress=False)
    torch.manual_seed(12345)  # whatever ran before must not matter
    torch.rand(7)
    run_dse(cfg, tmp_path / "b", device="cpu", progress=False)
    a, b = _weights(tmp_path / "a" / "student"), _weights(tmp_path / "b" / "student")
    assert a.keys() == b.keys() and any("dse_head" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # killed during the fit (after the teacher step), then resumed: the same student
    real = dse.fit_dse

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(dse, "fit_dse", killed)
    with pytest.raises(KeyboardInterrupt):
        run_dse(cfg, tmp_path / "c", device="cpu", progress=False)
    monkeypatch.setattr(dse, "fit_dse", real)
    run_dse(cfg, tmp_path / "c", resume=True, device="cpu", progress=False)
    c = _weights(tmp_path / "c" / "student")
    for k in a:
        np.testing.assert_array_equal(a[k], c[k], err_msg=k)
    # another seed gives another head
    other = run_dse(
        _cfg(
            toy,
            head="mlp",
            alpha=0.5,
            test=None,
            fit=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32, seed=7),
        ),
        tmp_path / "d",
        device="cpu",
        progress=False,
    )
    assert other["fit"]["steps"] == 3
    d = _weights(tmp_path / "d" / "student")
    head_keys = [k for k in a if "dse_head" in k]
    assert any(not np.array_equal(a[k], d[k]) for k in head_keys)


def test_resume_refuses_a_teacher_retrained_in_place(toy, tmp_path, monkeypatch):
    import shutil

    from pairsmith.distill import dse

    teacher = tmp_path / "teacher"
    shutil.copytree(toy / "teacher", teacher)
    cfg = _cfg(toy, teacher=str(teacher), test=None)

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(dse, "fit_dse", killed)
    with pytest.raises(KeyboardInterrupt):
        run_dse(cfg, tmp_path / "run", device="cpu", progress=False)
    shutil.rmtree(teacher)
    make_tiny_cross_encoder(teacher, seed=99)  # "retrained" in place: same path, other weights
    with pytest.raises(FailedPrecondition, match="another teacher"):
        run_dse(cfg, tmp_path / "run", resume=True, device="cpu", progress=False)
