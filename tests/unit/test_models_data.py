"""pastflow.models.data and augment: the multi-sample cell dataset, its sampler and loader."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pastflow.errors import InputError
from pastflow.models.augment import (Augmentation, augment, draw_parameters, hed_jitter,
                                     normalize, prepare_images)
from pastflow.models.data import (CellDataset, ResumableBatchSampler, make_loader,
                                  nearest_neighbors, read_qc_table, select_cohort_genes)
from pastflow.models.pathways import read_gmt, default_gmt_path, score_pathways
from pastflow.patches.reader import PatchStore
from test_models_fixtures import PATCH_PX, cohort, make_sample  # noqa: F401 (fixture)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def dataset(cohort):
    return CellDataset([s.store for s in cohort], [s.table for s in cohort], k_neighbors=3,
                       mean=MEAN, std=STD, augmentation=None, seed=5)


def test_cohort_genes_are_the_most_often_highly_variable(cohort):
    tables = [ad.read_h5ad(s.table) for s in cohort]
    genes = select_cohort_genes(tables, n_genes=None)
    votes = {g: sum(g in t.var_names[t.var["highly_variable"]] for t in tables) for g in genes}
    assert list(votes.values()) == sorted(votes.values(), reverse=True)
    assert set(genes) == set().union(*(t.var_names[t.var["highly_variable"]] for t in tables))
    assert select_cohort_genes(tables, n_genes=5) == genes[:5]


def test_items_join_patch_expression_counts_and_pathways_by_cell_id(cohort, dataset):
    assert len(dataset) == 72 and dataset.samples == ["s1", "s2"] and dataset.patch_px == PATCH_PX
    sample = cohort[1]
    table = ad.read_h5ad(sample.table)
    store = PatchStore(sample.store)
    row = 10
    item = dataset[36 + row]
    cell = table.obs["cell_id"].iloc[row]
    assert item["sample"].item() == 1 and item["index"].item() == 46
    # Patch: the store's crop of this cell, as stored; normalised on the batch's device.
    raw = store.read(store.index_of([cell]))[0]
    assert item["patch"].dtype == torch.uint8 and np.array_equal(item["patch"].numpy(), raw)
    model_input = prepare_images(dataset.batch([46]), None, MEAN, STD)["patch"][0]
    np.testing.assert_allclose(model_input.numpy(), (raw / 255.0 - 0.5) / 0.25, atol=1e-6)
    # Expression and counts in cohort gene order; genes the sample lacks are 0 and masked.
    for j, gene in enumerate(dataset.genes):
        if gene in table.var_names:
            column = table.var_names.get_loc(gene)
            assert item["gene_mask"][j]
            assert item["expression"][j].item() == pytest.approx(table.X[row, column], rel=1e-6)
            assert item["counts"][j].item() == table.layers["counts"][row, column]
        else:
            assert not item["gene_mask"][j] and item["expression"][j] == 0 and item["counts"][j] == 0
    assert {"CD6", "BG07"} & set(dataset.genes) and not item["gene_mask"].all()
    assert item["library_size"].item() == pytest.approx(item["counts"].sum().item())
    # Pathway scores: the sample's own scoring of its cells.
    scores = score_pathways(table.X, table.var_names, read_gmt(default_gmt_path()))
    assert dataset.pathways == ["PROLIFERATION_G2M", "T_CELL_RECEPTOR"]
    for j, name in enumerate(dataset.pathways):
        assert item["pathways"][j].item() == pytest.approx(scores.scores[row, scores.names.index(name)])
    assert set(dataset.coverage["sample"]) == {"s1", "s2"}


def test_neighbours_are_the_nearest_cells_of_the_same_sample(cohort, dataset):
    sample = cohort[0]
    item = dataset[7]
    neighbours = item["neighbors"].numpy()
    assert item["neighbor_patches"].shape == (3, 3, PATCH_PX, PATCH_PX)
    assert (neighbours >= 0).all() and (neighbours < 36).all() and 7 not in neighbours
    distance = np.hypot(*(sample.xy - sample.xy[7]).T)
    distance[7] = np.inf
    np.testing.assert_allclose(np.sort(distance[neighbours]), np.sort(distance)[:3])
    np.testing.assert_allclose(item["neighbor_patches"][0].numpy(), dataset[neighbours[0]]["patch"].numpy())


def test_nearest_neighbors_by_hand():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    assert nearest_neighbors(xy, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert nearest_neighbors(xy, 2, max_distance=2.5).tolist() == [[1, -1], [0, 2], [1, -1], [-1, -1]]
    assert nearest_neighbors(xy[:1], 2).tolist() == [[-1, -1]]
    assert nearest_neighbors(xy, 5)[0].tolist() == [1, 2, 3, -1, -1]
    # Cells at the same position: each gets another one, never itself.
    same = nearest_neighbors(np.array([[0.0, 0.0]] * 3 + [[5.0, 0.0]]), 1)
    assert all(same[i, 0] in {0, 1, 2} - {i} for i in range(3)) and same[3, 0] in {0, 1, 2}


def test_augmentation_is_seeded_per_cell_and_epoch(cohort):
    augmentation = Augmentation(hed_sigma=0.05, brightness=0.1)
    augmented = CellDataset([cohort[0].store], [cohort[0].table], seed=3,
                            augmentation=augmentation)

    def image(batch, position):
        return prepare_images(batch, augmentation, MEAN, STD)["patch"][position]

    alone = image(augmented.batch([4]), 0)
    # The same cell inside another batch, in another place: the same augmented image.
    assert torch.equal(alone, image(augmented.batch([9, 4, 17]), 1))
    assert torch.equal(augmented[4]["augment"], augmented.batch([9, 4])["augment"][1])
    assert not torch.equal(alone, image(augmented.batch([9]), 0))
    augmented.set_epoch(1)
    assert not torch.equal(alone, image(augmented.batch([4]), 0))
    assert torch.equal(alone, image(augmented.batch([4], epoch=0), 0))


def _dihedral_reference(rgb: np.ndarray, row: np.ndarray) -> np.ndarray:
    """What a patch's flips and turns are, per patch in numpy (HWC)."""
    if row[8]:
        rgb = rgb[:, ::-1]
    if row[9]:
        rgb = rgb[::-1]
    return np.rot90(rgb, k=int(row[10]))


