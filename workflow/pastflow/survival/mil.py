"""Attention-MIL over cell embeddings with a Cox partial-likelihood loss (torch).

A patient is a bag of cell image embeddings. Gated attention pooling (Ilse et al., ICML
2018) weighs the cells, and a linear layer maps the pooled vector to a log-risk. Training is
full-batch (every training patient in each step: the Cox loss compares patients with each
other, so it needs the risk set in one batch) on at most ``max_cells`` seeded-sampled cells
per patient; prediction uses the same number of cells, drawn with the same seed. Cell
embeddings are standardised and projected on their first ``input_dim`` principal
components, both fitted on the training cells: a wide embedding (128-d) through the first
layer for every cell of every patient was most of the run time, and tens of patients
cannot fit that many weights anyway.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pastflow.survival.settings import SurvivalSettings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: these tensors are tiny, and on a busy 2-core machine two
    threads made training 8x slower (measured: 9.1 s vs 1.1 s per fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class MILConfig:
    """Model and training settings (small: tens of patients).

    ``epochs``, ``max_cells`` and ``seed`` come from the config (``survival.mil_epochs``,
    ``survival.mil_cells``, ``survival.seed``: :func:`mil_config`); the model's own
    hyper-parameters below are not config keys.

    Measured on the default simulated cohort (46 patients, 5-fold x 3, c-index): these
    settings with 128 cells 0.622, 60 epochs 0.646, 300 epochs at lr 1e-3 0.594, 16-d input
    and weight decay 0.1 0.655, 256 cells 0.674 (the default): more cells per bag helps,
    longer training overfits.
    """

    epochs: int               # full-batch steps
    max_cells: int            # cells drawn per patient (with replacement when fewer)
    seed: int
    hidden: int = 32          # width of the cell projection
    attention: int = 16       # width of the gated attention
    dropout: float = 0.25     # on the cell projection
    lr: float = 3e-3
    weight_decay: float = 1e-2
    input_dim: int = 32       # principal components of the cell embeddings fed to the model


def mil_config(settings: SurvivalSettings) -> MILConfig | None:
    """The MIL model of the survival settings; None when ``mil_epochs`` is 0 (no model)."""
    if settings.mil_epochs == 0:
        return None
    return MILConfig(epochs=settings.mil_epochs, max_cells=settings.mil_cells,
                     seed=settings.seed)


class AttentionMIL(nn.Module):
    """``(batch, cells, d)`` bags + ``(batch, cells)`` bool mask -> ``(batch,)`` log-risk."""

    def __init__(self, in_dim: int, config: MILConfig):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.ReLU(),
                                     nn.Dropout(config.dropout))
        self.attend_v = nn.Linear(config.hidden, config.attention)
        self.attend_u = nn.Linear(config.hidden, config.attention)
        self.attend_w = nn.Linear(config.attention, 1)
        self.risk = nn.Linear(config.hidden, 1)

    def attention(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell weights ``(batch, cells)`` (softmax over a bag's cells) and projections."""
        h = self.project(bags)
        score = self.attend_w(torch.tanh(self.attend_v(h)) * torch.sigmoid(self.attend_u(h)))
        score = score.squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(score, dim=1), h

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights, h = self.attention(bags, mask)
        return self.risk((weights.unsqueeze(-1) * h).sum(dim=1)).squeeze(-1)


def cox_loss(log_risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood (Breslow ties), averaged over events.

    ``log_risk``, ``time``, ``event``: ``(n,)``. 0 when no event (nothing to learn from).
    """
    order = torch.argsort(time, descending=True)
    log_risk, event = log_risk[order], event[order].float()
    # After sorting by decreasing time, patient i's risk set is patients 0..i.
    log_cumsum = torch.logcumsumexp(log_risk, dim=0)
    n_events = event.sum()
    if n_events == 0:
        return log_risk.sum() * 0.0
    return -((log_risk - log_cumsum) * event).sum() / n_events


def _bags(cells: Sequence[np.ndarray], max_cells: int, seed: int, mean: np.ndarray,
          std: np.ndarray, basis: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(n, max_cells, k)`` bags of sampled, standardised, projected cells + mask."""
    rng = np.random.default_rng(seed)
    bags = np.zeros((len(cells), max_cells, basis.shape[1]), np.float32)
    mask = np.zeros((len(cells), max_cells), bool)
    for i, v in enumerate(cells):
        take = rng.choice(len(v), max_cells, replace=len(v) < max_cells) if len(v) > 0 else []
        bags[i, :len(take)] = ((v[take] - mean) / std) @ basis
        mask[i, :len(take)] = True
    return torch.from_numpy(bags), torch.from_numpy(mask)


@dataclass
class FittedMIL:
    """A trained model, the training cells' standardisation and PCA basis ``(d, k)``."""

    model: AttentionMIL
    mean: np.ndarray
    std: np.ndarray
    basis: np.ndarray
    config: MILConfig
    losses: list[float]

    def predict_risk(self, cells: Sequence[np.ndarray]) -> np.ndarray:
        """Log-risk ``(n_patients,)`` of bags ``cells`` (each ``(n_cells, d)``)."""
        bags, mask = _bags(cells, self.config.max_cells, self.config.seed + 1, self.mean,
                           self.std, self.basis)
        self.model.eval()
        with torch.no_grad(), _one_thread():
            return self.model(bags, mask).numpy().astype(np.float64)


def fit_mil(cells: Sequence[np.ndarray], time: np.ndarray, event: np.ndarray,
            config: MILConfig) -> FittedMIL:
    """Train :class:`AttentionMIL` on the bags ``cells`` with :func:`cox_loss` (seeded, CPU)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pooled = np.concatenate([v[rng.choice(len(v), min(len(v), config.max_cells), replace=False)]
                             for v in cells]).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    _, _, vt = np.linalg.svd((pooled - mean) / std, full_matrices=False)
    basis = vt[:min(config.input_dim, vt.shape[0])].T.astype(np.float32)
    bags, mask = _bags(cells, config.max_cells, config.seed, mean, std, basis)
    model = AttentionMIL(bags.shape[-1], config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    t = torch.as_tensor(np.asarray(time, np.float32))
    e = torch.as_tensor(np.asarray(event, np.float32))
    model.train()
    with _one_thread():
        losses = _train(model, optimiser, bags, mask, t, e, config.epochs)
    return FittedMIL(model, mean, std, basis, config, losses)


def _train(model: AttentionMIL, optimiser, bags: torch.Tensor, mask: torch.Tensor,
           t: torch.Tensor, e: torch.Tensor, epochs: int) -> list[float]:
    """Full-batch steps; the loss of each."""
    losses = []
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = cox_loss(model(bags, mask), t, e)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
