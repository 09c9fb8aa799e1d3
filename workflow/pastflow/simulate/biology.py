"""Cell types: nuclear morphology, tissue domains, and expression programmes.

Morphology follows textbook H&E appearance: carcinoma cells have large, pleomorphic, vesicular
nuclei with nucleoli; lymphocytes small, round and dark; fibroblasts spindle-shaped; macrophages
kidney-shaped with abundant pale cytoplasm; endothelial cells flat and elongated, wrapped round
a capillary lumen. Lengths are in microns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from pastflow.simulate.clinical import PatientParameters
from pastflow.simulate.genes import PROGRAMS

CELL_TYPES = ("tumour", "fibroblast", "t_cell", "b_cell", "macrophage", "endothelial")
DOMAINS = ("tumour", "stroma", "immune")

# Cell type proportions per domain (rows sum to 1; order of CELL_TYPES). The T-cell share of
# tumour nests is set per patient by immune infiltration (see type_proportions).
DOMAIN_COMPOSITION = {
    "tumour": (0.86, 0.04, 0.04, 0.01, 0.03, 0.02),
    "stroma": (0.03, 0.52, 0.13, 0.04, 0.12, 0.16),
    "immune": (0.01, 0.05, 0.56, 0.28, 0.07, 0.03),
}
# Relative cell densities (cells per 1000 um^2 before normalising to the requested count).
DOMAIN_DENSITY = {"tumour": 5.5, "stroma": 2.4, "immune": 7.5}


@dataclass(frozen=True)
class Morphology:
    """How one cell type looks. Lengths in microns; densities in optical-density units."""

    semi_major: tuple[float, float]  # nucleus semi-major axis range
    aspect: tuple[float, float]  # semi-minor / semi-major range
    pleomorphism: float  # amplitude of low-order radial harmonics (irregular outline)
    kidney: float  # depth of a one-sided indentation (macrophage bean shape)
    hematoxylin: float  # mean nuclear hematoxylin density
    chromatin: float  # relative amplitude of chromatin texture
    chromatin_scale: float  # texture grain, microns
    rim: float  # extra density at the nuclear membrane (vesicular nuclei)
    nucleoli: tuple[int, int]  # number of prominent nucleoli (range)
    cytoplasm: float  # cytoplasm extends this far beyond the nucleus outline
    cytoplasm_aspect: float  # cytoplasm semi-minor / semi-major
    cytoplasm_eosin: float
    cytoplasm_hematoxylin: float  # basophilia / amphophilia
    cytoplasm_texture: float  # granular/foamy texture amplitude
    lumen: float  # radius of a capillary lumen beside the nucleus (0 = none)
    oriented: bool  # aligned with the local collagen fibres


MORPHOLOGY = {
    "tumour": Morphology((3.9, 5.4), (0.72, 0.95), 0.10, 0.0, 0.75, 0.55, 0.9, 0.45, (1, 2),
                         3.2, 0.85, 0.15, 0.10, 0.15, 0.0, False),
    "fibroblast": Morphology((5.5, 7.5), (0.20, 0.28), 0.03, 0.0, 1.10, 0.20, 0.8, 0.05, (0, 0),
                             2.0, 0.30, 0.08, 0.02, 0.05, 0.0, True),
    "t_cell": Morphology((2.7, 3.2), (0.88, 1.0), 0.03, 0.0, 1.70, 0.25, 0.6, 0.10, (0, 0),
                         0.6, 0.95, 0.10, 0.05, 0.0, 0.0, False),
    "b_cell": Morphology((3.0, 3.5), (0.88, 1.0), 0.03, 0.0, 1.50, 0.35, 0.8, 0.15, (0, 0),
                         0.8, 0.95, 0.10, 0.08, 0.0, 0.0, False),
    "macrophage": Morphology((3.6, 4.4), (0.70, 0.85), 0.04, 0.35, 0.95, 0.30, 0.7, 0.10, (0, 1),
                             4.5, 0.85, 0.18, 0.05, 0.45, 0.0, False),
    "endothelial": Morphology((5.0, 6.5), (0.18, 0.24), 0.03, 0.0, 1.10, 0.15, 0.8, 0.05, (0, 0),
                              1.0, 0.35, 0.12, 0.02, 0.0, 3.2, True),
}
# Cycling tumour cells: larger and darker (condensed chromatin), so proliferation is visible.
PROLIFERATING = Morphology((4.6, 6.0), (0.70, 0.92), 0.16, 0.0, 1.25, 0.70, 0.6, 0.15, (0, 1),
                           3.2, 0.85, 0.15, 0.12, 0.15, 0.0, False)



def morphology_of(kind: str) -> Morphology:
    """The morphology of a shape-bank kind (a cell type or ``tumour_proliferating``)."""
    return PROLIFERATING if kind == "tumour_proliferating" else MORPHOLOGY[kind]


def cytoplasm_axes(a: float, b: float, m: Morphology) -> tuple[float, float]:
    """Semi-axes (microns) of the cytoplasm ellipse around a nucleus of semi-axes ``a, b``,
    oriented like the nucleus: what the H&E shows as the cell body."""
    cyto_a = a + m.cytoplasm
    return cyto_a, max(b + 0.5 * m.cytoplasm, cyto_a * m.cytoplasm_aspect)


# Expression programmes per cell type: (programme, weight in units of the median baseline).
TYPE_PROGRAMS = {
    "tumour": (("epithelial", 30.0),),
    "fibroblast": (("fibroblast", 30.0),),
    "t_cell": (("t_cell", 30.0),),
    "b_cell": (("b_cell", 30.0),),
    "macrophage": (("macrophage", 30.0),),
    "endothelial": (("endothelial", 30.0),),
}
ER_WEIGHT = 20.0  # estrogen programme in tumour cells of ER+ patients
HER2_WEIGHT = 40.0  # 17q12 amplicon in tumour cells of HER2+ patients
PROLIFERATION_WEIGHT = 25.0  # G2M/E2F programme in cycling tumour cells
IFN_WEIGHT = {"tumour": 15.0, "t_cell": 15.0, "macrophage": 20.0, "endothelial": 6.0}  # x immune


def type_proportions(domain: str, patient: PatientParameters) -> np.ndarray:
    """Cell type probabilities (order of :data:`CELL_TYPES`) for one domain and patient."""
    p = np.array(DOMAIN_COMPOSITION[domain], dtype=float)
    if domain == "tumour":
        # Tumour-infiltrating lymphocytes scale with the patient's immune infiltration.
        p[CELL_TYPES.index("t_cell")] = 0.01 + 0.16 * patient.immune_infiltration
    return p / p.sum()


# ----------------------------------------------------------------------------- nuclear shapes


N_ANGLES = 256  # radius lookup table resolution


@dataclass
class ShapeBank:
    """Nucleus outlines: ``n_types x per_type`` shapes, in microns, in the tissue frame.

    Each shape is a polar radius function tabulated at :data:`N_ANGLES` angles
    (``radius[s, k]`` at angle ``2 pi k / N_ANGLES``, counter-clockwise from +x with y down,
    i.e. clockwise on screen), plus its drawing parameters (``orientation`` in radians).
    Shape ``s`` belongs to ``kind[s]``: an index into ``kinds`` (the cell types, then
    ``tumour_proliferating``).
    """

    kinds: tuple[str, ...]
    kind: np.ndarray  # (n_shapes,) int
    orientation: np.ndarray  # (n_shapes,) radians
    radius: np.ndarray  # (n_shapes, N_ANGLES) microns
    harmonics: np.ndarray  # (n_shapes, 3, 2): cos/sin amplitude of harmonics 2..4
    semi_axes: np.ndarray  # (n_shapes, 2) microns
    kidney: np.ndarray  # (n_shapes,)
    seeds: np.ndarray  # (n_shapes,) seeds of the sprite textures

    @property
    def bounding_radius(self) -> np.ndarray:
        """(n_shapes,) maximum radius, microns."""
        return self.radius.max(axis=1)

    @cached_property
    def body_axes(self) -> np.ndarray:
        """(n_shapes, 2) semi-axes of each cell's cytoplasm ellipse (:func:`cytoplasm_axes`), microns."""
        return np.array([cytoplasm_axes(a, b, morphology_of(self.kinds[k]))
                         for (a, b), k in zip(self.semi_axes, self.kind)])

    def body_radius_at(self, shape: np.ndarray, angle: np.ndarray) -> np.ndarray:
        """Radius (microns) of the cell body (cytoplasm ellipse, or the nucleus where it reaches
        further) of shapes ``shape`` in directions ``angle`` (radians, convention of ``radius``)."""
        axes = self.body_axes[shape]
        ca, cb = axes[..., 0], axes[..., 1]
        rel = angle - self.orientation[shape]
        ellipse = ca * cb / np.sqrt((cb * np.cos(rel)) ** 2 + (ca * np.sin(rel)) ** 2)
        return np.maximum(ellipse, self.radius_at(shape, angle))

    def shapes_of(self, kind: str) -> np.ndarray:
        return np.flatnonzero(self.kind == self.kinds.index(kind))

    def radius_at(self, shape: np.ndarray, angle: np.ndarray) -> np.ndarray:
        """Radius (microns) of shapes ``shape`` in directions ``angle`` (radians), nearest-table."""
        k = np.round(angle * (N_ANGLES / (2 * np.pi))).astype(np.int64) % N_ANGLES
        return self.radius[shape, k]

    def polygon(self, shape: int, n_vertices: int = 24) -> np.ndarray:
        """``(n_vertices, 2)`` outline offsets ``[dx, dy]`` in microns, counter-clockwise in y-down."""
        k = (np.arange(n_vertices) * N_ANGLES) // n_vertices
        angle = 2 * np.pi * k / N_ANGLES
        r = self.radius[shape, k]
        return np.column_stack([r * np.cos(angle), r * np.sin(angle)])


