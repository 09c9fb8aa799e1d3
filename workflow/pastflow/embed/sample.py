"""One sample's embeddings as an AnnData table (``results/embed/{sample}.h5ad``).

Rows are the cells of the patch store that lie inside the slide, in store order
(``obs_names`` = ``cell_id``). ``X`` is empty (``n x 0``); the embeddings are in ``obsm``:

- ``X_image`` ``float32 (n, embed_dim)``: the trained image embedding ``h``;
- ``X_image_random`` ``float32 (n, embed_dim)``: the same architecture with seeded random
  weights (the random-encoder baseline of the evaluation);
- ``X_morphology`` ``float32 (n, 22)``: hand-crafted morphology features of the same crop
  (stains, nuclei, texture; :mod:`pastflow.embed.morphology`, names in
  ``uns["pastflow_embed"]["morphology_features"]``), the morphology baseline of the evaluation;
- ``X_probe_<name>`` ``float32 (n, features)``: each probe encoder's frozen features
  (``embed.probe_encoders``, :mod:`pastflow.embed.probes`), read out by the evaluation's
  ridge probe as method ``<name>_ridge``;
- ``X_expression`` ``float32 (n, embed_dim)``: the trained expression embedding, for cells
  of the sample's QC table; NaN rows for cells QC dropped, and absent for H&E-only samples.

``obs``: ``cell_id``, ``sample``, ``x_px``, ``y_px`` (H&E level-0 pixels), ``in_tissue``,
``expression_measured``. ``uns["pastflow_embed"]``: model path and step, encoder, widths,
the random seed, the morphology feature names, the store's resolution (``store_mpp``,
``store_patch_um``) and slide, the
model's (``model_mpp``, ``model_patch_um``; NaN for checkpoints that record none), and the
measured throughput (image embedding and morphology features, cells/s).

The store must be at the model's resolution (:mod:`pastflow.resolution`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from pastflow.atomic import atomic_path
from pastflow.embed.encode import embed_devices, embed_expression, embed_images, random_model
from pastflow.embed.morphology import MORPHOLOGY_FEATURES, measure_store
from pastflow.embed.probes import ProbeEncoder, obsm_key
from pastflow.embed.settings import EmbedSettings
from pastflow.errors import InputError
from pastflow.models.checkpoint import load_checkpoint
from pastflow.models.data import read_qc_table
from pastflow.models.device import resolve_device
from pastflow.models.provenance import check_held_out
from pastflow.patches.reader import PatchStore
from pastflow.resolution import check_store, crop_px

log = logging.getLogger(__name__)


def embed_device(requested: str | None = None) -> torch.device:
    """The device of setting ``embed.device``: null or ``auto``: CUDA (every visible GPU)
    when torch sees one, else the CPU, but a job given GPUs that finds no CUDA fails;
    ``cuda`` / ``cuda:N``: fail without CUDA (:func:`pastflow.models.device.resolve_device`,
    whose message says how to install a CUDA torch); any other torch device as it is."""
    if requested is not None and requested != "auto" and not requested.startswith("cuda"):
        return torch.device(requested)
    chosen = resolve_device(requested, setting="embed.device")
    if chosen.type == "cuda" and requested in (None, "auto", "cuda"):
        return torch.device("cuda")  # no index: every visible GPU (embed_devices)
    return chosen


def embed_sample(model_dir: str | Path, store_path: str | Path, out_path: str | Path,
                 settings: EmbedSettings, *, table_path: str | Path | None = None,
                 sample: str | None = None, split: str | None = None,
                 progress: bool = True) -> ad.AnnData:
    """Embed every in-slide cell of ``store_path`` with the model in ``model_dir`` (a
    checkpoint directory), and the expression of ``table_path`` (a QC table) when given;
    write the table described in the module docstring to ``out_path`` (atomically).

    ``settings``: batch size, seed of the random-weight baseline, device (config ``embed``).
    ``split``: the sample's split in the sheet; a ``test`` sample the model was trained on is
    refused (:func:`~pastflow.models.provenance.check_held_out`).

    Raises:
        InputError: unreadable model, store or table; a store at another resolution than
            the model's, or too small for its crops
            (:func:`~pastflow.resolution.check_store`); a table none of whose cells is
            in the store.
    """
    batch_size, random_seed = settings.batch_size, settings.random_seed
    device = embed_device(settings.device)
    checkpoint = load_checkpoint(model_dir, device=device)
    config, model = checkpoint.config, checkpoint.model
    store = PatchStore(store_path)
    check_store(store, config["model"], model_dir)
    rows = np.flatnonzero(np.asarray(store.in_slide))
    if len(rows) == 0:
        raise InputError(store_path, "no cell of the patch store lies inside the slide")
    if len(rows) < len(store):
        log.warning("%s: %d of %d cells lie outside the slide; not embedded", store_path,
                    len(store) - len(rows), len(store))
    cell_ids = np.asarray(store.cell_ids)[rows].astype(str)
    sample = sample or str(store.attrs.get("sample", Path(store_path).stem))
    check_held_out(checkpoint.training_data, sample, split, model_dir)
    devices = embed_devices(device)  # every visible GPU when the device is plain "cuda"
    image_kwargs = dict(mean=config["data"]["mean"], std=config["data"]["std"],
                        batch_size=batch_size, device=devices, progress=progress,
                        num_workers=settings.num_workers,
                        neighbor_radius_um=config["data"]["neighbor_radius_um"])

    start = time.perf_counter()
    trained = embed_images(model, store, rows, desc=f"{sample}: trained", **image_kwargs)
    seconds = time.perf_counter() - start
    random = embed_images(random_model(config, random_seed), store, rows,
                          desc=f"{sample}: random", **image_kwargs)
    log.info("%s: embedded %d cells in %.1f s (%.0f cells/s, %s, batch %d)", sample, len(rows),
             seconds, len(rows) / seconds, ", ".join(map(str, devices)), batch_size)
    start = time.perf_counter()
    morphology = measure_store(store, rows, crop_px(store, config["model"]["image_px"]),
                               store.mpp)
    morphology_seconds = max(time.perf_counter() - start, 1e-9)
    log.info("%s: morphology features of %d cells in %.1f s (%.0f cells/s)", sample, len(rows),
             morphology_seconds, len(rows) / morphology_seconds)

    xy = np.asarray(store.xy_level0)[rows]
    obs = pd.DataFrame({"cell_id": cell_ids, "sample": sample, "x_px": xy[:, 0], "y_px": xy[:, 1],
                        "in_tissue": np.asarray(store.in_tissue)[rows],
                        "expression_measured": False}, index=pd.Index(cell_ids, name=None))
    obsm = {"X_image": trained, "X_image_random": random, "X_morphology": morphology}
    probes = {}
    for name, weights in settings.probe_encoders.items():
        probe = ProbeEncoder(name, weights, config["model"]["image_px"])
        start = time.perf_counter()
        obsm[obsm_key(name)] = embed_images(
            probe, store, rows, **{**image_kwargs, "mean": probe.spec.mean, "std": probe.spec.std},
            desc=f"{sample}: {name}")
        probes[name] = {"weights": str(Path(weights).resolve()), "input_px": probe.spec.image_px,
                        "card_mpp": probe.spec.mpp,
                        "field_um": crop_px(store, config["model"]["image_px"]) * store.mpp,
                        "cells_per_s": round(len(rows) / (time.perf_counter() - start), 1)}
        log.info("%s: probe encoder %s: %d features, %.0f cells/s", sample, name,
                 obsm[obsm_key(name)].shape[1], probes[name]["cells_per_s"])
    if table_path is not None:
        obsm["X_expression"] = _expression_embeddings(model, table_path, obs, batch_size, device)
    table = ad.AnnData(np.zeros((len(rows), 0), np.float32), obs=obs, obsm=obsm)
    table.uns["pastflow_embed"] = {
        "model": str(Path(model_dir).resolve()), "model_step": checkpoint.step,
        "image_encoder": config["model"]["image"]["name"],
        "expression_encoder": config["model"]["expression"]["name"],
        "embed_dim": int(config["model"]["embed_dim"]), "image_px": int(config["model"]["image_px"]),
        "random_seed": int(random_seed), "store": str(Path(store_path).resolve()),
        "store_mpp": store.mpp, "store_unit": store.unit,
        "crop_px": crop_px(store, config["model"]["image_px"]),
        "store_patch_um": float(store.attrs.get("patch_um", store.patch_px * store.mpp)),
        "model_mpp": _or_nan(config["model"].get("mpp")),
        "model_patch_um": _or_nan(config["model"].get("patch_um")),
        "slide_path": str(store.attrs.get("source_slide", "")),
        "slide_mpp": store.slide_mpp,
        "device": str(device), "devices": [str(d) for d in devices],
        "batch_size": int(batch_size),
        "image_cells_per_s": round(len(rows) / seconds, 1),
        "morphology_features": list(MORPHOLOGY_FEATURES),
        "morphology_cells_per_s": round(len(rows) / morphology_seconds, 1),
        "probe_encoders": probes,
    }
    with atomic_path(out_path) as tmp:
        table.write_h5ad(tmp)
    return table


def _or_nan(value) -> float:
    return float(value) if value is not None else float("nan")


def _expression_embeddings(model, table_path, obs: pd.DataFrame, batch_size: int,
                           device) -> np.ndarray:
    """Expression embeddings in the rows of ``obs`` (NaN where QC dropped the cell); sets
    ``obs["expression_measured"]``."""
    adata = read_qc_table(table_path)
    table_ids = adata.obs["cell_id"].astype(str).to_numpy()
    position = pd.Index(obs["cell_id"]).get_indexer(table_ids)
    found = position >= 0
    if not found.any():
        raise InputError(table_path, "none of its cells is among the patch store's in-slide "
                                     "cells; is it the same sample?")
    if not found.all():
        log.warning("%s: %d of %d cells have no patch; their expression is not embedded",
                    table_path, (~found).sum(), len(found))
    embedded = embed_expression(model, adata.X[found], list(adata.var_names),
                                batch_size=max(batch_size, 1024), device=device,
                                source=table_path)
    out = np.full((len(obs), embedded.shape[1]), np.nan, np.float32)
    out[position[found]] = embedded
    measured = np.zeros(len(obs), bool)
    measured[position[found]] = True
    obs["expression_measured"] = measured
    return out
