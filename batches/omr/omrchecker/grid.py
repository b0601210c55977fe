"""The template's bubbles placed on the printed bubbles, and measured.

The page, once located (``locate.py``), is cut out through its homography at
a *measurement scale* where a bubble box is about ``BOX_PX`` pixels across
(never finer than the image itself holds). There:

* ``darkness``: each pixel's darkness relative to the paper around it (a
  max filter wider than a bubble), so shadows and tinted paper do not count.
* ``evidence``: how much a printed bubble outline (or a filled bubble) shows
  centred at each pixel: the mean darkness on a ring at the printed radius
  minus that on a ring just outside it (one linear filter).
* ``place``: the whole grid shifted to where the evidence is highest (minus
  what shows one pitch outside each block, so a grid one row off loses), then
  each block shifted by at most half its pitch on its own (a curled photo, a
  page outline a little off). A block is never moved further: a grid that
  needs more is flagged, not snapped onto the wrong row.
* ``verify``: per bubble, whether its outline is better centred where it is
  read than half a pitch away.
* ``measure``: the mean darkness inside each bubble (inside the printed
  outline, so the outline does not count), and how much of a ring outside it
  is dark (a circle drawn around the bubble).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..cache import per_object
from ..decide import CIRCLE_MIN, Measures, score_of
from ..stats import median, percentile
from .importer import OmrCheckerTemplate
from .steps import strongest_peaks

#: A bubble box is cut out at about this many pixels across.
BOX_PX = 12.0
#: Printed outline radius, as a share of the box's half size: the range accepted.
RADII = (0.5, 1.4)
#: Printed outline radii (shares of the box's half size) the rough fit tries, in turn.
ROUGH_RADII = (1.0, 0.75, 1.3)
#: A rough fit whose measured outline radius is within this (log ratio) of
#: the ring it used is taken.
ROUGH_AGREE = 0.25
#: The inside measured: this share of the printed radius.
INNER = 0.6
#: The ring where a circle drawn around a bubble is looked for (share of the printed radius).
CIRCLE_BAND = (1.35, 1.75)
#: A circle drawn tight around a bubble runs closer: looked for there too, on a
#: sheet whose bubbles show paper there (at most this share of the free
#: directions dark, typically; a thick or blurred outline reaches that far).
TIGHT_CIRCLE = 1.2
TIGHT_CLEAR = 0.15


@dataclass
class Geometry:
    """A template's bubbles, flattened: page px centres, box half sizes, and
    which block, field and printed value (letter) each bubble belongs to."""

    centres: np.ndarray  # (N, 2) page px
    half: np.ndarray  # (N, 2) box half width, height
    block: np.ndarray  # (N,) block index
    field: np.ndarray  # (N,) field index
    value_key: np.ndarray  # (N,) index of (value label, box size): bubbles printing the same letter
    block_pitch: np.ndarray  # (B,) smallest distance between two bubbles of each block
    border: np.ndarray  # (M, 2) page px one pitch outside the blocks' sides (nothing printed there)
    border_block: np.ndarray  # (M,)
    border_side: np.ndarray  # (M,) which side of which block (one id per block's side)
    #: (M,) bool: on a line parallel to the fields (before the block's first
    #: field or after its last), not beside one field (before its first
    #: value or after its last).
    border_across: np.ndarray
    border_step: np.ndarray  # (M, 2) page px from a point's line in the block out to it (a pitch)
    border_along: np.ndarray  # (M, 2) page px to the next point along its side (a pitch)
    free: np.ndarray  # (N, A) angles around each bubble where no other bubble is near (circle search)

    @property
    def pitch(self) -> float:
        return float(median(self.block_pitch))


ANGLES = 24


@per_object
def geometry(t: OmrCheckerTemplate) -> Geometry:
    cen, half, blk, fld, keys = [], [], [], [], []
    block_ids: dict[str, int] = {}
    key_ids: dict[tuple, int] = {}
    for fi, f in enumerate(t.fields):
        b = block_ids.setdefault(f.block, len(block_ids))
        for v, c in zip(f.values, f.centres(), strict=True):
            cen.append(c)
            half.append((f.bubble_w / 2, f.bubble_h / 2))
            blk.append(b)
            fld.append(fi)
            keys.append(key_ids.setdefault((v, f.bubble_w, f.bubble_h), len(key_ids)))
    cen_a = np.array(cen, np.float64).reshape(-1, 2)
    half_a = np.array(half, np.float64).reshape(-1, 2)
    blk_a = np.array(blk, np.int64)
    nb = len(block_ids)
    pitch = np.zeros(nb)
    side_list, side_blocks, side_ids, side_across, side_steps, side_along = [], [], [], [], [], []
    # (the points one pitch outside each block's sides, and what each is: block, side, its line, steps)
    for b in range(nb):
        idx = np.flatnonzero(blk_a == b)
        c = cen_a[idx]
        if len(c) > 1:
            d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
            d[d < 1e-6] = np.inf
            pitch[b] = float(d.min())
        else:
            pitch[b] = 2.5 * float(half_a[idx[0]].max())
    # Bubbles by x, to find the ones near a point without measuring them all.
    order = np.argsort(cen_a[:, 0])
    xs = cen_a[order, 0]
    limit = 1.6 * half_a.max()
    for fields in _blocks_as_grids(t):
        grid = np.array([f.centres() for f in fields], np.float64)  # (fields, values, 2)
        b = block_ids[fields[0].block]
        sides = []
        if grid.shape[1] > 1:
            dv = grid[:, 1] - grid[:, 0]
            sides += [grid[:, 0] - dv, grid[:, -1] + dv]
            side_across += [np.zeros(grid.shape[0], bool)] * 2
            side_steps += [-dv, dv]
            side_along += [_along(grid[:, 0])] * 2
        if grid.shape[0] > 1:
            dl = grid[1] - grid[0]
            sides += [grid[0] - dl, grid[-1] + dl]
            side_across += [np.ones(grid.shape[1], bool)] * 2
            side_steps += [-dl, dl]
            side_along += [_along(grid[0])] * 2
        side_ids += [np.full(len(side), len(side_blocks) + k, np.int64) for k, side in enumerate(sides)]
        side_list += sides
        side_blocks += [np.full(len(side), b, np.int64) for side in sides]
    side_pts = np.concatenate(side_list) if side_list else np.empty((0, 2))
    side_b = np.concatenate(side_blocks) if side_blocks else np.empty(0, np.int64)
    side_id = np.concatenate(side_ids) if side_ids else np.empty(0, np.int64)
    side_acr = np.concatenate(side_across) if side_across else np.empty(0, bool)
    side_step = np.concatenate(side_steps).reshape(-1, 2) if side_steps else np.empty((0, 2))
    side_al = np.concatenate(side_along).reshape(-1, 2) if side_along else np.empty((0, 2))
    # Nothing printed there: no bubble within the limit (only bubbles that
    # near in x can be, so only those are measured); every side at once.
    near, bubble = _near_in_x(side_pts[:, 0], 2 * limit, order, xs)
    taken = np.hypot(cen_a[bubble, 0] - side_pts[near, 0], cen_a[bubble, 1] - side_pts[near, 1]) <= limit
    clear = np.bincount(near[taken], minlength=len(side_pts)) == 0
    keep = ((side_pts[:, 0] >= 0) & (side_pts[:, 0] <= t.page_w) & (side_pts[:, 1] >= 0)
            & (side_pts[:, 1] <= t.page_h) & clear)
    # Directions around each bubble free of other bubbles out to the circle band:
    # every pair of a bubble and another as near in x as 3 reaches, at once.
    ang = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)
    reach = CIRCLE_BAND[1] * half_a.max(1)
    me, other = _near_in_x(cen_a[:, 0], 3 * reach, order, xs)
    me, other = me[other != me], other[other != me]
    biggest = half_a.max(1)
    vx, vy = cen_a[other, 0] - cen_a[me, 0], cen_a[other, 1] - cen_a[me, 1]
    dist = np.hypot(vx, vy)
    close = dist < reach[me] + biggest[other] * 1.1
    me, other, vx, vy, dist = me[close], other[close], vx[close], vy[close], dist[close]
    a_nb = np.arctan2(vy, vx)
    width = np.arcsin(np.clip(biggest[other] * 1.3 / np.maximum(dist, 1e-6), 0, 1))
    diff = np.abs((ang[None, :] - a_nb[:, None] + np.pi) % (2 * np.pi) - np.pi)
    blocked = np.zeros((len(cen_a), ANGLES), bool)
    np.logical_or.at(blocked, me, diff < width[:, None] + 0.15)
    free = ~blocked
    return Geometry(cen_a, half_a, blk_a, np.array(fld, np.int64), np.array(keys, np.int64), pitch,
                    np.array(side_pts[keep], np.float64).reshape(-1, 2), side_b[keep], side_id[keep],
                    side_acr[keep], side_step[keep], side_al[keep], free)


def _along(line: np.ndarray) -> np.ndarray:
    """(K, 2) from each of a line's points to the next (a pitch; a line of
    one point has none: zero)."""
    return np.gradient(line, axis=0) if len(line) > 1 else np.zeros_like(line)


def _near_in_x(x: np.ndarray, within: np.ndarray | float, order: np.ndarray, xs: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (index into ``x``, bubble) whose x differ by less than
    ``within`` (or exactly ``-within``; per point, or one for all): ``order``
    sorts the bubbles by x, ``xs`` their x in that order."""
    lo = np.searchsorted(xs, x - within)
    hi = np.searchsorted(xs, x + within)
    counts = hi - lo
    point = np.repeat(np.arange(len(x)), counts)
    bubble = order[np.arange(int(counts.sum())) + np.repeat(lo - (np.cumsum(counts) - counts), counts)]
    return point, bubble


