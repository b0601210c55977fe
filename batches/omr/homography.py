"""Points through a homography (page -> image), in a module of its own: the
OMRChecker reader and the QR code reader take it without the built-in
templates' page locator (``align.py``)."""

from __future__ import annotations

import numpy as np


def apply_h(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (..., 2) points."""
    pts = np.asarray(pts, np.float64)
    flat = pts.reshape(-1, 2)
    den = flat[:, 0] * H[2, 0] + flat[:, 1] * H[2, 1] + H[2, 2]
    x = (flat[:, 0] * H[0, 0] + flat[:, 1] * H[0, 1] + H[0, 2]) / den
    y = (flat[:, 0] * H[1, 0] + flat[:, 1] * H[1, 1] + H[1, 2]) / den
    return np.stack([x, y], -1).reshape(pts.shape)
