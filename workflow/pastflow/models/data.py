"""Training data: cells of several samples, each a patch joined to its expression by cell id.

One sample = a patch store (``results/patches/{sample}.h5``, :class:`PatchStore`) + its QC
table (``results/qc/{sample}.h5ad``: ``layers["counts"]`` raw, ``X`` log1p-normalised,
``var["highly_variable"]``, ``obs["cell_id"]``). :class:`CellDataset` keeps the cells found in
both (and inside the slide) and serves, per cell or per batch (:meth:`CellDataset.batch`), the
tensors of a model batch (see :mod:`pastflow.models.model`) plus ``index`` (its position in the
dataset), ``sample`` and ``neighbors`` (the dataset indices of its k nearest cells in the same
sample, -1 = none). Patches are served as stored (``uint8``) with their augmentation draws
(``augment``, ``neighbor_augment``); :func:`pastflow.models.augment.prepare_images` augments
and normalises them where the batch trains. A dataset given a frozen image encoder's cached
features (:meth:`CellDataset.serve_features`, :mod:`pastflow.models.feature_cache`) serves
those instead of patches: ``image_features`` ``float32 (n, d)`` and, with neighbours,
``neighbor_features`` ``(n, k, d)`` (zeros where absent).

Expression is over one cohort gene list (genes a sample did not measure are 0 and masked);
pathway scores are computed per sample (z-scores are relative to the sample's own cells,
which also removes per-sample shifts) over one cohort pathway list, likewise masked.
"""

from __future__ import annotations

import copy
import logging
import random
import signal
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pastflow.errors import InputError
from pastflow.models.augment import Augmentation, draw_parameters
from pastflow.models.pathways import GeneSet, default_gmt_path, read_gmt, score_pathways
from pastflow.patches.reader import PatchStore
from pastflow.resolution import crop_px

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_qc_table(path: str | Path):
    """Read a QC AnnData and check it has what training needs; InputError naming what lacks."""
    from pastflow.tables import read_h5ad

    adata = read_h5ad(path, "QC table", obs=("cell_id",))
    if "counts" not in adata.layers:
        raise InputError(path, 'no layers["counts"] (raw counts); was it written by pastflow qc?')
    if "highly_variable" not in adata.var:
        raise InputError(path, 'no var["highly_variable"]')
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(path, f"empty table ({adata.n_obs} cells x {adata.n_vars} genes)")
    return adata


# Fewer cohort genes than this cannot carry an image <-> expression alignment.
MIN_COHORT_GENES = 10
GENE_PANELS = ("union", "shared")


