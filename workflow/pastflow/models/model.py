"""``PastModel``: the PAST/STAMP pretraining model.

Branches (each built only when a loss with weight > 0 needs it):

- image: encoder (registry) -> projection -> [spatial fusion with the k nearest cells'
  patches] -> ``h`` (the image embedding before L2 normalisation), ``embed_dim`` wide;
- expression: encoder (registry) over the log-normalised cohort genes -> projection;
- pathway: encoder (registry) over the pathway scores -> projection;
- heads on ``h``: expression reconstruction (NB / Poisson on raw counts, or MSE on log1p)
  and pathway-score regression;
- learnable temperatures of the contrastive losses.

A batch is a dict of tensors (:mod:`pastflow.models.data` makes them):
``patch`` ``float (n, 3, s, s)``; optional ``neighbor_patches`` ``(n, k, 3, s, s)`` and
``neighbor_mask`` ``bool (n, k)``; ``expression`` ``float (n, G)`` log1p-normalised and
``gene_mask`` ``bool (n, G)``; ``counts`` ``float (n, G)`` and ``library_size`` ``float (n,)``
(raw counts summed over the measured cohort genes); ``pathways`` ``float (n, P)`` and
``pathway_mask`` ``bool (n, P)``. Only ``patch`` is required by :meth:`PastModel.forward`;
or, from a frozen image encoder's cache (:mod:`pastflow.models.feature_cache`), its features
``image_features`` ``float (n, d)`` and ``neighbor_features`` ``(n, k, d)`` instead of the
patches (:meth:`PastModel.encode_features`).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from pastflow.errors import InputError
from pastflow.models import losses as L
from pastflow.models.distributed import row_gather
from pastflow.models.expression import mlp
from pastflow.models.registry import (build_expression_encoder, build_image_encoder,
                                      build_pathway_encoder)
from pastflow.models.spatial import SpatialFusion

log = logging.getLogger(__name__)

# Loss parts that compare each cell with the others of the (global) batch.
CONTRASTIVE_PARTS = frozenset({"clip", "soft_clip", "pathway_clip"})


class ProjectionHead(nn.Module):
    """BLEEP's projection: ``LayerNorm(W2 GELU(W1 x) + W1 x)``, ``(n, in_dim) -> (n, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.project = nn.Linear(in_dim, out_dim)
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.project(x)
        return self.norm(projected + self.mix(projected))


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    body, width = mlp(in_dim, [hidden] if hidden else [], dropout=0.0)
    return nn.Sequential(*body, nn.Linear(width, out_dim))


