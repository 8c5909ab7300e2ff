"""The distillation losses (distill/losses.py) and the shared fit loop: sign, weighting, masking, learning.

Each test names the wrong code it catches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairsmith.distill.fit_config import FitConfig
from pairsmith.distill.losses import CosineMSELoss, CrossEncoderBCELoss, DSEHead, DSELoss
from pairsmith.distill.train import run_fit
from pairsmith.errors import InvalidInput


def _descend(params, loss_fn, steps=200, lr=0.5) -> tuple[float, float]:
    opt = torch.optim.SGD(params, lr=lr)
    first = float(loss_fn().detach())
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    return first, float(loss_fn().detach())


# --------------------------------------------------------------------------- cross-encoder BCE


def test_cross_bce_value_sign_and_minimum():
    loss = CrossEncoderBCELoss()
    z = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([0.9, 0.1, 0.5])
    manual = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    assert float(loss(z, y)) == pytest.approx(float(manual), abs=1e-6)  # catches a flipped sign
    # the gradient pushes each logit towards logit(target): sigmoid(0) = 0.5 < 0.9 -> grad < 0
    zg = z.clone().requires_grad_(True)
    loss(zg, y).backward()
    assert zg.grad[0] < 0 and zg.grad[1] > 0 and zg.grad[2] < 0  # sigmoid(-1) = 0.27 < 0.5
    # minimum exactly where sigmoid(z) = target (soft targets, not 0/1 classes)
    logit = torch.logit(y)
    for eps in (-0.1, 0.1):
        assert float(loss(logit, y)) < float(loss(logit + eps, y))


def test_cross_bce_mask_and_learning():
    loss = CrossEncoderBCELoss()
    y = torch.tensor([0.8, 0.3, 0.6])
    mask = torch.tensor([True, True, False])
    a = loss(torch.tensor([0.5, 0.5, 9.0]), y, mask)
    b = loss(torch.tensor([0.5, 0.5, -9.0]), y, mask)
    assert float(a) == pytest.approx(float(b))  # a masked row changes nothing
    assert float(a) == pytest.approx(float(loss(torch.tensor([0.5, 0.5]), y[:2])))  # mean over kept rows
    z = torch.zeros(3, requires_grad=True)
    first, last = _descend([z], lambda: loss(z, y))
    assert last < first - 0.01
    # 200 plain SGD steps get close to, not onto, the optimum sigmoid(z) = y: 0.02 is that residual
    np.testing.assert_allclose(torch.sigmoid(z).detach().numpy(), y.numpy(), atol=0.02)
    with pytest.raises(InvalidInput, match="mask"):
        loss(z, y, torch.tensor([True]))


# --------------------------------------------------------------------------- bi-encoder cosine MSE


def test_cosine_mse_value_and_sign():
    loss = CosineMSELoss()
    u = torch.tensor([[0.6, 0.8], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, -1.0]])  # cosines 0.6 and 0
    y = torch.tensor([0.2, 0.5])
    # ((0.6 - 0.2)^2 + (0 - 0.5)^2) / 2 = 0.205; a flipped sign gives -0.205
    assert float(loss(u, v, y)) == pytest.approx(0.205)
    # one gradient step moves each cosine towards its target
    ug = u.clone().requires_grad_(True)
    opt = torch.optim.SGD([ug], lr=0.1)
    loss(ug, v, y).backward()
    opt.step()
    cos = F.cosine_similarity(ug, v, dim=-1).detach()
    assert cos[0] < 0.6 and cos[1] > 0.0


def test_cosine_mse_mask_and_learning():
    loss = CosineMSELoss()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 8, generator=g, requires_grad=True)
    v = torch.randn(6, 8, generator=g)
    y = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.2, 0.95])
    mask = torch.tensor([True] * 5 + [False])
    moved = u.detach().clone()
    moved[5] = -moved[5]
    assert float(loss(u, v, y, mask)) == pytest.approx(float(loss(moved, v, y, mask)))
    first, last = _descend([u], lambda: loss(u, v, y), steps=1500, lr=1.0)
    assert last < 1e-3 < first  # the toy fit reaches its targets
    cos = F.cosine_similarity(u, v, dim=-1).detach().numpy()
    # loss < 1e-3 bounds the mean squared error, so no single cosine can be off by much more than 0.05
    np.testing.assert_allclose(cos, y.numpy(), atol=0.05)


# --------------------------------------------------------------------------- DSE


def test_dse_loss_weighting_gold_and_silver_rows():
    a = 0.3
    loss = DSELoss(alpha=a, head="cosine")
    s = torch.tensor([0.2, 0.6, 0.4])
    gold = torch.tensor([0.0, 1.0, float("nan")])  # row 2: silver, teacher-labelled only
    t = torch.tensor([1.0, -0.5, 2.0])
    pt = torch.sigmoid(t)
    per = [
        (1 - a) * (0.2 - 0.0) ** 2 + a * (0.2 - pt[0]) ** 2,
        (1 - a) * (0.6 - 1.0) ** 2 + a * (0.6 - pt[1]) ** 2,
        1.0 * (0.4 - pt[2]) ** 2,  # weight 1 on the teacher; a weight 0 here is the bug this catches
    ]
    assert float(loss(s, gold, t)) == pytest.approx(float(sum(per) / 3), abs=1e-6)
    w_task, w_teacher = loss.weights(gold, 3, "cpu")
    assert w_task.tolist() == pytest.approx([0.7, 0.7, 0.0]) and w_teacher.tolist() == pytest.approx(
        [0.3, 0.3, 1.0]
    )
    # a silver row pulls its score towards the teacher: its gradient is non-zero
    sg = s.clone().requires_grad_(True)
    loss(sg, gold, t).backward()
    assert sg.grad[2] < 0  # 0.4 < sigmoid(2) = 0.88: the loss falls as s rises
    # no gold at all: every row teacher-only; alpha 0: task only, teacher ignored
    assert float(DSELoss(0.5)(s, None, t)) == pytest.approx(float(((s - pt) ** 2).mean()))
    assert float(DSELoss(0.0)(s, torch.ones(3), None)) == pytest.approx(float(((s - 1) ** 2).mean()))


def test_dse_cosine_head_targets_the_teacher_probability_not_the_logit():
    t = torch.tensor([2.0, -1.0, 0.0])
    cos_loss = DSELoss(alpha=1.0, head=DSEHead.COSINE)
    # the cosine (in [-1, 1]) is pulled to sigmoid(logit), the teacher's probability
    assert float(cos_loss(torch.sigmoid(t), None, t)) == pytest.approx(0.0, abs=1e-12)
    assert float(cos_loss(t.clamp(-1, 1), None, t)) > 0.05
    mlp_loss = DSELoss(alpha=1.0, head="mlp")  # the MLP head's logit regresses onto the teacher's logit
    assert float(mlp_loss(t, None, t)) == pytest.approx(0.0, abs=1e-12)
    # mlp task term: BCE-with-logits against the gold label
    gold = torch.tensor([1.0, 0.0, 1.0])
    expect = F.binary_cross_entropy_with_logits(t, gold)
    assert float(DSELoss(alpha=0.0, head="mlp")(t, gold, None)) == pytest.approx(float(expect), abs=1e-6)


def test_dse_loss_mask_learning_and_errors():
    loss = DSELoss(alpha=0.5)
    gold = torch.tensor([0.9, 0.2, float("nan"), 0.5])
    t = torch.tensor([1.5, -1.0, 0.3, 0.0])
    mask = torch.tensor([True, True, True, False])
    s1 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    s2 = torch.tensor([0.1, 0.2, 0.3, -0.9])
    assert float(loss(s1, gold, t, mask)) == pytest.approx(float(loss(s2, gold, t, mask)))
    s = torch.zeros(4, requires_grad=True)
    first, last = _descend([s], lambda: loss(s, gold, t))
    assert last < first / 2
    # the optimum of a gold row is the weighted mean of its two targets
    opt0 = 0.5 * 0.9 + 0.5 * float(torch.sigmoid(t[0]))
    assert float(s[0]) == pytest.approx(opt0, abs=0.01)  # SGD residual after 200 steps (measured < 1e-3)
    with pytest.raises(InvalidInput, match="alpha"):
        DSELoss(alpha=1.5)
    with pytest.raises(InvalidInput, match="teacher logits"):
        DSELoss(alpha=0.5)(s, gold, None)


# --------------------------------------------------------------------------- the fit loop


def test_run_fit_restores_the_best_evaluated_weights():
    """The start scores 9 (left out: keep_start=False), then 3, 1, 2: the weights seen at the first
    trained evaluation must come back."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(12, 4)
    y = torch.randn(12)
    seen: list[torch.Tensor] = []
    scores = iter([9.0, 3.0, 1.0, 2.0])

    def evaluator() -> float:
        seen.append(model.weight.detach().clone())
        return next(scores)

    def batch_loss(idx):
        return ((model(x[idx]).view(-1) - y[idx]) ** 2).mean()

    cfg = FitConfig(epochs=3, batch_size=4, lr=0.5, warmup_ratio=0.0, max_length=8)
    res = run_fit(model, 12, batch_loss, cfg, evaluator=evaluator, progress=False, keep_start=False)
    assert res.best_score == 3.0 and res.best_step == 3 and len(seen) == 4
    assert not torch.equal(seen[1], seen[3])  # training moved the weights after the best evaluation
    assert torch.equal(model.weight.detach(), seen[1])