def _radius_table(a: float, b: float, theta: float, harmonics: np.ndarray, kidney: float) -> np.ndarray:
    phi = np.linspace(0, 2 * np.pi, N_ANGLES, endpoint=False)
    rel = phi - theta
    r = a * b / np.sqrt((b * np.cos(rel)) ** 2 + (a * np.sin(rel)) ** 2)
    for order, (c, s) in enumerate(harmonics, start=2):
        r = r * (1 + c * np.cos(order * rel) + s * np.sin(order * rel))
    if kidney:
        # A notch on one flank of the minor axis turns an ellipse into a bean.
        d = np.angle(np.exp(1j * (rel - np.pi / 2)))
        r = r * (1 - kidney * np.exp(-0.5 * (d / 0.45) ** 2))
    return r


def build_shape_bank(rng: np.random.Generator, per_type: int = 64) -> ShapeBank:
    """Draw ``per_type`` nucleus shapes for every cell type and for cycling tumour cells.

    Orientations are evenly spread over [0, pi) so that oriented cells (fibroblasts,
    endothelium) can pick the shape closest to the local fibre direction.
    """
    kinds = CELL_TYPES + ("tumour_proliferating",)
    rows = []
    for ki, kind in enumerate(kinds):
        m = morphology_of(kind)
        for j in range(per_type):
            a = rng.uniform(*m.semi_major)
            b = a * rng.uniform(*m.aspect)
            theta = np.pi * (j + rng.uniform()) / per_type
            harm = rng.normal(0.0, m.pleomorphism, size=(3, 2)) / np.array([[1.0], [1.5], [2.0]])
            kid = m.kidney * rng.uniform(0.6, 1.2) if m.kidney else 0.0
            rows.append((ki, theta, _radius_table(a, b, theta, harm, kid), harm, (a, b), kid,
                         int(rng.integers(2**31))))
    kind, theta, radius, harm, axes, kid, seeds = zip(*rows)
    return ShapeBank(
        kinds=kinds,
        kind=np.array(kind),
        orientation=np.array(theta),
        radius=np.array(radius),
        harmonics=np.array(harm),
        semi_axes=np.array(axes),
        kidney=np.array(kid),
        seeds=np.array(seeds),
    )


