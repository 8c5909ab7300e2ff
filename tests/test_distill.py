"""Trans-Encoder, supervised cross-encoder training and label post-processing, on tiny models."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from pairsmith.distill import trans_encoder as te
from pairsmith.distill.fit_config import FitConfig
from pairsmith.distill.labels import Combine, LabelRange, apply_range, combine, label_stats
from pairsmith.distill.pairsets import load_pairs
from pairsmith.distill.selection import binary_metrics
from pairsmith.errors import DataFormatError, FailedPrecondition, InvalidInput
from tests.tiny import make_tiny_bi_encoder

WORDS = (
    "cat dog man woman plays guitar runs park eats food sings song reads book car drives fast slow".split()
)


def _sent(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """30 unlabeled pairs, a 16-pair labeled dev file and a 12-pair eval file (scores 0-5), two tiny bi-encoders."""
    d = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)
    (d / "pairs.tsv").write_text("".join(f"{_sent(rng)}\t{_sent(rng)}\n" for _ in range(30)))
    (d / "dev.tsv").write_text(
        "".join(f"{_sent(rng)}\t{_sent(rng)}\t{rng.uniform(0, 5):.2f}\n" for _ in range(16))
    )
    (d / "other.tsv").write_text(  # a second eval set: the one the held-out average keeps
        "".join(f"{_sent(rng)}\t{_sent(rng)}\t{rng.uniform(0, 5):.2f}\n" for _ in range(12))
    )
    make_tiny_bi_encoder(d / "bi0", seed=0)
    make_tiny_bi_encoder(d / "bi1", seed=1)
    return d


def _cfg(toy, **kw) -> te.TransEncoderConfig:
    base = dict(
        pairs=str(toy / "pairs.tsv"),
        models=(str(toy / "bi0"),),
        cycles=1,
        dev=str(toy / "dev.tsv"),
        eval_sets=(str(toy / "dev.tsv"), str(toy / "other.tsv")),
        cross=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32, eval_steps=4),
        bi=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32, warmup_ratio=0.0),
        collapse_guard=False,  # random tiny models agree on nothing; the guard has tests of its own
    )
    base.update(kw)
    return te.TransEncoderConfig(**base)


# --------------------------------------------------------------------------- labels


def test_clamp_raw_minmax():
    y = np.array([-0.4, 0.0, 0.3, 1.2], dtype=np.float32)
    np.testing.assert_allclose(apply_range(y, LabelRange.CLAMP), [0.0, 0.0, 0.3, 1.0])
    np.testing.assert_allclose(apply_range(y, LabelRange.RAW), y)
    np.testing.assert_allclose(apply_range(y, LabelRange.MINMAX), [0.0, 0.25, 0.4375, 1.0], atol=1e-6)
    assert y[0] == np.float32(-0.4)  # input untouched


def test_label_stats_reports_out_of_range():
    s = label_stats(np.array([-0.5, 0.2, 0.4, 1.5]))
    assert s["n"] == 4 and s["frac_below_0"] == 0.25 and s["frac_above_1"] == 0.25
    assert sum(s["histogram"]["counts"]) == 4


def test_combine_modes():
    a = np.array([0.1, 0.5, 0.9, 0.3])
    # b orders the pairs differently (0.70 < 0.80 < 0.81) on a tighter scale, so that the mean of the
    # raw scores (order 0, 3, 1, 2: a dominates) and the mean of the ranks (order 0, 1, 3, 2) disagree
    b = np.array([0.80, 0.70, 0.99, 0.81])
    mean = combine([a, b], Combine.MEAN)
    np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-6)
    assert list(np.argsort(mean)) == [0, 3, 1, 2]
    rank = combine([a, b], Combine.RANK)
    # rank keeps the plain mean's values, reordered by the mean rank (a RANK that returns MEAN fails here)
    np.testing.assert_allclose(np.sort(rank), np.sort(mean), atol=1e-6)
    assert list(np.argsort(rank)) == [0, 1, 3, 2]
    z = combine([a, b], Combine.ZSCORE)
    # z-scores: b's tight scale counts as much as a's, so pair 1 (b's lowest) drops below pair 3
    assert abs(z.mean() - mean.mean()) < 1e-5 and abs(z.std() - mean.std()) < 1e-5
    zs = np.mean([(x - x.mean()) / x.std() for x in (a, b)], axis=0)
    assert list(np.argsort(z)) == list(np.argsort(zs)) and list(np.argsort(z)) != list(np.argsort(mean))
    np.testing.assert_allclose(combine([a], Combine.RANK), a, atol=1e-6)
    with pytest.raises(InvalidInput):
        combine([a, b[:2]])


def test_binary_metrics_threshold_is_best():
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    y = (s + rng.normal(scale=1.0, size=200) > 0).astype(float)
    m = binary_metrics(s, y)
    brute = max(((s >= t) == (y > 0.5)).mean() for t in np.concatenate([s, [s.max() + 1]]))
    assert abs(m["accuracy"] - brute * 100) < 1e-9
    fixed = binary_metrics(s, y, threshold=0.0)
    pred, gold = s >= 0.0, y > 0.5
    tp, fp, fn = (pred & gold).sum(), (pred & ~gold).sum(), (~pred & gold).sum()
    assert fixed["threshold"] == 0.0 and fixed["f1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert fixed["accuracy"] == pytest.approx(100 * (pred == gold).mean())


# --------------------------------------------------------------------------- errors


def test_empty_and_malformed_pair_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match="empty.tsv"):
        load_pairs(str(empty))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n only-one-field\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2"):
        load_pairs(str(bad))
    badj = tmp_path / "bad.jsonl"
    badj.write_text('{"s1": "a", "s2": "b"}\n{"s1": "a"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2"):
        load_pairs(str(badj))
    with pytest.raises(InvalidInput, match="pairs"):
        load_pairs(" , ")


def test_eval_scores_refused_for_training(shared_data):
    with pytest.raises(InvalidInput, match="must not be used for training"):
        load_pairs("sts12", labeled=True)
    assert load_pairs("sts12", labeled=True, for_training=False).scores is not None
    assert load_pairs("sts12").scores is None  # unlabeled use is fine


def test_cli_reports_malformed_file(tmp_path, capsys):
    from pairsmith.cli.main import main

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tnot-a-number\n")
    rc = main(
        ["distill", "trans-encoder", "--pairs", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.tsv:1" in err and "not a number" in err
    assert not (tmp_path / "o" / "state.json").exists()  # a failed start claims nothing


# --------------------------------------------------------------------------- Trans-Encoder


def test_self_distillation_cycle(toy, tmp_path):
    from sentence_transformers import CrossEncoder as STCross
    from sentence_transformers import SentenceTransformer

    from pairsmith.encoders import BiEncoder, CrossEncoder

    out = tmp_path / "self"
    rep = te.run_trans_encoder(_cfg(toy, keep_start=False), out, device="cpu", progress=False)
    for name in ("best-bi", "best-cross", "config.json", "report.json", "dev_scores.png", "state.json"):
        assert (out / name).exists(), name
    # loadable by plain sentence-transformers and by pairsmith
    vec = SentenceTransformer(str(out / "best-bi"), device="cpu").encode(["a cat runs"])
    assert vec.shape == (1, 32)
    assert STCross(str(out / "best-cross"), device="cpu").predict([("a cat", "a dog")]).shape == (1,)
    BiEncoder.load(str(out / "best-bi"), device="cpu", backend="torch")
    CrossEncoder.load(str(out / "best-cross"), device="cpu", backend="torch")
    # the bi-encoder moved away from its start
    a = BiEncoder.load(str(toy / "bi0"), device="cpu", backend="torch").encode(["cat dog runs"]).vectors
    b = BiEncoder.load(str(out / "best-bi"), device="cpu", backend="torch").encode(["cat dog runs"]).vectors
    assert np.abs(a - b).max() > 1e-4
    # labels: clamped cosines of the starting model; cross labels are probabilities
    raw = np.load(out / "cycle1" / "scores-bi-m0.npy")
    np.testing.assert_allclose(np.load(out / "cycle1" / "labels-bi.npy"), np.clip(raw, 0, 1), atol=1e-6)
    yc = np.load(out / "cycle1" / "labels-cross.npy")
    assert yc.shape == (30,) and (yc > 0).all() and (yc < 1).all()
    # report: both cycles, dev + eval-set scores, setting, label stats, wall time
    assert rep["mode"] == "self" and rep["unlabeled_pairs"] == 30
    assert rep["evaluation_setting"]["setting"] == "inductive"
    c0, c1 = rep["cycles"]
    assert "dev" in c0["bi"]["m0"] and "eval" in c0["bi"]["m0"]
    # the selection set (dev) is marked and left out of the held-out average
    from pairsmith.distill.provenance import code_version

    assert rep["selection_set"] == "dev" and rep["code"] == code_version() and rep["code"]["commit"]
    for row in (c0["bi"]["m0"], c1["bi"]["m0"], c1["cross"]["m0"]):
        ev = row["eval"]
        assert ev["avg_heldout"] == pytest.approx(ev["other"]) and ev["avg"] != pytest.approx(ev["other"])
    assert "dev" in c1["bi"]["m0"] and "dev" in c1["cross"]["m0"] and c1["cross"]["m0"]["fit"]["steps"] == 8
    assert c1["labels_bi"]["targets"]["n"] == 30 and rep["wall_s"] > 0
    assert json.loads((out / "report.json").read_text())["best"] == rep["best"]
    cfg = te.load_config(out / "config.json")
    assert cfg == _cfg(toy, keep_start=False)


def test_mutual_distillation_cycle(toy, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "mutual"
    cfg = _cfg(toy, models=(str(toy / "bi0"), str(toy / "bi1")), combine="rank", label_range="raw")
    rep = te.run_trans_encoder(cfg, out, device="cpu", progress=False)
    assert rep["mode"] == "mutual"
    # ensemble rows (the official *Ensemble evaluators): the models' predictions averaged, then scored
    for c, kind in ((0, "bi"), (1, "cross"), (1, "bi")):
        ens = rep["cycles"][c][kind]["ensemble"]
        assert set(ens) == {"dev", "eval"} and ens["eval"]["dev"] == pytest.approx(ens["dev"]), (c, kind)
    from scipy.stats import spearmanr

    from pairsmith.distill.data import load_sts_set
    from pairsmith.encoders import BiEncoder

    dev = load_sts_set(str(toy / "dev.tsv"))
    sims = [
        BiEncoder.load(str(out / "cycle1" / f"bi-{t}"), device="cpu", backend="torch").similarity(
            dev.s1, dev.s2
        )
        for t in ("m0", "m1")
    ]
    expect = 100 * spearmanr((sims[0] + sims[1]) / 2, dev.scores).statistic
    # the report rounds to 3 decimals; 2e-3 also absorbs float32 vs float64 averaging of the predictions
    assert rep["cycles"][1]["bi"]["ensemble"]["dev"] == pytest.approx(expect, abs=2e-3)
    for name in ("best-bi-m0", "best-bi-m1", "best-cross-m0", "best-cross-m1"):
        assert (out / name / "config.json").exists(), name
    SentenceTransformer(str(out / "best-bi-m1"), device="cpu")
    s0 = np.load(out / "cycle1" / "scores-bi-m0.npy")
    s1 = np.load(out / "cycle1" / "scores-bi-m1.npy")
    np.testing.assert_allclose(
        np.load(out / "cycle1" / "labels-bi.npy"), combine([s0, s1], Combine.RANK), atol=1e-6
    )
    assert set(rep["cycles"][1]["labels_bi"]["per_model"]) == {"m0", "m1"}


def test_resume_after_interruption(toy, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    cfg = _cfg(toy, eval_sets=())
    real_bi, real_cross = te.fit_bi_encoder, te.fit_cross_encoder

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(te, "fit_bi_encoder", killed)
    with pytest.raises(KeyboardInterrupt):
        te.run_trans_encoder(cfg, out, device="cpu", progress=False)
    done = json.loads((out / "state.json").read_text())["done"]
    assert "c1/cross/0" in done and "c1/labels-cross" in done and "c1/bi/0" not in done
    # without --resume the folder is refused; with another configuration too
    with pytest.raises(FailedPrecondition, match="--resume"):
        te.run_trans_encoder(cfg, out, device="cpu", progress=False)
    with pytest.raises(FailedPrecondition, match="different configuration"):
        te.run_trans_encoder(_cfg(toy, eval_sets=(), label_range="raw"), out, resume=True, device="cpu")
    # resume: the finished cross-encoder fit is not redone
    calls = {"cross": 0}

    def count_cross(*a, **k):
        calls["cross"] += 1
        return real_cross(*a, **k)

    monkeypatch.setattr(te, "fit_cross_encoder", count_cross)
    monkeypatch.setattr(te, "fit_bi_encoder", real_bi)
    rep = te.run_trans_encoder(cfg, out, resume=True, device="cpu", progress=False)
    assert calls["cross"] == 0
    assert (out / "best-bi" / "modules.json").exists()
    assert "dev" in rep["cycles"][1]["bi"]["m0"]
    # a finished run resumes to the same report without training
    monkeypatch.setattr(te, "fit_bi_encoder", killed)
    again = te.run_trans_encoder(cfg, out, resume=True, device="cpu", progress=False)
    assert again["best"] == rep["best"]
    # more cycles on resume: only the new cycle trains, and selection is redone over both
    monkeypatch.setattr(te, "fit_bi_encoder", real_bi)
    more = te.run_trans_encoder(
        dataclasses.replace(cfg, cycles=2), out, resume=True, device="cpu", progress=False
    )
    assert calls["cross"] == 1 and len(more["cycles"]) == 3
    assert json.loads((out / "state.json").read_text())["done"]["final"]["cycles"] == 2


def test_config_validation(toy):
    with pytest.raises(InvalidInput):
        _cfg(toy, cycles=0)
    with pytest.raises(InvalidInput, match="label-range"):
        _cfg(toy, label_range="bogus")
    with pytest.raises(InvalidInput, match="cross-init"):
        _cfg(toy, cross_init=("a", "b"))
    with pytest.raises(InvalidInput, match="unknown keys"):
        te.TransEncoderConfig.from_dict({"pairs": "x", "bogus": 1})
    with pytest.raises(InvalidInput, match="batch_size"):
        FitConfig(batch_size=0)


# --------------------------------------------------------------------------- supervised cross-encoder


def test_train_cross_encoder_cli_and_resume(toy, tmp_path, capsys):
    from sentence_transformers import CrossEncoder as STCross

    from pairsmith.cli.main import main

    out = tmp_path / "teacher"
    argv = ["train", "cross-encoder", "--data", str(toy / "dev.tsv"), "--score-range", "0,5", "--dev",
            str(toy / "dev.tsv"), "--init", str(toy / "bi0"), "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["train_pairs"] == 16 and rep["metric"] == "spearman" and "spearman" in rep["dev"]
    assert rep["fit"]["examples"] == 32  # both orders
    STCross(str(out / "model"), device="cpu")
    capsys.readouterr()
    assert main(argv) == 5  # an earlier run is there: refused without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    # scores without a known range must be given one
    no_range = [a for a in argv if a not in ("--score-range", "0,5")]
    no_range[no_range.index("--out") + 1] = str(tmp_path / "t2")
    assert main(no_range) == 2
    assert "--score-range" in capsys.readouterr().err


def test_mutual_fits_in_parallel_threads(toy, tmp_path):
    """The one-thread-per-model path (used when each model has its own GPU), forced on the CPU."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "par"
    cfg = _cfg(toy, models=(str(toy / "bi0"), str(toy / "bi1")), eval_sets=())
    rep = te.run_trans_encoder(cfg, out, device="cpu", progress=False, parallel=True)
    state = json.loads((out / "state.json").read_text())["done"]
    for step in ("c1/cross/0", "c1/cross/1", "c1/bi/0", "c1/bi/1"):
        assert state[step]["fit"]["steps"] > 0, step
    for tag in ("m0", "m1"):
        assert rep["cycles"][1]["bi"][tag]["fit"]["examples"] == 30
        SentenceTransformer(str(out / f"best-bi-{tag}"), device="cpu")