def test_run_fit_keeps_the_start_when_no_evaluation_beats_it():
    """The start scores 5, training scores 3, 1, 2: the start's weights come back."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    start = model.weight.detach().clone()
    x, y = torch.randn(12, 4), torch.randn(12)
    scores = iter([5.0, 3.0, 1.0, 2.0])

    def batch_loss(idx):
        return ((model(x[idx]).view(-1) - y[idx]) ** 2).mean()

    cfg = FitConfig(epochs=3, batch_size=4, lr=0.5, warmup_ratio=0.0, max_length=8)
    run_fit(model, 12, batch_loss, cfg, evaluator=lambda: next(scores), progress=False)
    assert torch.equal(model.weight.detach(), start)


def test_fit_bi_encoder_moves_cosines_towards_targets(tiny_bi_dir):
    """The bi-encoder fit (CosineMSELoss through the real model) lowers the error to its targets."""
    from pairsmith.distill.train import fit_bi_encoder
    from pairsmith.encoders import BiEncoder

    enc = BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")
    s1 = ["a cat runs", "the dog eats food", "a man plays guitar", "she sings a song"] * 2
    s2 = ["a cat runs fast", "cars drive slow", "the man plays", "he reads a book"] * 2
    y = np.array([0.95, 0.05, 0.9, 0.1] * 2, dtype=np.float32)

    def err() -> float:
        return float(np.mean((enc.similarity(s1, s2) - y) ** 2))

    before = err()
    cfg = FitConfig(epochs=8, batch_size=4, lr=2e-3, warmup_ratio=0.0, max_length=16)
    fit_bi_encoder(enc.st_model, s1, s2, y, cfg, device="cpu", progress=False)
    after = err()
    assert after < before * 0.7, (before, after)  # a flipped sign drives the error up instead


def test_fit_cross_encoder_moves_scores_towards_targets(tiny_cross_dir):
    from pairsmith.distill.train import fit_cross_encoder
    from pairsmith.encoders import Activation, CrossEncoder

    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    s1 = ["a cat runs", "the dog eats food", "a man plays guitar", "she sings a song"]
    s2 = ["a cat runs fast", "cars drive slow", "the man plays", "he reads a book"]
    y = np.array([0.95, 0.05, 0.9, 0.1], dtype=np.float32)

    def err() -> float:
        p = ce.score(list(zip(s1, s2, strict=True)), activation=Activation.SIGMOID).values
        return float(np.mean((p - y) ** 2))

    before = err()
    cfg = FitConfig(epochs=20, batch_size=8, lr=5e-3, warmup_ratio=0.0, max_length=16)
    fit_cross_encoder(ce.st_model, s1, s2, y, cfg, device="cpu", progress=False)
    assert err() < before * 0.7  # a tiny random model on 4 pairs: a clear drop, not a fit to the targets
    assert math.isfinite(err())
