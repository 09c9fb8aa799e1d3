"""A frozen image encoder's features, computed once per cell and trained on.

An image encoder with no trainable parameter (a foundation model in ``mode: frozen``) gives a
cell the same features at every step: it runs in eval mode, and only augmentation would
change its input. So pretraining computes the features of every cell it will meet once (eval
mode, no augmentation, bf16 autocast on CUDA, through the training loader), keeps them in a
cache file, and trains the projection, spatial fusion, heads and the expression and pathway
branches on them (:meth:`pastflow.models.model.PastModel.encode_features`): one encoder pass
per cell instead of one per cell and step. Image augmentation cannot apply to cached
features; ``pretrain.train.cache_frozen_features: false`` keeps it (and the encoder pass per
step).

The cache lies under the run's output folder, ``feature_cache/<encoder>-<px>px-<key>.npy``
(features ``(n cells, d)``; float16 when computed under bf16 on CUDA, else float32),
``.filled.npy`` (which rows hold features) and ``.json`` (what it was made from). The key is
a hash of: each patch store's path, size and modification time, the store rows the dataset
reads (its cells, in order) and their crop size; the normalisation; the encoder's name,
keyword arguments, ``image_px`` and a digest of its tensors (sampled values of each; the
tensors, not the vendor file: a resumed run's encoder comes from the checkpoint). A rewritten
store or another encoder gets another file, never a stale one; files of other keys are
removed. Only the cells the remaining steps train on (and their neighbours) and the
validation batches' cells are computed; a later run on the same data fills in what it lacks.

A cache up to :data:`IN_MEMORY_BYTES` is read into memory; a larger one is memory-mapped (the
page cache then holds it once for all ranks and loader workers).

Several processes (DDP): each rank computes an equal share of the missing cells; ranks other
than 0 write theirs to a file of their own, which rank 0 copies into the cache (one writer: a
shared file system never sees two processes write one page). The run's output folder must be
on a file system every rank reads, as its checkpoints already must.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.models.augment import Augmentation, prepare_images
from pastflow.models.data import CellDataset, ResumableBatchSampler, make_loader
from pastflow.models.device import on_device
from pastflow.models.distributed import DistContext

log = logging.getLogger(__name__)

CACHE_DIR = "feature_cache"
FORMAT_VERSION = 1
IN_MEMORY_BYTES = 1 << 30
FLOAT16_MAX = 65504.0
_SAMPLED = 4096  # values per tensor in the encoder digest
_COPY_ROWS = 65536  # rows per block when rank 0 copies another rank's share


def encoder_is_frozen(encoder: torch.nn.Module) -> bool:
    """True when no parameter of ``encoder`` trains."""
    return not any(p.requires_grad for p in encoder.parameters())


def augments(augmentation: Augmentation | None) -> bool:
    """True when ``augmentation`` changes a patch."""
    a = augmentation
    return a is not None and bool(a.hed_sigma > 0 or a.brightness > 0 or a.contrast > 0
                                  or a.flips or a.rot90)


def encoder_digest(encoder: torch.nn.Module) -> str:
    """``sha256`` of every tensor's name, shape, dtype and up to :data:`_SAMPLED` evenly
    spaced values: another checkpoint of the same architecture differs in nearly every
    value, and reading a few thousand per tensor costs nothing next to a forward pass."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sampled = flat[::max(1, flat.numel() // _SAMPLED)][:_SAMPLED]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sampled.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cache_key(dataset: CellDataset, image_config: dict, image_px: int,
              encoder: torch.nn.Module) -> dict:
    """What the features of ``dataset``'s cells by ``encoder`` depend on (module docstring)."""
    samples = []
    for store, rows, crop in dataset.image_sources():
        stat = store.stat()
        samples.append({"store": str(store.resolve()), "size": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns, "crop_px": int(crop),
                        "rows": hashlib.sha256(np.ascontiguousarray(rows, np.int64)).hexdigest()})
    kwargs = {k: v for k, v in image_config["kwargs"].items()
              if k not in ("weights", "load_weights")}  # the tensors' digest stands for them
    return {"format_version": FORMAT_VERSION, "samples": samples,
            "mean": list(dataset.mean), "std": list(dataset.std),
            "encoder": {"name": image_config["name"], "kwargs": kwargs,
                        "image_px": int(image_px), "tensors": encoder_digest(encoder)}}


