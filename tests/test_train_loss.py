"""The losses of SPEC §4 (eq. 6-9) against values computed by hand."""

import math

import pytest
import torch

from raydebias.train.loss import (
    contrastive_accuracy,
    contrastive_loss,
    lm_loss,
    weighted_contrastive_loss,
)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# group 0: a(+) b(+) c(-); group 1: d(+) e(+) f(-) g(-); group 2: h(+) i(-) (one positive: no pair)
ANGLES = {"a": 0, "b": 30, "c": 100, "d": 200, "e": 260, "f": 210, "g": 90, "h": 0, "i": 10}
GROUP = [0, 0, 0, 1, 1, 1, 1, 2, 2]
POS = [True, True, False, True, True, False, False, True, False]
TAU = 0.5


def batch():
    reps = torch.tensor([unit(a) for a in ANGLES.values()], dtype=torch.float64)
    return reps, torch.tensor(GROUP), torch.tensor(POS)


def hand_nll(i: str, j: str, group: list[str]) -> float:
    """-log sim(i, j), sim = exp(cos/tau) over the other members of the group (eq. 8)."""
    s = {k: math.cos(math.radians(ANGLES[i] - ANGLES[k])) / TAU for k in group if k != i}
    return -(s[j] - math.log(sum(math.exp(v) for v in s.values())))


def test_contrastive_loss_matches_hand_computation():
    g0, g1 = ["a", "b", "c"], ["d", "e", "f", "g"]
    pairs = [("a", "b", g0), ("b", "a", g0), ("d", "e", g1), ("e", "d", g1)]
    expected = sum(hand_nll(i, j, g) for i, j, g in pairs) / len(pairs)
    got = contrastive_loss(*batch(), tau=TAU)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # tau matters: the same batch at tau=1 gives a different value
    assert contrastive_loss(*batch(), tau=1.0).item() != pytest.approx(expected, rel=1e-3)


def test_group_weights_scale_each_groups_pairs():
    g0, g1 = ["a", "b", "c"], ["d", "e", "f", "g"]
    w = torch.tensor([1.5, 1.0, 1.0], dtype=torch.float64)
    expected = (1.5 * (hand_nll("a", "b", g0) + hand_nll("b", "a", g0))
                + hand_nll("d", "e", g1) + hand_nll("e", "d", g1)) / 4
    assert weighted_contrastive_loss(*batch(), tau=TAU, group_weight=w).item() == pytest.approx(expected, rel=1e-9)


def test_denominator_stays_inside_the_group():
    reps, group, pos = batch()
    base = contrastive_loss(reps, group, pos, TAU)
    moved = reps.clone()
    moved[8] = torch.tensor(unit(31.0))  # a candidate of ANOTHER group, right next to b
    assert contrastive_loss(moved, group, pos, TAU).item() == pytest.approx(base.item(), rel=1e-12)


def test_no_positive_pair_is_zero_not_nan_and_backward_works():
    reps = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    loss = contrastive_loss(reps, torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, True, False]), tau=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(reps.grad, torch.zeros_like(reps))


def test_gradient_pulls_positives_together_and_pushes_the_negative_away():
    raw = torch.tensor([unit(0), unit(60), unit(20)], dtype=torch.float64, requires_grad=True)
    group, pos = torch.tensor([0, 0, 0]), torch.tensor([True, True, False])
    opt = torch.optim.SGD([raw], lr=0.1)
    before = None
    for _ in range(20):
        reps = torch.nn.functional.normalize(raw, dim=-1)
        loss = contrastive_loss(reps, group, pos, tau=0.5)
        before = loss.item() if before is None else before
        opt.zero_grad()
        loss.backward()
        assert raw.grad is not None and raw.grad.abs().sum() > 0
        opt.step()
    reps = torch.nn.functional.normalize(raw.detach(), dim=-1)
    assert contrastive_loss(reps, group, pos, tau=0.5).item() < before
    assert (reps[0] @ reps[1]).item() > math.cos(math.radians(60))  # positives closer than at the start


def test_contrastive_accuracy_counts_pairs_beating_every_negative():
    correct, total = contrastive_accuracy(*batch())
    # group 0: a.b=cos30 > a.c=cos100 ok; b.a=cos30 > b.c=cos70 ok.
    # group 1: d.e=cos60 < d.f=cos10 wrong; e.d=cos60 > max(e.f=cos50?, e.g=cos170): cos60 < cos50 wrong.
    # group 2: no pair.
    assert (correct, total) == (2, 4)


def test_lm_loss_is_label_smoothed_mean_over_labelled_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[0, 2:5] = torch.tensor([1, 2, 3])
    labels[1, 4] = 6
    loss, n = lm_loss(logits, labels, label_smoothing=0.1)
    assert n == 4
    terms = []
    for b, t in [(0, 2), (0, 3), (0, 4), (1, 4)]:
        logp = torch.log_softmax(logits[b, t - 1], dim=-1)  # position t-1 predicts token t
        y = labels[b, t]
        terms.append(-(0.9 * logp[y] + 0.1 * logp.mean()))
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    zero, n0 = lm_loss(logits, torch.full((2, 5), -100), 0.1)
    assert n0 == 0 and zero.item() == 0.0
