"""Spatial context (PAST): a cell's embedding attends to its k nearest neighbours' embeddings."""

from __future__ import annotations

import torch
from torch import nn


class SpatialFusion(nn.Module):
    """Fuse a cell with its neighbours by multi-head attention, residually.

    ``out = LayerNorm(cell + Attention(query=cell, keys=values=neighbours))``: the cell asks
    its neighbourhood what to add. Neighbours flagged absent in ``mask`` are not attended to;
    a cell with no neighbour at all gets ``LayerNorm(cell)``.

    Shapes: ``cell`` ``(n, dim)``, ``neighbours`` ``(n, k, dim)``, ``mask`` ``bool (n, k)``
    (True = a real neighbour) -> ``(n, dim)``.
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"spatial fusion: width {dim} is not divisible by {heads} heads")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, cell: torch.Tensor, neighbours: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(neighbours.shape[:2], dtype=torch.bool, device=cell.device)
        isolated = ~mask.any(dim=1)
        # Attention over an all-masked row is 0/0; give such rows one (ignored) key.
        key_padding = ~mask
        key_padding[isolated, 0] = False
        context, _ = self.attention(cell.unsqueeze(1), neighbours, neighbours,
                                    key_padding_mask=key_padding, need_weights=False)
        context = context.squeeze(1).masked_fill(isolated.unsqueeze(1), 0.0)
        return self.norm(cell + context)