def test_for_models_propagates_a_failure(toy, tmp_path):
    from pairsmith.distill.runstate import RunState

    cfg = _cfg(toy, models=(str(toy / "bi0"), str(toy / "bi1")))
    state = RunState(tmp_path / "s", cfg.to_dict(), resume=False, kind="trans-encoder")
    ctx = te._Ctx(cfg, tmp_path, state, None, None, ["cpu", "cpu"], False, parallel=True)
    seen = []

    def fn(i):
        seen.append(i)
        if i == 1:
            raise RuntimeError("model 1 failed")
        state.mark(f"ok/{i}")

    with pytest.raises(RuntimeError, match="model 1 failed"):
        ctx.for_models(fn)
    assert sorted(seen) == [0, 1] and state.is_done("ok/0")


# --------------------------------------------------------------------------- what each fit trains on


def test_cycle_fits_train_on_the_other_models_labels(toy, tmp_path, monkeypatch):
    """The cross fit learns the bi-encoder's (clamped) cosines; the bi fit learns the cross-encoder's scores.

    Catches a cycle whose bi fit is trained on its own labels (labels-bi) instead of the cross labels.
    """
    from pairsmith.encoders import Activation, BiEncoder, CrossEncoder

    seen: dict[str, np.ndarray] = {}
    real_bi, real_cross = te.fit_bi_encoder, te.fit_cross_encoder

    def spy(kind, real):
        def fit(st, s1, s2, targets, cfg, **kw):
            seen[kind] = np.asarray(targets, dtype=np.float32).copy()
            return real(st, s1, s2, targets, cfg, **kw)

        return fit

    monkeypatch.setattr(te, "fit_bi_encoder", spy("bi", real_bi))
    monkeypatch.setattr(te, "fit_cross_encoder", spy("cross", real_cross))
    out = tmp_path / "spy"
    te.run_trans_encoder(_cfg(toy, eval_sets=()), out, device="cpu", progress=False)
    pool = load_pairs(str(toy / "pairs.tsv"))
    start = BiEncoder.load(str(toy / "bi0"), device="cpu", backend="torch").similarity(pool.s1, pool.s2)
    np.testing.assert_allclose(seen["cross"], np.clip(start, 0, 1), atol=1e-5)
    cross = CrossEncoder.load(str(out / "cycle1" / "cross-m0"), device="cpu", backend="torch")
    probs = cross.score(pool.pairs, activation=Activation.SIGMOID).values
    np.testing.assert_allclose(seen["bi"], probs, atol=1e-5)
    assert np.abs(seen["bi"] - seen["cross"]).max() > 0.05  # the two label sets really differ here


