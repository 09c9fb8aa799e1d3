"""H&E rendering, tile by tile, in optical-density space.

Each pixel holds a hematoxylin and an eosin density; colour follows Beer-Lambert,
``rgb = glass * exp(-(h * H + e * E))`` with Ruifrok & Johnston's stain vectors. Layers:

1. background from the tissue fields: glass, pink collagen with oriented fibres (four periodic
   fibre textures blended by the local collagen direction), amphophilic tumour nests,
   loose immune aggregates;
2. cytoplasm of every cell, added (overlaps look like thicker cytoplasm; capillary lumens
   subtract);
3. nuclei, alpha-composited on top (they never overlap: see ``tissue.place_cells``).

Cells are drawn from a bank of pre-rendered sprites, one per nucleus shape of the
:class:`~pastflow.simulate.biology.ShapeBank`, so a tile costs a few array operations per
cell. Memory is bounded by the sprite bank and a few textures (tens of MB), whatever the slide
size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from pastflow.simulate.biology import N_ANGLES, ShapeBank, cytoplasm_axes, morphology_of
from pastflow.simulate.geometry import SlideGeometry
from pastflow.simulate.tissue import EDGE_UM, TissueFields

# Stain optical-density vectors, natural-log units per density unit: hematoxylin from Ruifrok &
# Johnston (2001); eosin fitted to the stroma of a real H&E tile (it absorbs more blue than pure eosin).
HEMATOXYLIN = np.array([0.650, 0.704, 0.286], dtype=np.float32)
EOSIN = np.array([0.10, 0.85, 0.50], dtype=np.float32)
GLASS_RGB = np.array([244.0, 242.0, 246.0], dtype=np.float32)

# Background densities.
STROMA_EOSIN = 0.75
STROMA_HEMATOXYLIN = 0.10
NEST_EOSIN = 0.50
NEST_HEMATOXYLIN = 0.30
IMMUNE_EOSIN = 0.35
IMMUNE_HEMATOXYLIN = 0.15

FIELD_STEP = 32  # px between nodes of the coarse field grid (divides the tile size)
TEXTURE_PERIOD = 1024  # px, period of the background textures
FIBRE_ANGLES = np.deg2rad([0.0, 45.0, 90.0, 135.0])


@dataclass
class Sprite:
    """One cell drawn at pixel offset (0, 0): cytoplasm (additive) and nucleus (alpha).

    ``cyto_h``, ``cyto_e``: (2 rc + 1, 2 rc + 1) densities to add, centred on the cell.
    ``nuc_t``: transmittance ``1 - alpha``; ``nuc_h``, ``nuc_e``: alpha-premultiplied densities;
    all (2 rn + 1, 2 rn + 1).
    """

    rc: int
    cyto_h: np.ndarray
    cyto_e: np.ndarray
    rn: int
    nuc_t: np.ndarray
    nuc_h: np.ndarray
    nuc_e: np.ndarray


def _smooth_texture(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    # mode="wrap": the background textures tile the slide periodically, without seams.
    t = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), max(sigma_px, 0.3), mode="wrap")
    return t / (t.std() + 1e-6)


def _interp_radius(table: np.ndarray, phi: np.ndarray) -> np.ndarray:
    k = (phi % (2 * np.pi)) * (N_ANGLES / (2 * np.pi))
    k0 = np.floor(k).astype(np.int64)
    f = (k - k0).astype(np.float32)
    return table[k0 % N_ANGLES] * (1 - f) + table[(k0 + 1) % N_ANGLES] * f


def render_sprites(bank: ShapeBank, geometry: SlideGeometry) -> list[Sprite]:
    """Render every bank shape at the slide's resolution and orientation."""
    lin_inv = np.linalg.inv(geometry.um_to_px[:2, :2])  # pixel offsets -> tissue micron offsets
    mpp = geometry.mpp
    sprites = []
    for s in range(len(bank.kind)):
        kind = bank.kinds[bank.kind[s]]
        m = morphology_of(kind)
        rng = np.random.default_rng(int(bank.seeds[s]))
        a, b = bank.semi_axes[s]
        theta = bank.orientation[s]
        table = bank.radius[s].astype(np.float32)

        cyto_a, cyto_b = cytoplasm_axes(a, b, m)
        reach = max(cyto_a, table.max(), b + 2.2 * m.lumen) + 1.5
        rc = int(np.ceil(reach / mpp))
        v, u = np.mgrid[-rc:rc + 1, -rc:rc + 1].astype(np.float32)
        dx = lin_inv[0, 0] * u + lin_inv[0, 1] * v
        dy = lin_inv[1, 0] * u + lin_inv[1, 1] * v
        rho = np.hypot(dx, dy)
        phi = np.arctan2(dy, dx)

        # Cytoplasm: a soft ellipse around the nucleus, with granular/foamy texture.
        rel = phi - theta
        r_c = cyto_a * cyto_b / np.sqrt((cyto_b * np.cos(rel)) ** 2 + (cyto_a * np.sin(rel)) ** 2)
        alpha_c = np.clip((r_c - rho) / 1.2 + 0.5, 0, 1)
        grain = _smooth_texture(rng, rho.shape, 0.5 / mpp)
        cyto_e = m.cytoplasm_eosin * alpha_c * np.clip(1 + m.cytoplasm_texture * grain, 0.2, None)
        cyto_h = m.cytoplasm_hematoxylin * alpha_c
        if m.lumen:
            # Capillary: a pale lumen on one flank of the flat nucleus.
            side = theta + np.pi / 2
            cx, cy = (b + 0.9 * m.lumen) * np.cos(side), (b + 0.9 * m.lumen) * np.sin(side)
            alpha_l = np.clip((m.lumen - np.hypot(dx - cx, dy - cy)) / 0.5 + 0.5, 0, 1)
            cyto_e = cyto_e - 0.3 * alpha_l
            cyto_h = cyto_h - 0.05 * alpha_l

        # Nucleus: outline from the bank, chromatin texture, membrane rim, nucleoli.
        r_n = _interp_radius(table, phi)
        alpha_n = np.clip((r_n - rho) / 0.35 + 0.5, 0, 1)
        depth = np.clip(rho / np.maximum(r_n, 1e-3), 0, 1)
        chrom = _smooth_texture(rng, rho.shape, m.chromatin_scale / mpp / 2)
        nuc_h = m.hematoxylin * np.clip(1 + m.chromatin * chrom, 0.15, None)
        if m.rim > 0.2:
            # Vesicular nucleus: chromatin pushed to the membrane, pale centre.
            nuc_h = nuc_h * (0.55 + 0.45 * depth**2)
        nuc_h = nuc_h + m.rim * np.exp(-0.5 * ((r_n - rho) / 0.45) ** 2)
        for _ in range(rng.integers(m.nucleoli[0], m.nucleoli[1] + 1)):
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * float(table.min())
            ox, oy = rad * np.cos(ang), rad * np.sin(ang)
            nuc_h = nuc_h + 0.9 * np.exp(-0.5 * (np.hypot(dx - ox, dy - oy) / 0.45) ** 2)
        if kind == "tumour_proliferating" and rng.random() < 0.3:
            # Mitotic figure: condensed, clumped chromatin.
            clumps = _smooth_texture(rng, rho.shape, 0.6 / mpp)
            nuc_h = nuc_h * (1.0 + 0.9 * np.clip(clumps, 0, None))
        nuc_e = np.full_like(nuc_h, 0.35)

        # Crop the nucleus layer to its support.
        ys, xs = np.nonzero(alpha_n > 0)
        rn = int(max(np.abs(ys - rc).max(), np.abs(xs - rc).max())) if ys.size else 0
        sl = slice(rc - rn, rc + rn + 1)
        an = alpha_n[sl, sl]
        sprites.append(Sprite(
            rc=rc,
            cyto_h=cyto_h.astype(np.float32),
            cyto_e=cyto_e.astype(np.float32),
            rn=rn,
            nuc_t=(1 - an).astype(np.float32),
            nuc_h=(an * nuc_h[sl, sl]).astype(np.float32),
            nuc_e=(an * nuc_e[sl, sl]).astype(np.float32),
        ))
    return sprites


