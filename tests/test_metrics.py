from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from pairsmith.distill import metrics


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=3, max_size=40))
def test_spearman_matches_scipy(rows):
    a = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return
    assert metrics.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic * 100, abs=1e-9)


def _ndcg_reference(ranking, rels, k):
    # Textbook definition, written independently: DCG = sum rel_i / log2(i + 1), i from 1.
    dcg = sum(rels.get(d, 0) / np.log2(i + 1) for i, d in enumerate(ranking[:k], start=1))
    ideal = sorted(rels.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 1) for i, g in enumerate(ideal, start=1))
    return dcg / idcg


def test_ndcg_known_values():
    rels = {"a": 3, "b": 2, "c": 1}
    assert metrics.ndcg_at_k(["a", "b", "c"], rels, 10) == pytest.approx(1.0)
    r = ["x", "c", "a", "b"]
    assert metrics.ndcg_at_k(r, rels, 10) == pytest.approx(_ndcg_reference(r, rels, 10))
    assert metrics.ndcg_at_k(["x", "y"], rels, 10) == 0.0
    assert metrics.ndcg_at_k(["c", "b", "a"], rels, 1) == pytest.approx(1 / 3)


def test_mrr_map_recall():
    rels = {"a": 1, "b": 2}
    r = ["x", "a", "y", "b"]
    assert metrics.mrr_at_k(r, rels, 10) == pytest.approx(0.5)
    assert metrics.mrr_at_k(r, rels, 1) == 0.0
    # AP = (1/2 + 2/4) / 2
    assert metrics.average_precision(r, rels) == pytest.approx(0.5)
    # one relevant never retrieved halves AP
    assert metrics.average_precision(["a"], {"a": 1, "z": 1}) == pytest.approx(0.5)
    assert metrics.recall_at_k(r, rels, 2) == pytest.approx(0.5)
    assert metrics.recall_at_k(r, rels, 100) == pytest.approx(1.0)


def test_average_precision_matches_sklearn_style_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 30
        labels = rng.integers(0, 2, n)
        if labels.sum() == 0:
            continue
        ranking = [str(i) for i in range(n)]
        rels = {str(i): int(v) for i, v in enumerate(labels)}
        hits = np.cumsum(labels)
        ref = float((hits / np.arange(1, n + 1))[labels == 1].sum() / labels.sum())
        assert metrics.average_precision(ranking, rels) == pytest.approx(ref)


def test_rank_and_topk():
    assert metrics.rank_of_first(np.array([0.9, 0.1, 0.5])) == 1
    assert metrics.rank_of_first(np.array([0.5, 0.5, 0.9])) == 3  # ties count against the positive
    s = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.2, 0.3]])
    np.testing.assert_array_equal(metrics.top_k_indices(s, 2), [[1, 3], [0, 3]])
    np.testing.assert_array_equal(metrics.top_k_indices(s, 10), np.argsort(-s, axis=1))