# --------------------------------------------------------------------------- evidence: overlap, guard, code


def test_overlap_exclusion_and_dedup_use_normalised_text(tmp_path):
    """STS12-16 hold lower-cased tokenised text; STS-B/companion the same pairs in original casing."""
    from pairsmith.distill.pairsets import drop_pairs_in, overlap
    from pairsmith.distill.textnorm import normalise_text

    tokenised = ("a man 's playing the guitar .", "the man is n't singing , is he ?")
    original = ("A man's playing the guitar.", "The man isn't singing, is he?")
    assert normalise_text(tokenised[0]) == normalise_text(original[0])
    assert normalise_text("a cat") != normalise_text("a dog")
    ev = tmp_path / "eval.tsv"
    ev.write_text(f"{tokenised[0]}\t{tokenised[1]}\t4.0\nthe cat sat\tthe dog ran\t1.0\n")
    pool_file = tmp_path / "pool.tsv"
    pool_file.write_text(
        f"{original[1]}\t{original[0]}\n"  # the eval pair, reversed and in original casing
        f"{original[0]}\t{original[1]}\n"
        "Something else entirely.\tNot in the eval set.\n"
        "something   ELSE, entirely\tnot in the eval set\n"  # a duplicate of the line above
    )
    pool = load_pairs(str(pool_file))
    assert len(pool) == 3  # the last line is the previous one, normalised
    ov = overlap(pool, [str(ev)])
    assert ov.per_set[str(ev)] == 0.5 and ov.setting == "transductive"  # exact strings would say 0.0
    kept = drop_pairs_in(pool, [str(ev)])
    assert kept.pairs == [("Something else entirely.", "Not in the eval set.")]


