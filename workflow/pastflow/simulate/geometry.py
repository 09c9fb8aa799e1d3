"""Where the tissue sits on the H&E: the affine from tissue-frame microns to level-0 pixels.

Pixel coordinates refer to pixel centres: the pixel in row ``i``, column ``j`` is at
``(x, y) = (j, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlideGeometry:
    """A slide of ``width_px x height_px`` level-0 pixels of ``mpp`` microns.

    ``um_to_px``: 3x3 affine, ``[x_px, y_px, 1] = um_to_px @ [x_um, y_um, 1]``; a rotation by
    ``rotation_deg`` (clockwise on screen, y down), a scale of ``1 / mpp`` and a translation.
    """

    width_px: int
    height_px: int
    mpp: float
    rotation_deg: float
    um_to_px: np.ndarray

    @classmethod
    def around(cls, width_um: float, height_um: float, mpp: float, rotation_deg: float = 0.0,
               margin_um: float = 0.0) -> "SlideGeometry":
        """The smallest slide that holds the rotated tissue frame plus ``margin_um`` of glass."""
        t = np.deg2rad(rotation_deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / mpp
        corners = rot @ np.array([[0, width_um, width_um, 0], [0, 0, height_um, height_um]])
        lo = corners.min(axis=1) - margin_um / mpp
        hi = corners.max(axis=1) + margin_um / mpp
        m = np.eye(3)
        m[:2, :2] = rot
        m[:2, 2] = -lo
        size = np.ceil(hi - lo).astype(int)
        return cls(int(size[0]), int(size[1]), float(mpp), float(rotation_deg), m)

    @property
    def px_to_um(self) -> np.ndarray:
        return np.linalg.inv(self.um_to_px)

    def to_px(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue microns -> level-0 pixel coordinates (float)."""
        return _apply(self.um_to_px, x_um, y_um)

    def to_um(self, x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 pixel coordinates -> tissue microns."""
        return _apply(self.px_to_um, x_px, y_px)


def _apply(m: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