def select_cohort_genes(tables: Sequence, n_genes: int | None, *, panel: str = "union",
                        min_genes: int = MIN_COHORT_GENES,
                        sources: Sequence[str | Path] | None = None) -> list[str]:
    """The genes flagged highly variable in the most samples, at most ``n_genes``.

    Ties keep the order of first appearance (sample order, then the table's gene order),
    so the list is reproducible.

    Samples whose gene panels differ (a Xenium panel beside a whole-transcriptome Visium):

    - ``panel="union"``: a gene measured in only some samples is kept; samples that lack it
      get it masked (:func:`gene_selection_matrix`). How many such genes there are is logged.
    - ``panel="shared"``: only genes measured in every sample are candidates; the highly
      variable genes outside that shared panel are dropped and their number logged.

    ``sources`` (one path per table) name the files in errors.

    Raises:
        InputError: fewer than ``min_genes`` genes are measured in every sample (``"shared"``),
            or fewer cohort genes remain than ``min_genes`` (or ``n_genes``, if smaller).
    """
    if panel not in GENE_PANELS:
        raise ValueError(f"panel must be one of {GENE_PANELS}, got {panel!r}")
    names = [str(s) for s in sources] if sources is not None else [f"table {i + 1}" for i in
                                                                   range(len(tables))]
    shared = set(tables[0].var_names).intersection(*(t.var_names for t in tables[1:]))
    if panel == "shared" and len(shared) < min_genes:
        # Name the sample that overlaps least with the others: the likely odd one out.
        overlap = [len(shared) / max(1, t.n_vars) for t in tables]
        worst = int(np.argmin(overlap))
        raise InputError(names[worst], f"only {len(shared)} genes are measured in every one of the "
                                       f"{len(tables)} samples (need >= {min_genes}); this table "
                                       f"has {tables[worst].n_vars} genes, panels of "
                                       f"{min(t.n_vars for t in tables)} to "
                                       f"{max(t.n_vars for t in tables)} genes")
    votes: Counter = Counter()
    first_seen: dict[str, int] = {}
    for adata in tables:
        for gene in adata.var_names[adata.var["highly_variable"].to_numpy(bool)]:
            votes[gene] += 1
            first_seen.setdefault(gene, len(first_seen))
    n_partial = len(set().union(*(t.var_names for t in tables)) - shared)
    not_shared = [g for g in votes if g not in shared]
    if n_partial and panel == "shared":
        log.warning("gene panels differ between the %d samples: %d genes are not measured in every "
                    "sample and are dropped (%d of them highly variable%s); %d shared genes remain",
                    len(tables), n_partial, len(not_shared),
                    f", e.g. {', '.join(not_shared[:5])}" if not_shared else "", len(shared))
        for gene in not_shared:
            del votes[gene]
    elif not_shared:
        log.info("gene panels differ between the %d samples: %d highly variable genes are not "
                 "measured in every sample and are masked where missing (e.g. %s)", len(tables),
                 len(not_shared), ", ".join(not_shared[:5]))
    genes = sorted(votes, key=lambda g: (-votes[g], first_seen[g]))
    genes = genes if n_genes is None else genes[:int(n_genes)]
    needed = min_genes if n_genes is None else min(min_genes, int(n_genes))
    if len(genes) < needed:
        where = "highly variable and measured in every sample" if panel == "shared" else \
            "highly variable in some sample"
        raise InputError(names[0] if len(names) == 1 else None,
                         f"only {len(genes)} cohort genes remain ({where}; need >= {needed}) "
                         f"in {', '.join(names)}")
    return genes


def gene_selection_matrix(sample_genes: Sequence[str], cohort_genes: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(P, measured)``: ``X @ P`` puts a sample's columns in cohort order (missing genes = 0);
    ``measured`` ``bool (G,)`` says which cohort genes the sample has."""
    column = {g: i for i, g in enumerate(sample_genes)}
    pairs = [(column[g], j) for j, g in enumerate(cohort_genes) if g in column]
    rows = np.fromiter((r for r, _ in pairs), np.int64, len(pairs))
    cols = np.fromiter((c for _, c in pairs), np.int64, len(pairs))
    selection = sp.csr_matrix((np.ones(len(pairs), np.float32), (rows, cols)),
                              shape=(len(sample_genes), len(cohort_genes)))
    measured = np.zeros(len(cohort_genes), bool)
    measured[cols] = True
    return selection, measured


def nearest_neighbors(xy: np.ndarray, k: int, max_distance: float | None = None) -> np.ndarray:
    """Indices ``int64 (n, k)`` of each point's ``k`` nearest other points (-1 = none: fewer
    than ``k`` others, or farther than ``max_distance``, in the units of ``xy``)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    neighbors = np.full((n, k), -1, np.int64)
    if k == 0 or n < 2:
        return neighbors
    kq = min(k + 1, n)
    distance, index = cKDTree(xy).query(xy, k=kq)
    distance, index = distance.reshape(n, kq), index.reshape(n, kq)
    # Drop each point itself. Among duplicate positions it need not come first, or at all:
    # then drop the farthest instead, so that every row keeps kq - 1 others.
    is_self = index == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    found = index[~is_self].reshape(n, kq - 1)
    if max_distance is not None:
        found[distance[~is_self].reshape(n, kq - 1) > max_distance] = -1
    neighbors[:, :kq - 1] = found
    return neighbors


class _Sample:
    """One sample's joined cells, in arrays the dataset indexes."""

    def __init__(self, name: str, store: PatchStore, store_rows: np.ndarray, expression: sp.csr_matrix,
                 counts: sp.csr_matrix, gene_mask: np.ndarray, pathways: np.ndarray,
                 pathway_mask: np.ndarray, neighbors: np.ndarray):
        self.name, self.store, self.store_rows = name, store, store_rows
        self.expression, self.counts, self.gene_mask = expression, counts, gene_mask
        self.library = np.asarray(counts.sum(axis=1), np.float32).ravel()
        self.pathways, self.pathway_mask, self.neighbors = pathways, pathway_mask, neighbors