def cache_path(root: Path, key: dict, patch_px: int) -> Path:
    """``root/<encoder>-<px>px-<16 hex of the key>.npy``."""
    text = json.dumps(key, sort_keys=True, default=str)
    return root / (f"{key['encoder']['name']}-{patch_px}px-"
                   f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.npy")


def _filled_path(path: Path) -> Path:
    return path.with_name(path.stem + ".filled.npy")


def _files(path: Path) -> list[Path]:
    """The cache's three files."""
    return [path, _filled_path(path), path.with_suffix(".json")]


class CachedFeatures:
    """Features by dataset index, from a cache file (see the module docstring)."""

    def __init__(self, path: Path, filled: np.ndarray):
        self.path, self.filled = Path(path), filled
        self._open()

    def _open(self) -> None:
        in_memory = self.path.stat().st_size <= IN_MEMORY_BYTES
        self.array = np.load(self.path, mmap_mode=None if in_memory else "r",
                             allow_pickle=False)

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def rows(self, indices) -> np.ndarray:
        """``float32 (len(indices), d)``: the features of dataset cells ``indices``."""
        indices = np.asarray(indices, np.int64)
        if not self.filled[indices].all():  # a cell the run was not expected to meet
            missing = indices[~self.filled[indices]]
            raise RuntimeError(f"{self.path}: no features of cell {int(missing[0])} (and "
                               f"{len(missing) - 1} more) were computed")
        return np.asarray(self.array[indices], np.float32)

    def __getstate__(self) -> dict:
        return {"path": self.path, "filled": self.filled}  # a spawned worker reopens the file

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["filled"])


