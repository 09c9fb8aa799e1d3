"""pastflow.models.losses against values computed by hand (math) or by scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from pastflow.models import losses as L


def _ce(logits_row, target_index):
    """-log softmax(logits_row)[target_index], by hand."""
    return -(logits_row[target_index] - math.log(sum(math.exp(v) for v in logits_row)))


def test_clip_loss_of_perfectly_aligned_pairs_at_low_temperature_is_zero():
    a = torch.eye(4)
    assert L.clip_loss(a, a.clone(), 100.0).item() == pytest.approx(0.0, abs=1e-30)
    # ... and log(n) when the embeddings carry no information (all logits equal).
    same = torch.ones(4, 2) / math.sqrt(2)
    assert L.clip_loss(same, same, 10.0).item() == pytest.approx(math.log(4), rel=1e-6)


def test_clip_loss_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    logits = [[2.0, 1.2], [0.0, 1.6]]  # scale * a @ b.T
    rows = (_ce(logits[0], 0) + _ce(logits[1], 1)) / 2
    cols = (_ce([logits[0][0], logits[1][0]], 0) + _ce([logits[0][1], logits[1][1]], 1)) / 2
    assert L.clip_loss(a, b, scale).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_soft_clip_loss_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    scale, tau = 3.0, 0.5
    ab = a @ b.T
    logits = (scale * ab).tolist()
    within = ((a @ a.T + b @ b.T) / 2 / tau).tolist()
    targets = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in within]

    def soft_ce(row, target):
        log_z = math.log(sum(math.exp(v) for v in row))
        return -sum(t * (v - log_z) for v, t in zip(row, target))

    forward = sum(soft_ce(logits[i], targets[i]) for i in range(2)) / 2
    logits_t = [[logits[j][i] for j in range(2)] for i in range(2)]
    backward = sum(soft_ce(logits_t[i], targets[i]) for i in range(2)) / 2
    assert L.soft_clip_loss(a, b, scale, tau).item() == pytest.approx((forward + backward) / 2,
                                                                      rel=1e-6)


def test_soft_clip_loss_reduces_to_clip_loss_when_targets_are_one_hot():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    b = torch.nn.functional.normalize(a + 0.1 * torch.randn(6, 8), dim=1)
    # A very low target temperature makes softmax(within) the identity (self-similarity is max).
    assert L.soft_clip_loss(a, b, 5.0, target_temperature=1e-4).item() == pytest.approx(
        L.clip_loss(a, b, 5.0).item(), rel=1e-5)


def test_soft_clip_targets_carry_no_gradient():
    """The gradient is that of the cross-entropies with the targets held constant."""
    torch.manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    L.soft_clip_loss(a, b, 2.0).backward()
    a_const = a.detach().clone().requires_grad_()
    targets = torch.softmax((a.detach() @ a.detach().T + b @ b.T) / 2, dim=-1)
    ce = torch.nn.functional.cross_entropy
    ((ce(2.0 * a_const @ b.T, targets) + ce(2.0 * b @ a_const.T, targets)) / 2).backward()
    assert torch.allclose(a.grad, a_const.grad, atol=1e-7)


def test_learnable_temperature_starts_at_init_and_is_clamped():
    t = L.LearnableTemperature(init=0.07, min_temperature=0.01, max_temperature=1.0)
    assert t().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        t.log_scale.fill_(50.0)
    assert t().item() == pytest.approx(100.0, rel=1e-6)  # 1 / min_temperature
    with torch.no_grad():
        t.log_scale.fill_(-5.0)
    assert t().item() == pytest.approx(1.0, rel=1e-6)    # 1 / max_temperature
    with pytest.raises(ValueError):
        L.LearnableTemperature(init=0.001, min_temperature=0.01)


def test_negative_binomial_log_prob_matches_scipy():
    counts = torch.tensor([0.0, 1.0, 3.0, 10.0, 57.0, 0.0, 2.0])
    mu = torch.tensor([0.5, 2.0, 3.0, 8.5, 40.0, 12.0, 0.1], dtype=torch.float64)
    theta = torch.tensor([0.3, 1.0, 5.0, 2.0, 10.0, 0.05, 100.0], dtype=torch.float64)
    ours = L.negative_binomial_log_prob(counts.double(), mu, theta, eps=0.0).numpy()
    theirs = st.nbinom.logpmf(counts.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_negative_binomial_nll_is_the_masked_mean():
    counts = torch.tensor([[1.0, 4.0], [0.0, 2.0]])
    mu = torch.tensor([[1.5, 3.0], [0.2, 2.0]])
    theta = torch.tensor([2.0, 0.5])
    mask = torch.tensor([[True, False], [True, True]])
    logp = st.nbinom.logpmf([1, 0, 2], [2.0, 2.0, 0.5], [2 / 3.5, 2 / 2.2, 0.5 / 2.5])
    assert L.negative_binomial_nll(counts, mu, theta, mask).item() == pytest.approx(
        -logp.mean(), rel=1e-5)


def test_poisson_nll_matches_scipy():
    counts = torch.tensor([[0.0, 3.0, 7.0]])
    rate = torch.tensor([[0.4, 2.5, 9.0]])
    expected = -st.poisson.logpmf([0, 3, 7], [0.4, 2.5, 9.0]).mean()
    assert L.poisson_nll(counts, rate).item() == pytest.approx(expected, rel=1e-5)


def test_masked_mse_and_pathway_losses():
    prediction = torch.tensor([[1.0, 2.0, 5.0]])
    target = torch.tensor([[0.0, 2.0, -5.0]])
    mask = torch.tensor([[True, True, False]])
    assert L.masked_mse(prediction, target, mask).item() == pytest.approx(0.5)
    assert L.pathway_regression_loss(prediction, target, mask, "mse").item() == pytest.approx(0.5)
    parallel = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    orthogonal = torch.tensor([[-2.0, 1.0], [3.0, 0.0]])
    assert L.pathway_regression_loss(parallel, 2 * parallel, kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert L.pathway_regression_loss(parallel, orthogonal, kind="cosine").item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        L.pathway_regression_loss(parallel, parallel, kind="l1")


def test_weighted_total_uses_every_weight_and_needs_one_per_part():
    parts = {"clip": torch.tensor(2.0), "reconstruction": torch.tensor(3.0)}
    assert L.weighted_total(parts, {"clip": 0.5, "reconstruction": 2.0, "unused": 9.0}).item() == 7.0
    with pytest.raises(KeyError, match="reconstruction"):
        L.weighted_total(parts, {"clip": 1.0})
