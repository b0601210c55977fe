"""The template's whole bubble layout registered on the printed outlines, for
a page placed too roughly for the bubbles to be found near where it put them.

A template whose page is the whole image (no page-finding step) puts a
photo's bubbles as far off as the photo is framed otherwise than the
template's image: a pitch or more at the far side of a large grid, in
directions that vary across the page (perspective). Each bubble's own
window (``steps.fit_on_grid``, ``grid.place``: half a pitch) cannot reach
that far, and a block searched for on its own inside a longer printed grid
has as many places as the grid has rows.

Here every printed outline near the rough placement is found once (local
maxima of a ring's correlation), and the layout as a whole is fitted onto
them: from the rough placement shifted by up to ``REACH`` pitches, each
template bubble takes the nearest outline found, a homography is fitted to
those pairs (RANSAC), and the pairing is redone through it in narrower
reaches (iterative closest points). A start off by a pitch converges a
pitch off, so every start's result is kept, the distinct ones ranked by how
many bubbles sit on an outline; the caller places and verifies each
(``grid.place``: end lines, the points one pitch outside each block), as
it does any other placement, and takes the best.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..homography import apply_h
from ..stats import percentile
from .steps import page_cut, ring_template

#: Starts: the rough placement shifted by up to this many pitches along
#: either axis, in steps of ``STEP`` pitches.
REACH = 2.0
STEP = 0.5
#: The fit is iterated from this many of those starts: the ones putting the
#: most bubbles near an outline found.
STARTS = 6
#: The reaches (pitches) a bubble is paired with its nearest outline in, in turn.
PAIR_REACHES = (0.45, 0.35, 0.25, 0.2)
#: A bubble on an outline: within this share of a pitch of one found.
ON_OUTLINE = 0.2
#: At most this many results are returned (the best by bubbles on outlines).
KEEP = 3
#: The cut-out's scale: a box half this many px.
BOX_PX = 6.0
#: Printed outline radii (shares of the box half) looked for; an outline is
#: where any of them correlates best.
RADII = (0.7, 1.0, 1.3)


def outline_points(cut: np.ndarray, box_px: float, pitch_px: float) -> np.ndarray:
    """(K, 2) centres (cut-out px) of printed outlines: local maxima, at least
    0.6 pitch apart, of the best correlation with a ring of any of ``RADII``,
    strong against the strongest ones."""
    best = None
    for rr in RADII:
        ker = ring_template(rr * box_px)
        kh = ker.shape[0] // 2
        if ker.shape[0] >= min(cut.shape):
            continue
        res = cv2.matchTemplate(cut, ker, cv2.TM_CCOEFF_NORMED)
        full = np.full(cut.shape, -1.0, np.float32)
        full[kh:kh + res.shape[0], kh:kh + res.shape[1]] = res
        best = full if best is None else np.maximum(best, full)
    if best is None:
        return np.zeros((0, 2))
    side = max(3, int(round(0.6 * pitch_px)) | 1)
    peak = (best >= cv2.dilate(best, np.ones((side, side), np.uint8))) & (best > 0.3)
    ys, xs = np.nonzero(peak)
    if len(xs) == 0:
        return np.zeros((0, 2))
    vals = best[ys, xs]
    strong = vals >= 0.5 * float(percentile(vals, 90))
    return np.stack([xs[strong], ys[strong]], 1).astype(np.float64)


def _plausible(G: np.ndarray) -> bool:
    """Whether ``G`` (the rough placement's cut-out px -> cut-out px) is a
    correction of a placement, not a collapse: finite, scaling by 0.6-1.6
    (pairs all along one row fit a degenerate map)."""
    if not np.isfinite(G).all() or abs(G[2, 2]) < 1e-9:
        return False
    scale = math.sqrt(abs(np.linalg.det(G[:2, :2] / G[2, 2])))
    return 0.6 < scale < 1.6


def _px_per(H: np.ndarray, centres: np.ndarray, s: float) -> float:
    """Image px per cut-out px at the layout's middle, through ``H`` at ``s``
    cut-out px per page px."""
    c = centres.mean(0)
    p = apply_h(H, np.array([c, c + [1.0, 0.0], c + [0.0, 1.0]]))
    (ax, ay), (bx, by) = p[1] - p[0], p[2] - p[0]
    return math.sqrt(abs(ax * by - ay * bx)) / s


def register_layout(grey: np.ndarray, H: np.ndarray, centres: np.ndarray, block: np.ndarray, half_box: float,
                    pitch: float) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Placements (page px -> image px) of the template's bubbles
    (``centres``, page px; ``half_box``: half a bubble box, ``pitch``: the
    smallest distance between neighbours, page px) on the printed outlines
    found around the rough placement ``H``, each with the number of bubbles
    it puts on an outline, the best first, and how far each block's
    bubbles sit from the outlines nearest them, on average (pitches: the
    mean of the offsets, so a block printed otherwise than the template
    shows, where scatter does not; ``block``: each bubble's block); empty
    when too few outlines are found."""
    n = len(centres)
    nb = int(block.max()) + 1 if len(block) else 0
    if n < 8:
        return []
    margin = (REACH + 1.0) * pitch + 0.05 * float((centres.max(0) - centres.min(0)).max())
    lo, hi = centres.min(0) - margin, centres.max(0) + margin
    s = BOX_PX / max(half_box, 1e-6)  # cut-out px per page px
    # Never finer than the image itself (a small image's box half may be 3 px).
    px_per = _px_per(H, centres, s)
    if px_per < 1.0:
        s *= max(px_per, 0.5)
    fw, fh = int(round((hi[0] - lo[0]) * s)), int(round((hi[1] - lo[1]) * s))
    if fw < 30 or fh < 30 or fw * fh > 8_000_000:
        return []
    cut, M, _ = page_cut(grey, H, lo, s, (fw, fh))  # M: cut-out px -> image px
    pitch_px = pitch * s
    found = outline_points(cut, half_box * s, pitch_px)
    if len(found) < max(8, 0.3 * n):
        return []  # (fewer outlines than a third of the bubbles: nothing to fit on)
    # The nearest outline found, and how far, for every cut-out pixel.
    seeds = np.ones((fh, fw), np.uint8)
    fx, fy = found[:, 0].astype(int), found[:, 1].astype(int)
    seeds[fy, fx] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    where = np.zeros((int(labels.max()) + 1, 2))
    where[labels[fy, fx]] = found

    def nearest(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.clip(np.rint(pts[:, 0]).astype(int), 0, fw - 1)
        y = np.clip(np.rint(pts[:, 1]).astype(int), 0, fh - 1)
        inside = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] <= fw - 1) & (pts[:, 1] <= fh - 1)
        d = np.where(inside, dist[y, x], np.inf)
        return where[labels[y, x]], d

    base = (centres - lo) * s - 0.5  # cut-out px, as the rough placement puts them
    # Starts: the shifts that put the most bubbles near an outline.
    steps = np.arange(-REACH, REACH + 1e-9, STEP) * pitch_px
    shifts = np.array([(dx, dy) for dy in steps for dx in steps])
    near_counts = np.array([(nearest(base + d)[1] < PAIR_REACHES[0] * pitch_px).sum() for d in shifts])
    enough = max(8, 0.3 * n)

    def converge(G: np.ndarray) -> np.ndarray | None:
        """``G`` (template cut-out px -> cut-out px) refitted on the nearest
        outlines in ever narrower reaches; None when too few pair up."""
        for reach in PAIR_REACHES:
            near, d = nearest(apply_h(G, base))
            pair = d < reach * pitch_px
            if pair.sum() < enough:
                return None
            G, mask = cv2.findHomography(base[pair], near[pair], cv2.RANSAC, 0.15 * pitch_px)
            if G is None or mask.sum() < enough or not _plausible(G):
                return None
        return G

    results: list[tuple[int, np.ndarray]] = []
    for k in np.argsort(-near_counts, kind="stable")[:STARTS]:
        G = converge(np.array([[1.0, 0, shifts[k, 0]], [0, 1.0, shifts[k, 1]], [0, 0, 1.0]]))
        if G is not None:
            results.append((int((nearest(apply_h(G, base))[1] < ON_OUTLINE * pitch_px).sum()), G))
    results.sort(key=lambda r: -r[0])
    # page px -> the rough placement's cut-out px (``base``)
    S = np.array([[s, 0, -lo[0] * s - 0.5], [0, s, -lo[1] * s - 0.5], [0, 0, 1.0]])
    out: list[tuple[np.ndarray, int, np.ndarray]] = []
    kept: list[np.ndarray] = []
    for count, G in results:
        pts = apply_h(G, base)
        if any(float(np.abs(pts - k).max()) < 0.25 * pitch_px for k in kept):
            continue  # the same placement from another start
        kept.append(pts)
        near, d = nearest(pts)
        paired = d < PAIR_REACHES[0] * pitch_px
        off = np.zeros(nb)
        for k in range(nb):
            sel = (block == k) & paired
            if sel.any():
                off[k] = float(np.hypot(*(near[sel] - pts[sel]).mean(0))) / pitch_px
        out.append((M @ G @ S, count, off))
        if len(out) >= KEEP:
            break
    return out