def _blocks_as_grids(t: OmrCheckerTemplate) -> list[list]:
    out: dict[str, list] = {}
    for f in t.fields:
        out.setdefault(f.block, []).append(f)
    return [fl for fl in out.values() if len({len(f.values) for f in fl}) == 1]


# ---------------------------------------------------------------- the cut-out


@dataclass
class Cutout:
    """The bubbles' part of the page cut out at the measurement scale:
    ``dark`` (0..1, relative to the local paper), ``scale`` (cut-out px per
    page px), ``origin`` (the page px at the cut-out's corner). A page px
    ``p`` is at cut-out px ``(p - origin) * scale - 0.5``."""

    dark: np.ndarray
    scale: float
    origin: np.ndarray

    def to_cut(self, page_px: np.ndarray) -> np.ndarray:
        return (np.asarray(page_px, np.float64) - self.origin) * self.scale - 0.5

    def to_page(self, cut_px: np.ndarray) -> np.ndarray:
        return (np.asarray(cut_px, np.float64) + 0.5) / self.scale + self.origin


def local_scale(H: np.ndarray, t: OmrCheckerTemplate) -> float:
    """Image px per page px at the middle of the page, through ``H``."""
    return _local_scale(H, np.array([[t.page_w / 2, t.page_h / 2]]))


def measurement_scale(t: OmrCheckerTemplate, H: np.ndarray, geo: Geometry) -> float:
    """Cut-out px per page px: a box ``BOX_PX`` across, or what the image holds."""
    c = np.array([[t.page_w / 2, t.page_h / 2]])
    native = _local_scale(H, c)
    box = float(median(geo.half.min(1))) * 2
    return max(0.05, min(BOX_PX / max(box, 1.0), native))


def _local_scale(H: np.ndarray, pts: np.ndarray) -> float:
    # Jacobian determinant of the projective map at the point.
    x, y = pts[0]
    a = H
    den = a[2, 0] * x + a[2, 1] * y + a[2, 2]
    u = (a[0, 0] * x + a[0, 1] * y + a[0, 2]) / den
    v = (a[1, 0] * x + a[1, 1] * y + a[1, 2]) / den
    J = np.array([[(a[0, 0] - u * a[2, 0]) / den, (a[0, 1] - u * a[2, 1]) / den],
                  [(a[1, 0] - v * a[2, 0]) / den, (a[1, 1] - v * a[2, 1]) / den]])
    return math.sqrt(abs(np.linalg.det(J)))