def test_sts_inductive_pool_is_disjoint_from_the_eval_sets(shared_data):
    from pairsmith.distill.pairsets import overlap

    pool = load_pairs("sts-inductive")
    from pairsmith.distill.data import STS7

    ov = overlap(pool, list(STS7))
    assert ov.setting == "inductive" and max(ov.per_set.values()) == 0.0, ov.per_set
    assert len(pool) == 5383  # STS-B train + SICK train (10,141 distinct) minus 4,758 pairs of the STS7 sets


def test_protected_scores_refused_by_content_not_name(shared_data, tmp_path):
    import shutil

    year = tmp_path / "my-copy-of-sts12"
    shutil.copytree(shared_data / "sts/sts12-16/STS12-en-test", year)
    with pytest.raises(InvalidInput, match="sts12"):
        load_pairs(str(year), labeled=True)
    comp = sorted((shared_data / "sts/sts-companion/stscompanion").glob("sts-*.csv"))[0]
    copy = tmp_path / "renamed.csv"
    shutil.copy(comp, copy)
    with pytest.raises(InvalidInput, match="sts-companion"):
        load_pairs(str(copy), labeled=True)
    # re-formatted as JSONL, still the same pairs and scores: refused too
    ps = load_pairs(str(copy), labeled=True, for_training=False, dedup=False)
    jl = tmp_path / "converted.jsonl"
    jl.write_text(
        "".join(
            json.dumps({"s1": a, "s2": b, "score": float(y)}) + "\n"
            for a, b, y in zip(ps.s1, ps.s2, ps.scores, strict=True)
        )
    )
    with pytest.raises(InvalidInput, match="must not be used for training"):
        load_pairs(str(jl), labeled=True)
    assert load_pairs(str(copy)).scores is None  # unlabeled use stays allowed
    assert load_pairs("stsb-train", labeled=True).scores is not None  # STS-B train is not refused


