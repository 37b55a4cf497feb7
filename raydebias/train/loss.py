"""The training losses (paper Section 4.3, eq. 6-9; SPEC §4). Pure functions of tensors, no config.

Shapes: N candidates in a batch, D projection size, T tokens, V vocabulary.
"""

from __future__ import annotations

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
        logits: (B, T, V) from the reference rows only.
        labels: (B, T) long, -100 on prompt/padding (only the reference summary tokens are labelled).

    Returns:
        (loss, n_tokens): loss 0 when no token is labelled.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    n = int((shift_labels != -100).sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    total = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100,
                            label_smoothing=label_smoothing, reduction="sum")
    return total / n, n


__all__ = ["contrastive_accuracy", "contrastive_loss", "lm_loss", "positive_pair_nll", "weighted_contrastive_loss"]
