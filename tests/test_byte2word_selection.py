"""Byte2Word fine-tuning never hands back less than it started from, on the selection set.

The start model (the encoder as MLM left it, the new classifier as initialised) is scored first and
kept as a candidate. A selection set whose labels are the training labels flipped makes every
trained state worse than the start: the run must say ``improved: false`` and export the start's
weights bit for bit; ``--require-improvement`` turns that into exit code 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pairsmith.cli.main import main
from pairsmith.distill.fit_config import EXIT_NOT_IMPROVED
from tests.byte2word_util import cue_rows

FT_STEPS = 60


_FILLER = "the a film plot story actor scene music ending camera light night city road".split()


def _cue_rows(n: int, seed: int, flip: bool = False) -> list[tuple[str, int]]:
    return cue_rows(n, seed, flip=flip, filler=_FILLER)


def _write(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{t}\t{y}\n" for t, y in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("b2w-select")
    (d / "corpus.txt").write_text("".join(f"{t}\n" for t, _ in _cue_rows(40, 2)))
    return {
        "corpus": d / "corpus.txt",
        "task": _write(d / "task.tsv", _cue_rows(200, 0)),
        "same": _write(d / "select.tsv", _cue_rows(60, 1)),  # other rows, the task's labels
        "flipped": _write(d / "flipped.tsv", _cue_rows(60, 1, flip=True)),  # training can only hurt
        "root": d,
    }


def _train(files: dict[str, Path], name: str, select: str, ft_steps: int) -> tuple[dict, Path]:
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, train_byte2word

    out = files["root"] / name
    cfg = Byte2WordTrainConfig(
        out=str(out),
        mlm_corpus=str(files["corpus"]),
        task=str(files["task"]),
        task_dev=str(files["task"]),
        size="tiny",
        max_steps=2,
        ft_steps=ft_steps,
        batch_size=16,
        ft_lr=3e-3,
        select=str(files[select]),
        eval_steps=20,
        eval_noise=False,
    )
    return train_byte2word(cfg), out


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every saved tensor of a model directory (encoder and heads), by file and key."""
    files = sorted(model_dir.rglob("*.safetensors"))
    assert any(f.parent.name == "heads" for f in files) and any(f.parent.name != "heads" for f in files)
    return {f"{f.relative_to(model_dir)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.fixture(scope="module")
def start_run(files):
    """No fine-tuning step: the exported model is the start model itself."""
    return _train(files, "start", "flipped", 0)


def test_nothing_trained_is_no_improvement(start_run):
    report, _ = start_run
    assert report["improved"] is False and report["trained_score"] is None
    assert report["best_score"] == report["start_score"] and report["best_step"] == 0


def test_a_start_that_training_cannot_beat_is_exported_unchanged(files, start_run):
    start_report, start_dir = start_run
    report, out = _train(files, "worse", "flipped", FT_STEPS)
    want, got = _weights(start_dir), _weights(out)  # the exported model is the start, bit for bit
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert report["dev_acc"] == start_report["dev_acc"]  # the same weights predict the same
    assert report["select_set"] == "flipped.tsv" and report["select_metric"] == "accuracy x100"
    assert report["start_score"] == start_report["start_score"]  # the same start, scored the same
    # Every trained state scored (every 20 steps and the last) was below the start: it is kept.
    assert [h["step"] for h in report["select_history"]] == [20, 40, 60]
    assert report["trained_score"] < report["start_score"], report
    assert report["improved"] is False and report["best_score"] == report["start_score"]
    assert report["best_step"] == 0


def test_a_trained_model_that_beats_the_start_is_exported(files, start_run):
    start_report, start_dir = start_run
    report, out = _train(files, "better", "same", FT_STEPS)
    assert report["improved"] is True and report["best_step"] > 0
    assert report["best_score"] == report["trained_score"] > report["start_score"], report
    want, got = _weights(start_dir), _weights(out)
    assert any(not torch.equal(want[k], got[k]) for k in want)


def _cli(files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["train", "byte2word", "--mlm-corpus", str(files["corpus"]), "--task", str(files["task"]),
                 "--task-dev", str(files["task"]), "--config", "tiny", "--max-steps", "2",
                 "--ft-steps", str(FT_STEPS), "--batch-size", "16", "--ft-lr", "3e-3", "--no-noise-eval",
                 "--out", str(out), *extra])  # fmt: skip


def test_cli_require_improvement_exits_not_improved(files, tmp_path, capsys):
    flipped = ("--select", str(files["flipped"]))
    assert _cli(files, tmp_path / "a", *flipped) == 0
    err = capsys.readouterr().err
    assert "train byte2word: nothing trained beat the start model on the selection set" in err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {"start_score", "best_score", "improved"} <= report.keys() and report["improved"] is False
    assert _cli(files, tmp_path / "b", *flipped, "--require-improvement") == EXIT_NOT_IMPROVED
    assert "nothing trained beat the start model" in capsys.readouterr().err
    same = ("--select", str(files["same"]), "--require-improvement")
    assert _cli(files, tmp_path / "c", *same) == 0


def test_cli_selection_arguments_are_checked(files, tmp_path, capsys):
    assert _cli(files, tmp_path / "a", "--select", "none", "--require-improvement") == 2
    assert "--require-improvement: needs a selection set" in capsys.readouterr().err
    # The default split holds rows of >= 10 words out of the task; these rows have 7.
    assert _cli(files, tmp_path / "b") == 2
    assert "--select split" in capsys.readouterr().err


def test_select_none_keeps_the_last_step(files, tmp_path):
    assert _cli(files, tmp_path / "a", "--select", "none", "--ft-steps", "3") == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["select_set"] is None and report["improved"] is None and report["start_score"] is None
    assert report["fit_rows"] == 200
