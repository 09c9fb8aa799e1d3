"""Tissue layout: smooth random fields for tissue, tumour nests, immune aggregates and collagen
direction, and cell placement with non-overlapping nuclei.

All coordinates are in the *tissue frame*: microns, origin at the top-left of the simulated
area, x to the right, y down. Vendor micron frames (Xenium, Visium HD bins) are this frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from pastflow.simulate.biology import (
    CELL_TYPES,
    DOMAIN_DENSITY,
    DOMAINS,
    ShapeBank,
    nuclei_overlap,
    type_proportions,
)
from pastflow.simulate.clinical import PatientParameters

log = logging.getLogger(__name__)

NEST_SCALE_UM = 45.0  # correlation length of tumour nests
IMMUNE_SCALE_UM = 30.0  # of immune aggregates
FIBRE_SCALE_UM = 120.0  # of collagen direction
EDGE_UM = 1.5  # width of the soft transition at domain and tissue edges


@dataclass
class TissueFields:
    """Smooth fields sampled on a grid of ``res_um`` spacing covering ``[0, width] x [0, height]``.

    ``tissue``, ``tumour``, ``immune``: continuous fields; a point belongs to the tissue where
    ``tissue > 0``, to a tumour nest where also ``tumour > 0``, else to an immune aggregate where
    ``immune > 0``, else to stroma. Thresholding the (smooth, so bilinearly exact enough)
    continuous fields at pixel resolution gives crisp boundaries at any magnification.
    ``fibre_cos2``, ``fibre_sin2``: collagen direction as a doubled-angle unit vector.
    Grid node ``(i, j)`` sits at ``(x, y) = (j * res_um, i * res_um)``.
    """

    width_um: float
    height_um: float
    res_um: float
    tissue: np.ndarray
    tumour: np.ndarray
    immune: np.ndarray
    fibre_cos2: np.ndarray
    fibre_sin2: np.ndarray

    def sample(self, name: str, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Bilinear sample of field ``name`` at tissue-frame points (clamped at the border)."""
        grid = getattr(self, name)
        coords = np.stack([np.asarray(y_um, float) / self.res_um, np.asarray(x_um, float) / self.res_um])
        return ndimage.map_coordinates(grid, coords, order=1, mode="nearest")

    def domain_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Domain codes (index into :data:`DOMAINS`) at points; -1 outside the tissue."""
        t = self.sample("tissue", x_um, y_um)
        u = self.sample("tumour", x_um, y_um)
        v = self.sample("immune", x_um, y_um)
        dom = np.where(u > 0, 0, np.where(v > 0, 2, 1))
        return np.where(t > 0, dom, -1)

    def fibre_angle(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Collagen direction in [0, pi) radians at points."""
        c = self.sample("fibre_cos2", x_um, y_um)
        s = self.sample("fibre_sin2", x_um, y_um)
        return (0.5 * np.arctan2(s, c)) % np.pi


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px, mode="reflect")
    return f / (f.std() + 1e-12)


def _threshold_for_fraction(field: np.ndarray, mask: np.ndarray, fraction: float) -> float:
    vals = field[mask]
    return float(np.quantile(vals, 1.0 - fraction)) if vals.size else 0.0


