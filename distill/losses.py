"""The distillation losses as named modules (one place each; the fits and tests use these).

- :class:`CrossEncoderBCELoss`: cross-encoder on soft targets (Trans-Encoder's bi -> cross
  step, supervised teachers).
- :class:`CosineMSELoss`: bi-encoder cosine regressed onto targets (Trans-Encoder's
  cross -> bi step).
- :class:`DSELoss`: the DSE student, gold task term and teacher term with per-row weights
  (gold rows ``(1 - alpha)`` / ``alpha``, teacher-only "silver" rows ``0`` / ``1``).

Every loss returns the mean over the rows it counts; an optional boolean ``mask``
(B,) drops rows (a mask with no True row gives a zero loss that still has a graph).
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

from pairsmith.errors import InvalidInput


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_row.mean()
    m = mask.to(per_row.device, torch.bool)
    if m.shape != per_row.shape:
        raise InvalidInput(f"loss mask: shape {tuple(m.shape)} for {tuple(per_row.shape)} rows")
    return (per_row * m).sum() / m.sum().clamp(min=1)


class CrossEncoderBCELoss(nn.Module):
    """Binary cross-entropy between a one-logit cross-encoder's logit and a soft target in [0, 1].

    Trans-Encoder (Liu et al., ICLR 2022) trains its cross-encoder on the bi-encoder's
    cosines as targets, on both pair orders (``BinaryCrossEntropyLoss`` with soft labels in
    sentence-transformers); pairsmith's supervised teachers use it with gold scores scaled
    to [0, 1]. Minimised, over the logit z, at ``sigmoid(z) = target``.

    Inputs: ``logits`` (B,), ``targets`` (B,) in [0, 1] (values outside are used as given,
    the official raw-cosine behaviour), optional ``mask`` (B,) bool.

    Example::

        loss = CrossEncoderBCELoss()
        value = loss(model(features)["scores"].view(-1), torch.tensor([0.9, 0.1]))
    """

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        targets = targets.to(logits.device, logits.dtype)
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B,)
        return _masked_mean(per, mask)


class CosineMSELoss(nn.Module):
    """Mean squared error between cos(u, v) and a target (sentence-transformers' ``CosineSimilarityLoss``).

    Trans-Encoder's cross -> bi step: the bi-encoder's cosine of each pair regresses onto the
    cross-encoder's sigmoid score. Minimised at ``cos(u, v) = target``.

    Inputs: ``u``, ``v`` (B, D) embeddings, ``targets`` (B,), optional ``mask`` (B,) bool.

    Example::

        loss = CosineMSELoss()
        value = loss(model_a(x)["sentence_embedding"], model_b(y)["sentence_embedding"], labels)
    """

    def forward(
        self, u: torch.Tensor, v: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        cos = F.cosine_similarity(u, v, dim=-1)  # (B,)
        per = (cos - targets.to(cos.device, cos.dtype)) ** 2  # (B,)
        return _masked_mean(per, mask)


class DSEHead(enum.Enum):
    """What the DSE student's pair score is: a cosine (FAISS-ready) or an MLP logit."""

    COSINE = "cosine"
    MLP = "mlp"


class DSELoss(nn.Module):
    """DSE (Barkan et al., AAAI 2020): ``(1 - alpha) * task(s, y) + alpha * MSE(s, teacher)`` per row.

    - ``cosine`` head: ``s`` is cos(u, v); the teacher target is ``sigmoid(teacher logit)``
      (a probability, on the cosine's scale); the task term is ``(s - y)^2``.
    - ``mlp`` head: ``s`` is a logit; the teacher target is the teacher's logit (the paper
      regresses log-odds); the task term is BCE-with-logits(s, y).

    Rows whose gold ``y`` is NaN are teacher-labelled only (silver pairs): task weight 0,
    teacher weight ``silver_weight`` (default 1). With no gold at all (``gold=None``) every row is teacher-only; with no
    teacher (``teacher_logits=None``, alpha 0) every row is task-only.

    Inputs: ``s`` (B,), ``gold`` (B,) in [0, 1] or NaN, or None; ``teacher_logits`` (B,) or
    None; optional ``mask`` (B,) bool.

    Example::

        loss = DSELoss(alpha=0.5, head="cosine")
        value = loss(F.cosine_similarity(u, v), gold, teacher_logits)
    """

    def __init__(
        self, alpha: float, head: DSEHead | str = DSEHead.COSINE, silver_weight: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise InvalidInput(f"DSE alpha: must be in [0, 1], got {alpha}")
        if not silver_weight >= 0.0:
            raise InvalidInput(f"DSE silver weight: must be >= 0, got {silver_weight}")
        self.alpha = float(alpha)
        self.silver_weight = float(silver_weight)
        self.head = head if isinstance(head, DSEHead) else DSEHead(str(head))

    def teacher_target(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """What ``s`` is pulled towards: the teacher's probability (cosine head) or logit (mlp head)."""
        return torch.sigmoid(teacher_logits) if self.head is DSEHead.COSINE else teacher_logits

    def weights(self, gold: torch.Tensor | None, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (task, teacher) weights, each (B,)."""
        if gold is None:
            has = torch.zeros(n, dtype=torch.bool, device=device)
        else:
            has = ~torch.isnan(gold.to(device))
        alpha = torch.tensor(self.alpha, device=device)
        w_task = torch.where(has, 1 - alpha, torch.zeros((), device=device))
        w_teacher = torch.where(has, alpha, torch.full((), self.silver_weight, device=device))
        return w_task, w_teacher

    def forward(
        self,
        s: torch.Tensor,
        gold: torch.Tensor | None,
        teacher_logits: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if teacher_logits is None and (gold is None or self.alpha > 0):
            raise InvalidInput("DSE loss: alpha > 0 or no gold labels needs teacher logits")
        w_task, w_teacher = self.weights(gold, len(s), s.device)  # (B,), (B,)
        per = torch.zeros_like(s)  # (B,)
        if gold is not None and self.alpha < 1:
            y = torch.nan_to_num(gold.to(s.device, s.dtype))  # silver rows: weight 0, value unused
            if self.head is DSEHead.COSINE:
                task = (s - y) ** 2
            else:
                task = F.binary_cross_entropy_with_logits(s, y, reduction="none")
            per = per + w_task * task
        if teacher_logits is not None:
            target = self.teacher_target(teacher_logits.to(s.device, s.dtype))
            per = per + w_teacher * (s - target) ** 2
        return _masked_mean(per, mask)


__all__ = ["CosineMSELoss", "CrossEncoderBCELoss", "DSEHead", "DSELoss"]
