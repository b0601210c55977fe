"""The equivalents of OMRChecker's pre-processors, as homographies.

OMRChecker warps the image at every step (crop to the page, warp on the marker
centres, warp onto a reference) and finally resizes it to ``pageDimensions``.
Here each step only *measures* where things are and the steps compose into one
homography, page px -> image px; the bubbles are then sampled from the image
itself (``reader.py``), never from a warped copy.

* ``find_page``: the sheet's outline (CropPage): the largest bright convex
  quadrilateral, found on brightness (Otsu on a smoothed copy) and on edges,
  its sides refined on the full-resolution image.
* ``find_markers``: the four corner markers (CropOnMarkers): normalised
  correlation with the marker image at several scales, one marker per quarter
  of the frame; the page's corners are the marker centres, as in OMRChecker.
* ``match_reference``: ORB features against the reference image
  (FeatureBasedAlignment), ratio test, RANSAC homography.
* ``filter_image``: GaussianBlur, MedianBlur, Levels on a grey image, kernel
  sizes scaled from OMRChecker's processing image to the image at hand.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..homography import apply_h
from ..stats import median, percentile


class StepError(Exception):
    """A step could not do its job; ``flag`` is the sheet flag (``page_not_found``,
    ``cut_off``), ``reason`` a plain sentence."""

    def __init__(self, reason: str, flag: str = "page_not_found"):
        super().__init__(reason)
        self.reason = reason
        self.flag = flag


def rect_h(src_w: float, src_h: float, quad: np.ndarray) -> np.ndarray:
    """Homography taking the rectangle (0,0)-(src_w,src_h) to ``quad`` (TL, TR, BR, BL)."""
    src = np.array([[0, 0], [src_w, 0], [src_w, src_h], [0, src_h]], np.float32)
    return cv2.getPerspectiveTransform(src, np.asarray(quad, np.float32)).astype(np.float64)


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Four points as TL, TR, BR, BL (by angle around their centre, TL first:
    the one with the smallest x + y)."""
    pts = np.asarray(pts, np.float64).reshape(4, 2)
    c = pts.mean(0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # clockwise in image coordinates (y down), starting left
    k = int(np.argmin(pts.sum(1)))
    return np.roll(pts, -k, 0)


def _shrink(grey: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    h, w = grey.shape
    f = min(1.0, long_side / max(h, w))
    if f >= 1.0:
        return grey, 1.0
    small = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, small.shape[1] / w


def _quad_from_contour(cnt: np.ndarray) -> np.ndarray | None:
    hull = cv2.convexHull(cnt)
    peri = cv2.arcLength(hull, True)
    for eps in (0.01, 0.02, 0.03, 0.045, 0.06):
        approx = cv2.approxPolyDP(hull, eps * peri, True)
        if len(approx) == 4 and cv2.isContourConvex(approx):
            return approx.reshape(4, 2).astype(np.float64)
        if len(approx) < 4:
            break
    return None


#: The pairs of outline points each side is looked for through: the 2-D
#: additive recurrence of the plastic number (spread evenly over all pairs,
#: and the same every time, so the same image gives the same reading, without
#: numpy.random's import, which costs more than this search).
_PAIRS = np.modf(np.arange(1, 301)[:, None] * np.array([0.7548776662466927, 0.5698402909980532]) + 0.5)[0]


def _pairs(n: int) -> np.ndarray:
    """(300, 2) indices into ``n`` points, spread evenly over the pairs."""
    return np.minimum((_PAIRS * n).astype(np.int64), n - 1)


def _quad_by_lines(cnt: np.ndarray) -> np.ndarray | None:
    """The page's four sides as the four dominant straight runs of its outline
    (RANSAC, one line at a time), intersected: a pen or a hand overlapping the
    page bends its outline but leaves most of each side straight."""
    pts = cnt.reshape(-1, 2).astype(np.float64)
    if len(pts) < 40:
        return None
    span = float(np.ptp(pts, axis=0).max())
    tol = max(1.5, 0.004 * span)
    lines = []
    left = pts
    for _ in range(4):
        if len(left) < 20:
            return None
        i = _pairs(len(left))
        a, b = left[i[:, 0]], left[i[:, 1]]
        d = b - a
        ln = np.hypot(d[:, 0], d[:, 1])
        ok = ln > 0.1 * span
        if not ok.any():
            return None
        a, d, ln = a[ok], d[ok], ln[ok]
        nrm = np.stack([-d[:, 1], d[:, 0]], 1) / ln[:, None]
        dist = np.abs((left[None, :, 0] - a[:, None, 0]) * nrm[:, None, 0]
                      + (left[None, :, 1] - a[:, None, 1]) * nrm[:, None, 1])
        counts = (dist < tol).sum(1)
        j = int(np.argmax(counts))
        inl = left[dist[j] < tol]
        if len(inl) < 0.05 * len(pts):
            return None
        vx, vy, x0, y0 = cv2.fitLine(inl.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0]), np.array([vx, vy])))
        # Drop this side's points (and those close to it) before the next.
        n2 = np.array([-vy, vx])
        left = left[np.abs((left - [x0, y0]) @ n2) > 3 * tol]
    c = pts.mean(0)
    # Order the sides around the page by the direction of their nearest point from the centre.
    ang = []
    for p0, v in lines:
        foot = p0 + np.dot(c - p0, v) * v
        ang.append(math.atan2(foot[1] - c[1], foot[0] - c[0]))
    order = np.argsort(ang)
    lines = [lines[i] for i in order]
    quad = []
    for i in range(4):
        p1, v1 = lines[i]
        p2, v2 = lines[(i + 1) % 4]
        den = v1[0] * v2[1] - v1[1] * v2[0]
        if abs(den) < 0.3:  # adjacent sides must cross at a good angle
            return None
        tpar = ((p2[0] - p1[0]) * v2[1] - (p2[1] - p1[1]) * v2[0]) / den
        quad.append(p1 + tpar * v1)
    return np.array(quad)