def nuclei_overlap(bank: ShapeBank, shape_i: np.ndarray, shape_j: np.ndarray,
                   dx: np.ndarray, dy: np.ndarray, margin: float = 0.35,
                   chunk: int = 100_000) -> np.ndarray:
    """Whether nucleus j at offset ``(dx, dy)`` (microns) from nucleus i overlaps it.

    Outlines are inflated by ``margin`` microns. Pairs farther apart than the sum of their
    bounding radii never overlap; pairs closer than the sum of their inscribed radii always
    do; the rest are decided by testing 24 outline points of each nucleus against the other's
    outline (exact up to that sampling). Works in chunks to bound memory.
    """
    r_out = bank.radius.max(axis=1) + margin
    r_in = bank.radius.min(axis=1) + margin
    d = np.hypot(dx, dy)
    out = d < r_in[shape_i] + r_in[shape_j]
    unsure = np.flatnonzero(~out & (d < r_out[shape_i] + r_out[shape_j]))
    n = 24
    angles = (2 * np.pi * np.arange(n) / n).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    k_of = np.round(angles * (N_ANGLES / (2 * np.pi))).astype(np.int64) % N_ANGLES
    radius = (bank.radius + margin).astype(np.float32)
    for start in range(0, unsure.size, chunk):
        idx = unsure[start:start + chunk]
        hit = np.zeros(idx.size, dtype=bool)
        for a, b, sign in ((shape_i[idx], shape_j[idx], 1.0), (shape_j[idx], shape_i[idx], -1.0)):
            # Outline points of `a` (centred at 0) relative to the centre of `b`.
            ra = radius[a[:, None], k_of[None, :]]
            px = ra * cos - np.float32(sign) * dx[idx, None].astype(np.float32)
            py = ra * sin - np.float32(sign) * dy[idx, None].astype(np.float32)
            phi = np.arctan2(py, px)
            k = np.round(phi * np.float32(N_ANGLES / (2 * np.pi))).astype(np.int64) % N_ANGLES
            hit |= (px * px + py * py < radius[b[:, None], k] ** 2).any(axis=1)
        out[idx] = hit
    return out


