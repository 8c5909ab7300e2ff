"""The Byte2Word selection split: no held-out row shares its text with a fit row, either way round."""

from __future__ import annotations

import pytest

from pairsmith.distill.byte2word_data import read_labelled, selection_split, split_conflicts, words_key
from pairsmith.errors import InvalidInput

LONG = "the film is a slow , careful and rewarding study of grief"  # 12 words


def test_words_key_matches_whole_words_only():
    assert words_key("  It's  a FINE film! ") == "it s a fine film"
    assert f" {words_key('fine')} " not in f" {words_key('the finest film')} "


def test_a_row_inside_a_longer_training_row_is_never_held_out():
    rows = [
        (LONG, 1),
        (f"{LONG} , and a triumph", 1),
        ("an unrelated review of ten words or so right here", 0),
    ]
    sp = selection_split(rows, 1, min_words=10, seed=0)
    # LONG lies inside row 1, so only row 1 or row 2 may be held out; with 1 held out, LONG is not it
    assert (LONG, 1) not in sp.select
    assert split_conflicts(sp.fit, sp.select) == 0
    for seed in range(20):  # whatever the draw
        sp = selection_split(rows, 2, min_words=10, seed=seed)
        assert (LONG, 1) not in sp.select and (LONG, 1) not in sp.fit  # inside the held-out row 1
        assert split_conflicts(sp.fit, sp.select) == 0


def test_rows_inside_or_holding_a_held_out_row_leave_the_fit_set():
    held = "a quiet film about two brothers and the sea they love"
    rows = [
        (held, 1),
        ("two brothers", 1),  # inside the held-out row
        ("A QUIET film", 1),  # inside, after normalisation
        ("the sea they love", 1),  # inside
        ("brothers and sisters", 0),  # shares words, is not inside: kept
        ("the finest film", 0),  # 'film' but not as a phrase of the held-out row: kept
    ]
    sp = selection_split(rows, 1, min_words=10, seed=0)
    assert sp.select == [(held, 1)]
    assert sorted(sp.fit) == [("brothers and sisters", 0), ("the finest film", 0)]
    assert sp.dropped_inside == 3
    assert split_conflicts(sp.fit, sp.select) == 0


def test_split_conflicts_counts_both_directions():
    select = [(LONG, 1)]
    assert split_conflicts([("careful and rewarding", 1)], select) == 1  # fit inside select
    assert split_conflicts([(f"oh , {LONG} indeed", 1)], select) == 1  # select inside fit
    assert split_conflicts([("careful and rewarded", 1)], select) == 0


def test_too_few_candidates_is_a_clear_error():
    with pytest.raises(InvalidInput, match="only 0 rows of >= 10 words"):
        selection_split([("short one", 1)], 1, min_words=10)


@pytest.mark.data
def test_real_sst2_split_is_clean(shared_data):
    rows = read_labelled(shared_data / "classification/sst2/sentiment-train")
    sp = selection_split(rows, 2000, min_words=10, seed=0)
    assert len(sp.select) == 2000
    assert split_conflicts(sp.fit, sp.select) == 0
    assert len(sp.fit) + sp.dropped_inside + sp.dropped_containing + len(sp.select) == len(rows)
    assert sp.dropped_containing == 0  # selection rows are inside no other row, so none holds one


def _choice_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "byte2word_choice.py"
    spec = importlib.util.spec_from_file_location("byte2word_choice", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(q: float, n: int, seed: int, acc: float) -> dict:
    return {"stage": "variants", "query_std": q, "byte_layers": n, "seed": seed, "select_acc": acc}


def _budget(unit: str, mlm: int, ft: int, acc: float) -> dict:
    return {"stage": "budget", "unit": unit, "mlm_steps": mlm, "ft_steps": ft, "select_acc": acc}


def test_choice_takes_the_best_mean_and_the_simpler_variant_on_ties():
    ch = _choice_module()
    steps = [_run(0.02, 0, 0, 0.60), _run(0.02, 0, 1, 0.60), _run(1.0, 1, 0, 0.70), _run(1.0, 1, 1, 0.50)]
    assert ch.choose_variant(steps) == (0.02, 0)  # means 0.60 and 0.60: the earlier, simpler variant
    steps[-1]["select_acc"] = 0.52  # 0.61 > 0.60
    assert ch.choose_variant(steps) == (1.0, 1)
    b = [_budget("bytes", 0, 300, 0.6), _budget("bytes", 0, 1200, 0.65), _budget("wordpiece", 0, 300, 0.9)]
    assert ch.choose_budget(b, [(0, 300), (0, 1200)]) == (0, 1200)  # bytes decide, not WordPiece
    b[1]["select_acc"] = 0.55
    assert ch.choose_budget(b, [(0, 300), (0, 1200)]) == (0, 300)
