"""The resolution contract between patch stores and models.

A patch store records the resolution of its image (attribute ``mpp``, microns per pixel) and
its patch side in microns (``patch_um``); a checkpoint's model config records the resolution
of the stores it was trained on (``model.mpp``) and the side in microns of the crops it saw
(``model.patch_um`` = ``model.image_px x model.mpp``), filled in by pretraining
(:func:`training_resolution`).

A model always reads crops of ``image_px`` pixels: from a store at another resolution they
cover another field of view, cells come out larger or smaller than in training, and the
embeddings are quietly wrong. So ``embed`` (and ``predict``, from what the embedding table
records of its store) refuse, naming both files and both resolutions, a store whose ``mpp``
or crop side in microns differs from the model's by more than the one tolerance
:data:`pastflow.contracts.MPP_TOLERANCE` (relative). A checkpoint older than the contract
records no resolution: it is accepted, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from pastflow.contracts import MPP_TOLERANCE
from pastflow.errors import InputError

log = logging.getLogger(__name__)


def same_resolution(a: float, b: float) -> bool:
    """Whether two resolutions (or two lengths in microns) agree: ``|a / b - 1|`` within
    :data:`~pastflow.contracts.MPP_TOLERANCE`."""
    return abs(float(a) / float(b) - 1) <= MPP_TOLERANCE


def read_store_resolution(path: str | Path) -> tuple[float, float]:
    """``(mpp, patch_um)`` that the patch store ``path`` records (``patch_um`` is
    ``patch_px x mpp`` for stores written before the attribute). Reads the attributes only."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "patch store not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
        mpp = float(attrs["mpp"])
        patch_um = float(attrs.get("patch_um", int(attrs["patch_px"]) * mpp))
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not a readable patch store ({err})") from None
    return mpp, patch_um


def training_resolution(stores: Sequence[str | Path], image_px: int) -> tuple[float, float]:
    """``(model.mpp, model.patch_um)`` of a model trained on ``stores`` with crops of
    ``image_px`` pixels: the stores' mean resolution, and ``image_px`` times it.

    Raises:
        InputError: two stores whose resolutions differ by more than
            :data:`~pastflow.contracts.MPP_TOLERANCE` (naming both): one model learns one
            scale; rebuild the stores at one ``patches.mpp``.
    """
    if not stores:
        raise InputError(None, "no patch store to train on")
    mpps = {str(path): read_store_resolution(path)[0] for path in stores}
    finest = min(mpps, key=mpps.get)
    coarsest = max(mpps, key=mpps.get)
    if not same_resolution(mpps[coarsest], mpps[finest]):
        raise InputError(coarsest, f"patches at {mpps[coarsest]:.4f} um/px, but {finest} has "
                                   f"{mpps[finest]:.4f} um/px: the training stores of one model "
                                   f"must agree within {MPP_TOLERANCE:.0%} "
                                   "(pastflow.contracts.MPP_TOLERANCE); build them at one "
                                   "patches.mpp")
    mpp = sum(mpps.values()) / len(mpps)
    return mpp, int(image_px) * mpp


def check_resolution(model_config: dict, mpp: float | None, *, source: str | Path,
                     model_source: str | Path, what: str = "patches") -> None:
    """Refuse patches at ``mpp`` um/px (those of ``source``) for the model whose config is
    ``model_config`` (a checkpoint's ``model`` section, from ``model_source``).

    The model reads crops of ``model.image_px`` pixels, ``image_px x mpp`` microns here;
    both that and ``mpp`` must agree with the model's own within
    :data:`~pastflow.contracts.MPP_TOLERANCE`. A model config without ``mpp`` (a checkpoint
    older than the contract), or ``mpp`` None (``source`` records none), is accepted with a
    warning.

    Raises:
        InputError: naming ``source``, the model and both resolutions.
    """
    model_mpp = model_config.get("mpp")
    if model_mpp is None:
        log.warning("%s: the checkpoint records no resolution (written before model.mpp); "
                    "cannot check that %s %s match the training patches", model_source,
                    source, what)
        return
    if mpp is None:
        log.warning("%s: records no resolution; cannot check it against the model's %.4f um/px",
                    source, float(model_mpp))
        return
    image_px = int(model_config["image_px"])
    model_um = float(model_config.get("patch_um") or image_px * float(model_mpp))
    crop_um = image_px * float(mpp)
    if not same_resolution(mpp, model_mpp) or not same_resolution(crop_um, model_um):
        raise InputError(
            source, f"{what} at {float(mpp):.4f} um/px ({image_px} px crops of {crop_um:.1f} um), "
                    f"but the model {model_source} was trained at {float(model_mpp):.4f} um/px "
                    f"({model_um:.1f} um crops): they differ by more than {MPP_TOLERANCE:.0%} "
                    "(pastflow.contracts.MPP_TOLERANCE). Build the patch stores at the model's "
                    f"resolution (patches.mpp: {float(model_mpp):.4g}) or use a model trained "
                    "at this one")


def crop_px(store, image_px: int) -> int:
    """Side in pixels of the crop a model reads from ``store``: its own cell crop
    (``model.image_px``) around a cell; the store's whole patch (the spot's diameter plus
    context, at the same resolution) around a spot, so the crop shows what was measured."""
    return int(store.patch_px) if store.unit == "spot" else int(image_px)


def check_store(store, model_config: dict, model_source: str | Path) -> None:
    """The resolution contract for a :class:`~pastflow.patches.reader.PatchStore` read by a
    model (:func:`check_resolution`), and that the store holds crops as large as the model's.

    Raises:
        InputError: another resolution; a store cut for patches too small for the model's
            crops (naming both sizes in microns).
    """
    check_resolution(model_config, store.mpp, source=store.path, model_source=model_source)
    size, limit = crop_px(store, model_config["image_px"]), 2 * (store.margin - 1)
    if size > limit:
        raise InputError(store.path, f"holds patches of at most {limit} px "
                                     f"({limit * store.mpp:.1f} um) around each cell, but the "
                                     f"model {model_source} reads {size} px crops "
                                     f"({size * store.mpp:.1f} um); rebuild it with a larger "
                                     "patches.patch_um")