def test_batch_augmentation_equals_per_patch_reference():
    """The batch operations (stain jitter with scikit-image's stain matrices, brightness,
    contrast, flips, turns) give, patch by patch, what the per-patch definitions give."""
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    every = Augmentation(hed_sigma=0.2, brightness=0.1, contrast=0.2)
    rows = np.stack([draw_parameters(every, np.random.default_rng(i)) for i in range(16)])
    images = torch.from_numpy(patches).float() / 255
    out = augment(images, torch.from_numpy(rows), every).numpy()
    for k in range(16):
        rgb = patches[k].transpose(1, 2, 0) / 255.0
        stains = rgb2hed(rgb) * rows[k, 0:3] + rows[k, 3:6]
        rgb = np.clip(hed2rgb(stains), 0, 1) + rows[k, 6]
        rgb = (rgb - rgb.mean()) * rows[k, 7] + rgb.mean()
        expected = np.clip(_dihedral_reference(rgb, rows[k]), 0, 1).transpose(2, 0, 1)
        np.testing.assert_allclose(out[k], expected, atol=2e-5)
    assert len({tuple(r[8:]) for r in rows}) > 4  # several dihedral transforms were drawn


def test_geometric_augmentation_moves_pixels_and_stain_jitter_changes_colour():
    rng = np.random.default_rng(0)
    patches = torch.from_numpy(rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8))
    plain = patches.float() / 255
    geometric = Augmentation(hed_sigma=0.0)
    rows = torch.from_numpy(np.stack([draw_parameters(geometric, np.random.default_rng(seed))
                                      for seed in range(12)]))
    out = augment(plain, rows, geometric)
    for k in range(12):  # a flip or rotation only moves pixels: same multiset of RGB triples
        assert (sorted(map(tuple, out[k].reshape(3, -1).T.tolist()))
                == sorted(map(tuple, plain[k].reshape(3, -1).T.tolist())))
    assert len({out[k].numpy().tobytes() for k in range(12)}) > 4
    stain_only = Augmentation(hed_sigma=0.2, flips=False, rot90=False)
    rows = torch.from_numpy(draw_parameters(stain_only, np.random.default_rng(1))[None])
    stained = augment(plain[:1], rows, stain_only)
    assert 0 <= stained.min() and stained.max() <= 1
    assert (stained - plain[:1]).abs().mean() > 0.005
    # The identity draws (scale 1, shift 0) keep H&E colours (pink, purple) within a grey
    # level or two (the round trip clips negative stain densities, as scikit-image does).
    he = torch.tensor([[0.91, 0.63, 0.77], [0.31, 0.18, 0.51]]).T.reshape(1, 3, 1, 2)
    torch.testing.assert_close(hed_jitter(he, torch.ones(1, 3), torch.zeros(1, 3)), he,
                               atol=0.01, rtol=0)
    np.testing.assert_allclose(normalize(patches, MEAN, STD).numpy(),
                               (patches.numpy() / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_loader_with_two_workers_streams_the_same_batches(dataset):
    sampler = ResumableBatchSampler(dataset.groups(), 8, seed=1)
    sampler.set_position(epoch=2, batches_done=0)
    serial = list(make_loader(dataset, sampler, num_workers=0, seed=0))
    parallel = list(make_loader(dataset, sampler, num_workers=2, seed=0))
    assert len(serial) == len(parallel) == 9
    for a, b in zip(serial, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert serial[0]["patch"].shape == (8, 3, PATCH_PX, PATCH_PX)
    assert serial[0]["neighbor_patches"].shape == (8, 3, 3, PATCH_PX, PATCH_PX)
    # Each batch is the dataset's items, collated.
    first = [dataset[i] for i in serial[0]["index"].tolist()]
    assert all(torch.equal(serial[0][k], torch.stack([item[k] for item in first]))
               for k in serial[0])


def test_persistent_workers_see_each_epochs_augmentation(cohort):
    augmented = CellDataset([s.store for s in cohort], [s.table for s in cohort], seed=2,
                            k_neighbors=2, augmentation=Augmentation(brightness=0.1))
    sampler = ResumableBatchSampler(augmented.groups(), 8, seed=1)
    loader = make_loader(augmented, sampler, num_workers=2, seed=0)
    epochs = []
    for epoch in (0, 1):
        sampler.set_position(epoch=epoch, batches_done=0)  # the dataset's own epoch stays 0
        epochs.append(list(loader))
    for epoch, batches in enumerate(epochs):
        for batch in batches[:2]:
            expected = augmented.batch(batch["index"].tolist(), epoch)
            assert torch.equal(batch["augment"], expected["augment"])
            assert torch.equal(batch["neighbor_augment"], expected["neighbor_augment"])
    assert batch["neighbor_augment"].shape == (8, 2, batch["augment"].shape[1])


def test_resumable_sampler_skips_done_batches_and_splits_ranks(dataset):
    full = ResumableBatchSampler(dataset.groups(), 8, seed=4)
    full.set_position(epoch=3, batches_done=0)
    order = list(full)
    assert len(order) == len(dataset) // 8 and sorted(sum(order, [])) == list(range(len(dataset)))
    resumed = ResumableBatchSampler(dataset.groups(), 8, seed=4)
    resumed.set_position(epoch=3, batches_done=2)
    assert list(resumed) == order[2:] and len(resumed) == len(order) - 2
    # batch_size is the global batch: on 2 ranks step t is step t of one process, halved.
    ranks = [ResumableBatchSampler(dataset.groups(), 8, num_replicas=2, rank=r, seed=4)
             for r in (0, 1)]
    for r in ranks:
        r.set_position(epoch=3, batches_done=0)
    steps = list(zip(*ranks))
    assert len(ranks[0]) == len(ranks[1]) == len(steps) == 9
    assert [sorted(a + b) for a, b in steps] == [sorted(batch) for batch in order]
    assert all(len(a) == len(b) == 4 and not set(a) & set(b) for a, b in steps)
    for r in ranks:  # a resumed run, on any number of ranks, continues the same steps
        r.set_position(epoch=3, batches_done=2)
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(batch) for batch in order[2:]]
    odd = [ResumableBatchSampler(dataset.groups(), 8, num_replicas=3, rank=r, seed=4)
           for r in range(3)]
    for r in odd:
        r.set_position(epoch=3, batches_done=0)
    assert [sorted(sum(step, [])) for step in zip(*odd)] == [sorted(batch) for batch in order]
    assert {tuple(len(part) for part in step) for step in zip(*odd)} == {(3, 3, 2)}
    other_epoch = ResumableBatchSampler(dataset.groups(), 8, seed=4)
    other_epoch.set_position(epoch=4, batches_done=0)
    assert list(other_epoch) != order
    # A group smaller than a batch (a small spot slide) is one batch, not left out.
    small = ResumableBatchSampler([np.arange(5), np.arange(5, 105)], 64, seed=0)
    assert sorted(len(b) for b in small) == [5, 64] and len(small) == 2
    assert sorted(sum(list(small), []))[:5] == list(range(5))


def test_spot_stores_are_read_whole_and_batched_apart_from_cells(cohort, tmp_path):
    """A spot is cut at its own size: its items have the spot store's patch size, and a batch
    never mixes them with the cells' crops."""
    spots = make_sample(tmp_path / "spots", "spots", seed=3, spot_px=PATCH_PX + 8)
    data = CellDataset([cohort[0].store, spots.store], [cohort[0].table, spots.table],
                       k_neighbors=2, augmentation=None)
    assert data.patch_px == PATCH_PX and data.crop_px == [PATCH_PX, PATCH_PX + 8]
    store = PatchStore(spots.store)
    assert store.unit == "spot" and store.attrs["unit_diameter_um"] == pytest.approx((PATCH_PX + 8) * 0.5)
    item = data[len(data) - 1]
    assert item["patch"].shape == (3, PATCH_PX + 8, PATCH_PX + 8)
    assert item["neighbor_patches"].shape == (2, 3, PATCH_PX + 8, PATCH_PX + 8)
    sampler = ResumableBatchSampler(data.groups(), 6, seed=0)
    batches = list(make_loader(data, sampler, num_workers=0, seed=0))
    assert len(batches) == 12  # 36 cells and 36 spots, 6 full batches each
    sizes = [b["patch"].shape[-1] for b in batches]
    assert sorted(set(sizes)) == [PATCH_PX, PATCH_PX + 8] and sizes.count(PATCH_PX) == 6
    for batch in batches:  # each batch from one sample here: one size, one kind
        assert len(set(batch["sample"].tolist())) == 1


def test_bad_inputs_name_the_file(cohort, tmp_path, caplog):
    s1, s2 = cohort
    with pytest.raises(InputError, match=r"s2\.h5ad: none of its 36 cell ids is in the patch store"):
        CellDataset([s1.store], [s2.table])
    table = ad.read_h5ad(s1.table)
    del table.layers["counts"]
    table.write_h5ad(tmp_path / "nocounts.h5ad")
    with pytest.raises(InputError, match=r"nocounts\.h5ad: no layers\[\"counts\"\]"):
        read_qc_table(tmp_path / "nocounts.h5ad")
    with pytest.raises(InputError, match=r"pastflow_default\.gmt: 1 of the model's pathways are "
                                         r"not gene sets here \(first: 'NOPE'\)"):
        CellDataset([s1.store], [s1.table], pathways=["T_CELL_RECEPTOR", "NOPE"])
    with pytest.raises(InputError, match="one QC table per patch store"):
        CellDataset([s1.store, s2.store], [s1.table])
    # Cells without a patch are left out, with a warning.
    partial = ad.read_h5ad(s1.table)
    partial.obs["cell_id"] = partial.obs["cell_id"].astype(str)
    partial.obs.iloc[:4, partial.obs.columns.get_loc("cell_id")] = [f"ghost{i}" for i in range(4)]
    partial.write_h5ad(tmp_path / "partial.h5ad")
    with caplog.at_level(logging.WARNING):
        assert len(CellDataset([s1.store], [tmp_path / "partial.h5ad"], pathways=[])) == 32
    assert "4 of 36 cells have no patch" in caplog.text


def test_pathways_off_skips_scoring(cohort):
    plain = CellDataset([cohort[0].store], [cohort[0].table], pathways=[], augmentation=None)
    item = plain[0]
    assert plain.pathways == [] and item["pathways"].shape == (0,)
    batch = default_collate([plain[0], plain[1]])
    assert batch["expression"].shape == (2, len(plain.genes))