def test_resume_refuses_a_run_written_by_other_code(toy, tmp_path, monkeypatch):
    from pairsmith.distill import runstate
    from pairsmith.distill.provenance import code_version

    cfg = {"a": 1}
    runstate.RunState(tmp_path / "r", cfg, resume=False, kind="k")
    saved = json.loads((tmp_path / "r" / "state.json").read_text())["code"]
    assert saved == code_version() and set(saved) == {"version", "commit", "dirty", "diff_sha256"}
    runstate.RunState(tmp_path / "r", cfg, resume=True, kind="k")  # same code: fine
    other = {**code_version(), "commit": "0" * 40}
    monkeypatch.setattr(runstate, "code_version", lambda: other)
    with pytest.raises(FailedPrecondition, match="written by commit .* but this is commit 000000000000"):
        runstate.RunState(tmp_path / "r", cfg, resume=True, kind="k")
    dirty = {**code_version(), "dirty": True, "diff_sha256": "abc"}  # same commit, other local changes
    monkeypatch.setattr(runstate, "code_version", lambda: dirty)
    with pytest.raises(FailedPrecondition, match="uncommitted changes abc"):
        runstate.RunState(tmp_path / "r", cfg, resume=True, kind="k")


# --------------------------------------------------------------------------- never worse, collapse guard


