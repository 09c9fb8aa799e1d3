"""Expression and pathway encoders: vectors of a cell's molecular state -> feature vectors.

Registered names (see :mod:`pastflow.models.registry`):

- expression ``mlp``: an MLP over the log-normalised cohort genes ``float (n, G)``;
- expression ``rank_transformer``: PAST's cell encoder, a transformer over the cell's genes
  as tokens, most expressed first;
- pathway ``pathway_mlp``: an MLP over pathway scores ``float (n, P)`` (STAMP).

Every encoder's ``forward(values, mask=None)`` takes the values and an optional ``bool``
mask of the same shape (True = measured in this cell's sample) and returns
``float (n, out_dim)``. Unmeasured entries arrive as 0 and are ignored where it matters.
"""

from __future__ import annotations

import torch
from torch import nn

from pastflow.models.registry import register_expression_encoder, register_pathway_encoder


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    """``Linear -> LayerNorm -> GELU -> Dropout`` per hidden width; returns it and its out width."""
    layers, width = [], in_dim
    for out in hidden:
        layers += [nn.Linear(width, out), nn.LayerNorm(out), nn.GELU(), nn.Dropout(dropout)]
        width = out
    return nn.Sequential(*layers), width


class VectorMLP(nn.Module):
    """An MLP over a fixed-length vector (genes or pathways); masked entries are zeroed."""

    def __init__(self, n_inputs: int, hidden: list[int] | tuple[int, ...] = (512, 256),
                 dropout: float = 0.1):
        super().__init__()
        if n_inputs < 1:
            raise ValueError(f"an MLP encoder needs at least one input, got {n_inputs}")
        self.net, self.out_dim = mlp(n_inputs, hidden, dropout)
        self.n_inputs = n_inputs

    def forward(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            values = values * mask
        return self.net(values)


class RankTransformer(nn.Module):
    """PAST's cell encoder: the cell's top genes, most expressed first, as transformer tokens.

    Each token is ``gene embedding + value embedding(expression) + rank embedding``; the
    context is the ``context`` most expressed measured genes of the cell; genes with zero
    expression (or unmeasured) are padding, masked out of attention and of the mean pool.

    Input ``values`` ``float (n, G)`` log-normalised; output ``float (n, dim)``.
    """

    def __init__(self, n_genes: int, context: int = 64, dim: int = 128, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.n_genes, self.context, self.out_dim = n_genes, min(context, n_genes), dim
        self.gene_embedding = nn.Embedding(n_genes, dim)
        # Expression is continuous: a small MLP of the scalar rather than value bins.
        self.value_embedding = nn.Sequential(nn.Linear(1, dim), nn.GELU(), nn.Linear(dim, dim))
        self.rank_embedding = nn.Embedding(self.context, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokens(self, values: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rank-order the genes: ``(gene ids long (n, c), values (n, c), padding bool (n, c))``."""
        ranked = values.detach().float()
        if mask is not None:
            ranked = ranked.masked_fill(~mask, float("-inf"))
        # Stable sort: ties (many genes at the same small count) keep gene order, so the
        # tokens do not depend on the sort implementation.
        order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :self.context]
        top = torch.gather(values, 1, order)
        padding = ~(torch.gather(ranked, 1, order) > 0)
        # A cell with nothing expressed keeps one token, so that attention and pooling are defined.
        padding[:, 0] = False
        return order, top, padding

    def forward(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        genes, top, padding = self.tokens(values, mask)
        ranks = torch.arange(genes.shape[1], device=values.device)
        x = (self.gene_embedding(genes) + self.value_embedding(top.unsqueeze(-1))
             + self.rank_embedding(ranks))
        x = self.transformer(x, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1)
        return self.norm(pooled)


@register_expression_encoder("mlp")
def expression_mlp(n_genes: int, hidden: list[int] | tuple[int, ...] = (512, 256),
                   dropout: float = 0.1) -> VectorMLP:
    return VectorMLP(n_genes, hidden, dropout)


@register_expression_encoder("rank_transformer")
def rank_transformer(n_genes: int, context: int = 64, dim: int = 128, depth: int = 2,
                     heads: int = 4, dropout: float = 0.1) -> RankTransformer:
    return RankTransformer(n_genes, context, dim, depth, heads, dropout)


@register_pathway_encoder("pathway_mlp")
def pathway_mlp(n_pathways: int, hidden: list[int] | tuple[int, ...] = (128, 128),
                dropout: float = 0.1) -> VectorMLP:
    return VectorMLP(n_pathways, hidden, dropout)