class PastModel(nn.Module):
    """Image, expression and pathway encoders aligned in one embedding space.

    Args:
        config: the ``model`` section of a resolved config (:func:`pastflow.pretrain.settings.
            resolve_pretrain_config`), with ``genes``, ``pathways`` and ``image_px`` filled in.
        load_pretrained: read the image encoder's local ``weights`` file, if it has one;
            False when a pastflow checkpoint will supply every tensor.
    """

    def __init__(self, config: dict, *, load_pretrained: bool = True):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.weights = {k: float(v) for k, v in config["losses"].items()}
        self.genes = list(config.get("genes") or [])
        self.pathways = list(config.get("pathways") or [])
        dim = int(config["embed_dim"])
        w = self.weights
        uses_expression = w["clip"] > 0 or w["soft_clip"] > 0
        if (uses_expression or w["reconstruction"] > 0) and not self.genes:
            raise InputError(None, "expression losses are on but the model has no genes")
        if (w["pathway_clip"] > 0 or w["pathway_regression"] > 0) and not self.pathways:
            raise InputError(None, "pathway losses are on but the model has no pathways")
        if not config.get("image_px"):
            raise InputError(None, "model.image_px (the patch size) is not set")

        image_kwargs = dict(config["image"]["kwargs"])
        if not load_pretrained and "weights" in image_kwargs:
            image_kwargs["load_weights"] = False
        self.image_encoder = build_image_encoder(config["image"]["name"],
                                                 image_px=int(config["image_px"]), **image_kwargs)
        self.image_projection = ProjectionHead(self.image_encoder.out_dim, dim)
        spatial = config["spatial"]
        self.k_neighbors = int(spatial["k"])
        self.spatial_fusion = (SpatialFusion(dim, int(spatial["heads"]), float(spatial["dropout"]))
                               if self.k_neighbors else None)

        self.expression_encoder = self.expression_projection = None
        if uses_expression:
            self.expression_encoder = build_expression_encoder(
                config["expression"]["name"], n_genes=len(self.genes),
                **config["expression"]["kwargs"])
            self.expression_projection = ProjectionHead(self.expression_encoder.out_dim, dim)
        self.pathway_encoder = self.pathway_projection = None
        if w["pathway_clip"] > 0:
            self.pathway_encoder = build_pathway_encoder(
                config["pathway"]["name"], n_pathways=len(self.pathways),
                **config["pathway"]["kwargs"])
            self.pathway_projection = ProjectionHead(self.pathway_encoder.out_dim, dim)

        t = config["temperature"]
        self.temperature = (L.LearnableTemperature(t["init"], t["min"], t["max"])
                            if uses_expression else None)
        self.pathway_temperature = (L.LearnableTemperature(t["init"], t["min"], t["max"])
                                    if w["pathway_clip"] > 0 else None)

        self.likelihood = config["reconstruction"]["likelihood"]
        self.reconstruction_head = self.log_theta = None
        if w["reconstruction"] > 0:
            self.reconstruction_head = _head(dim, int(config["reconstruction"]["hidden"]),
                                             len(self.genes))
            if self.likelihood == "nb":
                # Per-gene inverse dispersion theta = exp(log_theta), learned (scVI's "gene").
                self.log_theta = nn.Parameter(torch.zeros(len(self.genes)))
        self.pathway_head = None
        if w["pathway_regression"] > 0:
            self.pathway_head = _head(dim, int(config["pathway_head"]["hidden"]),
                                      len(self.pathways))

    # -- forward ---------------------------------------------------------------------------

    def encode_image(self, patch: torch.Tensor, neighbor_patches: torch.Tensor | None = None,
                     neighbor_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Image embedding before normalisation, ``(n, embed_dim)``; with neighbours when the
        model has spatial fusion and they are given."""
        if self.spatial_fusion is None or neighbor_patches is None:
            return self.encode_features(self.image_encoder(patch))
        n, k = neighbor_patches.shape[:2]
        # One encoder pass over the cells and their neighbours (batch norm sees them all).
        features = self.image_encoder(torch.cat([patch, neighbor_patches.flatten(0, 1)]))
        return self.encode_features(features[:n], features[n:].unflatten(0, (n, k)),
                                    neighbor_mask)

    def encode_features(self, features: torch.Tensor,
                        neighbor_features: torch.Tensor | None = None,
                        neighbor_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Image embedding before normalisation, ``(n, embed_dim)``, from the image encoder's
        features ``(n, d)`` (and its neighbours' ``(n, k, d)``): the projection, then the
        spatial fusion when the model has it and neighbours are given. :meth:`encode_image`
        ends here; training on a frozen encoder's cached features starts here."""
        if self.spatial_fusion is None or neighbor_features is None:
            return self.image_projection(features)
        n, k = neighbor_features.shape[:2]
        # One projection pass over cells and neighbours: the same dropout draws either way.
        embedded = self.image_projection(torch.cat([features, neighbor_features.flatten(0, 1)]))
        cell, neighbours = embedded[:n], embedded[n:].unflatten(0, (n, k))
        return self.spatial_fusion(cell, neighbours, neighbor_mask)

    def forward(self, batch: dict) -> dict:
        """Embeddings and predictions for the modalities present in ``batch``.

        Returns (``n`` cells): ``image_h`` ``(n, D)`` and ``image`` (L2-normalised);
        ``expression`` and ``pathway`` embeddings ``(n, D)``, normalised, when the model and the
        batch have them; ``expression_out`` ``(n, G)`` (logits of the gene proportions for
        nb/poisson, log1p values for mse); ``pathway_pred`` ``(n, P)``; ``logit_scale``,
        ``pathway_logit_scale``, ``theta`` ``(G,)``. Temperatures and dispersions are returned
        here (not read in the loss) so that DistributedDataParallel sees them used.
        """
        out = {}
        if "image_features" in batch:
            h = self.encode_features(batch["image_features"], batch.get("neighbor_features"),
                                     batch.get("neighbor_mask"))
        else:
            h = self.encode_image(batch["patch"], batch.get("neighbor_patches"),
                                  batch.get("neighbor_mask"))
        out["image_h"], out["image"] = h, F.normalize(h.float(), dim=-1)
        if self.expression_encoder is not None and "expression" in batch:
            e = self.expression_projection(
                self.expression_encoder(batch["expression"], batch.get("gene_mask")))
            out["expression"] = F.normalize(e.float(), dim=-1)
            out["logit_scale"] = self.temperature()
        if self.pathway_encoder is not None and "pathways" in batch:
            p = self.pathway_projection(
                self.pathway_encoder(batch["pathways"], batch.get("pathway_mask")))
            out["pathway"] = F.normalize(p.float(), dim=-1)
            out["pathway_logit_scale"] = self.pathway_temperature()
        if self.reconstruction_head is not None:
            out["expression_out"] = self.reconstruction_head(h).float()
            if self.log_theta is not None:
                out["theta"] = self.log_theta.exp()
        if self.pathway_head is not None:
            out["pathway_pred"] = self.pathway_head(h).float()
        return out

    # -- predictions and losses ------------------------------------------------------------

    def predicted_expression(self, out: dict, gene_mask: torch.Tensor | None = None,
                             library_size: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted expression ``(n, G)`` from ``forward``'s output: expected raw counts for
        nb/poisson (proportions of ``library_size``; proportions when it is None), log1p
        values for mse. Unmeasured genes (``gene_mask`` False) get no share of the library."""
        values = out["expression_out"]
        if self.likelihood == "mse":
            return values
        if gene_mask is not None:
            values = values.masked_fill(~gene_mask, torch.finfo(values.dtype).min)
        proportions = torch.softmax(values, dim=-1)
        return proportions if library_size is None else proportions * library_size.unsqueeze(-1)

    def compute_loss(self, out: dict, batch: dict, *, across_ranks: bool = False
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)``: the weighted sum of the losses with weight > 0, and each part.

        ``across_ranks`` (training, every rank in step): in a process group of several ranks
        the contrastive parts compare this rank's cells with the whole global batch
        (:class:`~pastflow.models.distributed.RowGather`), and every part is this rank's term
        of the global loss, a local mean times the rank's share of the batch (1 for equal
        batches), so the mean over ranks, and DDP's averaged gradient, are those of one
        process on the whole batch. Exactly so for per-cell means; a masked mean (over the
        measured genes or pathways) is averaged per rank. Validation leaves it off: its ranks
        score different numbers of batches.
        """
        w, parts = self.weights, {}
        gather = row_gather(len(out["image"]), out["image"].device) if across_ranks else None
        if w["clip"] > 0:
            parts["clip"] = L.clip_loss(out["image"], out["expression"], out["logit_scale"],
                                        gather)
        if w["soft_clip"] > 0:
            parts["soft_clip"] = L.soft_clip_loss(
                out["image"], out["expression"], out["logit_scale"],
                float(self.config["soft_target_temperature"]), gather)
        if w["reconstruction"] > 0:
            mask = batch.get("gene_mask")
            if self.likelihood == "mse":
                parts["reconstruction"] = L.masked_mse(out["expression_out"],
                                                       batch["expression"], mask)
            else:
                mu = self.predicted_expression(out, mask, batch["library_size"])
                if self.likelihood == "nb":
                    parts["reconstruction"] = L.negative_binomial_nll(batch["counts"], mu,
                                                                      out["theta"], mask)
                else:
                    parts["reconstruction"] = L.poisson_nll(batch["counts"], mu, mask)
        if w["pathway_regression"] > 0:
            parts["pathway_regression"] = L.pathway_regression_loss(
                out["pathway_pred"], batch["pathways"], batch.get("pathway_mask"),
                self.config["pathway_head"]["kind"])
        if w["pathway_clip"] > 0:
            parts["pathway_clip"] = L.clip_loss(out["image"], out["pathway"],
                                                out["pathway_logit_scale"], gather)
        if gather is not None and gather.share != 1:
            for name in set(parts) - CONTRASTIVE_PARTS:  # contrastive ones carry the share
                parts[name] = parts[name] * gather.share
        return L.weighted_total(parts, w), parts

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``compute_loss(self(batch), batch)``."""
        return self.compute_loss(self(batch), batch)
