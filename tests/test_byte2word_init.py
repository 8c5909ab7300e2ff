"""Byte2Word: the input scale a from-scratch model starts from, and that it can learn.

Two defects make both input units learn slowly: torch's N(0, 1) embedding tables (Adam barely moves
them relative to their scale at lr 5e-4) and Byte2Word's pooled word vectors entering the encoder
~7x smaller than the position signal. These tests fail on either defect.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pairsmith.encoders.byte2word.model import WordEncoder
from tests.byte2word_util import cue_rows

TINY = {
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "d_ff": 64,
    "d_byte": 32,
    "pool_heads": 2,
    "max_seq_length": 16,
}


def _features(model: WordEncoder, texts: list[str]) -> dict:
    tok = model.tokenizer
    enc = tok.encode(texts)
    return {k: torch.from_numpy(v) for k, v in tok.pad(enc.ids, enc.type_ids).feeds().items()}


@pytest.mark.parametrize("unit", ["bytes", "wordpiece"])
def test_embedding_tables_start_at_bert_scale(unit):
    torch.manual_seed(0)
    model = WordEncoder(unit=unit, **TINY)
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert len(tables) >= 3  # positions, segments, and bytes+byte positions or the WordPiece table
    for m in tables:
        # N(0, 0.02); the smallest table (2 x 32 segment rows) estimates the std within ~10%, so
        # [0.014, 0.026] holds for the right init and torch's N(0, 1) default is far outside it.
        std = float(m.weight.detach().std())
        assert 0.014 < std < 0.026, (m, std)


def test_query_init_spread_reaches_the_pooler_and_is_validated():
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer
    from pairsmith.errors import InvalidInput

    torch.manual_seed(0)
    # 2 queries x 2 heads x 16 dims = 64 draws: the sample std is within ~20% of the true one
    assert 0.8 < float(WordEncoder(unit="bytes", query_std=1.0, **TINY).pooler.queries.std()) < 1.2
    assert 0.016 < float(WordEncoder(unit="bytes", **TINY).pooler.queries.std()) < 0.024  # module default
    # the training defaults (chosen on the clean SST-2 train split, bench/results/byte2word/choice-*): selective
    # queries, 1 byte layer
    tr = Trainer(Byte2WordTrainConfig(out="", mlm_corpus="", size="tiny"))
    assert 0.8 < float(tr.encoder.pooler.queries.std()) < 1.2 and len(tr.encoder.pooler.byte_blocks) == 1
    with pytest.raises(InvalidInput, match="query_std"):
        WordEncoder(unit="bytes", query_std=0.0, **TINY)
    with pytest.raises(InvalidInput, match="--query-std"):
        Byte2WordTrainConfig(out="", mlm_corpus="", query_std=-1.0)


def test_byte_word_vectors_enter_at_the_scale_of_an_embedding_row():
    torch.manual_seed(0)
    model = WordEncoder(unit="bytes", **TINY).eval()
    feats = _features(model, ["a wonderful , charming film", "dull and lifeless ."])
    with torch.no_grad():
        words = model.unit_vectors(feats)[feats["attention_mask"] > 0]  # (N, d)
    # LayerNorm after the pooling: every word vector has unit RMS (ln's default affine is 1/0).
    # Without it the RMS was ~0.15 at init, below the position signal the encoder adds to it.
    rms = words.pow(2).mean(-1).sqrt()  # (N,)
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-3)


def test_old_models_without_the_pool_norm_still_load(tmp_path):
    import json

    torch.manual_seed(0)
    old = WordEncoder(unit="bytes", pool_norm=False, **TINY).eval()
    old.save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["pool_norm"]  # as written before session 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = WordEncoder.load(str(tmp_path)).eval()
    assert back.pool_norm is False
    feats = _features(old, ["good film"])
    with torch.no_grad():
        torch.testing.assert_close(
            back(dict(feats))["token_embeddings"], old(dict(feats))["token_embeddings"]
        )


def _cue_rows(n: int, seed: int) -> list[tuple[str, int]]:
    return cue_rows(n, seed)


def test_from_scratch_byte_model_learns_a_one_word_cue():
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer

    cfg = Byte2WordTrainConfig(out="", mlm_corpus="", unit="bytes", size="tiny", batch_size=16, seed=0)
    tr = Trainer(cfg)
    tr.finetune(_cue_rows(400, 0), 150)
    acc = tr.accuracy(_cue_rows(200, 1))
    # One word decides the label. Measured: 1.0 with both fixes, 0.835 with the old N(0, 1) tables,
    # 0.51 (chance) with neither fix. Without only the pool LayerNorm it still learns this easy cue
    # (caught by the scale test above); the WordPiece model reaches 0.995 even with the old init
    # at this step count, so its defect is caught by the init test, not here.
    assert acc >= 0.95, acc
