"""Trans-Encoder, supervised cross-encoder training and label post-processing, on tiny models."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from pairsmith.distill import trans_encoder as te
from pairsmith.distill.labels import Combine, LabelRange, apply_range, combine, label_stats
from pairsmith.distill.pairsets import load_pairs
from pairsmith.distill.selection import binary_metrics
from pairsmith.distill.train import FitConfig
from pairsmith.errors import DataFormatError, FailedPrecondition, InvalidInput
from tests.tiny import make_tiny_bi_encoder

WORDS = (
    "cat dog man woman plays guitar runs park eats food sings song reads book car drives fast slow".split()
)


def _sent(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """30 unlabeled pairs, a 16-pair labeled dev file (scores 0-5), two tiny bi-encoders."""
    d = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)
    (d / "pairs.tsv").write_text("".join(f"{_sent(rng)}\t{_sent(rng)}\n" for _ in range(30)))
    (d / "dev.tsv").write_text(
        "".join(f"{_sent(rng)}\t{_sent(rng)}\t{rng.uniform(0, 5):.2f}\n" for _ in range(16))
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
        eval_sets=(str(toy / "dev.tsv"),),
        cross=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32, eval_steps=4),
        bi=FitConfig(epochs=1, batch_size=8, lr=1e-3, max_length=32, warmup_ratio=0.0),
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
    b = np.array([0.80, 0.82, 0.99, 0.81])  # same order as a except 0.3 < 0.5 kept; different scale
    mean = combine([a, b], Combine.MEAN)
    np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-6)
    rank = combine([a, b], Combine.RANK)
    # rank keeps the plain mean's values, reordered by the mean rank
    np.testing.assert_allclose(np.sort(rank), np.sort(mean), atol=1e-6)
    assert list(np.argsort(rank)) == list(np.argsort(a))
    z = combine([a, b], Combine.ZSCORE)
    assert abs(z.mean() - mean.mean()) < 1e-5 and abs(z.std() - mean.std()) < 1e-5
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
    assert fixed["threshold"] == 0.0 and 0 <= fixed["f1"] <= 100


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
    from pairsmith.service.cli.main import main

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
    rep = te.run_trans_encoder(_cfg(toy), out, device="cpu", progress=False)
    for name in ("best-bi", "best-cross", "config.json", "report.json", "dev_scores.png", "state.json"):
        assert (out / name).exists(), name
    # loadable by plain sentence-transformers and by pairsmith
    vec = SentenceTransformer(str(out / "best-bi"), device="cpu").encode(["a cat runs"])
    assert vec.shape == (1, 32)
    assert STCross(str(out / "best-cross"), device="cpu").predict([("a cat", "a dog")]).shape == (1,)
    BiEncoder.load(str(out / "best-bi"), device="cpu")
    CrossEncoder.load(str(out / "best-cross"), device="cpu")
    # the bi-encoder moved away from its start
    a = BiEncoder.load(str(toy / "bi0"), device="cpu").encode(["cat dog runs"]).vectors
    b = BiEncoder.load(str(out / "best-bi"), device="cpu").encode(["cat dog runs"]).vectors
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
    assert "dev" in c1["bi"]["m0"] and "dev" in c1["cross"]["m0"] and c1["cross"]["m0"]["fit"]["steps"] == 8
    assert c1["labels_bi"]["targets"]["n"] == 30 and rep["wall_s"] > 0
    assert json.loads((out / "report.json").read_text())["best"] == rep["best"]
    cfg = te.load_config(out / "config.json")
    assert cfg == _cfg(toy)


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
        BiEncoder.load(str(out / "cycle1" / f"bi-{t}"), device="cpu").similarity(dev.s1, dev.s2)
        for t in ("m0", "m1")
    ]
    expect = 100 * spearmanr((sims[0] + sims[1]) / 2, dev.scores).statistic
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

    from pairsmith.service.cli.main import main

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