# ----------------------------------------------------------------------------- expression


@dataclass
class ExpressionModel:
    """True mean expression fractions.

    ``profiles``: (n_kinds, n_genes) rows summing to 1, for ``kinds`` = the cell types then
    ``tumour_proliferating``; a cell's expected counts are ``library_size * profiles[kind]``.
    """

    genes: list[str]
    kinds: tuple[str, ...]
    profiles: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Kinds x genes table of true mean fractions (what ``truth/programs.tsv`` holds)."""
        return pd.DataFrame(self.profiles, index=pd.Index(self.kinds, name="cell_type"), columns=self.genes)


def build_expression_model(genes: list[str], patient: PatientParameters,
                           rng: np.random.Generator) -> ExpressionModel:
    """Per-type mean profiles: log-normal baseline plus strong programme up-regulation.

    The baseline is shared by all types (with small per-type jitter; programme genes at a fifth
    of it, as markers are nearly silent elsewhere); each programme adds
    ``weight x median(baseline) x loading`` to its genes (loadings log-normal). Patient
    biology enters through ER/HER2 status and an IFN-gamma programme scaled by immune
    infiltration.
    """
    index = {g: i for i, g in enumerate(genes)}
    n = len(genes)
    baseline = np.exp(rng.normal(0.0, 1.0, n))
    unit = float(np.median(baseline))
    # Programme genes (markers) are nearly silent outside their programme.
    marker = np.array([any(g in genes_ for genes_ in PROGRAMS.values()) for g in genes])
    baseline[marker] *= 0.2
    loadings = np.exp(rng.normal(0.0, 0.4, n))

    def programme(name: str, weight: float) -> np.ndarray:
        v = np.zeros(n)
        idx = [index[g] for g in PROGRAMS[name] if g in index]
        v[idx] = weight * unit * loadings[idx]
        return v

    kinds = CELL_TYPES + ("tumour_proliferating",)
    profiles = []
    for kind in kinds:
        cell_type = "tumour" if kind == "tumour_proliferating" else kind
        p = baseline * np.exp(rng.normal(0.0, 0.25, n))
        for name, weight in TYPE_PROGRAMS[cell_type]:
            p += programme(name, weight)
        if cell_type == "tumour":
            if patient.er_positive:
                p += programme("estrogen", ER_WEIGHT)
            if patient.her2_positive:
                p += programme("her2", HER2_WEIGHT)
        if cell_type in IFN_WEIGHT:
            p += programme("interferon_gamma", IFN_WEIGHT[cell_type] * patient.immune_infiltration)
        if kind == "tumour_proliferating":
            p += programme("proliferation", PROLIFERATION_WEIGHT)
        profiles.append(p / p.sum())
    return ExpressionModel(genes=list(genes), kinds=kinds, profiles=np.array(profiles))


def sample_counts(model: ExpressionModel, kind: np.ndarray, library_size: np.ndarray,
                  rng: np.random.Generator, dispersion: float = 0.1):
    """Negative-binomial counts, ``(n_cells, n_genes)`` CSR int32.

    Mean ``library_size[c] * profiles[kind[c]]``; variance ``mu + dispersion * mu^2``
    (gamma-Poisson mixture; ``dispersion=0`` gives Poisson).
    """
    from scipy import sparse

    mu = library_size[:, None] * model.profiles[kind]
    if dispersion > 0:
        mu = rng.gamma(shape=1.0 / dispersion, scale=mu * dispersion)
    counts = rng.poisson(mu).astype(np.int32)
    return sparse.csr_matrix(counts)