def cut_out(grey: np.ndarray, H: np.ndarray, t: OmrCheckerTemplate, scale: float, geo: Geometry) -> Cutout:
    """The part of the page holding the bubbles (with a margin for the
    placement's search and the paper level around them) cut out through
    ``H`` at ``scale``, as darkness relative to the local paper."""
    margin = float(geo.block_pitch.max()) + 4 * float(geo.half.max())
    pts = np.vstack([geo.centres, geo.border]) if len(geo.border) else geo.centres
    lo = np.maximum(pts.min(0) - margin, 0.0)
    hi = np.minimum(pts.max(0) + margin, [t.page_w, t.page_h])
    w, h = max(8, int(round((hi[0] - lo[0]) * scale))), max(8, int(round((hi[1] - lo[1]) * scale)))
    S_inv = np.array([[1 / scale, 0, 0.5 / scale + lo[0]], [0, 1 / scale, 0.5 / scale + lo[1]], [0, 0, 1.0]])
    M = H @ S_inv  # cut-out px (centres at whole numbers) -> image px
    px_per = _local_scale(M, np.array([[w / 2, h / 2]]))
    src = grey
    if px_per > 1.8:  # shrink first: warping straight from a much finer image aliases
        f = 1.0 / px_per
        src = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        M = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]]) @ M
    page = cv2.warpPerspective(src, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    return Cutout(darkness(page, float(geo.half.max()) * 2 * scale), scale, lo)


def darkness(page: np.ndarray, box_px: float) -> np.ndarray:
    """0 (paper) .. 1 (black): each pixel against the paper around it (a max
    filter a few bubbles wide, taken at quarter size and smoothed)."""
    h, w = page.shape
    q = 4 if min(h, w) >= 200 else 1
    small = cv2.resize(page, (max(1, w // q), max(1, h // q)), interpolation=cv2.INTER_AREA) if q > 1 else page
    k = max(3, int(round(2.5 * box_px / q))) | 1
    paper = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    paper = cv2.blur(paper, (k, k))
    if q > 1:
        paper = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR)
    paper = np.maximum(paper.astype(np.float32), 24.0)
    return np.clip(1.0 - page.astype(np.float32) / paper, 0.0, 1.0)


def _ring_kernel(rx: float, ry: float, inner: float, outer: float, R: int) -> np.ndarray:
    """Mean over the elliptical band ``inner``..``outer`` (shares of rx, ry),
    on a (2 R + 1)^2 kernel."""
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1].astype(np.float32)
    # sub-sample 4x4 for a smooth band on small radii (all 16 at once: the
    # count of sub-samples in the band is the same whatever the order)
    sub = np.array([-0.375, -0.125, 0.125, 0.375], np.float32)
    dx = ((xx[:, :, None, None] + sub[None, None, None, :]) / rx) ** 2
    dy = ((yy[:, :, None, None] + sub[None, None, :, None]) / ry) ** 2
    rr = np.sqrt(dx + dy)
    acc = ((rr >= inner) & (rr < outer)).sum((2, 3), dtype=np.float32)
    return acc / max(float(acc.sum()), 1e-6)


def evidence_of(dark: np.ndarray, rx: float, ry: float, pitch: float) -> np.ndarray:
    """Printed outline (or fill) evidence at every pixel for an outline of
    radii ``rx``, ``ry`` cut-out px: the ring minus just outside it (not as
    far out as the next bubble's outline, ``pitch`` away)."""
    return cv2.filter2D(dark, cv2.CV_32F, ring_kernel(rx, ry, pitch), borderType=cv2.BORDER_REPLICATE)


def ring_kernel(rx: float, ry: float, pitch: float) -> np.ndarray:
    """The kernel of ``evidence_of``."""
    r = max(rx, ry)
    outer = float(np.clip(0.9 * (pitch - r) / max(r, 1e-6), 1.3, 1.6))
    R = int(math.ceil(r * outer)) + 1
    return _ring_kernel(rx, ry, 0.75, 1.15, R) - _ring_kernel(rx, ry, 1.15, outer, R)


# ---------------------------------------------------------------- placement


class _Padded:
    """E padded once, so windows around points near its edges read zeros."""

    def __init__(self, E: np.ndarray, pad: int):
        self.pad = pad
        self.E = cv2.copyMakeBorder(E, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)

    def windows(self, pts: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
        """E in the (2 reach + 1)^2 window around each of ``pts`` (px of E,
        rounded), as (N, side, side), and which points had a whole window."""
        side = 2 * reach + 1
        hp, wp = self.E.shape
        ip = np.rint(np.asarray(pts, np.float64)).astype(np.int64) + self.pad - reach
        inside = (ip[:, 0] >= 0) & (ip[:, 1] >= 0) & (ip[:, 0] + side <= wp) & (ip[:, 1] + side <= hp)
        ip = ip[inside]
        if not len(ip):
            return np.empty((0, side, side), self.E.dtype), inside
        # Every window of E as a view, then the ones wanted copied out.
        return sliding_window_view(self.E, (side, side))[ip[:, 1], ip[:, 0]], inside

    def window_sum(self, pts: np.ndarray, reach: int) -> np.ndarray:
        """Sum over ``pts`` (px of E) of E in a (2 reach + 1)^2 window
        around each: the score of every integer shift of the point set."""
        win, _ = self.windows(pts, reach)
        return win.sum(0, dtype=np.float64)


def _peak(acc: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, value) of the maximum, sub-pixel by parabolas."""
    _, mv, _, ml = cv2.minMaxLoc(acc)
    x, y = ml
    dx = dy = 0.0
    if 0 < x < acc.shape[1] - 1:
        a, b, c = acc[y, x - 1], acc[y, x], acc[y, x + 1]
        den = a - 2 * b + c
        dx = 0.5 * (a - c) / den if den < 0 else 0.0
    if 0 < y < acc.shape[0] - 1:
        a, b, c = acc[y - 1, x], acc[y, x], acc[y + 1, x]
        den = a - 2 * b + c
        dy = 0.5 * (a - c) / den if den < 0 else 0.0
    r = acc.shape[0] // 2
    return x + dx - r, y + dy - r, float(mv)


@dataclass
class Placement:
    """Where each bubble is in the cut-out (px), and how well it fits."""

    pos: np.ndarray  # (N, 2)
    radius: float  # printed radius as a share of the box half size
    score: float  # global evidence score (mean at bubbles minus mean one pitch outside)
    ok: np.ndarray  # (N,) outline best centred where read
    block_ok: np.ndarray  # (B,) share of ok per block
    border: np.ndarray  # (B,) mean evidence one pitch outside each block, over that at its bubbles
    shift: tuple[float, float]  # global shift applied, cut-out px
    end_line_off: np.ndarray  # (B,) bool: a first or last line of the block off its outlines
    #: (B,) bool: blocks found on their own outlines more than half a pitch
    #: from where the page put them (``replace_blocks``).
    moved: np.ndarray | None = None
    #: ``quality`` where the page put the blocks, before any was moved further.
    as_found: float | None = None
    #: (B,) bool: on a sheet where a block was moved, the blocks not moved
    #: that do not sit squarely on their outlines either.
    unsure: np.ndarray | None = None
    #: (M, 2) the points one pitch outside the blocks (``Geometry.border``),
    #: where the placement puts them (cut-out px).
    bpos: np.ndarray | None = None

    @property
    def quality(self) -> float:
        """Share of bubbles on their printed outlines, less a half when most
        blocks show outlines one pitch outside them (the grid a row off), less
        the share of blocks off their outlines."""
        return _quality(self.ok, self.block_ok, self.border, self.end_line_off)


def _quality(ok: np.ndarray, block_ok: np.ndarray, border: np.ndarray, end_line_off: np.ndarray) -> float:
    off = len(border) > 0 and float(median(border)) > 0.95
    # Blocks off their outlines (a page taken with its margin, an outline
    # found short): the page is not where this placement puts it, though
    # blocks shifted half a pitch find outlines.
    bad = float(np.mean((block_ok < BLOCK_FITS) | end_line_off))
    return float(ok.mean()) - (0.5 if off else 0.0) - bad


def _peaks(pe: _Padded, pos: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the evidence peaks within ``reach`` of each point (sub-pixel,
    by parabolas), and how high; points too near the edge stay put, at 0."""
    r = max(1, int(reach))
    side = 2 * r + 1
    found = np.array(pos, np.float64)
    strength = np.zeros(len(pos))
    win, inside = pe.windows(pos, r)
    if not len(win):
        return found, strength
    flat = win.reshape(len(win), -1)
    k = np.argmax(flat, 1)
    ky, kx = np.divmod(k, side)
    n = np.arange(len(win))

    def offset(a: np.ndarray, b: np.ndarray, c: np.ndarray, edge: np.ndarray) -> np.ndarray:
        den = a - 2 * b + c
        ok = edge & (den < 0)
        return np.where(ok, 0.5 * (a - c) / np.where(ok, den, -1.0), 0.0)

    xin = (kx > 0) & (kx < side - 1)
    yin = (ky > 0) & (ky < side - 1)
    kxm, kxp = np.clip(kx - 1, 0, side - 1), np.clip(kx + 1, 0, side - 1)
    kym, kyp = np.clip(ky - 1, 0, side - 1), np.clip(ky + 1, 0, side - 1)
    b = win[n, ky, kx]
    dx = offset(win[n, ky, kxm], b, win[n, ky, kxp], xin)
    dy = offset(win[n, kym, kx], b, win[n, kyp, kx], yin)
    base = np.rint(np.asarray(pos, np.float64)[inside])
    found[inside] = base + np.stack([kx + dx - r, ky + dy - r], 1)
    strength[inside] = b
    return found, strength


def _fit_block(pe: _Padded, pos: np.ndarray, reach: float, limit: float | None = None) -> np.ndarray | None:
    """The affine map (2 x 3) that best takes a block's bubbles onto the
    printed outlines found within ``reach`` of each (RANSAC): the gaps an
    author measured on one warped photo, or a curled page, stretch a block by
    a fraction of a pitch along its length. None when too few agree, or when
    it moves a bubble further than ``limit`` (default ``reach``)."""
    if len(pos) < 6 or reach < 1:
        return None
    found_a, strength = _peaks(pe, pos, reach)
    strong = strength > 0.5 * float(median(strength))
    if strong.sum() < max(4, len(pos) // 2):
        return None
    A, inl = cv2.estimateAffine2D(pos[strong], found_a[strong], method=cv2.RANSAC,
                                  ransacReprojThreshold=max(1.0, 0.4 * reach), maxIters=200, confidence=0.99,
                                  refineIters=10)
    if A is None or inl is None or int(inl.sum()) < max(4, len(pos) // 2):
        return None
    moved = pos @ A[:, :2].T + A[:, 2]
    if np.abs(moved - pos).max() > (reach if limit is None else limit):
        return None
    return A


#: A filled bubble's outline evidence is many times a printed outline's (a
#: faint 72-dpi one most of all): taken whole, a block's few marks outweigh
#: all its blank outlines, and a fit that puts the blank bubbles on their
#: outlines (a block printed at other gaps than its template's) is refused
#: for a pixel's move of its marks. In comparing two placements of a block,
#: each bubble counts up to this many times the typical (median) evidence of
#: the better of the two.
MARK_WEIGHT = 3.0


def _better(E: np.ndarray, pos: np.ndarray, border: np.ndarray, than: np.ndarray, than_border: np.ndarray) -> bool:
    """Whether a block at ``pos`` (its border points at ``border``) sits on
    its outlines at least as well as at ``than`` (``than_border``): its
    evidence, capped (``MARK_WEIGHT``), less half that one pitch outside."""
    here, there = _sample(E, pos), _sample(E, than)
    cap = MARK_WEIGHT * max(float(median(here)), float(median(there)), 1e-6)
    return _block_score(E, here, border, cap) >= _block_score(E, there, than_border, cap)


def _block_score(E: np.ndarray, at_bubbles: np.ndarray, border: np.ndarray, cap: float) -> float:
    score = float(np.minimum(at_bubbles, cap).mean())
    if len(border):
        score -= 0.5 * float(_sample(E, border).mean())
    return score


def _outline_radius(dark: np.ndarray, pos: np.ndarray, hx: float, hy: float) -> float:
    """The printed outline's radius, as a share of the box half sizes: where
    the mean radial darkness profile of the unfilled bubbles peaks (a letter
    printed inside stays well inside it)."""
    if len(pos) > 160:  # a spread of them is plenty
        pos = pos[np.linspace(0, len(pos) - 1, 160).astype(int)]
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    rs = np.linspace(0.0, 1.6, 33)
    px = pos[:, 0, None, None] + hx * rs[None, None, :] * np.cos(a)[None, :, None]
    py = pos[:, 1, None, None] + hy * rs[None, None, :] * np.sin(a)[None, :, None]
    prof = _sample(dark, np.stack([px, py], -1)).mean(1)  # (N, R)
    inner = prof[:, :8].mean(1)
    unfilled = inner < percentile(inner, 60)
    if unfilled.sum() < 3:
        return 1.0
    mean = prof[unfilled].mean(0)
    lo = int(np.searchsorted(rs, 0.5))
    j = lo + int(np.argmax(mean[lo:]))
    return float(np.clip(rs[j] / 0.95, min(RADII), max(RADII)))


def place(cut: Cutout, geo: Geometry, search: float, replace_above: float = -math.inf) -> Placement:
    """Fit the grid on the printed bubbles: a global shift within ``search``
    (share of the page's larger side, at most half a pitch), then each block
    within half its pitch; the printed radius chosen among ``RADII``. Blocks
    off their outlines are searched for further (``replace_blocks``) when the
    placement's quality as found is ``replace_above`` at least."""
    s = cut.scale
    base = cut.to_cut(geo.centres)
    bpts = cut.to_cut(geo.border)
    hx, hy = float(median(geo.half[:, 0])) * s, float(median(geo.half[:, 1])) * s
    # A grid repeats: shifted by a whole pitch it sits on printed bubbles too.
    # The page's location must be right to within half a pitch; further is
    # left to the caller (another placement), never snapped onto another row.
    reach = max(2, int(round(min(search * max(cut.dark.shape), 0.45 * float(geo.block_pitch.min()) * s))))
    # Only the region of the bubbles is filtered.
    margin = reach + int(math.ceil(2 * max(hx, hy) * max(RADII))) + 2
    allp = np.vstack([base, bpts]) if len(bpts) else base
    h, w = cut.dark.shape
    x0, y0 = max(0, int(allp[:, 0].min()) - margin), max(0, int(allp[:, 1].min()) - margin)
    x1, y1 = min(w, int(allp[:, 0].max()) + margin + 1), min(h, int(allp[:, 1].max()) + margin + 1)
    region = cut.dark[y0:y1, x0:x1]
    off = np.array([x0, y0], np.float64)
    base_r, bpts_r = base - off, bpts - off

    pitch = float(median(geo.block_pitch)) * s
    pad = int(math.ceil(0.5 * pitch)) + 3

    def fit_block(pe: _Padded, E: np.ndarray, b: int, start: np.ndarray, affine: bool,
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Block ``b`` on its own within half its pitch of ``start`` (a
        shift of where the page puts it)."""
        idx = np.flatnonzero(geo.block == b)
        bi = np.flatnonzero(geo.border_block == b)
        p, bp = base_r[idx] + start, bpts_r[bi] + start
        r = min(max(1, int(math.floor(0.45 * geo.block_pitch[b] * s))), pe.pad - 2)
        dx, dy, _ = _peak(pe.window_sum(p, r) / len(idx))
        p, bp = p + [dx, dy], bp + [dx, dy]
        quarter = 0.25 * geo.block_pitch[b] * s
        A = _fit_block(pe, p, quarter) if affine else None
        stretch = False
        if affine and A is None:
            # A long block stretched (a page scaled otherwise than its
            # template): its far end lies further off than a quarter pitch,
            # where its near part shows the stretch. Taken that far only
            # along the block's length, neither turned nor sheared (a block
            # a few values wide fits a turn, or a stretch across, on noise
            # and on the printed numbers beside it).
            A = _fit_block(pe, p, quarter, limit=0.45 * geo.block_pitch[b] * s)
            stretch = A is not None
        if A is not None:
            moved, bmoved = p @ A[:, :2].T + A[:, 2], bp @ A[:, :2].T + A[:, 2]
            across = int(np.ptp(p[:, 0]) >= np.ptp(p[:, 1]))  # the axis across the block's length
            along_only = not stretch or (max(abs(A[0, 1]), abs(A[1, 0])) <= STRETCH_TURN
                                         and np.abs(moved - p)[:, across].max() <= quarter)
            # Kept only when the block sits better on its outlines,
            # counting what then shows one pitch outside it (a block
            # stretched onto the next row shows a row of outlines past its
            # end), and stays within half a pitch of where it started.
            if (along_only and np.abs(moved - base_r[idx] - start).max() < 0.5 * geo.block_pitch[b] * s
                    and _better(E, moved, bmoved, p, bp)):
                p, bp = moved, bmoved
        return p, bp

    def fit_blocks(pe: _Padded, affine: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each block on its own within half its pitch of where the page puts
        it (never further: a block moved a whole row reads the wrong row)."""
        E = pe.E[pe.pad:-pe.pad, pe.pad:-pe.pad]
        pos, bpos = base_r.copy(), bpts_r.copy()
        nb = len(geo.block_pitch)
        for b in range(nb):
            pos[geo.block == b], bpos[geo.border_block == b] = fit_block(pe, E, b, np.zeros(2), affine)
        crowded = crowded_blocks(pos, geo, s)
        if crowded.any() and not crowded.all():
            # Two blocks on the same printed bubbles: where the page is put
            # nearly half a pitch off, a block a pitch from its neighbour
            # (sample6's single columns of check letters) can take the
            # neighbour's bubbles as well as its own. The one shifted
            # otherwise than the blocks not in conflict is searched for
            # again around their shift, and kept there when it is clear.
            shift = np.array([(pos[geo.block == b] - base_r[geo.block == b]).mean(0) for b in range(nb)])
            common = np.array([median(shift[~crowded, 0]), median(shift[~crowded, 1])])
            for b in sorted(np.flatnonzero(crowded).tolist(), key=lambda k: -np.hypot(*(shift[k] - common))):
                if not crowds(pos, geo, s, b):
                    continue
                idx, bi = geo.block == b, geo.border_block == b
                keep = pos[idx].copy(), bpos[bi].copy()
                pos[idx], bpos[bi] = fit_block(pe, E, b, common, affine)
                if crowds(pos, geo, s, b):
                    pos[idx], bpos[bi] = keep
        return pos, bpos

    # With a box-sized ring first (the template's author drew the boxes over
    # the bubbles), then with the printed outline's own radius measured where
    # that put the bubbles.
    # Where the blocks are, roughly, with a box-sized ring, from the darkness
    # itself (the evidence summed over a block's bubbles is the ring filter
    # of their summed darkness: no filtering of the whole page for it); the
    # outline's own radius measured there; then the blocks fitted on the
    # evidence of a ring of that radius.
    def rough_fit(r_share: float) -> np.ndarray:
        k1 = ring_kernel(r_share * hx, r_share * hy, pitch)
        R1 = k1.shape[0] // 2
        pd = _Padded(region, pad + R1)
        pos = base_r.copy()
        for b in range(len(geo.block_pitch)):
            idx = np.flatnonzero(geo.block == b)
            r = min(max(1, int(math.floor(0.45 * geo.block_pitch[b] * s))), pad - 2)
            acc = pd.window_sum(pos[idx], r + R1).astype(np.float32)
            score = cv2.filter2D(acc, cv2.CV_32F, k1, borderType=cv2.BORDER_CONSTANT)[R1:-R1, R1:-R1]
            dx, dy, _ = _peak(score.astype(np.float64))
            pos[idx] += [dx, dy]
        return pos

    # The printed outline's size is not the box's: rough fits with a ring the
    # box's size, and larger and smaller, each followed by the outline's
    # radius measured where it put the bubbles; the fit that finds the
    # outline at the size it looked for is on the bubbles (where large
    # circles meet, their arcs fit a small ring but measure otherwise).
    best = None
    for r_share in ROUGH_RADII:
        measured = _outline_radius(region, rough_fit(r_share), hx, hy)
        # (A radius at the end of the range searched was not found, only bounded.)
        at_end = min(abs(measured - RADII[0]), abs(measured - RADII[1])) < 1e-6
        miss = abs(math.log(measured / r_share)) + (1.0 if at_end else 0.0)
        if best is None or miss < best[0]:
            best = (miss, measured)
        if miss < ROUGH_AGREE:
            break
    rr = best[1]
    pe = _Padded(evidence_of(region, rr * hx, rr * hy, pitch), pad)
    pos, bpos = fit_blocks(pe, True)
    E = pe.E[pe.pad:-pe.pad, pe.pad:-pe.pad]
    gdx, gdy = (pos - base_r).mean(0).tolist()
    v = 0.0
    ok, block_ok, border = _verify(E, pos, geo, s, bpos)
    end_off = blocks_with_an_end_line_off(ok, geo)
    as_found = _quality(ok, block_ok, border, end_off)
    moved = np.zeros(len(block_ok), bool)
    off_blocks = ((block_ok < BLOCK_FITS) | end_off) & (as_found >= replace_above)
    tried = np.zeros(len(block_ok), bool)
    while off_blocks.any():
        # (Blocks placed again raise the sheet's typical outline: a block
        # that passed against the old one, between two columns of outlines,
        # may show as off against the new one, and is searched for then.)
        tried |= off_blocks
        ring = (rr * hx, rr * hy, pitch)
        pos_c, bpos_c, changed, now_moved = replace_blocks(
            cut.dark, pos + off, bpos + off, base, bpts, geo, s, ring, off_blocks, float(median(_sample(E, pos))))
        if not changed.any():
            break
        moved |= now_moved
        # Verified again on the evidence around every block where it is now.
        allp = np.vstack([pos_c, bpos_c]) if len(bpos_c) else pos_c
        E, off = _wide_evidence(cut.dark, allp, ring, 2)
        pos, bpos = pos_c - off, bpos_c - off
        ok, block_ok, border = _verify(E, pos, geo, s, bpos)
        end_off = blocks_with_an_end_line_off(ok, geo)
        off_blocks = ((block_ok < BLOCK_FITS) | end_off) & ~tried
    unsure = np.zeros(len(block_ok), bool)
    if moved.any():
        # A block had to be moved further than half a pitch: the page is bent
        # under the bubbles (or printed otherwise than the template), so the
        # place of a block that passed where the page put it is not sure
        # either unless it sits there squarely (a block two fields wide a
        # value off keeps half of its end line on something past the grid).
        typical = float(median(_sample(E, pos)))
        unsure = np.array([not moved[b] and not _block_fits(E, pos[geo.block == b], bpos[geo.border_block == b],
                                                            geo, b, s, typical) for b in range(len(block_ok))])
    return Placement(pos + off, rr, v, ok, block_ok, border, (gdx, gdy), end_off, moved, as_found, unsure,
                     bpos + off)


#: A block's stretch that moves a bubble further than a quarter pitch is
#: taken only when it turns or shears it by less than this (radians).
STRETCH_TURN = 0.01
#: A block with fewer of its bubbles on their outlines than this is off them.
BLOCK_FITS = 0.8
#: A block off its outlines where the page put it (a curled photo bends the
#: paper under the bubbles by more than half a pitch) is looked for this many
#: of its pitches around that place, as a whole: its outline as printed.
REPLACE_REACH = 1.5
#: Registrations of a block tried from that search (the best few, this many
#: pitches apart at least).
REPLACE_PEAKS = 3
REPLACE_APART = 0.6
#: A block re-placed there must have this share of its bubbles (and
#: ``END_LINE_OK`` of each end line) centred on outlines of this strength (a
#: share of the block's typical one), and show outlines one pitch outside it at fewer
#: than ``BORDER_CLEAR`` of the points around it (on the printed grid's
#: edge, not inside a larger grid nor on the question numbers beside it).
REPLACED_FITS = 0.8
REPLACED_STRENGTH = 0.5
BORDER_CLEAR = 0.25


def replace_blocks(dark: np.ndarray, pos: np.ndarray, bpos: np.ndarray, base: np.ndarray, bpts: np.ndarray,
                   geo: Geometry, s: float, ring: tuple[float, float, float], off_blocks: np.ndarray,
                   typical: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The blocks ``off_blocks`` placed again on their printed outlines,
    searched ``REPLACE_REACH`` pitches around where the page put them
    (``base``, ``bpts``: the bubbles and the points one pitch outside the
    blocks; ``pos``, ``bpos``: where they are now; cut-out px). A person
    finds a block by its outline as a whole: the grid of printed circles
    the block's size, with bare paper around it. So a registration is
    taken only when the block then sits on outlines everywhere (its end lines
    too) with none showing one pitch outside it, clear of the other blocks,
    and no other registration a row or more away does the same (a printed
    grid larger than the block, or two alike side by side, leave the block
    where it was). ``ring``: the printed outline's radii and the pitch (px);
    ``typical``: the sheet's typical outline evidence at its bubbles.
    Returns (positions, border positions, the blocks changed, those moved
    more than half a pitch from where the page put them)."""
    rx, ry, pitch = ring
    nb = len(geo.block_pitch)
    far = int(math.ceil(REPLACE_REACH * float(geo.block_pitch.max()) * s)) + 2
    # The evidence only around the blocks searched for.
    mine, bmine = off_blocks[geo.block], off_blocks[geo.border_block]
    E, o = _wide_evidence(dark, np.vstack([pos[mine], base[mine], bpts[bmine]]), ring, far)
    pos, bpos, base, bpts = pos - o, bpos - o, base - o, bpts - o
    wide = _Padded(E, far + 2)
    near = _Padded(E, int(math.ceil(0.5 * pitch)) + 3)
    changed = np.zeros(nb, bool)
    moved = np.zeros(nb, bool)
    for b in np.flatnonzero(off_blocks):
        idx = np.flatnonzero(geo.block == b)
        bi = np.flatnonzero(geo.border_block == b)
        pb = float(geo.block_pitch[b]) * s
        reach = min(int(math.ceil(REPLACE_REACH * pb)), far)
        # Every shift of the block at once: its bubbles' evidence less what
        # shows one pitch outside it.
        score = wide.window_sum(base[idx], reach) / len(idx)
        if len(bi):
            score -= wide.window_sum(bpts[bi], reach) / len(bi)
        others = np.flatnonzero(geo.block != b)
        fits = []
        for dx, dy in _maxima(score, REPLACE_PEAKS, max(1, int(REPLACE_APART * pb))):
            p, bp = _settle(near, E, base[idx] + [dx, dy], bpts[bi] + [dx, dy], pb)
            if len(others) and _any_near(p, pos[others], 0.5 * pb):
                continue  # onto another block's bubbles
            if _block_fits(E, p, bp, geo, b, s, typical):
                fits.append((p, bp))
        distinct = [f for f in fits if np.abs(f[0] - fits[0][0]).max() >= 0.5 * pb] if fits else []
        if len(fits) == 0 or distinct:
            continue  # nowhere, or more than one place: left where it was (and flagged)
        p, bp = fits[0]
        pos[idx], bpos[bi] = p, bp
        changed[b] = True
        moved[b] = bool(np.abs(p - base[idx]).max() > 0.5 * pb)
    return pos + o, bpos + o, changed, moved


def _wide_evidence(dark: np.ndarray, pts: np.ndarray, ring: tuple[float, float, float], far: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Outline evidence (``evidence_of``) over the part of ``dark`` around
    ``pts`` where a block moved ``far`` px from them can be verified, and
    that part's origin."""
    rx, ry, pitch = ring
    margin = far + int(math.ceil(2 * max(rx, ry))) + int(math.ceil(pitch)) + 2
    h, w = dark.shape
    x0, y0 = max(0, int(pts[:, 0].min()) - margin), max(0, int(pts[:, 1].min()) - margin)
    x1, y1 = min(w, int(pts[:, 0].max()) + margin + 1), min(h, int(pts[:, 1].max()) + margin + 1)
    return evidence_of(dark[y0:y1, x0:x1], rx, ry, pitch), np.array([x0, y0], np.float64)


def _maxima(score: np.ndarray, count: int, apart: int) -> list[tuple[float, float]]:
    """The ``count`` highest maxima of ``score`` (a square of shifts centred
    on 0), at least ``apart`` px from each other, as shifts."""
    r = score.shape[0] // 2
    return [(float(x - r), float(y - r)) for _v, x, y in strongest_peaks(score.astype(np.float32), count, apart, -1e8)]


def _settle(pe: _Padded, E: np.ndarray, pos: np.ndarray, bpos: np.ndarray, pb: float) -> tuple[np.ndarray, np.ndarray]:
    """A block started at ``pos`` moved onto the evidence peak within a
    quarter pitch, then stretched and turned onto its outlines (those found
    within 0.4 pitch of each bubble, then a quarter pitch: on a curled page
    the far corners of a large block lie further off than its middle, which
    the map is fitted on first)."""
    r = min(max(1, int(math.floor(0.25 * pb))), pe.pad - 2)
    dx, dy, _ = _peak(pe.window_sum(pos, r) / len(pos))
    pos, bpos = pos + [dx, dy], bpos + [dx, dy]
    for reach in (0.4 * pb, 0.25 * pb):
        A = _fit_block(pe, pos, min(reach, pe.pad - 2), limit=0.75 * pb)
        if A is not None:
            p2, b2 = pos @ A[:, :2].T + A[:, 2], bpos @ A[:, :2].T + A[:, 2]
            if _better(E, p2, b2, pos, bpos):
                pos, bpos = p2, b2
    return pos, bpos


def _any_near(a: np.ndarray, b: np.ndarray, within: float) -> bool:
    """Whether a point of ``b`` lies within ``within`` of one of ``a``."""
    b = b[np.all((b >= a.min(0) - within) & (b <= a.max(0) + within), axis=1)]
    if not len(b):
        return False
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return bool(d.min() < within)


def _block_fits(E: np.ndarray, pos: np.ndarray, bpos: np.ndarray, geo: Geometry, b: int, s: float,
                typical: float) -> bool:
    """Whether block ``b`` at ``pos`` sits squarely on its printed outlines:
    ``REPLACED_FITS`` of its bubbles, and ``END_LINE_OK`` of each end line,
    centred on an outline half as strong as the block's typical one at least (printed
    question numbers beside a block show a trace; the block's own, for a
    part of the photo out of focus shows all its outlines weaker), and
    outlines at fewer than ``BORDER_CLEAR`` of the points one pitch outside
    it."""
    half = 0.5 * float(geo.block_pitch[b]) * s
    here = _sample(E, pos)
    own = float(median(here))
    ok = _centred(E, pos, half, typical) & (here > REPLACED_STRENGTH * own)
    if ok.mean() < REPLACED_FITS:
        return False
    fields = geo.field[geo.block == b]
    counts = np.bincount(fields - fields.min())
    counts = counts[counts > 0]
    if len(set(counts.tolist())) == 1:
        grid = ok.reshape(len(counts), int(counts[0]))
        if any(len(line) >= 2 and line.mean() < END_LINE_OK for line in (grid[0], grid[-1], grid[:, 0], grid[:, -1])):
            return False
    if len(bpos) and _shows(E, bpos, half, own).mean() >= BORDER_CLEAR:
        return False
    return True


def transform_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2) points through the homography ``H`` (OpenCV's arithmetic)."""
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)


def _sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` at ``pts`` (..., 2)."""
    shape = pts.shape[:-1]
    p = pts.reshape(-1, 2).astype(np.float32)
    n = len(p)
    cols = 1024  # remap's maps must stay under 32767 px a side
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = p[:, 0], p[:, 1]
    out = cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.ravel()[:n].reshape(shape)


_AROUND = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float64)


def _centred(E: np.ndarray, pts: np.ndarray, half: np.ndarray | float, typical: float) -> np.ndarray:
    """Per point: an outline centred there, its evidence over the mean half
    a pitch (``half``) away along either axis, and not a trace of one."""
    half = np.broadcast_to(np.asarray(half, np.float64), (len(pts),))
    here = _sample(E, pts)
    around = _sample(E, pts[:, None, :] + _AROUND[None] * half[:, None, None]).mean(1)
    return (here > around) & (here > 0.25 * typical)


def _shows(E: np.ndarray, pts: np.ndarray, half: np.ndarray | float, typical: float) -> np.ndarray:
    """Per point: a bubble outline there, as strong as the sheet's typical
    one and centred (printed numbers and letters beside a block show some
    evidence, not a centred ring)."""
    half = np.broadcast_to(np.asarray(half, np.float64), (len(pts),))
    here = _sample(E, pts)
    around = _sample(E, pts[:, None, :] + _AROUND[None] * half[:, None, None]).mean(1)
    return (here > 0.7 * typical) & (here > around)


def _verify(E: np.ndarray, pos: np.ndarray, geo: Geometry, s: float, bpts: np.ndarray):
    half = 0.5 * geo.block_pitch[geo.block] * s
    typical = float(median(_sample(E, pos)))
    # (A block on another's bubbles is on outlines, but not its own.)
    ok = _centred(E, pos, half, typical) & ~crowded_blocks(pos, geo, s)[geo.block]
    nb = len(geo.block_pitch)
    block_ok = np.array([ok[geo.block == b].mean() for b in range(nb)])
    border = np.zeros(nb)
    if len(bpts):
        # A bubble outline one pitch outside a block.
        shows = _shows(E, bpts, 0.5 * geo.block_pitch[geo.border_block] * s, typical)
        for b in range(nb):
            sel = geo.border_block == b
            if sel.any():
                border[b] = float(np.mean(shows[sel]))
    return ok, block_ok, border


def crowded_blocks(pos: np.ndarray, geo: Geometry, s: float) -> np.ndarray:
    """(B,) bool: blocks placed at ``pos`` (cut-out px, ``s`` per page px)
    with a bubble within half its pitch of another block's, where the
    template keeps the two further apart."""
    return np.array([crowds(pos, geo, s, b) for b in range(len(geo.block_pitch))], bool)


def crowds(pos: np.ndarray, geo: Geometry, s: float, b: int) -> bool:
    """Whether block ``b`` alone is crowded (``crowded_blocks``)."""
    others = _neighbour_blocks(geo)[b]
    return bool(len(others)) and _any_near(pos[geo.block == b], pos[others], 0.5 * float(geo.block_pitch[b]) * s)


#: Blocks are checked against the bubbles of blocks this many pitches away at
#: most in the template (a block is placed at most ``REPLACE_REACH`` pitches
#: from where the page puts it, and so is its neighbour).
CROWD_REACH = 4.0


@per_object
def _neighbour_blocks(geo: Geometry) -> list[np.ndarray]:
    """Per block, the indices of the bubbles of the other blocks that come
    within ``CROWD_REACH`` pitches of it in the template, though no nearer
    than half a pitch (of either)."""
    nb = len(geo.block_pitch)
    members = [np.flatnonzero(geo.block == b) for b in range(nb)]
    out: list[list[np.ndarray]] = [[] for _ in range(nb)]
    for b in range(nb):
        for c in range(b + 1, nb):
            pb, pc = geo.centres[members[b]], geo.centres[members[c]]
            reach = CROWD_REACH * float(max(geo.block_pitch[b], geo.block_pitch[c]))
            within = 0.5 * float(min(geo.block_pitch[b], geo.block_pitch[c]))
            if _any_near(pb, pc, reach) and not _any_near(pb, pc, within):
                out[b].append(members[c])
                out[c].append(members[b])
    return [np.concatenate(o) if o else np.zeros(0, np.int64) for o in out]


#: A block whose first or last line of bubbles (a field, or the same value
#: across its fields) has fewer than this share on their printed outlines is
#: off: a block placed a row or a column off has one end line on bare paper,
#: though every other bubble sits on an outline (the next row's).
END_LINE_OK = 0.5


def blocks_with_an_end_line_off(ok: np.ndarray, geo: Geometry) -> np.ndarray:
    """(B,) bool: the blocks (of fields of one length) whose first or last
    field, or first or last value across the fields, has fewer than
    ``END_LINE_OK`` of its bubbles (at least two) on their printed outlines."""
    out = np.zeros(len(geo.block_pitch), bool)
    for b in range(len(geo.block_pitch)):
        idx = np.flatnonzero(geo.block == b)
        fields = geo.field[idx]
        counts = np.bincount(fields - fields.min())
        counts = counts[counts > 0]
        if len(set(counts.tolist())) != 1:
            continue
        # Bubbles are stored field after field, values in order.
        grid = ok[idx].reshape(len(counts), int(counts[0]))
        lines = [grid[0], grid[-1], grid[:, 0], grid[:, -1]]
        if any(len(line) >= 2 and float(line.mean()) < END_LINE_OK for line in lines):
            out[b] = True
    return out


# ---------------------------------------------------------------- measurement


#: OMRChecker templates give no page size in mm: their page px are taken as
#: mm with the bubbles as large as this project's (4.4 mm across), for the
#: neighbourhood a blank level is taken over (``decide.sheet_levels``, a few
#: bubbles wide either way).
BUBBLE_MM = 4.4
#: A circle drawn around a bubble here: dark in this share of the free
#: directions (three radii looked at, where the engine's own sheets take the
#: darkest of a band: reported on that scale, ``decide.CIRCLE_MIN``).
CIRCLED = 0.85


def page_mm(geo: Geometry) -> np.ndarray:
    """(N, 2) the bubbles' centres as mm (see ``BUBBLE_MM``)."""
    return np.ascontiguousarray(geo.centres * (BUBBLE_MM / (2.0 * float(median(geo.half.min(1))))))


_DISC_RADII = np.sqrt(np.linspace(0.0, 1.0, 5)[1:]) * INNER
_DISC_ANGLES = np.linspace(0, 2 * np.pi, 12, endpoint=False)
_DISC_X = np.concatenate([[0.0], (_DISC_RADII[:, None] * np.cos(_DISC_ANGLES)[None]).ravel()])
_DISC_Y = np.concatenate([[0.0], (_DISC_RADII[:, None] * np.sin(_DISC_ANGLES)[None]).ravel()])


def _inside(cut: Cutout, pos: np.ndarray, half: np.ndarray, radius: float) -> np.ndarray:
    """(N, 49) darkness samples of the inside of a bubble at each of ``pos``
    (cut-out px; ``half``: (N, 2) box half sizes, page px): a disc of points
    (polar grid, even in area) within the printed outline and the box both."""
    rx = half[:, 0] * cut.scale * min(radius, 1.0)
    ry = half[:, 1] * cut.scale * min(radius, 1.0)
    pts = np.stack([pos[:, 0:1] + rx[:, None] * _DISC_X[None], pos[:, 1:2] + ry[:, None] * _DISC_Y[None]], -1)
    return _sample(cut.dark, pts)


#: Straight print this many bubble pitches long is a line (``printed_lines``),
#: left out of the rings where it is this dark, as a share of what a ring
#: counts as dark.
LINE_PITCHES = 2.5
LINE_DARK = 0.5


def printed_lines(dark: np.ndarray, length: float) -> np.ndarray:
    """(H, W) float32: how dark the horizontal and vertical lines at least
    ``length`` px long are at each pixel of ``dark`` (a morphological
    opening with a line each way, where one way holds more than the other):
    the rulings of a table. Bubble outlines, letters and hand strokes are
    shorter or curved; a grey level both ways (a tint, a dark scan's paper)
    is no line. (On 8 bits: a fifth of the time, and a 255th is no matter.)"""
    n = max(3, int(round(length)))
    grey = np.clip(dark * 255.0 + 0.5, 0, 255).astype(np.uint8)
    along = cv2.morphologyEx(grey, cv2.MORPH_OPEN, np.ones((1, n), np.uint8))
    down = cv2.morphologyEx(grey, cv2.MORPH_OPEN, np.ones((n, 1), np.uint8))
    return cv2.absdiff(along, down).astype(np.float32) * np.float32(1 / 255)


def measure(cut: Cutout, geo: Geometry, pl: Placement) -> Measures:
    """Every bubble measured in the cut-out, as the engine's own sheets are
    (``decide.Measures``): the inside's mean darkness, its share darker than
    0.5 and its 90th percentile, and how much of a ring outside the outline
    is dark (a circle drawn around it). Darkness is against the local paper,
    not stretched to printed black (there are no registration marks to
    measure black in); ``ink_ratio`` is 1 less this sheet's print darkness."""
    s = cut.scale
    n = len(pl.pos)
    inside = _inside(cut, pl.pos, geo.half, pl.radius)
    fill = inside.mean(1)
    share = (inside > 0.5).mean(1)
    k30 = int(0.3 * (inside.shape[1] - 1))
    k90 = int(0.9 * (inside.shape[1] - 1))
    part = np.partition(inside, (k30, k90), axis=1)
    low, peak = part[:, k30], part[:, k90]
    # Outside: a ring where a drawn circle would be, in the free directions.
    rx = geo.half[:, 0] * s * pl.radius
    ry = geo.half[:, 1] * s * pl.radius
    a = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)
    radii = np.concatenate([[TIGHT_CIRCLE], np.linspace(CIRCLE_BAND[0], CIRCLE_BAND[1], 3)])
    cx = pl.pos[:, 0, None, None] + rx[:, None, None] * radii[None, None, :] * np.cos(a)[None, :, None]
    cy = pl.pos[:, 1, None, None] + ry[:, None, None] * radii[None, None, :] * np.sin(a)[None, :, None]
    ink = float(percentile(cut.dark[::3, ::3], 99.5))
    dark_at = max(0.25, 0.4 * ink)
    pts = np.stack([cx, cy], -1)
    rings = _sample(cut.dark, pts)  # (N, A, radii)
    # Print in long straight lines dark by themselves (a table's frame past
    # a block's edge) is left out: a circle drawn round a bubble is no
    # straight line. (A row of bubbles close together, blurred, runs nearly
    # unbroken along their tops, but not as dark.)
    lines = _sample(printed_lines(cut.dark, LINE_PITCHES * geo.pitch * s), pts)
    rings = np.where(lines >= LINE_DARK * dark_at, rings - lines, rings)
    nfree = geo.free.sum(1)
    tight = ((rings[:, :, 0] > dark_at) & geo.free).sum(1) / np.maximum(nfree, 1)
    ring = rings.max(2) if len(tight) and float(median(tight)) <= TIGHT_CLEAR else rings[:, :, 1:].max(2)  # (N, A)
    dark_dirs = ring > dark_at

    def circle_of(dirs: np.ndarray) -> np.ndarray:
        # The share of the free directions dark, on ``decide.CIRCLE_MIN``'s scale.
        dark_share = np.where(nfree >= ANGLES // 3, (dirs & geo.free).sum(1) / np.maximum(nfree, 1), 0.0)
        return dark_share.astype(np.float64) * (CIRCLE_MIN / CIRCLED)

    # ``circle_apart``: only where darker than bubbles placed alike show it:
    # print beside a bubble (a row's label, a grid's frame) is beside all of
    # them. (A bubble placed like no other has nothing to stand out of: none.)
    apart_dirs = dark_dirs & (ring - _peer_rings(ring, geo) > 0.5 * dark_at)
    fill, share = fill.astype(np.float64), share.astype(np.float64)
    # The placement has checked each outline (``Placement.ok``): no outline
    # per bubble here, and the paper is 1 (darkness is against the local paper).
    ones = np.ones(n)
    # Scored by the mean and a low percentile of the inside (``decide.score_of``).
    low = low.astype(np.float64)
    return Measures(fill, share, peak.astype(np.float64), score_of(fill, share, low), ones, circle_of(dark_dirs),
                    ones, 1.0 - ink, low=low, circle_apart=circle_of(apart_dirs))


#: A mark outside a block (``marks_outside``): at a point one pitch outside
#: it, where the template has no bubble, the inside of a bubble as dark as
#: this sheet's marks: its mean darkness at least ``OUTSIDE_DARK`` of the
#: marked bubbles' median and ``OUTSIDE_BETWEEN`` of the way up to it from
#: the unmarked ones'; as solid (its 10th percentile at least
#: ``OUTSIDE_SOLID`` of theirs: a printed word or number there, as dark,
#: leaves paper between its strokes); darker than the side's other points
#: by ``OUTSIDE_STANDS`` of the step from unmarked to marked (print along a
#: block's side is along all of it); and a pitch further out, not past
#: ``OUTSIDE_BEYOND`` of the way from unmarked to marked (a dark area there,
#: the table beyond the paper or a printed bar, is not a mark; paper is
#: taken locally, so deep inside a dark area it reads lighter than at its
#: edge); and half a pitch either way along its side, the lighter no more
#: than ``OUTSIDE_APART`` of the step above the unmarked bubbles (paper
#: between two bubbles of a line; a bold printed word there, a heading one
#: pitch above a block, runs on: "we" of a blurred "Answer" read 0.42-0.47,
#: marks outside shifted blocks at most 0.06). Looked for only where marks
#: stand ``OUTSIDE_STEP`` or more above the unmarked bubbles.
OUTSIDE_DARK = 0.75
OUTSIDE_BETWEEN = 0.6
OUTSIDE_SOLID = 0.7
OUTSIDE_STANDS = 0.5
OUTSIDE_BEYOND = 0.5
OUTSIDE_APART = 0.25
OUTSIDE_STEP = 0.15


def marks_outside(cut: Cutout, geo: Geometry, pl: Placement, mean: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """(M,) bool: which points one pitch outside the blocks
    (``Geometry.border``, where ``pl`` puts them) hold a mark like this
    sheet's marks (``mean``: each bubble's mean darkness, ``marked``: the
    bubbles read as marked). A block placed a row or a column off leaves
    the marks of its first or last line there, unread, where its outlines
    alone cannot tell (the printed question numbers beside a block are
    ring-like, and the next block's outlines continue its grid)."""
    out = np.zeros(len(geo.border), bool)
    if not len(out) or pl.bpos is None or int(marked.sum()) < 2 or marked.all():
        return out
    mark, blank = float(median(mean[marked])), float(median(mean[~marked]))
    step = mark - blank
    if step < OUTSIDE_STEP:
        return out
    solid = float(median(_tenth(_inside(cut, pl.pos[marked], geo.half[marked], pl.radius))))
    half = block_half(geo)[geo.border_block]
    inside = _inside(cut, pl.bpos, half, pl.radius)
    fill = inside.mean(1)
    beyond = _inside(cut, pl.bpos + geo.border_step * cut.scale, half, pl.radius).mean(1)
    side_median = np.zeros(len(fill))
    for idx in border_sides(geo):
        side_median[idx] = float(median(fill[idx]))
    dark = max(OUTSIDE_DARK * mark, blank + OUTSIDE_BETWEEN * step)
    return ((fill >= dark) & (_tenth(inside) >= OUTSIDE_SOLID * solid)
            & (fill - side_median >= OUTSIDE_STANDS * step) & (beyond < blank + OUTSIDE_BEYOND * step)
            & (_between(cut, pl.bpos, geo.border_along, half, pl.radius) < blank + OUTSIDE_APART * step))


def _between(cut: Cutout, pos: np.ndarray, along: np.ndarray, half: np.ndarray, radius: float) -> np.ndarray:
    """(M,) the lighter of the two points half a pitch either way along each
    point's side: between two bubbles of a line (paper), or inside a printed
    word (as dark as the point itself)."""
    step = 0.5 * along * cut.scale
    return np.minimum(_inside(cut, pos - step, half, radius).mean(1), _inside(cut, pos + step, half, radius).mean(1))


def _tenth(samples: np.ndarray) -> np.ndarray:
    """(N,) each row's 10th percentile (the nearest sample below it, as
    ``measure`` takes its 30th: no interpolation)."""
    k = int(0.1 * (samples.shape[1] - 1))
    return np.partition(samples, k, axis=1)[:, k]


def fields_beside_marks(geo: Geometry, outside: np.ndarray) -> list[int]:
    """The fields (indices) of every block the marks ``outside`` it
    (``marks_outside``) show placed a row or a column off: a mark on the
    line before its first field or after its last, or marks beside two of
    its fields or more. (A single mark beside one field is not taken: a
    printed square or the table beyond a page's edge can look like one.)"""
    blocks: set[int] = set()
    for idx in border_sides(geo):
        at = idx[outside[idx]]
        if len(at) >= 2 or (len(at) and geo.border_across[at[0]]):
            blocks.add(int(geo.border_block[at[0]]))
    chosen = np.zeros(len(geo.block_pitch), bool)
    chosen[sorted(blocks)] = True
    return fields_of_blocks(geo, chosen)


def fields_of_blocks(geo: Geometry, chosen: np.ndarray) -> list[int]:
    """The fields (indices, ascending) of the blocks ``chosen`` ((B,) bool)."""
    return sorted(set(geo.field[chosen[geo.block]].tolist()))


@per_object
def border_sides(geo: Geometry) -> list[np.ndarray]:
    """The points one pitch outside the blocks (indices into
    ``Geometry.border``), one array per side of a block."""
    order = np.argsort(geo.border_side, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(geo.border_side[order]) != 0]) if len(order) else []
    return np.split(order, starts[1:]) if len(order) else []


@per_object
def block_half(geo: Geometry) -> np.ndarray:
    """(B, 2) each block's median box half size (page px)."""
    halves = [geo.half[geo.block == b] for b in range(len(geo.block_pitch))]
    return np.array([[float(median(h[:, 0])), float(median(h[:, 1]))] for h in halves]).reshape(-1, 2)


#: Bubbles placed alike (``peers``) are compared only in groups of at least
#: this many, with what the darker ``PEERS_SHARE`` percent of them show (a
#: low share: where many answers are circled, a neighbour's circle crosses
#: many peers' rings).
PEERS_MIN = 3
PEERS_SHARE = 20


@per_object
def peers(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The bubbles placed alike: of one block, with the same directions free
    of other bubbles (a column's inner bubbles, a grid's top row, every
    row's end bubble). (order, starts) of the groups of at least
    ``PEERS_MIN``, a group's bubbles consecutive in ``order``."""
    ids: dict[tuple[int, bytes], int] = {}
    group = np.array([ids.setdefault((int(b), f.tobytes()), len(ids)) for b, f in zip(geo.block, geo.free, strict=True)],
                     np.int64)
    keep = np.bincount(group, minlength=len(ids))[group] >= PEERS_MIN
    order = np.flatnonzero(keep)[np.argsort(group[keep], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0]) if len(order) else np.zeros(0, np.int64)
    return order, starts


def _peer_rings(ring: np.ndarray, geo: Geometry) -> np.ndarray:
    """(N, A) what each bubble's peers (``peers``) show in each direction of
    their rings, at their ``PEERS_SHARE`` percentile; for a bubble without
    enough peers, its own ring (nothing stands out of it)."""
    out = ring.copy()
    order, starts = peers(geo)
    ends = np.r_[starts[1:], len(order)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        idx = order[a:b]
        out[idx] = np.sort(ring[idx], axis=0)[int(PEERS_SHARE / 100 * (len(idx) - 1))]
    return out


def gap_darkness(cut: Cutout, geo: Geometry, pl: Placement, pairs: np.ndarray) -> np.ndarray:
    """(P, 3) darkness for each pair of neighbouring bubbles of a field, as
    ``bubbles.gap_darkness`` takes it on the engine's own sheets: of the paper
    halfway between the two (a stroke running from one into the other), and
    of each one's far side (half a radius past its centre, away from the
    other; second column for the pair's second bubble, third for its first)."""
    if len(pairs) == 0:
        return np.zeros((0, 3))
    a, b = pairs[:, 0], pairs[:, 1]
    pa, pb = pl.pos[a], pl.pos[b]
    t = np.array([0.45, 0.5, 0.55])
    mid = pa[:, None, :] + t[None, :, None] * (pb - pa)[:, None, :]
    u = pb - pa
    u = u / np.maximum(np.hypot(u[:, 0], u[:, 1]), 1e-9)[:, None]
    r = (geo.half[a].min(1) * cut.scale * pl.radius)[:, None]
    pts = np.concatenate([mid, (pb + 0.5 * r * u)[:, None, :], (pa - 0.5 * r * u)[:, None, :]], 1)
    vals = _sample(cut.dark, pts)
    return np.stack([vals[:, :3].mean(1), vals[:, 3], vals[:, 4]], 1).astype(np.float64)
