"""The training losses (paper Section 4.3, eq. 6-9; SPEC §4): pure functions of tensors, and
:class:`ContrastiveDebiasLoss`, the module that assembles them into L = L_ce + alpha * w_tox * L_cl from
plain values (alpha, tau, w_tox and its scope, label smoothing), built once and called on tensors.

Shapes: N candidates in a batch, D projection size, T tokens, V vocabulary, G groups, R reference rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def positive_pair_nll(reps: Tensor, group: Tensor, positive: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """-log sim(i, j) for every ordered positive pair of the batch (eq. 8), and the pair's group.

    Args:
        reps: (N, D) pooled, L2-normalised candidate representations (eq. 5).
        group: (N,) long, the source row (group) of each candidate.
        positive: (N,) bool, reference summary or backtranslation.
        tau: temperature.

    Returns:
        nll: (P,) one value per ordered pair (i, j), i != j, both positives of the same group;
        pair_group: (P,) the group of each pair.

    sim(i, j) = exp(r_i.r_j / tau) / sum_{k in g(i), k != i} exp(r_i.r_k / tau): the denominator runs over
    every OTHER candidate of the same group, positives and negatives alike.
    """
    n = reps.shape[0]
    logits = reps @ reps.T / tau  # (N, N)
    same = group[:, None] == group[None, :]
    not_self = ~torch.eye(n, dtype=torch.bool, device=reps.device)
    denom_mask = same & not_self
    log_denom = torch.logsumexp(logits.masked_fill(~denom_mask, float("-inf")), dim=1)  # (N,)
    pairs = denom_mask & positive[:, None] & positive[None, :]  # (N, N) ordered positive pairs
    i, j = pairs.nonzero(as_tuple=True)
    return log_denom[i] - logits[i, j], group[i]


def contrastive_loss(reps: Tensor, group: Tensor, positive: Tensor, tau: float) -> Tensor:
    """InfoNCE over positive pairs, grouped (eq. 8-9 without w_tox).

    Args:
        reps: (N, D) L2-normalised representations.
        group: (N,) long group ids.
        positive: (N,) bool.
        tau: temperature > 0.

    Returns:
        () the mean of -log sim(i, j) over all ordered positive pairs of the batch; 0 (with a graph, so
        ``backward`` still works) when the batch holds no positive pair.
    """
    nll, _ = positive_pair_nll(reps, group, positive, tau)
    if nll.numel() == 0:
        return reps.sum() * 0.0
    return nll.mean()


def weighted_contrastive_loss(reps: Tensor, group: Tensor, positive: Tensor, tau: float,
                              group_weight: Tensor) -> Tensor:
    """Like :func:`contrastive_loss` with each pair's term scaled by its group's weight (w_tox per group).

    Args:
        group_weight: (G,) weight of group g, indexed by the values of ``group`` (0..G-1).
    """
    nll, pair_group = positive_pair_nll(reps, group, positive, tau)
    if nll.numel() == 0:
        return reps.sum() * 0.0
    return (nll * group_weight[pair_group]).mean()


def contrastive_accuracy(reps: Tensor, group: Tensor, positive: Tensor) -> tuple[int, int]:
    """(correct, total) over ordered positive pairs whose group has at least one negative.

    A pair (i, j) is correct when r_i.r_j exceeds r_i.r_k for every negative k of the group.
    """
    with torch.no_grad():
        n = reps.shape[0]
        s = reps @ reps.T
        same = group[:, None] == group[None, :]
        not_self = ~torch.eye(n, dtype=torch.bool, device=reps.device)
        neg = same & ~positive[None, :]
        best_neg = s.masked_fill(~neg, float("-inf")).max(dim=1).values  # (N,)
        pairs = same & not_self & positive[:, None] & positive[None, :] & neg.any(dim=1)[:, None]
        i, j = pairs.nonzero(as_tuple=True)
        return int((s[i, j] > best_neg[i]).sum()), int(i.numel())


def lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float) -> tuple[Tensor, int]:
    """Label-smoothed next-token cross-entropy, summed over labelled tokens and divided by their count.

    Args:
        logits: (B, T, V) from the reference rows, with ``labels`` (B, T) long, -100 on prompt/padding
            (the logits at t predict the label at t + 1); or (M, V) at the predicting positions only,
            with ``labels`` (M,) the tokens they predict (:func:`raydebias.train.batching.next_token_targets`).

    Returns:
        (loss, n_tokens): loss 0 when no token is labelled.
    """
    if logits.dim() == 2:  # already aligned: one row per labelled token
        shift_logits, shift_labels = logits, labels
    else:
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1)
    n = int((shift_labels != -100).sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    total = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100,
                            label_smoothing=label_smoothing, reduction="sum")
    return total / n, n


@dataclass
class LossOutput:
    """One batch's losses. ``loss``, ``l_ce``, ``l_cl``: () tensors with a graph (``l_cl`` includes w_tox);
    ``lm_tokens``: tokens in L_ce; ``correct`` / ``pairs``: :func:`contrastive_accuracy`'s counts."""

    loss: Tensor
    l_ce: Tensor
    l_cl: Tensor
    lm_tokens: int
    correct: int
    pairs: int