def _valid_quad(q: np.ndarray, shape: tuple[int, int], min_share: float) -> bool:
    area = cv2.contourArea(q.astype(np.float32))
    if area < min_share * shape[0] * shape[1]:
        return False
    for i in range(4):
        a, b, c = q[i - 1], q[i], q[(i + 1) % 4]
        v1, v2 = a - b, c - b
        cos = float(np.dot(v1, v2) / (np.linalg.norm(v1) * np.linalg.norm(v2) + 1e-9))
        if abs(cos) > 0.5:  # corner angle outside 60..120 degrees
            return False
    return True


def page_candidates(grey: np.ndarray, limit: int = 8) -> list[tuple[np.ndarray, list[str]]]:
    """Likely outlines of the sheet in ``grey``, likeliest first: each is (four
    corners TL, TR, BR, BL in image px, notes). Found on brightness (the large
    bright region, opened harder and harder so a pen or a cable touching the
    page is cut off it) and on edges (as OMRChecker's CropPage: truncate,
    close, Canny; for a page among other papers). Raises ``StepError``
    (``page_not_found``) when none stands out."""
    small, f = _shrink(grey, 800)
    blur = cv2.GaussianBlur(small, (5, 5), 0)
    h, w = small.shape
    quads: list[np.ndarray] = []

    def add(q: np.ndarray) -> None:
        q = order_corners(q)
        if all(np.abs(q - o).max() > 0.02 * max(h, w) for o in quads):
            quads.append(q)

    k = max(3, round(min(h, w) / 40)) | 1
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    hi = float(percentile(blur, 97))
    # Otsu's level, then lower ones: a shadow across the page puts part of it
    # under Otsu's level; higher ones: bright clutter merged with the page.
    sides: dict[bytes, np.ndarray | None] = {}
    regions: set[bytes] = set()
    for level in (otsu, 0.5 * (otsu + hi), 0.75 * otsu, 0.55 * otsu):
        _, bright = cv2.threshold(blur, level, 255, cv2.THRESH_BINARY)
        bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
        if (region := bright.tobytes()) in regions:
            continue  # the same region as at a level before: the same outlines
        regions.add(region)
        for ko in (5, k, 2 * k + 1):
            opened = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko)))
            contours, _ = cv2.findContours(opened, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for cnt in sorted(contours, key=cv2.contourArea, reverse=True)[:2]:
                q = _quad_from_contour(cnt)
                if q is not None and _valid_quad(q, (h, w), 0.08):
                    add(q)
                    if ko == 5:
                        full, _ = cv2.findContours(opened, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                        big = max(full, key=cv2.contourArea)
                        # The same outline at another level (a scan's paper
                        # and ink): its sides are the same.
                        if (key := big.tobytes()) not in sides:
                            sides[key] = _quad_by_lines(big)
                        q2 = sides[key]
                        if q2 is not None and _valid_quad(q2, (h, w), 0.08):
                            add(q2)
                    break
    # OMRChecker truncates at 200 before its edges; in a bright photo that
    # also flattens the edge between the page and a white paper behind it
    # (both over 200, the page merges with it at every level above): the edges
    # are then looked for untruncated too (only when several candidates are
    # asked for: ``find_page``'s likeliest outline comes before them anyway).
    for cut in (200, 255) if hi > 205 and limit > 1 else (200,):
        _, tr = cv2.threshold(blur, cut, 255, cv2.THRESH_TRUNC)
        tr = cv2.normalize(tr, None, 0, 255, cv2.NORM_MINMAX)
        closed = cv2.morphologyEx(tr, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
        for c_lo, c_hi in ((55, 185), (20, 60)):
            edges = cv2.dilate(cv2.Canny(closed, c_lo, c_hi), np.ones((3, 3), np.uint8))
            contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            for cnt in sorted(contours, key=lambda c: cv2.contourArea(cv2.convexHull(c)), reverse=True)[:4]:
                q = _quad_from_contour(cnt)
                if q is not None and _valid_quad(q, (h, w), 0.08):
                    add(q)
    if not quads:
        raise StepError("page not found (no sheet outline stands out from the background)")
    out = []
    for q in quads[:limit]:
        notes = []
        touching = np.sum((q[:, 0] < 2) | (q[:, 1] < 2) | (q[:, 0] > w - 3) | (q[:, 1] > h - 3))
        if touching >= 2:
            notes.append("page outline runs along the image border")
        quad = (q + 0.5) / f - 0.5
        out.append((_refine_sides(grey, quad), notes))
    return out


def find_page(grey: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The likeliest sheet outline (see ``page_candidates``)."""
    return page_candidates(grey, 1)[0]


def _refine_sides(grey: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Move each side of ``quad`` onto the strongest paper edge within a few px
    (sampled along normals at full resolution), then intersect the lines."""
    h, w = grey.shape
    side_len = np.linalg.norm(quad - np.roll(quad, -1, 0), axis=1)
    base_reach = max(3.0, 0.006 * float(side_len.max()))
    lines = []
    centre = quad.mean(0)
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        # A side found along the image border (a scan whose page nearly fills
        # it) may have the paper's edge well inside: look further in, from the
        # outside, for the first rise to paper.
        on_border = all(min(p[0], p[1], w - 1 - p[0], h - 1 - p[1]) < 4 for p in (a, b))
        reach = 0.035 * float(side_len.max()) if on_border else base_reach
        d = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        n = np.array([-d[1], d[0]])
        if np.dot(centre - (a + b) / 2, n) < 0:
            n = -n  # inward
        ts = np.linspace(0.1, 0.9, 24)
        lo = -1.0 if on_border else -reach  # nothing to see outside the image
        offs = np.linspace(lo, reach, int(reach - lo) * 2 + 1)
        pts = a[None, :] + ts[:, None] * (b - a)[None, :]
        samp = pts[:, None, :] + offs[None, :, None] * n[None, None, :]
        mx, my = samp[..., 0].astype(np.float32), samp[..., 1].astype(np.float32)
        prof = cv2.remap(grey, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        prof = cv2.GaussianBlur(prof, (5, 5), 0) if prof.shape[1] >= 5 else prof
        grad = np.diff(prof, axis=1)  # inward: background -> paper is a rise
        if on_border:
            # Only where the image's edge is not paper already (a page filling
            # the scan has no edge to find; the first rise would be printing).
            edge = prof[:, :3].mean(1)
            step_up = percentile(prof, 90, axis=1) - edge
            rise = (prof[:, 4:] - prof[:, :-4]) > np.maximum(6.0, 0.4 * step_up)[:, None]  # over 2 px
            k = np.argmax(rise, axis=1) + 1
            good = rise[np.arange(len(k)), k - 1]
            good &= step_up > 12
            drop = np.argmax(prof < edge[:, None] - 40, axis=1)
            good &= ~((prof < edge[:, None] - 40).any(1) & (drop < k))
        else:
            k = np.argmax(grad, axis=1)
            good = grad[np.arange(len(k)), k] > 8
        if not on_border:  # (along the border, replicated edge pixels are fine)
            inside = (mx >= 0) & (mx < w) & (my >= 0) & (my < h)
            good &= inside.all(1)
        if good.sum() < 6:
            lines.append((a, b))
            continue
        shift = (offs[k] + offs[k + 1]) / 2
        p = pts[good] + shift[good, None] * n[None, :]
        # A robust line through the edge points (the side may be tilted against
        # the first guess), refitted without the points far off it.
        keep = np.ones(len(p), bool)
        line = None
        for _ in range(2):
            if keep.sum() < 5:
                break
            vx, vy, x0, y0 = cv2.fitLine(p[keep].astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
            line = (np.array([x0, y0]), np.array([x0 + vx, y0 + vy]))
            dist = np.abs((p[:, 0] - x0) * vy - (p[:, 1] - y0) * vx)
            keep = dist < max(1.5, 0.15 * reach)
        if line is None or keep.sum() < 5:
            lines.append((a, b))
            continue
        lines.append(line)
    out = []
    for i in range(4):
        p1, p2 = lines[i - 1]
        p3, p4 = lines[i]
        out.append(_intersect(p1, p2, p3, p4, quad[i]))
    res = np.array(out)
    if np.abs(res - quad).max() > 3 * max(base_reach, 0.035 * float(side_len.max())):
        return quad
    return res


def _intersect(p1, p2, p3, p4, fallback):
    d1, d2 = p2 - p1, p4 - p3
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-9:
        return fallback
    t = ((p3[0] - p1[0]) * d2[1] - (p3[1] - p1[1]) * d2[0]) / den
    return p1 + t * d1


def prepare_marker(marker: np.ndarray) -> np.ndarray:
    """The marker image as it is matched: blurred a little, stretched to 0..255."""
    m = cv2.GaussianBlur(marker, (3, 3), 0)
    return cv2.normalize(m, None, 0, 255, cv2.NORM_MINMAX)


def find_markers(grey: np.ndarray, H_frame: np.ndarray, frame_w: float, frame_h: float, marker: np.ndarray,
                 width_share: float, *, min_match: float = 0.3, max_variation: float = 0.41,
                 wide: bool = False, lenient: bool = False, complete: bool = False) -> tuple[np.ndarray, list[float]]:
    """Centres of the four corner markers, in frame px (TL, TR, BR, BL).

    ``H_frame``: frame px -> image px (the frame is the image itself, or the
    page a previous step found); ``width_share``: the marker's expected width as
    a share of the frame's width (OMRChecker: 1 / sheetToMarkerWidthRatio).
    ``wide``: search a wider range of sizes (the frame is a whole photo, the
    page may be small in it). Raises ``StepError`` naming the quarter where no
    marker matches at least ``min_match`` or where the match is
    ``max_variation`` below the best one (``lenient``: only the first test; a
    shadow over one marker lowers its match, and the caller checks the placement
    on the bubbles anyway); ``complete``: the weakest marker, when it alone
    fails either test (off the image's edge, under a thumb), is placed where
    the other three put it, as the fourth corner of their parallelogram (the
    caller checks that on the bubbles too).
    """
    work_w = 900.0
    s = work_w / frame_w
    ww, wh = int(round(frame_w * s)), int(round(frame_h * s))
    # frame work px -> image px
    S = np.array([[1 / s, 0, (1 / s - 1) / 2], [0, 1 / s, (1 / s - 1) / 2], [0, 0, 1]])
    M = H_frame @ S
    px_per_work = math.sqrt(abs(np.linalg.det((M / M[2, 2])[:2, :2])))
    src = grey
    if px_per_work > 1.6:  # shrink first: warping straight from a big image aliases
        f = 1.0 / px_per_work
        src = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        M = np.diag([f, f, 1.0]) @ M
    frame = cv2.warpPerspective(src, M, (ww, wh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    frame = cv2.GaussianBlur(frame, (3, 3), 0)
    mk = prepare_marker(marker)
    expect = width_share * ww
    # Divide out the light (shadows, vignetting): the paper level is a max
    # filter wider than a marker, smoothed.
    kb = max(15, int(round(expect * 2.2))) | 1
    small = cv2.resize(frame, (max(1, ww // 4), max(1, wh // 4)), interpolation=cv2.INTER_AREA)
    paper = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_RECT, (kb // 4 | 1, kb // 4 | 1)))
    paper = cv2.GaussianBlur(paper, (0, 0), max(1.0, kb / 8))
    paper = cv2.resize(paper, (ww, wh), interpolation=cv2.INTER_LINEAR)
    if not wide:  # off the page (a desk) it would only stretch the clutter
        frame = cv2.divide(frame, np.maximum(paper, 1), scale=255)
    scales = np.geomspace(0.25 if wide else 0.6, 1.4, 11 if wide else 8)
    aspect = marker.shape[0] / marker.shape[1]

    def quarters(img: np.ndarray, mw: int, mh: int, res: np.ndarray) -> list[tuple[float, int, int]]:
        h_, w_ = img.shape
        rh, rw = res.shape
        cx, cy = w_ // 2 - mw // 2, h_ // 2 - mh // 2  # a match's centre in the left/top half
        # On a cropped page the markers sit in its corners: look only there
        # (filled bubbles and printed blocks elsewhere can resemble a marker).
        ex = rw if wide else min(rw, max(int(0.3 * w_), 3 * mw))
        ey = rh if wide else min(rh, max(int(0.3 * h_), 3 * mh))
        out = []
        for qx, qy in ((0, 0), (1, 0), (1, 1), (0, 1)):
            xs = slice(0, max(1, min(cx, ex))) if qx == 0 else slice(max(min(rw - 1, cx), rw - ex), rw)
            ys = slice(0, max(1, min(cy, ey))) if qy == 0 else slice(max(min(rh - 1, cy), rh - ey), rh)
            _, mv, _, ml = cv2.minMaxLoc(res[ys, xs])
            out.append((float(mv), ml[0] + xs.start, ml[1] + ys.start))
        return out

    # Coarse: every scale on a half-size copy; fine: the best scale and its
    # neighbours at full size, only around the coarse hits.
    # (Over a whole photo the page, and so its markers, may be small: less shrinking.)
    cf = max(1.5 if wide else 2.0, expect / 16.0)  # a marker ~16 px across is enough to find it
    coarse = cv2.resize(frame, (int(ww / cf), int(wh / cf)), interpolation=cv2.INTER_AREA)
    best = None
    # The expected size first (a scan whose page fills the image); the whole
    # range only when a quarter has no good match there.
    near = [sc for sc in scales if 0.75 <= sc <= 1.3]
    for group in (near, [sc for sc in scales if sc not in near]):
        if best is not None and min(q[0] for q in best[2]) >= max(min_match, 0.5):
            break
        for sc in group:
            mw = max(6, int(round(expect * sc / cf)))
            mh = max(6, int(round(mw * aspect)))
            if mw >= coarse.shape[1] // 2 or mh >= coarse.shape[0] // 2:
                continue
            tm = cv2.resize(mk, (mw, mh), interpolation=cv2.INTER_AREA)
            qs = quarters(coarse, mw, mh, cv2.matchTemplate(coarse, tm, cv2.TM_CCOEFF_NORMED))
            total = sum(q[0] for q in qs)
            if best is None or total > best[0]:
                best = (total, sc, qs)
    if best is None:
        raise StepError("corner markers not found (marker larger than a quarter of the page)")
    _, sc0, coarse_q = best
    fine = None
    for sc in (sc0 / 1.08, sc0, sc0 * 1.08):
        mw = max(8, int(round(expect * sc)))
        mh = max(8, int(round(mw * aspect)))
        tm = cv2.resize(mk, (mw, mh), interpolation=cv2.INTER_AREA)
        qs = []
        for _, x, y in coarse_q:
            # Window of the full-size frame around the coarse hit (its top-left, x2).
            pad = max(6, mw // 3)
            fx, fy = int(round(cf * x)), int(round(cf * y))
            x0, y0 = max(0, fx - pad), max(0, fy - pad)
            x1, y1 = min(ww, fx + pad + mw + 1), min(wh, fy + pad + mh + 1)
            win = frame[y0:y1, x0:x1]
            if win.shape[0] < mh + 1 or win.shape[1] < mw + 1:
                qs.append((-1.0, fx, fy, None, 0, 0))
                continue
            res = cv2.matchTemplate(win, tm, cv2.TM_CCOEFF_NORMED)
            _, mv, _, ml = cv2.minMaxLoc(res)
            qs.append((float(mv), ml[0] + x0, ml[1] + y0, res, ml[0], ml[1]))
        total = sum(q[0] for q in qs)
        if fine is None or total > fine[0]:
            fine = (total, mw, mh, qs)
    _, mw, mh, qs = fine
    quads = [(q[0], q[1], q[2]) for q in qs]
    top = max(q[0] for q in quads)
    names = ("top-left", "top-right", "bottom-right", "bottom-left")
    # ``complete`` judges by both tests: the marker it replaces may be a weak
    # match accepted in the wrong place.
    both = complete or not lenient
    weak = [k for k, (v, _, _) in enumerate(quads) if v < min_match or (both and top - v >= max_variation)]
    missing = weak[0] if complete and len(weak) == 1 else None
    for k in weak:
        if k != missing:
            v = quads[k][0]
            raise StepError(f"corner marker not found in the {names[k]} quarter "
                            f"(match {v:.2f}, needs {min_match:.2f} and within {max_variation:.2f} of the best, {top:.2f})")
    centres = []
    for _v, x, y, res, lx, ly in qs:
        dx = dy = 0.0
        if res is not None and 0 < lx < res.shape[1] - 1:
            a, b, c = res[ly, lx - 1], res[ly, lx], res[ly, lx + 1]
            den = a - 2 * b + c
            dx = 0.5 * (a - c) / den if den < 0 else 0.0
        if res is not None and 0 < ly < res.shape[0] - 1:
            a, b, c = res[ly - 1, lx], res[ly, lx], res[ly + 1, lx]
            den = a - 2 * b + c
            dy = 0.5 * (a - c) / den if den < 0 else 0.0
        # Match top-left corner -> the marker's centre, work px (pixel centres at whole numbers)
        centres.append((x + dx + (mw - 1) / 2, y + dy + (mh - 1) / 2))
    c = np.array(centres)
    if missing is not None:
        c[missing] = c[(missing - 1) % 4] + c[(missing + 1) % 4] - c[(missing + 2) % 4]
    q = c.astype(np.float32)
    if not cv2.isContourConvex(q.reshape(-1, 1, 2)) or cv2.contourArea(q) < 0.2 * ww * wh:
        raise StepError("corner markers found do not form the page's corners")
    # work px (centres at whole numbers) -> frame px (continuous)
    return (c + 0.5) / s, [q[0] for q in quads]


#: The whole-image marker search: marker sides tried, as shares of
#: ``width_share`` times the image's long side (the page fills that share of it).
ANYWHERE_SIZES = (0.25, 1.1)
ANYWHERE_STEPS = 9
#: A marker is matched this many px across (on a copy of the image shrunk to it).
ANYWHERE_PX = 12.0
#: The marker turned by these angles too (degrees): a photo taken at a slant
#: turns the markers with the page, and a square ring turned 20 degrees
#: matches an upright one poorly.
ANYWHERE_ANGLES = (0.0, 22.5, -22.5)
#: Peaks kept per size, and over neighbouring sizes for the choice of four.
ANYWHERE_PEAKS = 6
ANYWHERE_POOL = 8
#: A marker is black on paper: its match counts in full where the spread of
#: grey under it reaches this share of the paper's brightness around it (a
#: pattern of noise or a bubble's letter matches the shape, not the contrast).
ANYWHERE_CONTRAST = 0.3
#: How far the four markers may depart from the page they mark: the page's
#: proportions, and the marker's size against the page's width (log ratio
#: bounds); opposite sides of the quadrilateral (perspective).
ANYWHERE_ASPECT = (0.65, 1.55)
ANYWHERE_MARKER = (0.6, 1.6)
ANYWHERE_SIDES = 1.8


def _turned(marker: np.ndarray, side: int, angle: float) -> np.ndarray:
    """``marker`` at ``side`` px, turned by ``angle`` degrees (on white)."""
    if not angle:
        return cv2.resize(marker, (side, side), interpolation=cv2.INTER_AREA)
    big = cv2.resize(marker, (side * 4, side * 4), interpolation=cv2.INTER_AREA)
    R = cv2.getRotationMatrix2D(((big.shape[1] - 1) / 2, (big.shape[0] - 1) / 2), angle, 1)
    big = cv2.warpAffine(big, R, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR, borderValue=255)
    return cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA)


def strongest_peaks(score: np.ndarray, count: int, apart: int, floor: float) -> list[tuple[float, int, int]]:
    """Up to ``count`` maxima of ``score`` (value, x, y) over ``floor``, each
    at least ``apart`` px from those before it (the highest first)."""
    s = score.copy()
    out = []
    for _ in range(count):
        _, mv, _, (x, y) = cv2.minMaxLoc(s)
        if not np.isfinite(mv) or mv < floor:
            break
        out.append((float(mv), x, y))
        s[max(0, y - apart):y + apart + 1, max(0, x - apart):x + apart + 1] = -np.inf
    return out


def markers_anywhere(grey: np.ndarray, marker: np.ndarray, width_share: float, page_w: float, page_h: float,
                     ) -> tuple[np.ndarray, list[float]]:
    """The four corner markers found anywhere in ``grey`` (a whole photo), by
    what makes them a page's markers rather than by where they lie: four
    matches of the marker (at any size, turned a little) of one size, at the
    corners of a quadrilateral with the page's proportions, the marker
    ``width_share`` of its width. For a page small or off-centre in the photo,
    turned at a slant, or lying beside other papers, where one marker per
    quarter of the image (``find_markers(wide=True)``) picks the wrong ones.
    Returns the centres (``grey`` px, clockwise in the image, the first two
    along the page's width) and their match scores; raises ``StepError`` when no four fit together."""
    h, w = grey.shape
    mk = prepare_marker(marker)
    aspect = page_w / page_h
    hits: list[list[tuple[float, float, float, float]]] = []  # per size: (score, x, y, side)
    sizes = width_share * max(h, w) * np.geomspace(*ANYWHERE_SIZES, ANYWHERE_STEPS)
    for side in sizes:
        f = max(1.0, side / ANYWHERE_PX)
        small = cv2.resize(grey, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        m = max(6, int(round(side / f)))
        if m >= min(small.shape) // 2:
            hits.append([])
            continue
        match = np.max([cv2.matchTemplate(small, _turned(mk, m, a), cv2.TM_CCOEFF_NORMED) for a in ANYWHERE_ANGLES], 0)
        rh, rw = match.shape
        s32 = small.astype(np.float32)
        mean = cv2.boxFilter(s32, -1, (m, m), anchor=(0, 0))[:rh, :rw]
        spread = np.sqrt(np.maximum(cv2.boxFilter(s32 * s32, -1, (m, m), anchor=(0, 0))[:rh, :rw] - mean * mean, 0))
        c = (m - 1) // 2
        paper = cv2.dilate(s32, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * m + 1, 2 * m + 1)))[c:c + rh, c:c + rw]
        score = match * np.minimum(1.0, spread / (ANYWHERE_CONTRAST * np.maximum(paper, 20.0)))
        hits.append([(v, (x + (m - 1) / 2 + 0.5) * f - 0.5, (y + (m - 1) / 2 + 0.5) * f - 0.5, side)
                     for v, x, y in strongest_peaks(score, ANYWHERE_PEAKS, m, 0.2)])
    best = None
    for i in range(len(sizes)):
        # Four markers of about one size: the hits at this size and its neighbours.
        pool: list[tuple[float, float, float, float]] = []
        for p in sorted((p for hs in hits[max(0, i - 1):i + 2] for p in hs), key=lambda p: -p[0]):
            if all(math.hypot(p[1] - q[1], p[2] - q[2]) > max(p[3], q[3]) for q in pool):
                pool.append(p)
        for four in itertools.combinations(pool[:ANYWHERE_POOL], 4):
            total = sum(p[0] for p in four)
            if best is not None and total <= best[0]:
                continue
            pts = order_corners(np.array([(p[1], p[2]) for p in four]))
            if not cv2.isContourConvex(pts.astype(np.float32).reshape(-1, 1, 2)):
                continue
            s = np.linalg.norm(np.roll(pts, -1, 0) - pts, axis=1)  # TL-TR, TR-BR, BR-BL, BL-TL
            if max(s[0] / s[2], s[2] / s[0], s[1] / s[3], s[3] / s[1]) > ANYWHERE_SIDES:
                continue
            across, down = (s[0] + s[2]) / 2, (s[1] + s[3]) / 2
            side = float(np.mean([p[3] for p in four]))
            for roll, (pw, ph) in ((0, (across, down)), (1, (down, across))):
                if (ANYWHERE_ASPECT[0] < pw / ph / aspect < ANYWHERE_ASPECT[1]
                        and ANYWHERE_MARKER[0] < side / pw / width_share < ANYWHERE_MARKER[1]):
                    scores = [p[0] for p in four]
                    best = (total, np.roll(pts, -roll, 0), scores)
                    break
    if best is None:
        raise StepError("corner markers not found (no four matches of the marker make a page's corners)")
    return best[1], best[2]


def match_reference(grey: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Homography reference-image px -> image px from ORB features (ratio test,
    RANSAC), trying the image at a few scales (the page may fill all of it, or
    less in a photo): ORB's pyramid spans only a few-fold scale, and printed
    text drawn at another size makes other features. Raises ``StepError`` when
    too few features agree."""
    fr = 700.0 / max(ref.shape)
    rs = cv2.resize(ref, (max(1, round(ref.shape[1] * fr)), max(1, round(ref.shape[0] * fr))),
                    interpolation=cv2.INTER_AREA if fr < 1 else cv2.INTER_LINEAR)
    fr = rs.shape[1] / ref.shape[1]
    orb = cv2.ORB_create(2500)
    k1, d1 = orb.detectAndCompute(rs, None)
    if d1 is None or len(k1) < 8:
        raise StepError("reference alignment failed (too few features in the reference image)")
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    best: tuple[int, np.ndarray, float, tuple] | None = None
    reason = "too few features match the reference"
    for share in (1.0, 0.75, 0.55):
        # The image at the size where a page filling ``share`` of it is as large as the reference.
        long_side = int(max(rs.shape) / share)
        gs, fg = _shrink(grey, long_side)
        k2, d2 = orb.detectAndCompute(gs, None)
        if d2 is None or len(k2) < 8:
            continue
        pairs = matcher.knnMatch(d1, d2, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
        if len(good) < 12:
            continue
        src = np.float32([k1[m.queryIdx].pt for m in good])
        dst = np.float32([k2[m.trainIdx].pt for m in good])
        Hs, mask = cv2.findHomography(src, dst, cv2.RANSAC, 4.0)
        if Hs is None:
            continue
        n = int(mask.sum())
        rh, rw = rs.shape
        quad = cv2.perspectiveTransform(np.float32([[[0, 0]], [[rw, 0]], [[rw, rh]], [[0, rh]]]), Hs).reshape(4, 1, 2)
        if not cv2.isContourConvex(quad) or cv2.contourArea(quad) < 0.05 * gs.shape[0] * gs.shape[1]:
            reason = "the matching features do not make a page"
            continue
        if best is None or n > best[0]:
            best = (n, Hs, fg, gs.shape)
    if best is None or best[0] < 15:
        raise StepError(f"reference alignment failed ({reason})")
    _, Hs, fg, _ = best
    A = np.array([[fr, 0, (fr - 1) / 2], [0, fr, (fr - 1) / 2], [0, 0, 1]])  # ref px -> ref small px
    B = np.array([[1 / fg, 0, (1 / fg - 1) / 2], [0, 1 / fg, (1 / fg - 1) / 2], [0, 0, 1]])  # small -> image
    return B @ Hs @ A


def filter_image(grey: np.ndarray, name: str, options: dict, scale: float) -> np.ndarray:
    """Apply GaussianBlur/MedianBlur/Levels as OMRChecker does; kernel sizes
    (given in OMRChecker's processing image) are multiplied by ``scale``."""
    if name == "Levels":
        low, high = int(255 * options.get("low", 0)), int(255 * options.get("high", 1))
        gamma = float(options.get("gamma", 1.0))
        v = np.arange(256, dtype=np.float64)
        out = np.where(v <= low, 0.0, np.where(v >= high, 255.0,
                       (np.clip((v - low) / max(high - low, 1), 0, 1) ** (1.0 / gamma)) * 255))
        return cv2.LUT(grey, out.astype(np.uint8))

    def odd(k: float) -> int:
        return max(1, int(round(k * scale)) | 1)

    if name == "MedianBlur":
        k = min(odd(options.get("kSize", 5)), 255)
        return cv2.medianBlur(grey, k) if k > 1 else grey
    if name == "GaussianBlur":
        ks = options.get("kSize", [3, 3])
        ks = ks if isinstance(ks, list) else [ks, ks]
        sigma = float(options.get("sigmaX", 0)) * scale
        return cv2.GaussianBlur(grey, (odd(ks[0]), odd(ks[1])), sigma)
    return grey


def ecc_to_reference(grey: np.ndarray, H: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Align the image on the reference image itself (intensities, OpenCV's ECC,
    a homography), starting from ``H`` (reference px -> image px): for sheets
    whose repeated bubbles leave ORB no distinctive features. Returns the
    corrected homography; raises ``StepError`` when ECC does not converge."""
    out = H
    for long_side in (250, 500):
        s = long_side / max(ref.shape)
        rw, rh = max(1, round(ref.shape[1] * s)), max(1, round(ref.shape[0] * s))
        target = cv2.GaussianBlur(cv2.resize(ref, (rw, rh), interpolation=cv2.INTER_AREA), (0, 0), 1.5)
        S = np.array([[s, 0, 0], [0, s, 0], [0, 0, 1.0]])
        M = out @ np.linalg.inv(S)
        px_per = math.sqrt(abs(np.linalg.det((M / M[2, 2])[:2, :2])))
        src = grey
        if px_per > 1.6:
            f = 1.0 / px_per
            src = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            M = np.diag([f, f, 1.0]) @ M
        cut = cv2.warpPerspective(src, M, (rw, rh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
        cut = cv2.GaussianBlur(cut, (0, 0), 1.5)
        warp = np.eye(3, dtype=np.float32)
        try:
            cc, warp = cv2.findTransformECC(target.astype(np.float32), cut.astype(np.float32), warp,
                                            cv2.MOTION_HOMOGRAPHY,
                                            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5), None, 5)
        except cv2.error:
            raise StepError("reference alignment failed (the image does not converge onto the reference)") from None
        out = out @ np.linalg.inv(S) @ warp.astype(np.float64) @ S
    if cc < 0.5:
        raise StepError(f"reference alignment failed (the image matches the reference poorly: {cc:.2f})")
    return out


def ring_template(r: float) -> np.ndarray:
    """A printed bubble outline of radius ``r`` px as matched: a dark ring on
    white, blurred a little (float32, odd side ~2.7 r)."""
    half = int(math.ceil(1.35 * r)) + 1
    side = 2 * half + 1
    sub = 16
    img = np.full((side, side), 255, np.uint8)
    cv2.circle(img, (half * sub, half * sub), int(round(r * sub)), 0, max(1, int(round(0.18 * r + 0.8))), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(img, (0, 0), 0.8).astype(np.float32)


def page_cut(grey: np.ndarray, H: np.ndarray, lo: np.ndarray, s: float, size: tuple[int, int],
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """The page region from ``lo`` (page px), ``s`` cut-out px per page px and
    ``size`` (w, h) cut-out px, taken out of ``grey`` through ``H`` (page px ->
    image px), float32; the image shrunk first when it is more than 1.6 times
    finer (area averaging, not aliasing). Returns (the cut-out, cut-out px
    -> image px, image px per cut-out px)."""
    # cut-out px (pixel centres at whole numbers) -> page px -> image px
    C = np.array([[1 / s, 0, lo[0] + 0.5 / s], [0, 1 / s, lo[1] + 0.5 / s], [0, 0, 1.0]])
    M = H @ C
    px_per = math.sqrt(abs(np.linalg.det((M / M[2, 2])[:2, :2])))
    src, Mi = grey, M
    if px_per > 1.6:
        f = 1.0 / px_per
        src = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        Mi = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]]) @ M
    cut = cv2.warpPerspective(src, Mi, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    return cut, M, px_per


def fit_on_grid(grey: np.ndarray, H: np.ndarray, centres: np.ndarray, half_box: float, pitch: float,
                radius: float | None = None) -> tuple[np.ndarray, int, float] | None:
    """Place the template's bubble grid on the printed bubble outlines
    themselves, independent of where the page's edge seemed to be: the region
    of the bubbles is cut out through a rough placement ``H`` (page px ->
    image px; off by up to about half a pitch anywhere, as a page outline
    found a little short along a low-contrast side is), printed outlines are
    found there by correlation with a ring (the printed radius tried at
    several sizes: OMRChecker's box is not the printed circle), each bubble
    takes the best ring within ``0.45 pitch`` of where ``H`` puts it, and a
    homography is fitted to those (RANSAC), twice, the second time in
    narrower windows. ``centres``: template bubble centres (page px);
    ``half_box``: half the bubble box (page px); ``pitch``: the smallest
    distance between neighbouring bubbles (page px); ``radius``: the printed
    radius (a share of the box half) when an earlier fit on this sheet found
    it. Returns (the homography, how many bubbles it rests on, the printed
    radius) or None when too few outlines agree. The
    caller verifies the placement (a grid fitted a row off sits on outlines
    too)."""
    n = len(centres)
    if n < 8:
        return None
    out = H
    inliers = 0
    lo, hi = centres.min(0) - 1.2 * pitch, centres.max(0) + 1.2 * pitch
    # Coarse to fine: the wide search (and the choice of the printed radius)
    # where a box half is 6 px, the narrow one where it is 9 px.
    for window, box_px in ((0.45, 6.0), (0.25, 9.0)):
        s = box_px / max(half_box, 1e-6)  # cut-out px per page px
        fw, fh = int(round((hi[0] - lo[0]) * s)), int(round((hi[1] - lo[1]) * s))
        if fw < 30 or fh < 30 or fw * fh > 6_000_000:
            return None
        cut, M, px_per = page_cut(grey, out, lo, s, (fw, fh))
        pred = (centres - lo) * s - 0.5  # cut-out px
        win = max(2, int(round(window * pitch * s)))
        best = None
        rings = [(rr, ker) for rr in ((0.55, 0.7, 0.85, 1.0, 1.15, 1.3) if radius is None else (radius,))
                 if (ker := ring_template(rr * box_px)).shape[0] < min(fw, fh)]
        for (rr, ker), res in zip(rings, _ring_matches(cut, [ker for _rr, ker in rings]), strict=True):
            kh = ker.shape[0] // 2
            vals, pts = _best_rings(res, pred, kh, win)
            typical = float(median(vals))
            if best is None or typical > best[0]:
                best = (typical, rr, vals, pts)
        if best is None:
            return None
        typical, radius, vals, pts = best
        ok = vals > max(0.3, 0.6 * typical)
        if ok.sum() < max(8, 0.3 * n):
            return None
        img_pts = apply_h(M, pts[ok])
        tol = max(1.5, 0.3 * box_px * radius * px_per)  # image px
        Hn, mask = cv2.findHomography(centres[ok].astype(np.float64), img_pts, cv2.RANSAC, tol)
        if Hn is None:
            return None
        keep = mask.ravel().astype(bool)
        if keep.sum() < max(8, 0.3 * n):
            return None
        Hn, _ = cv2.findHomography(centres[ok][keep].astype(np.float64), img_pts[keep], 0)
        if Hn is None:
            return None
        out, inliers = Hn, int(keep.sum())
    return out, inliers, float(radius)


def _ring_matches(cut: np.ndarray, kernels: list[np.ndarray]) -> list[np.ndarray]:
    """``cv2.matchTemplate`` of ``cut`` with each kernel (normed correlation),
    every other one on a second thread: one call uses one core, and the
    printed radius is searched with six (the same results, in order)."""
    out: list = [None] * len(kernels)

    def match(which: range) -> None:
        for i in which:
            out[i] = cv2.matchTemplate(cut, kernels[i], cv2.TM_CCOEFF_NORMED)

    if len(kernels) < 2:
        match(range(len(kernels)))
        return out
    import threading  # (only the few sheets fitted on their bubble grid come here)

    other = threading.Thread(target=match, args=(range(1, len(kernels), 2),))
    other.start()
    try:
        match(range(0, len(kernels), 2))
    finally:
        other.join()
    if any(r is None for r in out):
        raise RuntimeError("ring matching failed on its second thread")
    return out


def _best_rings(res: np.ndarray, pred: np.ndarray, kh: int, win: int) -> tuple[np.ndarray, np.ndarray]:
    """For each bubble, the best ring match (``res``: the ring kernel's
    correlation, float32; ``kh`` its half side) within ``win`` px of where
    ``pred`` puts its centre: (the match, -1 for a bubble whose window is
    cut to under 3 px by the edge; the centre, sub-pixel by parabolas, at 0
    for those). All windows at once; the first maximum in each window's rows,
    and float32 arithmetic for the parabolas, as ``minMaxLoc`` and scalar
    code would give."""
    n = len(pred)
    rh, rw = res.shape
    side = 2 * win + 1
    vals, pts = np.full(n, -1.0), np.zeros((n, 2))
    x0 = np.rint(pred[:, 0]).astype(np.int64) - kh - win
    y0 = np.rint(pred[:, 1]).astype(np.int64) - kh - win
    ok = ((np.minimum(rw, x0 + side) - np.maximum(0, x0) >= 3)
          & (np.minimum(rh, y0 + side) - np.maximum(0, y0) >= 3))
    if not ok.any():
        return vals, pts
    x0, y0 = x0[ok], y0[ok]
    # Outside the correlation reads -inf: a window's maximum is its part inside.
    padded = np.full((rh + 2 * side, rw + 2 * side), -np.inf, np.float32)
    padded[side:side + rh, side:side + rw] = res
    windows = sliding_window_view(padded, (side, side))[y0 + side, x0 + side].reshape(len(x0), -1)
    k = np.argmax(windows, 1)
    ly, lx = y0 + k // side, x0 + k % side
    b = res[ly, lx]

    def offset(a: np.ndarray, c: np.ndarray, inside: np.ndarray) -> np.ndarray:
        den = a - 2 * b + c
        use = inside & (den < 0)
        return np.where(use, 0.5 * (a - c) / np.where(use, den, np.float32(-1)), np.float32(0))

    xin, yin = (lx > 0) & (lx < rw - 1), (ly > 0) & (ly < rh - 1)
    xm, xp = np.clip(lx - 1, 0, rw - 1), np.clip(lx + 1, 0, rw - 1)
    ym, yp = np.clip(ly - 1, 0, rh - 1), np.clip(ly + 1, 0, rh - 1)
    dx = offset(res[ly, xm], res[ly, xp], xin)
    dy = offset(res[ym, lx], res[yp, lx], yin)
    vals[ok] = b
    pts[ok, 0] = (lx + kh).astype(np.float32) + dx
    pts[ok, 1] = (ly + kh).astype(np.float32) + dy
    return vals, pts