def build_fields(rng: np.random.Generator, width_um: float, height_um: float,
                 patient: PatientParameters, tissue_cover: float = 0.85) -> TissueFields:
    """Draw the tissue, tumour-nest, immune-aggregate and collagen-direction fields.

    ``tissue_cover``: fraction of the area covered by tissue (the rest is glass);
    tumour nests cover ``patient.tumour_fraction`` of the tissue; immune aggregates
    ``0.03 + 0.25 * immune_infiltration`` of the stroma, preferring the tumour margin.
    """
    res = max(4.0, max(width_um, height_um) / 1200.0)  # bounded grid size for big slides
    ny, nx = int(np.ceil(height_um / res)) + 2, int(np.ceil(width_um / res)) + 2
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32) * res

    # Tissue: one large blob with an irregular edge.
    cx, cy = width_um / 2, height_um / 2
    radial = np.hypot((xx - cx) / (width_um / 2), (yy - cy) / (height_um / 2))
    edge = _smooth_noise(rng, (ny, nx), max(width_um, height_um) / 10 / res)
    tissue_raw = (1.3 - radial) + 0.25 * edge
    if tissue_cover >= 1.0:
        tissue = np.ones_like(tissue_raw)
    else:
        tissue = tissue_raw - _threshold_for_fraction(tissue_raw, np.ones_like(tissue_raw, bool), tissue_cover)
    in_tissue = tissue > 0

    tumour_raw = _smooth_noise(rng, (ny, nx), NEST_SCALE_UM / res)
    tumour = tumour_raw - _threshold_for_fraction(tumour_raw, in_tissue, patient.tumour_fraction)

    # Immune aggregates prefer the invasive margin: add a bump where |tumour| is small.
    margin = np.exp(-0.5 * (tumour / 0.6) ** 2)
    immune_raw = _smooth_noise(rng, (ny, nx), IMMUNE_SCALE_UM / res) + 1.2 * margin
    stroma = in_tissue & (tumour <= 0)
    immune_frac = 0.03 + 0.25 * patient.immune_infiltration
    immune = immune_raw - _threshold_for_fraction(immune_raw, stroma, immune_frac)

    # Collagen: a slowly varying random direction, bent to run along the nest boundaries.
    a = np.pi * _smooth_noise(rng, (ny, nx), FIBRE_SCALE_UM / res)
    c2, s2 = np.cos(2 * a), np.sin(2 * a)
    gy, gx = np.gradient(ndimage.gaussian_filter(tumour_raw, 2.0))
    tangent = np.arctan2(gy, gx) + np.pi / 2
    w = 1.5 * margin
    c2 = c2 + w * np.cos(2 * tangent)
    s2 = s2 + w * np.sin(2 * tangent)
    norm = np.hypot(c2, s2) + 1e-6

    # Scale the continuous fields to microns-from-threshold units so EDGE_UM is meaningful.
    def to_distance(f: np.ndarray) -> np.ndarray:
        g = np.hypot(*np.gradient(f, res))
        return (f / (np.median(g[np.abs(f) < 0.5]) + 1e-6)).astype(np.float32)

    return TissueFields(
        width_um=width_um,
        height_um=height_um,
        res_um=res,
        tissue=to_distance(tissue) if tissue_cover < 1.0 else tissue.astype(np.float32) * 1e3,
        tumour=to_distance(tumour),
        immune=to_distance(immune),
        fibre_cos2=(c2 / norm).astype(np.float32),
        fibre_sin2=(s2 / norm).astype(np.float32),
    )


def side_for_cells(n_cells: int, patient: PatientParameters, tissue_cover: float = 0.85) -> float:
    """Side (microns) of a square tissue frame expected to hold ``n_cells`` at nominal densities."""
    immune = 0.03 + 0.25 * patient.immune_infiltration
    t = patient.tumour_fraction
    density = (t * DOMAIN_DENSITY["tumour"] + (1 - t) * (1 - immune) * DOMAIN_DENSITY["stroma"]
               + (1 - t) * immune * DOMAIN_DENSITY["immune"]) / 1000.0
    return float(np.sqrt(n_cells / (density * tissue_cover)))


# ----------------------------------------------------------------------------- placement


def _draw_candidates(rng, fields: TissueFields, weights: np.ndarray, m: int):
    """``m`` points from the intensity ``weights`` (per grid cell), uniform within a cell."""
    p = weights.ravel() / weights.sum()
    cells = rng.choice(p.size, size=m, p=p)
    iy, ix = np.divmod(cells, weights.shape[1])
    x = (ix + rng.uniform(-0.5, 0.5, m)) * fields.res_um
    y = (iy + rng.uniform(-0.5, 0.5, m)) * fields.res_um
    keep = (x >= 0) & (x < fields.width_um) & (y >= 0) & (y < fields.height_um)
    return x[keep], y[keep]