class _FixedBatches:
    """Batches of dataset indices for :func:`~pastflow.models.data.make_loader`, epoch 0."""

    epoch = 0

    def __init__(self, batches: list[np.ndarray]):
        self.batches = batches

    def __iter__(self):
        return (batch.tolist() for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def scheduled_cells(dataset: CellDataset, batch_size: int, world_size: int, seed: int,
                    epoch: int, batches_done: int, steps: int) -> np.ndarray:
    """Sorted dataset indices of the cells the next ``steps`` steps train on (every rank's
    share, from ``epoch`` after ``batches_done`` batches, as the training sampler draws them),
    with their neighbours."""
    samplers = [ResumableBatchSampler(dataset.groups(), batch_size, world_size, rank, seed)
                for rank in range(world_size)]
    seen = np.zeros(len(dataset), bool)
    while steps > 0 and not seen.all():
        epochs = []
        for sampler in samplers:
            sampler.set_position(epoch, batches_done)
            epochs.append(list(sampler))
        taken = min(steps, len(epochs[0]))
        if taken == 0 and batches_done == 0:  # an epoch of no batch (pretrain refuses it)
            break
        for batches in epochs:
            for batch in batches[:taken]:
                seen[batch] = True
        steps, epoch, batches_done = steps - taken, epoch + 1, 0
    return with_neighbours(dataset, np.flatnonzero(seen))


def with_neighbours(dataset: CellDataset, cells: np.ndarray) -> np.ndarray:
    """Sorted unique ``cells`` and their neighbours (dataset indices)."""
    cells = np.unique(np.asarray(cells, np.int64))
    if dataset.k_neighbors == 0 or len(cells) == 0:
        return cells
    neighbours = dataset.neighbors_of(cells)
    return np.union1d(cells, neighbours[neighbours >= 0])


def feature_batches(dataset: CellDataset, cells: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``cells`` in batches of at most ``batch_size``, each of one crop size, in index order."""
    batches = []
    for group in dataset.groups():
        members = np.intersect1d(cells, group)
        batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
    return batches


@torch.no_grad()
def compute_features(encoder: torch.nn.Module, dataset: CellDataset, batches: list[np.ndarray],
                     device: torch.device, write, *, workers: int = 0, seed: int = 0,
                     channels_last: bool = False, progress: bool = False) -> int:
    """Run ``encoder`` (eval mode, bf16 autocast on CUDA) over the patches of ``batches``
    (dataset indices, no augmentation) and hand each batch's features to ``write(indices,
    float32 (n, d))``. Returns the cells done. The training loader's machinery reads the
    patches; the global random streams are left as they were."""
    from pastflow.progress import progress_bar

    view = dataset.patches_only()
    loader = make_loader(view, _FixedBatches(batches), workers, seed,
                         pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    was_training, done = encoder.training, 0
    encoder.eval()
    total = int(sum(len(b) for b in batches))
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                progress_bar(total=total, unit="cell", desc="frozen features",
                             enabled=progress) as bar:
            for batch in on_device(loader, device):
                images = prepare_images(batch, None, view.mean, view.std)["patch"]
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast:
                    features = encoder(images)
                write(batch["index"].cpu().numpy(), features.float().cpu().numpy())
                done += len(features)
                bar.update(len(features))
    finally:
        encoder.train(was_training)
        del loader  # its worker processes end here
    return done


def _create(path: Path, key: dict, n: int, dim: int, dtype) -> None:
    """An empty cache: zeros, nothing filled; the ``.npy`` last, so that it means complete."""
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({**key, "shape": [n, dim], "dtype": np.dtype(dtype).name},
                                  indent=1))
    _save_filled(path, np.zeros(n, bool))
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
        del array


def _save_filled(path: Path, filled: np.ndarray) -> None:
    with atomic_path(_filled_path(path)) as tmp, open(tmp, "wb") as fh:
        np.save(fh, filled)


def _check_range(values: np.ndarray, dtype, path: Path, encoder: str) -> None:
    if dtype == np.float16 and np.abs(values).max(initial=0) > FLOAT16_MAX:
        raise InputError(path, f"features of image encoder {encoder!r} exceed float16's range "
                               f"(|x| up to {np.abs(values).max():.3g}); set pretrain.train."
                               "cache_frozen_features: false")


def build_cache(encoder: torch.nn.Module, dataset: CellDataset, cells: np.ndarray,
                root: Path, image_config: dict, image_px: int, context: DistContext, *,
                batch_size: int, workers: int = 0, seed: int = 0, channels_last: bool = False,
                progress: bool = False, what: str = "training") -> CachedFeatures:
    """The cache of ``dataset`` under ``root`` with the features of ``cells`` (dataset
    indices) computed, sharing the work between the ranks of ``context``."""
    key = cache_key(dataset, image_config, image_px, encoder)
    path = cache_path(Path(root), key, dataset.patch_px)
    name = image_config["name"]
    if context.is_main and not all(p.is_file() for p in _files(path)):
        dtype = np.float16 if context.device.type == "cuda" else np.float32
        _create(path, key, len(dataset), int(encoder.out_dim), dtype)
    context.barrier()
    filled = np.load(_filled_path(path), allow_pickle=False)
    missing = cells[~filled[cells]]
    if len(missing) == 0:
        if context.is_main:
            log.info("%s features of %d %s cells: all in %s", name, len(cells), what, path)
        return CachedFeatures(path, filled)
    batches = feature_batches(dataset, missing, batch_size)
    mine = batches[context.rank::context.world_size]
    start = time.perf_counter()
    if context.is_main:
        log.info("%s features of %d %s cells: %d in %s, computing %d (%s)", name, len(cells),
                 what, len(cells) - len(missing), path, len(missing),
                 f"{context.world_size} processes" if context.distributed else "1 process")
        cache = np.load(path, mmap_mode="r+", allow_pickle=False)
        dtype = cache.dtype

        def write(indices, values):
            _check_range(values, dtype, path, name)
            cache[indices] = values
    else:
        dtype = np.load(path, mmap_mode="r", allow_pickle=False).dtype
        rows = int(sum(len(b) for b in mine))
        share = _share_path(path, context.rank)
        cache = (np.lib.format.open_memmap(share, mode="w+", dtype=dtype,
                                           shape=(rows, int(encoder.out_dim)))
                 if rows else None)
        position = [0]

        def write(indices, values):
            _check_range(values, dtype, path, name)
            cache[position[0]:position[0] + len(values)] = values
            position[0] += len(values)
    done = compute_features(encoder, dataset, mine, context.device, write, workers=workers,
                            seed=seed, channels_last=channels_last,
                            progress=progress and context.is_main)
    if cache is not None:
        cache.flush()
    del cache
    context.barrier()
    if context.is_main:
        _gather_shares(path, batches, context.world_size)
        filled[missing] = True
        _save_filled(path, filled)
        seconds = time.perf_counter() - start
        log.info("%s features of %d cells in %.1f s (%.0f cells/s on rank 0: %d)", name,
                 len(missing), seconds, done / max(seconds, 1e-9), done)
    context.barrier()
    return CachedFeatures(path, np.load(_filled_path(path), allow_pickle=False))


def _share_path(path: Path, rank: int) -> Path:
    return path.with_name(f".{path.stem}.rank{rank}.npy")


def _gather_shares(path: Path, batches: list[np.ndarray], world_size: int) -> None:
    """Rank 0 copies the other ranks' shares into the cache and removes their files."""
    if world_size == 1:
        return
    cache = np.load(path, mmap_mode="r+", allow_pickle=False)
    for rank in range(1, world_size):
        mine = batches[rank::world_size]
        if not mine:
            continue
        indices, share_file = np.concatenate(mine), _share_path(path, rank)
        share = np.load(share_file, mmap_mode="r", allow_pickle=False)
        for begin in range(0, len(indices), _COPY_ROWS):
            cache[indices[begin:begin + _COPY_ROWS]] = share[begin:begin + _COPY_ROWS]
        del share
        share_file.unlink()
    cache.flush()


def remove_other_caches(root: Path, keep: list[Path]) -> None:
    """Remove the cache files under ``root`` that are not ``keep``'s (other keys: stale)."""
    kept = {p.name for path in keep for p in _files(path)}
    for other in sorted(Path(root).glob("*.npy")) + sorted(Path(root).glob("*.json")):
        if other.name not in kept and other.is_file():
            log.info("removing the stale feature cache file %s", other)
            other.unlink()


def cache_frozen_features(model, dataset: CellDataset, validation, config: dict,
                          out_dir: Path, context: DistContext, *, epoch: int,
                          batches_done: int, steps: int, workers: int,
                          progress: bool = False) -> None:
    """Compute (or reuse) the frozen image encoder's features of the cells the next
    ``steps`` steps train on and of the validation cells, and have ``dataset`` and
    ``validation.dataset`` serve them instead of patches."""
    train, model_config = config["train"], config["model"]
    if context.is_main and augments(dataset.augmentation):
        log.warning("the image encoder is frozen: its features are computed once per cell, "
                    "without augmentation (pretrain.data.augment does not apply to cached "
                    "features); set pretrain.train.cache_frozen_features: false to augment, "
                    "at one encoder pass per cell and step")
    root = Path(out_dir) / CACHE_DIR
    k = int(model_config["spatial"]["k"])
    batch_size = int(train["batch_size"])
    options = dict(
        # Per rank, the patches one training step would send through the encoder.
        batch_size=-(-batch_size // context.world_size) * (1 + k),
        workers=workers, seed=int(config["seed"]), progress=progress,
        channels_last=bool(train.get("channels_last")) and context.device.type == "cuda")
    image = (model_config["image"], int(model_config["image_px"]))
    cells = scheduled_cells(dataset, batch_size, context.world_size, int(config["seed"]),
                            epoch, batches_done, steps)
    caches = [build_cache(model.image_encoder, dataset, cells, root, *image, context,
                          **options)]
    dataset.serve_features(caches[0])
    if validation is not None:
        cells = with_neighbours(validation.dataset, np.concatenate(validation.batches))
        caches.append(build_cache(model.image_encoder, validation.dataset, cells, root, *image,
                                  context, what="validation", **options))
        validation.dataset.serve_features(caches[1])
    if context.is_main:
        remove_other_caches(root, [c.path for c in caches])
    context.barrier()