class CellDataset(Dataset):
    """Cells of several samples; item ``i`` is a dict of tensors (see the module docstring).

    Args:
        stores, tables: per sample, the patch store (``.h5``) and the QC table (``.h5ad``).
        genes: the cohort gene list; default: :func:`select_cohort_genes` with ``n_genes``
            and ``gene_panel`` (``"union"``: genes a sample lacks are masked; ``"shared"``: only
            genes every sample measured).
        gene_sets: a GMT path or parsed sets; default: ``resources/pathways/pastflow_default.gmt``.
        pathways: the cohort pathway list; default: every set kept in at least one sample;
            ``[]``: no pathway scores (nothing is scored).
        pathway_method, pathway_min_genes: see :func:`pastflow.models.pathways.score_pathways`.
        k_neighbors: neighbours per cell (0 = none); ``neighbor_radius_um`` masks far ones.
        patch_px: crop size read from the cell stores (default: their own patch size); a spot
            store is read whole (:func:`pastflow.resolution.crop_px`).
        mean, std: per-channel normalisation of patches in [0, 1].
        augmentation: None = none (evaluation).
        seed: with the epoch (:meth:`set_epoch`) and the index, seeds each item's augmentation.

    Attributes: ``genes``, ``pathways``, ``samples`` (names), ``coverage`` (pathway coverage:
    one row per sample and gene set), ``patch_px`` (the cell crop, the model's ``image_px``),
    ``crop_px`` (per sample: the crop its items have), ``offsets`` (first dataset index of each
    sample, plus the total).
    """

    def __init__(self, stores: Sequence[str | Path], tables: Sequence[str | Path], *,
                 genes: Sequence[str] | None = None, n_genes: int | None = 2000,
                 gene_panel: str = "union",
                 gene_sets: str | Path | Sequence[GeneSet] | None = None,
                 pathways: Sequence[str] | None = None, pathway_method: str = "mean_z",
                 pathway_min_genes: int = 3, k_neighbors: int = 0,
                 neighbor_radius_um: float | None = None, patch_px: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 augmentation: Augmentation | None = Augmentation(), seed: int = 0):
        if len(stores) != len(tables) or not stores:
            raise InputError(None, f"need one QC table per patch store, got {len(stores)} stores "
                                   f"and {len(tables)} tables")
        adatas = [read_qc_table(t) for t in tables]
        self.genes = (list(genes) if genes is not None else
                      select_cohort_genes(adatas, n_genes, panel=gene_panel, sources=tables))
        if not self.genes:
            raise InputError(tables[0], "no highly variable gene in any table; no cohort genes")
        gmt = default_gmt_path() if gene_sets is None else gene_sets
        if pathways is not None and len(pathways) == 0:
            gene_sets = []
        elif isinstance(gmt, (str, Path)):
            gene_sets = read_gmt(gmt)
        self.k_neighbors, self.seed, self.epoch = int(k_neighbors), int(seed), 0
        self.mean, self.std, self.augmentation = tuple(mean), tuple(std), augmentation
        self.features = None  # cached encoder features served instead of patches

        scored = [score_pathways(a.X, a.var_names, gene_sets, method=pathway_method,
                                 min_genes=pathway_min_genes) for a in adatas]
        source = gmt if isinstance(gmt, (str, Path)) else None
        if pathways is None:
            kept = set().union(*(s.names for s in scored))
            if not kept:
                raise InputError(source, f"no gene set has >= {pathway_min_genes} genes measured "
                                         "in any sample; give other gene sets or turn the "
                                         "pathway losses off")
            pathways = [s.name for s in gene_sets if s.name in kept]
        unknown = sorted(set(pathways) - {s.name for s in gene_sets})
        if unknown:
            raise InputError(source, f"{len(unknown)} of the model's pathways are not gene sets "
                                     f"here (first: {unknown[0]!r})")
        self.pathways = list(pathways)
        names = [str(a.uns.get("pastflow", {}).get("sample", Path(t).stem)) for a, t in zip(adatas, tables)]
        self.coverage = pd.concat([s.coverage.assign(sample=n).reset_index()
                                   for s, n in zip(scored, names)], ignore_index=True)

        self._samples: list[_Sample] = []
        offset = 0
        for store_path, table_path, adata, score, name in zip(stores, tables, adatas, scored, names):
            sample = self._join(name, PatchStore(store_path), table_path, adata, score, offset,
                                neighbor_radius_um)
            self._samples.append(sample)
            offset += len(sample.store_rows)
        self.offsets = np.cumsum([0] + [len(s.store_rows) for s in self._samples])
        self.samples = names
        cell_stores = [s.store for s in self._samples if s.store.unit == "cell"]
        sizes = {int(store.patch_px) for store in (cell_stores or [self._samples[0].store])}
        if patch_px is None and len(sizes) > 1:
            raise InputError(stores[0], f"the cell stores have different patch sizes "
                                        f"{sorted(sizes)}; set data.patch_px")
        self.patch_px = int(patch_px) if patch_px is not None else sizes.pop()
        self.crop_px = [crop_px(s.store, self.patch_px) for s in self._samples]
        log.info("%d cells from %d samples, %d cohort genes, %d pathways", len(self),
                 len(self._samples), len(self.genes), len(self.pathways))

    def _join(self, name, store: PatchStore, table_path, adata, score, offset: int,
              radius_um: float | None) -> _Sample:
        table_ids = adata.obs["cell_id"].astype(str).to_numpy()
        row_of = {cid: i for i, cid in enumerate(store.cell_ids)}
        store_rows = np.array([row_of.get(cid, -1) for cid in table_ids], np.int64)
        keep = store_rows >= 0
        if not keep.any():
            raise InputError(table_path, f"none of its {len(table_ids)} cell ids is in the patch "
                                         f"store {store.path}")
        inside = np.zeros(len(keep), bool)
        inside[keep] = np.asarray(store.in_slide)[store_rows[keep]]
        if (keep & ~inside).any():
            log.warning("%s: %d cells lie outside the slide; left out", name, (keep & ~inside).sum())
        if (~keep).any():
            log.warning("%s: %d of %d cells have no patch in %s; left out", name, (~keep).sum(),
                        len(keep), store.path)
        keep &= inside
        if not keep.any():
            raise InputError(table_path, "no cell of the table lies inside the slide")
        rows = np.flatnonzero(keep)
        selection, gene_mask = gene_selection_matrix(adata.var_names, self.genes)
        expression = (sp.csr_matrix(adata.X[rows], dtype=np.float32) @ selection).tocsr()
        counts = (sp.csr_matrix(adata.layers["counts"][rows], dtype=np.float32) @ selection).tocsr()
        if not gene_mask.any():
            raise InputError(table_path, "measures none of the cohort genes")
        column = {p: j for j, p in enumerate(score.names)}
        pathways = np.zeros((len(rows), len(self.pathways)), np.float32)
        pathway_mask = np.zeros(len(self.pathways), bool)
        for j, pathway in enumerate(self.pathways):
            if pathway in column:
                pathways[:, j] = score.scores[rows, column[pathway]]
                pathway_mask[j] = True
        store_rows = store_rows[rows]
        neighbors = np.full((len(rows), self.k_neighbors), -1, np.int64)
        if self.k_neighbors:
            xy = np.asarray(store.xy_level0)[store_rows]
            local = nearest_neighbors(xy * store.slide_mpp, self.k_neighbors, radius_um)
            neighbors = np.where(local >= 0, local + offset, -1)
        log.info("%s: %d cells, %d/%d cohort genes measured, %d/%d pathways scored", name,
                 len(rows), gene_mask.sum(), len(self.genes), pathway_mask.sum(), len(self.pathways))
        return _Sample(name, store, store_rows, expression, counts, gene_mask, pathways,
                       pathway_mask, neighbors)

    # -- items -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of epoch ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """Dataset index -> ``(sample number, row within the sample)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"cell {index} out of range [0, {len(self)})")
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    def groups(self) -> list[np.ndarray]:
        """Dataset indices by crop size: one batch holds one size (cells, or spots of one
        diameter)."""
        by_size: dict[int, list[np.ndarray]] = {}
        for s, size in enumerate(self.crop_px):
            by_size.setdefault(size, []).append(np.arange(self.offsets[s], self.offsets[s + 1]))
        return [np.concatenate(parts) for _, parts in sorted(by_size.items())]

    def _read(self, s: int, rows: np.ndarray) -> np.ndarray:
        """``uint8 (len(rows), 3, c, c)``: sample ``s``'s cells ``rows``, one store read."""
        sample = self._samples[s]
        return sample.store.read(sample.store_rows[rows], size=self.crop_px[s])

    def _draws(self, epoch: int, keys: list[tuple[int, ...]]) -> np.ndarray:
        """``float32 (len(keys), N_PARAMETERS)``: the augmentation draws of each patch, from a
        generator of its own (seed, epoch, cell index[, neighbour slot])."""
        return np.stack([draw_parameters(self.augmentation,
                                         np.random.default_rng((self.seed, epoch, *key)))
                         for key in keys])

    def image_sources(self) -> list[tuple[Path, np.ndarray, int]]:
        """Per sample, what its cells' images are cut from: ``(patch store path, the store
        rows read, in dataset order, crop side in px)``."""
        return [(Path(s.store.path), s.store_rows, size)
                for s, size in zip(self._samples, self.crop_px)]

    def neighbors_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``int64 (len(indices), k)``: dataset indices of each cell's neighbours (-1 = none)."""
        indices = np.asarray(indices, np.int64)
        out = np.full((len(indices), self.k_neighbors), -1, np.int64)
        owner = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(owner).tolist():
            chosen = owner == s
            out[chosen] = self._samples[s].neighbors[indices[chosen] - self.offsets[s]]
        return out

    def patches_only(self) -> "CellDataset":
        """The same cells serving their own patches only: no neighbours, no augmentation,
        no cached features (what a frozen encoder's features are computed from)."""
        view = copy.copy(self)
        view.k_neighbors, view.augmentation, view.features = 0, None, None
        return view

    def serve_features(self, features) -> None:
        """Serve ``features`` (rows by dataset index, ``features.rows(indices)`` ->
        ``float32 (n, d)``: :class:`pastflow.models.feature_cache.CachedFeatures`) in batches
        instead of patches and their augmentation draws."""
        self.features = features

    def batch(self, indices: Sequence[int], epoch: int | None = None) -> dict:
        """Cells ``indices`` (one crop size; any samples) as one collated batch of tensors:
        patches ``uint8`` (normalised and augmented on the device by
        :func:`~pastflow.models.augment.prepare_images`), their augmentation draws of epoch
        ``epoch`` (default: the dataset's, :meth:`set_epoch`) under ``augment``, and the
        targets. Patches are read sample by sample, one store read each. With cached
        features (:meth:`serve_features`): ``image_features`` (and ``neighbor_features``)
        instead of patches, nothing read from the stores."""
        epoch = self.epoch if epoch is None else int(epoch)
        located = np.array([self.locate(int(i)) for i in indices], np.int64).reshape(-1, 2)
        sizes = {self.crop_px[s] for s in np.unique(located[:, 0])}
        if len(sizes) > 1:
            raise ValueError(f"one batch holds one crop size, got {sorted(sizes)}")
        n, size = len(located), sizes.pop()
        reading = self.features is None
        patches = np.empty((n, 3, size, size), np.uint8) if reading else None
        columns: dict[str, list] = {"expression": [], "counts": [], "gene_mask": [],
                                    "library_size": [], "pathways": [], "pathway_mask": []}
        order = np.empty(n, np.int64)  # batch position of each stacked row
        neighbors = np.full((n, self.k_neighbors), -1, np.int64)
        neighbor_patches = (np.zeros((n, self.k_neighbors, 3, size, size), np.uint8)
                            if reading else None)
        filled = 0
        for s in np.unique(located[:, 0]).tolist():
            where = np.flatnonzero(located[:, 0] == s)
            rows = located[where, 1]
            sample = self._samples[s]
            if reading:
                patches[where] = self._read(s, rows)
            columns["expression"].append(sample.expression[rows].toarray())
            columns["counts"].append(sample.counts[rows].toarray())
            columns["gene_mask"].append(np.broadcast_to(sample.gene_mask, (len(rows),
                                                                           len(self.genes))))
            columns["library_size"].append(sample.library[rows])
            columns["pathways"].append(sample.pathways[rows])
            columns["pathway_mask"].append(np.broadcast_to(sample.pathway_mask,
                                                           (len(rows), len(self.pathways))))
            order[filled:filled + len(rows)] = where
            filled += len(rows)
            if self.k_neighbors:
                ids = sample.neighbors[rows]
                neighbors[where] = ids
                present = ids >= 0
                if reading and present.any():
                    read = self._read(s, ids[present] - self.offsets[s])
                    block = neighbor_patches[where]
                    block[present] = read
                    neighbor_patches[where] = block
        inverse = np.argsort(order)  # stacked rows back to batch order
        batch = {"index": torch.as_tensor(np.asarray(indices, np.int64)),
                 "sample": torch.from_numpy(located[:, 0].copy())}
        for key, parts in columns.items():
            batch[key] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)[inverse]))
        if not reading:
            return self._with_features(batch, neighbors)
        batch["patch"] = torch.from_numpy(patches)
        if self.augmentation is not None:
            batch["augment"] = torch.from_numpy(
                self._draws(epoch, [(int(i),) for i in indices]))
        if self.k_neighbors:
            batch["neighbors"] = torch.from_numpy(neighbors)
            batch["neighbor_mask"] = torch.from_numpy(neighbors >= 0)
            batch["neighbor_patches"] = torch.from_numpy(neighbor_patches)
            if self.augmentation is not None:
                keys = [(int(i), j + 1) for i in indices for j in range(self.k_neighbors)]
                batch["neighbor_augment"] = torch.from_numpy(
                    self._draws(epoch, keys).reshape(n, self.k_neighbors, -1))
        return batch

    def _with_features(self, batch: dict, neighbors: np.ndarray) -> dict:
        """``batch`` with the cached features of its cells (and of their neighbours)."""
        batch["image_features"] = torch.from_numpy(self.features.rows(batch["index"].numpy()))
        if self.k_neighbors:
            present = neighbors >= 0
            found = np.zeros((*neighbors.shape, self.features.dim), np.float32)
            if present.any():
                found[present] = self.features.rows(neighbors[present])
            batch["neighbors"] = torch.from_numpy(neighbors)
            batch["neighbor_mask"] = torch.from_numpy(present)
            batch["neighbor_features"] = torch.from_numpy(found)
        return batch

    def __getitems__(self, request) -> dict:
        """The DataLoader's batch fetch: an :class:`EpochBatch` from :func:`make_loader`
        (which carries the epoch into persistent workers), or plain indices."""
        if isinstance(request, EpochBatch):
            return self.batch(request.indices, request.epoch)
        return self.batch(request)

    def __getitem__(self, index: int) -> dict:
        return {key: value[0] for key, value in self.batch([int(index)]).items()}