def _assign_kinds(rng, fields, bank: ShapeBank, patient, x, y, domain):
    """Cell type per domain proportions, cycling state, and a nucleus shape from the bank."""
    n = len(x)
    cell_type = np.empty(n, dtype=np.int64)
    for d, name in enumerate(DOMAINS):
        sel = np.flatnonzero(domain == d)
        cell_type[sel] = rng.choice(len(CELL_TYPES), size=sel.size, p=type_proportions(name, patient))
    tumour = cell_type == CELL_TYPES.index("tumour")
    cycling = tumour & (rng.random(n) < patient.proliferation_fraction)
    shape = np.empty(n, dtype=np.int64)
    angle = fields.fibre_angle(x, y)
    for ki, kind in enumerate(bank.kinds):
        if kind == "tumour_proliferating":
            sel = np.flatnonzero(cycling)
        else:
            sel = np.flatnonzero((cell_type == ki) & ~cycling)
        if not sel.size:
            continue
        pool = bank.shapes_of(kind)
        if kind in ("fibroblast", "endothelial"):
            # Spindle cells follow the collagen: pick the bank shape nearest the local direction.
            want = (angle[sel] + rng.normal(0, 0.15, sel.size)) % np.pi
            diff = np.abs(np.angle(np.exp(2j * (bank.orientation[pool][None, :] - want[:, None]))))
            shape[sel] = pool[np.argmin(diff, axis=1)]
        else:
            shape[sel] = rng.choice(pool, size=sel.size)
    return cell_type, cycling, shape


