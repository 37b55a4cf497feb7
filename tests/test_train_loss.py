"""The losses of SPEC §4 (eq. 6-9) against values computed by hand."""

import math

import pytest
import torch

from raydebias.train.loss import (
    ContrastiveDebiasLoss,
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


# ------------------------------------------------------------------------------------------------
# ContrastiveDebiasLoss: eq. 6-9 assembled
# ------------------------------------------------------------------------------------------------


def lm_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)  # one reference row per group
    labels = torch.full((3, 6), -100)
    labels[0, 3:6] = torch.tensor([1, 2, 3])
    labels[1, 2:4] = torch.tensor([4, 5])
    labels[2, 5] = 10
    return logits, labels


@pytest.mark.parametrize("alpha, tau, toxic_weight, scope, group_toxic", [
    (4.0, 1.0, 1.5, "batch", [True, False, False]),   # the paper's defaults: w_tox scales the whole batch
    (4.0, 1.0, 1.5, "batch", [False, False, False]),  # no toxic negative: w_tox = 1
    (2.0, TAU, 3.0, "group", [True, False, False]),   # per group: only group 0's pairs are scaled
    (0.5, TAU, 1.5, "group", [False, True, True]),
])
def test_module_equals_eq_6_to_9_assembled_by_hand(alpha, tau, toxic_weight, scope, group_toxic):
    logits, labels = lm_batch()
    reps, group, pos = batch()
    toxic = torch.tensor(group_toxic)
    loss_fn = ContrastiveDebiasLoss(alpha=alpha, tau=tau, toxic_weight=toxic_weight, scope=scope,
                                    label_smoothing=0.1)
    out = loss_fn(logits, labels, reps, group, pos, toxic)

    g0, g1 = ["a", "b", "c"], ["d", "e", "f", "g"]
    terms = {0: [hand_nll("a", "b", g0), hand_nll("b", "a", g0)],
             1: [hand_nll("d", "e", g1), hand_nll("e", "d", g1)]}
    if tau != TAU:  # hand_nll is at TAU; other temperatures go through the tested pure function
        l_cl_plain = contrastive_loss(reps, group, pos, tau).item()
    else:
        l_cl_plain = sum(terms[0] + terms[1]) / 4
    if scope == "batch":
        l_cl = (toxic_weight if any(group_toxic) else 1.0) * l_cl_plain
    else:
        w = [toxic_weight if t else 1.0 for t in group_toxic]
        l_cl = (w[0] * sum(terms[0]) + w[1] * sum(terms[1])) / 4
    l_ce, n = lm_loss(logits, labels, 0.1)
    assert out.lm_tokens == n == 6
    assert out.l_ce.item() == pytest.approx(l_ce.item(), rel=1e-12)
    assert out.l_cl.item() == pytest.approx(l_cl, rel=1e-6)
    assert out.loss.item() == pytest.approx(l_ce.item() + alpha * l_cl, rel=1e-6)
    assert (out.correct, out.pairs) == contrastive_accuracy(reps, group, pos) == (2, 4)


def test_alpha_zero_is_the_lm_loss_alone_and_smoothing_is_passed_through():
    logits, labels = lm_batch(1)
    reps, group, pos = batch()
    toxic = torch.tensor([True, False, False])
    out = ContrastiveDebiasLoss(alpha=0.0, label_smoothing=0.0)(logits, labels, reps, group, pos, toxic)
    assert out.l_cl.item() > 0  # still computed and reported
    assert out.loss.item() == out.l_ce.item() == lm_loss(logits, labels, 0.0)[0].item()
    smoothed = ContrastiveDebiasLoss(alpha=0.0, label_smoothing=0.3)(logits, labels, reps, group, pos, toxic)
    assert smoothed.l_ce.item() == lm_loss(logits, labels, 0.3)[0].item() != out.l_ce.item()


def test_gradients_reach_the_logits_and_the_representations():
    logits, labels = lm_batch(2)
    logits = logits.float().requires_grad_()
    reps, group, pos = batch()
    raw = reps.float().requires_grad_()
    out = ContrastiveDebiasLoss()(logits, labels, torch.nn.functional.normalize(raw, dim=-1), group, pos,
                                  torch.tensor([True, False, False]))
    out.loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert raw.grad is not None and raw.grad[:7].abs().sum() > 0
    assert torch.equal(raw.grad[7:], torch.zeros_like(raw.grad[7:]))  # group 2: one positive, no pair
    # computed in fp32 whatever the model's compute dtype
    half = ContrastiveDebiasLoss()(logits.detach().bfloat16(), labels, reps.bfloat16(), group, pos,
                                   torch.tensor([False, False, False]))
    assert half.loss.dtype == half.l_cl.dtype == torch.float32


def test_no_positive_pair_gives_the_lm_loss_and_a_zero_contrastive_term():
    logits, labels = lm_batch(3)
    reps = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    out = ContrastiveDebiasLoss(alpha=4.0)(logits, labels, reps, torch.tensor([0, 0, 1, 1]),
                                           torch.tensor([True, False, True, False]), torch.tensor([True, True]))
    assert out.l_cl.item() == 0.0 and out.pairs == 0
    assert out.loss.item() == pytest.approx(out.l_ce.item(), rel=1e-12)


def test_from_config_reads_the_train_section_and_bad_values_are_refused():
    from raydebias.config import load_config

    t = load_config(None, ["train.alpha=2", "train.tau=0.5", "train.toxic_weight=3",
                           "train.toxic_weight_scope=group", "train.label_smoothing=0.2"]).train
    loss_fn = ContrastiveDebiasLoss.from_config(t)
    assert (loss_fn.alpha, loss_fn.tau, loss_fn.toxic_weight, loss_fn.scope, loss_fn.label_smoothing) == (
        2.0, 0.5, 3.0, "group", 0.2)
    assert list(loss_fn.parameters()) == []
    with pytest.raises(ValueError, match="tau must be > 0, got 0"):
        ContrastiveDebiasLoss(tau=0)
    with pytest.raises(ValueError, match="scope must be 'batch' or 'group', got 'rows'"):
        ContrastiveDebiasLoss(scope="rows")