def dataset_from_config(config: dict, stores: Sequence, tables: Sequence) -> CellDataset:
    """A :class:`CellDataset` for a resolved config (``data`` section, ``model.spatial.k``,
    and ``model.genes`` / ``model.pathways`` when already set, e.g. on resume)."""
    data, model = config["data"], config["model"]
    pathways = model.get("pathways")
    if pathways is None and not (model["losses"]["pathway_clip"] or model["losses"]["pathway_regression"]):
        pathways = []  # no pathway loss: do not score
    return CellDataset(
        stores, tables, genes=model.get("genes") or data.get("genes"), n_genes=data["n_genes"],
        gene_panel=data.get("gene_panel", "union"),
        gene_sets=data["gene_sets"], pathways=pathways,
        pathway_method=data["pathway_method"], pathway_min_genes=data["pathway_min_genes"],
        k_neighbors=model["spatial"]["k"], neighbor_radius_um=data["neighbor_radius_um"],
        patch_px=data["patch_px"], mean=data["mean"], std=data["std"],
        augmentation=Augmentation(**data["augment"]), seed=config["seed"])


class ResumableBatchSampler(Sampler):
    """Shuffled full batches, each of one crop size (``groups``: dataset indices per size, see
    :meth:`CellDataset.groups`), spread over ``num_replicas`` ranks; seeded per epoch.

    Each epoch shuffles every group, cuts it into full batches (the remainder waits for
    another epoch's shuffle; a group smaller than a batch is one batch), and shuffles the
    batches. ``batch_size`` is the global batch: on ``num_replicas`` ranks each batch is cut
    into that many near-equal slices and rank ``r`` takes slice ``r``, so step ``t`` of any
    number of ranks trains on the cells of step ``t`` of one process (a batch smaller than
    ``num_replicas`` is left out). After :meth:`set_position` an epoch starts after the
    batches already trained on, so a resumed run, even on another number of ranks, sees
    exactly the cells the uninterrupted one would have.
    """

    def __init__(self, groups: Sequence[np.ndarray], batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0):
        self.groups = [np.asarray(g, np.int64) for g in groups]
        self.batch_size, self.num_replicas, self.rank = int(batch_size), num_replicas, rank
        self.seed, self.epoch, self.start = int(seed), 0, 0
        self.batches_per_epoch = sum(len(g) // self._batch_size(g) for g in self.groups
                                     if self._batch_size(g) >= num_replicas)

    def _batch_size(self, group: np.ndarray) -> int:
        """``batch_size``; a group smaller than that (a small spot slide) is one batch of its
        own, not left out of training (a contrastive batch needs two items)."""
        return max(2, min(self.batch_size, len(group)))

    def set_position(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.start = int(epoch), int(batches_done)

    def _epoch(self) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        batches = []
        for group in self.groups:
            order = rng.permutation(group)
            size = self._batch_size(group)
            n = len(order) // size
            batches.extend(order[:n * size].reshape(n, size))
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return [np.array_split(b, self.num_replicas)[self.rank] for b in batches
                if len(b) >= self.num_replicas]

    def __iter__(self):
        for batch in self._epoch()[self.start:]:
            yield batch.tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


class EpochBatch(NamedTuple):
    """A batch request that carries its epoch: persistent workers keep their own copy of
    the dataset, which :meth:`CellDataset.set_epoch` in the main process does not reach."""

    epoch: int
    indices: list[int]


class _EpochBatches(Sampler):
    """``batches``' index lists as :class:`EpochBatch` requests of its current epoch."""

    def __init__(self, batches: ResumableBatchSampler):
        self.batches = batches

    def __iter__(self):
        for indices in self.batches:
            yield EpochBatch(self.batches.epoch, indices)

    def __len__(self) -> int:
        return len(self.batches)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from the worker's torch seed
    (torch seeds each worker ``base_seed + worker_id``), and ignore the stop signals.

    Slurm signals every process of a job; a worker killed by it would crash the main process
    before it could save. The main process handles the signal and shuts its workers down.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    for stop_signal in (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG):
        signal.signal(stop_signal, signal.SIG_IGN)


def _collated(batch: dict) -> dict:
    """``collate_fn``: :meth:`CellDataset.batch` returns the batch already collated."""
    return batch


def make_loader(dataset: CellDataset, batches: ResumableBatchSampler, num_workers: int,
                seed: int, pin_memory: bool = False, prefetch: int = 4) -> DataLoader:
    """A DataLoader streaming the stores, batch by batch: each batch read whole (one store
    read per sample) in one of ``num_workers`` processes (0 = this one).

    Create it once per run: the workers persist across epochs, and each epoch iterates
    ``batches`` again from where :meth:`ResumableBatchSampler.set_position` put it, with
    that epoch's augmentation draws. Each worker reads ``prefetch`` batches ahead, into
    pinned memory when ``pin_memory``. The workers' base seed is drawn from a generator of
    its own, not from torch's global one, so creating a loader does not shift the random
    stream of the training step (augmentation is drawn per cell, not from worker seeds).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_sampler=_EpochBatches(batches), num_workers=num_workers,
                      collate_fn=_collated, worker_init_fn=init_worker, generator=generator,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch if num_workers > 0 else None)