def _start_dev(model_dir, path, n: int = 16, seed: int = 21, cross: bool = False):
    """A selection set scored by the start model itself: nothing trained can rank it better."""
    from pairsmith.encoders import BiEncoder, CrossEncoder

    rng = random.Random(seed)
    a = [f"{_sent(rng)} {i}" for i in range(n)]
    b = [f"{_sent(rng)} {i}" for i in range(n)]
    if cross:
        y = CrossEncoder.load(str(model_dir), device="cpu").score(list(zip(a, b, strict=True))).values
    else:
        y = BiEncoder.load(str(model_dir), device="cpu").similarity(a, b)
    path.write_text("".join(f"{x}\t{z}\t{float(c):.6f}\n" for x, z, c in zip(a, b, y, strict=True)))
    return path


def _emb(folder, texts=("cat runs fast", "a man plays guitar", "dog eats food")):
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load(str(folder), device="cpu").encode(list(texts), normalize=False).vectors


def test_trans_encoder_collapsed_run_exports_the_start(toy, tmp_path, capsys):
    """Nothing trained beats the start on the selection set: best-bi is the start model (same
    embeddings), the report says improved false, the CLI says so and --require-improvement exits 3."""
    from pairsmith.cli.main import main
    from pairsmith.distill.selection import EXIT_NOT_IMPROVED

    dev = _start_dev(toy / "bi0", tmp_path / "dev.tsv")
    argv = ["distill", "trans-encoder", "--pairs", str(toy / "pairs.tsv"), "--models", str(toy / "bi0"),
            "--cycles", "1", "--dev", str(dev), "--eval-sets", "none", "--cross-epochs", "1",
            "--cross-batch-size", "8", "--cross-max-length", "32", "--bi-epochs", "1", "--bi-batch-size", "8",
            "--bi-max-length", "32", "--bi-lr", "1e-2", "--no-collapse-guard", "--device", "cpu",
            "--no-progress", "--require-improvement", "--out", str(tmp_path / "te")]  # fmt: skip
    assert main(argv) == EXIT_NOT_IMPROVED
    assert "nothing trained beat the start model" in capsys.readouterr().err
    rep = json.loads((tmp_path / "te" / "report.json").read_text())
    assert rep["improved"] is False and rep["best"]["best-bi"]["cycle"] == 0
    assert rep["best_score"] == rep["start_score"] >= rep["trained_score"]
    np.testing.assert_array_equal(_emb(tmp_path / "te" / "best-bi"), _emb(toy / "bi0"))
    assert (tmp_path / "te" / "best-cross").is_dir()  # the trained cross-encoder is still exported


