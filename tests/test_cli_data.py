"""``pairsmith data split``: a selection split that shares no text with the training rows."""

from __future__ import annotations

import json

import pytest

from pairsmith.cli.main import main
from pairsmith.distill.pairsets import load_pairs
from pairsmith.distill.textnorm import normalise_text


def _rows(tmp_path):
    # Row 0's left sentence is contained in row 1's; row 2 repeats row 3's sentence with other case
    # and punctuation. Whichever is held out, its partner must leave the training side.
    rows = [
        ("a man plays a guitar", "a person plays music", 4.0),
        ("a man plays a guitar on the stage tonight", "someone performs", 3.5),
        ("The dog runs.", "a cat sleeps", 0.5),
        ("the dog runs", "an animal moves", 3.0),
    ] + [
        (f"sentence number {i} about topic {i}", f"another line {i} on subject {i}", float(i % 5))
        for i in range(40)
    ]
    f = tmp_path / "pairs.tsv"
    f.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    return f, rows


def _texts(path):
    ps = load_pairs(str(path), labeled=True)
    return ps, {normalise_text(t) for t in [*ps.s1, *ps.s2]}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_shares_no_text_either_way(tmp_path, seed, capsys):
    src, rows = _rows(tmp_path)
    out = tmp_path / f"split{seed}"
    assert main(["data", "split", str(src), "--selection", "10", "--seed", str(seed), "--out", str(out)]) == 0
    train, train_text = _texts(out / "train.jsonl")
    sel, sel_text = _texts(out / "selection.jsonl")
    assert len(sel) == 10
    for t in train_text:  # no equal, containing or contained sentence across the split
        assert not any(t in s or s in t for s in sel_text), t
    info = json.loads((out / "split.json").read_text())
    assert info["selection_rows"] == 10 and info["train_rows"] == len(train)
    assert len(train) + len(sel) + info["dropped_sharing_text"] == len(rows)
    # scores travel with their rows
    by_pair = {(a, b): s for a, b, s in rows}
    for ps in (train, sel):
        for a, b, s in zip(ps.s1, ps.s2, ps.scores, strict=True):
            assert by_pair[(a, b)] == pytest.approx(float(s))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train_rows"] == len(train)


@pytest.mark.parametrize("held", ["short", "long"])
def test_the_partner_leaves_training_whichever_is_held_out(tmp_path, held):
    """Held-out short sentence: the row whose sentence contains it goes; held-out long: the contained one."""
    src, _ = _rows(tmp_path)
    short, long = "a man plays a guitar", "a man plays a guitar on the stage tonight"
    for seed in range(60):
        out = tmp_path / f"s{seed}"
        main(["data", "split", str(src), "--selection", "10", "--seed", str(seed), "--out", str(out)])
        sel, _ = _texts(out / "selection.jsonl")
        train, _ = _texts(out / "train.jsonl")
        mine, other = (short, long) if held == "short" else (long, short)
        if mine in sel.s1 and other not in sel.s1:
            assert other not in train.s1
            return
    pytest.fail(f"no seed held out only the {held} guitar row")


def test_bad_input_is_refused_with_the_reason(tmp_path, capsys):
    src, _ = _rows(tmp_path)
    assert main(["data", "split", str(src), "--selection", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--selection" in capsys.readouterr().err
    assert main(["data", "split", str(src), "--selection", "44", "--out", str(tmp_path / "o")]) == 2
    assert "selection split" in capsys.readouterr().err
    unscored = tmp_path / "u.tsv"
    unscored.write_text("a\tb\nc\td\ne\tf\n")
    assert main(["data", "split", str(unscored), "--selection", "1", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "train.jsonl").exists()