def _independent_set(rng, n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A maximal independent set of the conflict graph on ``n`` nodes (Luby's algorithm)."""
    alive = np.ones(n, dtype=bool)
    chosen = np.zeros(n, dtype=bool)
    while alive.any():
        prio = rng.random(n)
        live_edge = alive[i] & alive[j]
        ei, ej = i[live_edge], j[live_edge]
        # A node wins if its priority beats every live neighbour's.
        best = np.full(n, np.inf)
        np.minimum.at(best, ei, prio[ej])
        np.minimum.at(best, ej, prio[ei])
        win = alive & (prio < best)
        chosen |= win
        alive &= ~win
        lost = np.zeros(n, dtype=bool)
        lost[ei[win[ej]]] = True
        lost[ej[win[ei]]] = True
        alive &= ~lost
    return chosen


def place_cells(rng: np.random.Generator, fields: TissueFields, bank: ShapeBank,
                patient: PatientParameters, n_cells: int, max_rounds: int = 60) -> pd.DataFrame:
    """Place ``n_cells`` cells whose nuclei do not overlap.

    Each domain gets a share of the cells proportional to its area times its density
    (:data:`~pastflow.simulate.biology.DOMAIN_DENSITY`). Candidates are drawn uniformly within
    their domain, given a type, cycling state and shape, and accepted in rounds: a candidate
    survives if its nucleus clears every accepted nucleus and wins its conflicts with the other
    candidates of its round. A domain that fills up passes its remaining share to the others.
    Returns a frame with ``x_um, y_um, domain, cell_type, proliferating, shape`` (codes), in
    random order; fewer than ``n_cells`` rows only if the whole tissue is full (logged).
    """
    dom_grid = np.where(fields.tumour > 0, 0, np.where(fields.immune > 0, 2, 1))
    in_tissue = fields.tissue > 0
    dens = np.array([DOMAIN_DENSITY[d] for d in DOMAINS])
    domain_weights = [np.where(in_tissue & (dom_grid == d), 1.0, 0.0) for d in range(len(DOMAINS))]
    capacity = np.array([w.sum() for w in domain_weights]) * dens
    if capacity.sum() == 0:
        raise ValueError("the tissue mask is empty")
    target = np.floor(n_cells * capacity / capacity.sum()).astype(int)
    target[np.argmax(capacity)] += n_cells - target.sum()
    placed = np.zeros(len(DOMAINS), dtype=int)
    oversample = np.full(len(DOMAINS), 1.3)
    full = np.zeros(len(DOMAINS), dtype=bool)

    r_max = float(bank.bounding_radius.max()) + 0.35  # + overlap margin
    cols = {k: [] for k in ("x", "y", "domain", "cell_type", "cycling", "shape")}
    acc_x = np.empty(0)
    acc_y = np.empty(0)
    acc_shape = np.empty(0, dtype=np.int64)
    tree = None
    for round_ in range(max_rounds):
        need_total = n_cells - len(acc_x)
        if need_total <= 0 or full.all():
            break
        need = np.maximum(target - placed, 0)
        if need.sum() == 0:
            # Rounding or a full domain: spread the rest over domains that still take cells.
            open_ = ~full
            need = np.where(open_, np.ceil(need_total * capacity * open_ / (capacity * open_).sum()), 0)
            target = placed + need.astype(int)
        xs, ys = [], []
        for d in np.flatnonzero(need > 0):
            x, y = _draw_candidates(rng, fields, domain_weights[d], int(need[d] * oversample[d]) + 8)
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        domain = fields.domain_at(x, y)
        inside = domain >= 0
        x, y, domain = x[inside], y[inside], domain[inside]
        cell_type, cycling, shape = _assign_kinds(rng, fields, bank, patient, x, y, domain)
        ok = np.ones(len(x), dtype=bool)
        if tree is not None:
            # Conflicts with accepted nuclei.
            pairs = cKDTree(np.column_stack([x, y])).sparse_distance_matrix(
                tree, 2 * r_max, output_type="ndarray")
            ci, aj = pairs["i"], pairs["j"]
            hit = nuclei_overlap(bank, shape[ci], acc_shape[aj], acc_x[aj] - x[ci], acc_y[aj] - y[ci])
            ok[ci[hit]] = False
        idx = np.flatnonzero(ok)
        x, y, domain, cell_type, cycling, shape = (v[idx] for v in (x, y, domain, cell_type, cycling, shape))
        # Conflicts among this round's candidates.
        pairs = cKDTree(np.column_stack([x, y])).query_pairs(2 * r_max, output_type="ndarray")
        if len(pairs):
            pi, pj = pairs[:, 0], pairs[:, 1]
            hit = nuclei_overlap(bank, shape[pi], shape[pj], x[pj] - x[pi], y[pj] - y[pi])
            chosen = _independent_set(rng, len(x), pi[hit], pj[hit])
        else:
            chosen = np.ones(len(x), dtype=bool)
        sel = []
        for d in range(len(DOMAINS)):
            got = np.flatnonzero(chosen & (domain == d))
            room = max(int(need[d]), 0)
            if len(got) > room:
                got = rng.choice(got, size=room, replace=False)
            sel.append(got)
            if need[d] > 0:
                rate = len(got) / max(need[d], 1)
                if len(got) < 0.01 * need[d] and oversample[d] >= 20:
                    full[d] = True  # saturated: its share moves elsewhere
                # Acceptance falls as a domain fills: ask for more candidates next time.
                oversample[d] = min(oversample[d] * (1.0 + max(0.0, 1.0 - rate)), 20.0)
        sel = np.concatenate(sel)
        if len(sel) > need_total:
            sel = rng.choice(sel, size=need_total, replace=False)
        placed += np.bincount(domain[sel], minlength=len(DOMAINS))
        for k, v in zip(cols, (x, y, domain, cell_type, cycling, shape)):
            cols[k].append(v[sel])
        acc_x = np.concatenate([acc_x, x[sel]])
        acc_y = np.concatenate([acc_y, y[sel]])
        acc_shape = np.concatenate([acc_shape, shape[sel]])
        tree = cKDTree(np.column_stack([acc_x, acc_y]))
        log.debug("placement round %d: %d candidates, %d accepted, %d/%d placed (%s)",
                  round_, len(x), len(sel), len(acc_x), n_cells, placed.tolist())
    if len(acc_x) < n_cells:
        log.warning("tissue full: placed %d of %d cells", len(acc_x), n_cells)
    out = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    order = rng.permutation(len(out))
    out = out.iloc[order].reset_index(drop=True)
    return out.rename(columns={"x": "x_um", "y": "y_um", "cycling": "proliferating"})