def test_collapse_guard_stops_the_cycle_and_the_run_ends_cleanly(toy, tmp_path):
    """Pseudo-labels below the spread floor stop the cycle before any fit; the report names the
    model, the figure and the floor; the start is exported as best-bi."""
    cfg = _cfg(toy, cycles=2, eval_sets=(), collapse_guard=True, label_std_floor=0.9)
    rep = te.run_trans_encoder(cfg, tmp_path / "g", device="cpu", progress=False)
    col = rep["collapsed"]
    assert col["cycle"] == 1 and col["figure"] == "label_std" and col["floor"] == 0.9
    assert col["model"] == "cycle 1 bi-encoder m0 labels" and col["value"] < 0.9
    assert not (tmp_path / "g" / "cycle1" / "cross-m0").exists()  # no fit on collapsed labels
    assert rep["best"]["best-bi"]["cycle"] == 0 and "best-cross" not in rep["best"]
    assert (
        rep["improved"] is False and rep["best_score"] == rep["start_score"] and rep["trained_score"] is None
    )
    np.testing.assert_array_equal(_emb(tmp_path / "g" / "best-bi"), _emb(toy / "bi0"))


def test_collapse_guard_figures():
    from pairsmith.distill.selection import CollapseGuard

    g = CollapseGuard(std_floor=0.02, rank_floor=0.3, drop_margin=5.0)
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 1, 200)
    assert g.check_labels("m", good, good + rng.normal(0, 0.05, 200)) is None
    flat = g.check_labels("cross m0", 0.55 + rng.normal(0, 0.005, 200))
    assert flat.figure == "label_std" and "cross m0" in flat.message() and "0.02" in flat.message()
    noise = g.check_labels("cross m0", good, rng.uniform(0, 1, 200))
    assert noise.figure == "rank_agreement" and noise.value < 0.3
    assert g.check_fit("bi m0", 86.7, 80.9).figure == "fit_drop"
    assert g.check_fit("bi m0", 86.7, 83.0) is None and g.check_fit("bi m0", None, 1.0) is None
    off = CollapseGuard(enabled=False)
    assert off.check_labels("m", np.zeros(5)) is None and off.check_fit("m", 90.0, 0.0) is None
    with pytest.raises(InvalidInput, match="collapse guard"):
        CollapseGuard(rank_floor=2.0)


