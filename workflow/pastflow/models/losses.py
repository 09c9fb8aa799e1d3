"""Training objectives of PAST/STAMP pretraining, as plain functions of tensors.

- :func:`clip_loss`: symmetric InfoNCE between paired embeddings (CLIP), with the learnable
  temperature of :class:`LearnableTemperature`;
- :func:`soft_clip_loss`: the BLEEP/PAST variant whose targets are the softmax of the pairs'
  within-modality similarities, so that two similar cells are not pushed apart as negatives;
- :func:`negative_binomial_nll`, :func:`poisson_nll`, :func:`masked_mse`: expression
  reconstruction, on raw counts (with the library-size offset built into the means) or log1p;
- :func:`pathway_regression_loss`: predicted vs measured pathway scores (MSE or cosine);
- :func:`weighted_total`: the weighted sum of the parts, weights from the config.

Losses are means over cells (and over measured entries where a mask is given), so their scale
does not depend on the batch size or the number of genes.

On several ranks the contrastive losses take a :class:`~pastflow.models.distributed.RowGather`:
this rank's cells are compared with every rank's (the global batch, gathered with gradient),
and the value returned is this rank's term of the global loss, so that the mean over the ranks
equals the loss of the whole batch on one process, and so do DistributedDataParallel's
averaged gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pastflow.models.distributed import RowGather


class LearnableTemperature(nn.Module):
    """CLIP's learnable logit scale ``1 / temperature``, stored as its log and clamped.

    The log keeps the scale positive and its updates multiplicative; the clamp (CLIP caps the
    scale at 100) keeps the softmax from saturating early in training.
    """

    def __init__(self, init: float = 0.07, min_temperature: float = 0.01,
                 max_temperature: float = 1.0):
        super().__init__()
        if not 0 < min_temperature <= init <= max_temperature:
            raise ValueError(f"need 0 < min_temperature <= init <= max_temperature, got "
                             f"{min_temperature}, {init}, {max_temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))
        self.bounds = (math.log(1.0 / max_temperature), math.log(1.0 / min_temperature))

    def forward(self) -> torch.Tensor:
        """The logit scale ``1 / temperature`` (a 0-d tensor)."""
        return self.log_scale.clamp(*self.bounds).exp()


def _global_batch(a: torch.Tensor, b: torch.Tensor, gather: RowGather | None):
    """``(all_a, all_b, labels, share)``: every rank's rows of ``a`` and ``b``, the index in
    them of this rank's pairs, and this rank's share of the global batch
    (:attr:`RowGather.share`)."""
    if gather is None:
        gather = RowGather([len(a)])
    labels = gather.offset + torch.arange(len(a), device=a.device)
    return gather(a), gather(b), labels, gather.share


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float,
              gather: RowGather | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` must pick row ``i`` of ``b`` and vice versa.

    ``a``, ``b``: ``(n, d)`` L2-normalised embeddings of ``n`` pairs; ``logit_scale``:
    ``1 / temperature``. Returns ``(CE(s a b^T, I) + CE(s b a^T, I)) / 2``, a 0-d tensor.
    With ``gather`` (several ranks): ``b`` and ``a`` are every rank's (``N`` columns), the rows
    this rank's, and the value this rank's term: its mean over the ranks is the loss of the
    ``N`` pairs.
    """
    all_a, all_b, labels, share = _global_batch(a, b, gather)
    return share * (F.cross_entropy(logit_scale * a @ all_b.T, labels)
                    + F.cross_entropy(logit_scale * b @ all_a.T, labels)) / 2


def soft_clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float,
                   target_temperature: float = 1.0,
                   gather: RowGather | None = None) -> torch.Tensor:
    """InfoNCE with soft targets from within-modality similarity (BLEEP, PAST).

    ``targets = softmax((a a^T + b b^T) / 2 / target_temperature)`` row-wise, treated as
    constants; the loss is the mean of the cross-entropies of ``s a b^T`` and ``s b a^T``
    against them. Unlike BLEEP's code, both directions use row-normalised targets (its
    transpose of the row-softmax is column-normalised for the second direction).
    With ``gather``: as :func:`clip_loss`, the targets too from the whole global batch.
    """
    all_a, all_b, _, share = _global_batch(a, b, gather)
    with torch.no_grad():
        within = (a @ all_a.T + b @ all_b.T) / 2
        targets = F.softmax(within / target_temperature, dim=-1)
    return share * (F.cross_entropy(logit_scale * a @ all_b.T, targets)
                    + F.cross_entropy(logit_scale * b @ all_a.T, targets)) / 2


def negative_binomial_log_prob(counts: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                               eps: float = 1e-8) -> torch.Tensor:
    """Elementwise log NB(counts; mean ``mu``, inverse dispersion ``theta``).

    ``Var = mu + mu^2 / theta``; the same law as ``scipy.stats.nbinom(n=theta,
    p=theta / (theta + mu))``. Shapes broadcast (``theta`` is per gene, ``(G,)``).
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1)
            + theta * (torch.log(theta + eps) - log_theta_mu)
            + counts * (torch.log(mu + eps) - log_theta_mu))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def negative_binomial_nll(counts: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative NB log-likelihood over the measured entries. ``counts``, ``mu``: ``(n, G)``."""
    return _masked_mean(-negative_binomial_log_prob(counts, mu, theta), mask)


def poisson_nll(counts: torch.Tensor, rate: torch.Tensor, mask: torch.Tensor | None = None,
                eps: float = 1e-8) -> torch.Tensor:
    """Mean negative Poisson log-likelihood (full, with ``log counts!``) over measured entries."""
    log_prob = counts * torch.log(rate + eps) - rate - torch.lgamma(counts + 1)
    return _masked_mean(-log_prob, mask)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the measured entries."""
    return _masked_mean((prediction - target) ** 2, mask)


def pathway_regression_loss(prediction: torch.Tensor, target: torch.Tensor,
                            mask: torch.Tensor | None = None, kind: str = "mse") -> torch.Tensor:
    """Predicted vs measured pathway scores ``(n, P)``: masked MSE, or ``1 - cosine`` per cell."""
    if kind == "mse":
        return masked_mse(prediction, target, mask)
    if kind == "cosine":
        if mask is not None:
            prediction, target = prediction * mask, target * mask
        return (1 - F.cosine_similarity(prediction, target, dim=1, eps=1e-8)).mean()
    raise ValueError(f"pathway regression loss must be 'mse' or 'cosine', got {kind!r}")


def weighted_total(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum(weights[k] * parts[k])`` over the parts; every part must have a weight."""
    missing = sorted(set(parts) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss part(s) {missing}")
    return sum(weights[name] * value for name, value in parts.items())