def _periodic_noise(rng: np.random.Generator, sigma_along: float, sigma_across: float,
                    angle: float = 0.0) -> np.ndarray:
    """Periodic Gaussian-filtered noise (FFT), unit variance; the filter is elongated along
    ``angle`` (radians, screen frame) with spatial sigmas in pixels."""
    n = TEXTURE_PERIOD
    k = fft.fftfreq(n).astype(np.float32)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    along = kx * np.cos(angle) + ky * np.sin(angle)
    across = -kx * np.sin(angle) + ky * np.cos(angle)
    filt = np.exp(-2 * np.pi**2 * ((sigma_along * along) ** 2 + (sigma_across * across) ** 2))
    noise = fft.ifft2(fft.fft2(rng.standard_normal((n, n), dtype=np.float32)) * filt).real
    return (noise / (noise.std() + 1e-12)).astype(np.float32)


def _fibre_texture(rng: np.random.Generator, angle: float, mpp: float) -> np.ndarray:
    """Collagen bundles running at ``angle`` (radians): ~10 um long, ~0.7 um wide; in [0, 1]."""
    return 0.5 + 0.5 * np.tanh(1.3 * _periodic_noise(rng, 10.0 / mpp, 0.7 / mpp, angle))


def _wrap_pad(tex: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(tex, ((0, pad), (0, pad)), mode="wrap")


class HERenderer:
    """Renders ``tile x tile`` RGB uint8 tiles of one slide on demand.

    ``x_px, y_px``: cell centres in level-0 pixels; ``shape``: each cell's index into ``bank``.
    """

    def __init__(self, geometry: SlideGeometry, fields: TissueFields, bank: ShapeBank,
                 x_px: np.ndarray, y_px: np.ndarray, shape: np.ndarray, seed: int = 0,
                 tile: int = 512):
        if tile % FIELD_STEP:
            raise ValueError(f"tile must be a multiple of {FIELD_STEP}")
        self.geometry = geometry
        self.tile = tile
        self.height, self.width = geometry.height_px, geometry.width_px
        self.n_tiles_y = -(-geometry.height_px // tile)
        self.n_tiles_x = -(-geometry.width_px // tile)
        rng = np.random.default_rng(seed)
        self.sprites = render_sprites(bank, geometry)
        self._build_field_grid(fields)
        self._build_textures(rng)
        self._build_tile_index(np.rint(x_px).astype(np.int64), np.rint(y_px).astype(np.int64),
                               np.asarray(shape, dtype=np.int64))
        k = tile // FIELD_STEP
        p = np.arange(tile, dtype=np.float32) / FIELD_STEP
        w = np.zeros((tile, k + 1), dtype=np.float32)
        lo = np.floor(p).astype(int)
        w[np.arange(tile), lo] = 1 - (p - lo)
        w[np.arange(tile), np.minimum(lo + 1, k)] += p - lo
        self._upsample = w  # (tile, k + 1) bilinear weights from coarse nodes to pixels

    # -- set-up ------------------------------------------------------------------------------

    def _build_field_grid(self, fields: TissueFields) -> None:
        """Sample the tissue fields on a coarse pixel-aligned grid covering every tile."""
        g = self.geometry
        ny = self.n_tiles_y * self.tile // FIELD_STEP + 1
        nx = self.n_tiles_x * self.tile // FIELD_STEP + 1
        jj, ii = np.meshgrid(np.arange(nx) * FIELD_STEP, np.arange(ny) * FIELD_STEP)
        x_um, y_um = g.to_um(jj.ravel(), ii.ravel())
        frame = np.minimum.reduce([x_um, fields.width_um - x_um, y_um, fields.height_um - y_um])
        tissue = np.minimum(fields.sample("tissue", x_um, y_um), frame)
        tumour = fields.sample("tumour", x_um, y_um)
        immune = fields.sample("immune", x_um, y_um)
        # Collagen direction in the screen frame: rotate the doubled angle by twice the rotation.
        rot = 2 * np.deg2rad(g.rotation_deg)
        c2 = fields.sample("fibre_cos2", x_um, y_um)
        s2 = fields.sample("fibre_sin2", x_um, y_um)
        ang = 0.5 * np.arctan2(np.sin(rot) * c2 + np.cos(rot) * s2, np.cos(rot) * c2 - np.sin(rot) * s2)
        w = np.clip(np.cos(2 * (ang[None, :] - FIBRE_ANGLES[:, None])), 0, None) ** 4
        w /= w.sum(axis=0, keepdims=True) + 1e-6
        w[w < 1e-6] = 0  # no denormals: they slow the upsampling GEMMs down 30-fold
        stack = [tissue / EDGE_UM, tumour / EDGE_UM, immune / EDGE_UM, *w]
        self._grid = np.stack(stack).reshape(len(stack), ny, nx).astype(np.float32)

    def _build_textures(self, rng: np.random.Generator) -> None:
        mpp = self.geometry.mpp
        pad = self.tile
        self._fibres = [_wrap_pad(_fibre_texture(rng, a, mpp), pad) for a in FIBRE_ANGLES]
        self._grain = _wrap_pad(_smooth_texture(rng, (TEXTURE_PERIOD, TEXTURE_PERIOD), 0.6), pad)
        self._mottle = _wrap_pad(_periodic_noise(rng, 6.0 / mpp, 6.0 / mpp), pad)

    def _build_tile_index(self, cx: np.ndarray, cy: np.ndarray, shape: np.ndarray) -> None:
        """For every tile, the cells whose sprite reaches into it (CSR layout)."""
        t = self.tile
        reach = np.array([s.rc for s in self.sprites])[shape] if len(shape) else np.zeros(0, int)
        tiles, cells = [], []
        for ddy in (0, 1):
            for ddx in (0, 1):
                ty = (cy - reach) // t + ddy
                tx = (cx - reach) // t + ddx
                ok = (ty <= (cy + reach) // t) & (tx <= (cx + reach) // t)
                ok &= (ty >= 0) & (ty < self.n_tiles_y) & (tx >= 0) & (tx < self.n_tiles_x)
                tiles.append(ty[ok] * self.n_tiles_x + tx[ok])
                cells.append(np.flatnonzero(ok))
        tiles = np.concatenate(tiles)
        cells = np.concatenate(cells)
        order = np.lexsort((cells, tiles))
        self._tile_cells = cells[order]
        self._tile_ptr = np.searchsorted(tiles[order], np.arange(self.n_tiles_y * self.n_tiles_x + 1))
        self._cx, self._cy, self._shape = cx, cy, shape

    # -- rendering ---------------------------------------------------------------------------

    def _tile_fields(self, ty: int, tx: int) -> np.ndarray:
        k = self.tile // FIELD_STEP
        g = np.ascontiguousarray(self._grid[:, ty * k:ty * k + k + 1, tx * k:tx * k + k + 1])
        w = self._upsample
        out = np.empty((len(g), self.tile, self.tile), dtype=np.float32)
        for i in range(len(g)):
            # Two small GEMMs per field; a batched matmul over a strided view is ~6x slower.
            np.dot(np.dot(w, g[i]), w.T, out=out[i])
        return out  # (n_fields, tile, tile)

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        """RGB uint8 ``(tile, tile, 3)`` of tile row ``ty``, column ``tx`` (may overhang the edge)."""
        t = self.tile
        y0, x0 = ty * t, tx * t
        f = self._tile_fields(ty, tx)
        tissue = np.clip(f[0] + 0.5, 0, 1)
        lo, hi = self._tile_ptr[ty * self.n_tiles_x + tx], self._tile_ptr[ty * self.n_tiles_x + tx + 1]
        if hi == lo and tissue.max() == 0:
            return self._glass(y0, x0)
        nest = np.clip(f[1] + 0.5, 0, 1)
        immune = np.clip(f[2] + 0.5, 0, 1) * (1 - nest)
        oy, ox = y0 % TEXTURE_PERIOD, x0 % TEXTURE_PERIOD
        win = (slice(oy, oy + t), slice(ox, ox + t))
        fibre = f[3] * self._fibres[0][win]
        for i in range(1, 4):
            fibre += f[3 + i] * self._fibres[i][win]
        mottle = self._mottle[win]
        # Collagen bundles with pale clefts between them.
        stroma_e = STROMA_EOSIN * (0.12 + 1.0 * fibre) * (1 + 0.15 * mottle)
        e = tissue * (nest * NEST_EOSIN + (1 - nest) * ((1 - immune) * stroma_e + immune * IMMUNE_EOSIN))
        h = tissue * (nest * NEST_HEMATOXYLIN
                      + (1 - nest) * ((1 - immune) * STROMA_HEMATOXYLIN + immune * IMMUNE_HEMATOXYLIN))

        cells = self._tile_cells[lo:hi]
        sprites = [self.sprites[s] for s in self._shape[cells]]
        cxs, cys = self._cx[cells], self._cy[cells]
        for sp, cx, cy in zip(sprites, cxs, cys):
            r = sp.rc
            (a, b), (c, d) = _clip(cy - r - y0, cy + r + 1 - y0, t), _clip(cx - r - x0, cx + r + 1 - x0, t)
            sa, sc = a - (cy - r - y0), c - (cx - r - x0)
            src = (slice(sa, sa + b - a), slice(sc, sc + d - c))
            h[a:b, c:d] += sp.cyto_h[src]
            e[a:b, c:d] += sp.cyto_e[src]
        for sp, cx, cy in zip(sprites, cxs, cys):
            r = sp.rn
            (a, b), (c, d) = _clip(cy - r - y0, cy + r + 1 - y0, t), _clip(cx - r - x0, cx + r + 1 - x0, t)
            if a >= b or c >= d:
                continue
            sa, sc = a - (cy - r - y0), c - (cx - r - x0)
            src = (slice(sa, sa + b - a), slice(sc, sc + d - c))
            hv, ev = h[a:b, c:d], e[a:b, c:d]
            hv *= sp.nuc_t[src]
            hv += sp.nuc_h[src]
            ev *= sp.nuc_t[src]
            ev += sp.nuc_e[src]
        np.maximum(h, 0, out=h)
        np.maximum(e, 0, out=e)
        grain = 1 + 0.05 * self._grain[win]
        h *= grain
        e *= grain
        return self._to_rgb(h, e)

    def _glass(self, y0: int, x0: int) -> np.ndarray:
        t = self.tile
        oy, ox = y0 % TEXTURE_PERIOD, x0 % TEXTURE_PERIOD
        dust = 0.004 * self._grain[oy:oy + t, ox:ox + t]
        return self._to_rgb(np.abs(dust), np.abs(dust))

    @staticmethod
    def _to_rgb(h: np.ndarray, e: np.ndarray) -> np.ndarray:
        out = np.empty(h.shape + (3,), dtype=np.uint8)
        for c in range(3):
            od = h * HEMATOXYLIN[c]
            od += e * EOSIN[c]
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= GLASS_RGB[c]
            out[..., c] = od  # float -> uint8 truncates; values lie in [0, 246]
        return out

    def tiles(self, ty: int):
        """The tiles of tile row ``ty``, left to right."""
        for tx in range(self.n_tiles_x):
            yield self.render_tile(ty, tx)


def _clip(lo: int, hi: int, size: int) -> tuple[int, int]:
    return max(lo, 0), min(hi, size)