def test_train_cross_encoder_never_worse_than_its_start(toy, tmp_path):
    """Continuing a cross-encoder that already ranks the selection set perfectly: the start is kept."""
    from pairsmith.distill.supervised import TrainCrossConfig, train_cross_encoder
    from pairsmith.encoders import CrossEncoder
    from tests.tiny import make_tiny_cross_encoder

    start = make_tiny_cross_encoder(tmp_path / "start", seed=2)
    dev = _start_dev(start, tmp_path / "dev.tsv", cross=True)
    cfg = TrainCrossConfig(
        data=str(toy / "dev.tsv"),
        init=str(start),
        dev=str(dev),
        metric="spearman",
        score_range="0,5",
        fit=FitConfig(epochs=2, batch_size=8, lr=1e-2, max_length=32),
    )
    rep = train_cross_encoder(cfg, tmp_path / "out", device="cpu", progress=False)
    assert rep["improved"] is False and rep["best_score"] == rep["start_score"] >= rep["trained_score"]
    pairs = [("cat runs fast", "dog eats"), ("a man sings", "a woman sings")]
    a = CrossEncoder.load(str(start), device="cpu").score(pairs).values
    b = CrossEncoder.load(str(tmp_path / "out" / "model"), device="cpu").score(pairs).values
    np.testing.assert_array_equal(a, b)


def test_selection_split_shares_no_text_either_way():
    """A training row is dropped when a sentence of it equals, contains or is contained in a
    selection sentence (normalised text), so neither side holds a phrase of the other."""
    from pairsmith.distill.data import PairSet
    from pairsmith.distill.selection import selection_split
    from pairsmith.distill.textnorm import normalise_text

    rng = random.Random(3)
    s1 = [f"{_sent(rng)} number {i}" for i in range(62)]
    s2 = [f"{_sent(rng)} other {i}" for i in range(62)]
    _, sel, _ = selection_split(PairSet("p", s1, s2, np.arange(62, dtype=np.float32)), 10, seed=0)
    assert not {s1[60], s1[61]} & set(sel.s1)  # rows 60, 61 stay on the training side
    # plant there a super-phrase and a sub-phrase of selection sentences (other casing, punctuation)
    s1[60], s2[60] = f"Prefix: {sel.s1[0].upper()} and more", "unrelated words here"
    s1[61], s2[61] = "x y z", normalise_text(sel.s2[1])[:12]
    ps = PairSet("p", s1, s2, np.arange(62, dtype=np.float32))
    train, sel2, info = selection_split(ps, 10, seed=0)
    assert sel2.s1 == sel.s1 and s1[60] not in train.s1 and s1[61] not in train.s1
    assert info["dropped_sharing_text"] >= 2
    sel_n = [normalise_text(t) for t in sel2.s1 + sel2.s2]
    for t in train.s1 + train.s2:
        n = normalise_text(t)
        assert not any(n in s or s in n for s in sel_n), t
    assert len(train) + len(sel2) + info["dropped_sharing_text"] == 62
    with pytest.raises(InvalidInput, match="selection split"):
        selection_split(ps, 0, seed=0)


def test_collapse_guard_fit_drop_keeps_the_start(toy, tmp_path):
    """A bi-encoder fit whose best selection score falls more than the margin below its start stops
    the run; the report counts it as trained (improved false, its score kept) and exports the start."""
    dev = _start_dev(toy / "bi0", tmp_path / "dev.tsv")
    bi = FitConfig(epochs=1, batch_size=8, lr=1e-2, max_length=32, warmup_ratio=0.0)
    cfg = _cfg(toy, cycles=2, dev=str(dev), eval_sets=(), collapse_guard=True, label_std_floor=0.0,
               rank_floor=-1.0, drop_margin=0.0, bi=bi)  # fmt: skip
    rep = te.run_trans_encoder(cfg, tmp_path / "d", device="cpu", progress=False)
    col = rep["collapsed"]
    assert col["figure"] == "fit_drop" and col["model"] == "cycle 1 bi m0" and col["value"] < 0
    assert rep["improved"] is False and rep["trained_score"] is not None
    assert rep["trained_score"] < rep["start_score"] == rep["best_score"]
    assert rep["best"]["best-bi"]["cycle"] == 0 and not (tmp_path / "d" / "cycle2").exists()
