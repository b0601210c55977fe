"""Measuring the bubbles of this project's templates.

Measurement (``measure``) samples each bubble straight from the source image
through its local mapping (no page warp): a disc inside the printed outline,
the outline itself, the paper just outside it, and a band further out where a
circle drawn around the bubble would be. Every sample becomes *darkness*: 0 =
this sheet's paper at that spot, 1 = this sheet's printed black (measured in
the registration marks), so light, shadows, coloured paper and scanner gamma
are divided out on the sheet itself. What was marked is decided from these
measures by ``decide.py``, the stage both kinds of template share; the
measures of a dash drawn across two bubbles (``gap_darkness``) come from here.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .align import _DIRS16 as _DIRS
from .align import BubbleFrame, PageFit, sample_offsets
from .decide import Measures

# Disc sample points, as fractions of the radius: a square grid cut to a disc
# of 0.72 r (keeps clear of the printed outline even when off by ~0.2 r).
_g = np.linspace(-0.72, 0.72, 10)
_gx, _gy = np.meshgrid(_g, _g)
_inside = _gx ** 2 + _gy ** 2 <= 0.72 ** 2
DISC = np.stack([_gx[_inside], _gy[_inside]], -1)  # (~76, 2)
RING_RADII = np.array([0.84, 1.0, 1.16])
PAPER_RADII = np.array([1.34, 1.6])
CIRCLE_RADII = np.array([1.18, 1.32, 1.46])


@lru_cache(maxsize=64)
def _free_directions(key: bytes, n: int, r: float) -> np.ndarray:
    """(N, A) bool: directions in which the band where a drawn circle would be
    (out to ``CIRCLE_RADII[-1]`` r) meets no neighbouring printed outline."""
    page = np.frombuffer(key, np.float64).reshape(n, 2)
    out = np.ones((n, len(_DIRS)), bool)
    reach = CIRCLE_RADII[-1] * r
    clear = r + 0.35  # neighbour outline plus its stroke and blur, mm
    for i in range(n):
        d = page - page[i]
        dist = np.hypot(d[:, 0], d[:, 1])
        near = (dist > 0) & (dist < reach + clear)
        if not near.any():
            continue
        dn = d[near]
        along = dn @ _DIRS.T  # (K, A) distance along each ray to the closest approach
        perp2 = (dn ** 2).sum(1)[:, None] - along ** 2
        # The ray (from 1.05 r to reach) passes within ``clear`` of the neighbour's centre.
        t = np.clip(along, 1.05 * r, reach)
        hit = ((t - along) ** 2 + perp2) < clear ** 2
        out[i] &= ~hit.any(0)
    return out


def _min3(a: np.ndarray) -> np.ndarray:
    """``a.min(2)`` for a last axis of 3 (elementwise: much faster than a reduction)."""
    return np.minimum(np.minimum(a[..., 0], a[..., 1]), a[..., 2])


def measure(grey: np.ndarray, frame: BubbleFrame, fit: PageFit) -> Measures:
    """Measure every bubble of ``frame`` in the grey image. See ``Measures``."""
    r = frame.r_mm
    n = len(frame.centres)
    pts_disc = DISC * r

    def band(radii):
        return (_DIRS[:, None, :] * (radii * r)[None, :, None]).reshape(-1, 2)

    offs = np.concatenate([pts_disc, band(RING_RADII), band(PAPER_RADII), band(CIRCLE_RADII)])
    if n == 0:
        z = np.zeros(0)
        return Measures(z, z, z, z, z, z, z, 0.0)
    vals = sample_offsets(grey, frame.centres, frame.J, offs)
    nd, nr, npp = len(pts_disc), len(_DIRS) * len(RING_RADII), len(_DIRS) * len(PAPER_RADII)
    disc = vals[:, :nd]
    ring = vals[:, nd:nd + nr].reshape(n, len(_DIRS), len(RING_RADII))
    outside = vals[:, nd + nr:nd + nr + npp].reshape(n, len(_DIRS), len(PAPER_RADII))
    circ = vals[:, nd + nr + npp:].reshape(n, len(_DIRS), len(CIRCLE_RADII))
    # Paper just outside the outline: the bright part of two bands (neighbouring
    # outlines, labels and stray strokes cover only some of each; a circle drawn
    # around the bubble darkens the inner band, not the outer).
    na = len(_DIRS)
    k80 = int(0.8 * (na - 1))
    paper = np.maximum(np.partition(outside[:, :, 0], k80, axis=1)[:, k80],
                       np.partition(outside[:, :, 1], k80, axis=1)[:, k80]).astype(np.float32)
    # A fill overflowing all around must not drag it down: never far below the
    # coarse paper map.
    coarse = fit.background.at(frame.centres)
    paper = np.maximum(np.maximum(paper, 0.8 * coarse), 1.0)
    ink_ratio = float(np.clip(fit.ink / max(fit.paper, 1.0), 0.0, 0.7))
    span = 1.0 - ink_ratio
    d = (1.0 - disc / paper[:, None]) / span
    mean = d.mean(1)
    dark = (d > 0.5).mean(1)
    k90 = int(0.9 * (d.shape[1] - 1))
    peak = np.partition(d, k90, axis=1)[:, k90]
    score = np.maximum(mean, 0.5 * (mean + dark))
    rd = (1.0 - _min3(ring) / paper[:, None]) / span  # darkest point across the outline, per direction
    # How dark a printed outline looks on this sheet (blur and camera shake
    # thin it out): an outline shows in a direction when it is at least
    # ~half that dark there.
    typical = np.median(rd[mean < 0.3], axis=None) if np.any(mean < 0.3) else 0.3
    ring_seen = (rd > max(0.06, 0.45 * float(typical))).mean(1)
    cd = (1.0 - _min3(circ) / paper[:, None]) / span
    free = _free_directions(frame.page_mm.tobytes(), n, round(float(r), 6))
    nfree = free.sum(1)
    circle = np.where(nfree >= 8, ((cd > 0.3) & free).sum(1) / np.maximum(nfree, 1), 0.0)
    outline = np.median(rd, axis=1) / max(float(typical), 1e-3)
    return Measures(mean, dark, peak, score, ring_seen, circle, paper, ink_ratio, outline)


def gap_darkness(grey: np.ndarray, frame: BubbleFrame, m: Measures, pairs: np.ndarray) -> np.ndarray:
    """(P, 3) darkness (0 paper .. 1 printed black) for each pair: of the
    paper halfway between the two bubbles (nothing is printed there, so ink
    there is a stroke running from one into the other), and of each
    bubble's far side (half a radius past its centre, away from the other;
    second column for the pair's second bubble, third for its first)."""
    if len(pairs) == 0:
        return np.zeros((0, 3))
    a, b = pairs[:, 0], pairs[:, 1]
    ca, cb = frame.centres[a], frame.centres[b]
    t = np.array([0.45, 0.5, 0.55])
    mid = ca[:, None, :] + t[None, :, None] * (cb - ca)[:, None, :]
    # Half a radius past the centre, along the line from the other bubble, in page mm through the local map.
    u = frame.page_mm[b] - frame.page_mm[a]
    u = u / np.maximum(np.hypot(u[:, 0], u[:, 1]), 1e-9)[:, None]
    step = 0.5 * frame.r_mm * u
    far_b = cb + np.einsum("nij,nj->ni", frame.J[b], step)
    far_a = ca - np.einsum("nij,nj->ni", frame.J[a], step)
    pts = np.concatenate([mid, far_b[:, None, :], far_a[:, None, :]], 1).astype(np.float32)  # (P, 5, 2)
    vals = cv2.remap(grey, pts[..., 0], pts[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=255).astype(np.float64)
    paper = np.stack([0.5 * (m.paper[a] + m.paper[b]), m.paper[b], m.paper[a]], 1)
    seen = np.stack([vals[:, :3].mean(1), vals[:, 3], vals[:, 4]], 1)
    return (1.0 - seen / paper) / (1.0 - m.ink_ratio)