class ContrastiveDebiasLoss(torch.nn.Module):
    """L = L_ce + alpha * L_cl, L_cl = w_tox * InfoNCE over positive pairs (eq. 6-9; SPEC §4).

    Args:
        alpha: weight of the contrastive term (eq. 6), >= 0; 0 trains on L_ce alone.
        tau: InfoNCE temperature (eq. 8), > 0.
        toxic_weight: w_tox (eq. 7), applied where a negative is a toxic rewrite.
        scope: ``"batch"`` (the paper: w_tox scales the whole batch's L_cl when any of its groups holds a
            toxic negative) or ``"group"`` (w_tox scales only the pairs of such groups).
        label_smoothing: of L_ce.

    Holds no parameters; the losses are computed in fp32 whatever the model's compute dtype.
    """

    def __init__(self, alpha: float = 4.0, tau: float = 1.0, toxic_weight: float = 1.5,
                 scope: Literal["batch", "group"] = "batch", label_smoothing: float = 0.1):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"ContrastiveDebiasLoss: alpha must be >= 0, got {alpha}")
        if tau <= 0:
            raise ValueError(f"ContrastiveDebiasLoss: tau must be > 0, got {tau}")
        if scope not in ("batch", "group"):
            raise ValueError(f"ContrastiveDebiasLoss: scope must be 'batch' or 'group', got {scope!r}")
        self.alpha, self.tau, self.toxic_weight = alpha, tau, toxic_weight
        self.scope, self.label_smoothing = scope, label_smoothing

    @classmethod
    def from_config(cls, train_cfg: Any) -> ContrastiveDebiasLoss:
        """From ``Config.train`` (its alpha, tau, toxic_weight, toxic_weight_scope, label_smoothing)."""
        return cls(alpha=train_cfg.alpha, tau=train_cfg.tau, toxic_weight=train_cfg.toxic_weight,
                   scope=train_cfg.toxic_weight_scope, label_smoothing=train_cfg.label_smoothing)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, tau={self.tau}, toxic_weight={self.toxic_weight}, scope={self.scope!r}, "
                f"label_smoothing={self.label_smoothing}")

    def forward(self, logits: Tensor, labels: Tensor, reps: Tensor, group: Tensor, positive: Tensor,
                group_toxic: Tensor) -> LossOutput:
        """
        Args:
            logits, labels: L_ce's inputs as :func:`lm_loss` takes them: (R, T, V) logits of the reference
                rows with (R, T) labels, or (M, V) logits at the positions predicting the labels (M,).
            reps: (N, D) L2-normalised candidate representations (eq. 5).
            group: (N,) long in [0, G).
            positive: (N,) bool.
            group_toxic: (G,) bool, the group's negatives include a toxic rewrite.
        """
        l_ce, n_lm = lm_loss(logits.float(), labels, self.label_smoothing)  # eq. 6, L_ce
        reps = reps.float()
        if self.scope == "group":
            w = torch.where(group_toxic, self.toxic_weight, 1.0).to(reps)
            l_cl = weighted_contrastive_loss(reps, group, positive, self.tau, w)
        else:  # the paper (eq. 7): w_tox for the whole batch when any of its negatives is a toxic rewrite
            w_tox = self.toxic_weight if bool(group_toxic.any()) else 1.0
            l_cl = w_tox * contrastive_loss(reps, group, positive, self.tau)
        correct, pairs = contrastive_accuracy(reps.detach(), group, positive)
        return LossOutput(loss=l_ce + self.alpha * l_cl, l_ce=l_ce, l_cl=l_cl, lm_tokens=n_lm, correct=correct,
                          pairs=pairs)


__all__ = ["ContrastiveDebiasLoss", "LossOutput", "contrastive_accuracy", "contrastive_loss", "lm_loss",
           "positive_pair_nll", "weighted_contrastive_loss"]
