"""Test sheets drawn with OpenCV straight from ``page_layout``, and the
distortions a scanner or a phone adds, for the reader's tests.

These do not replace the real renderer/simulator; they make the reader's tests
independent of them and let each test control exactly one distortion.
"""

from __future__ import annotations

import cv2
import numpy as np
import segno

from batches.omr.layout import page_layout
from batches.omr.template import Template

MM = 25.4


def draw_sheet(template: Template, page: int = 1, dpi: float = 300, *, answers: dict | None = None,
               qr_text: str | None = "auto", fill: int = 60, fills: dict | None = None,
               paper: int = 255, erase: dict | None = None) -> np.ndarray:
    """A grey page as printed (the renderer's raster), with ``answers`` filled in.

    ``answers``: field -> value (question "B" or "BD", digit field "12345",
    choice "A"). ``fill`` is the grey level of a filled bubble (0 black..255);
    ``fills`` overrides it per (group key, value). ``erase`` maps field -> value
    whose bubble gets light erasure residue. ``qr_text`` None removes the QR
    code, "auto" keeps the sheet's own, any other string replaces it.
    ``paper`` below 255 tints the paper (coloured paper).
    """
    from batches.omr.render import render_page_image

    lay = page_layout(template, page, dpi)
    img = render_page_image(template, page, dpi)
    if qr_text != "auto":
        q = lay.qr
        x0, y0, x1, y1 = round(q.x), round(q.y), round(q.x + q.w), round(q.y + q.h)
        img[y0:y1, x0:x1] = 255
        if qr_text is not None:
            code = segno.make(qr_text, error="m", micro=False)
            mat = np.array([[0 if v else 255 for v in row] for row in code.matrix], np.uint8)
            n = mat.shape[0] + 8
            canvas = np.full((n, n), 255, np.uint8)
            canvas[4:-4, 4:-4] = mat
            img[y0:y1, x0:x1] = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    for key, value in (answers or {}).items():
        _mark(img, lay, key, value, fill, fills)
    for key, value in (erase or {}).items():
        _mark(img, lay, key, value, 215, None, radius=0.8)
    if paper < 255:
        img = (img.astype(np.float32) * (paper / 255.0)).astype(np.uint8)
    return img


def _mark(img, lay, key, value, fill, fills, radius=0.92):
    groups = [g for g in lay.groups if g.field == key]
    if not groups:
        raise KeyError(key)
    if groups[0].kind == "digit":
        for g, ch in zip(groups, str(value), strict=False):
            if ch != " ":
                _fill(img, g, ch, fill, fills, radius)
    else:
        for ch in value:
            _fill(img, groups[0], ch, fill, fills, radius)


def _fill(img, group, value, fill, fills, radius=0.92):
    for b in group.bubbles:
        if b.value == value:
            level = (fills or {}).get((group.key, value), fill)
            cv2.circle(img, (round(b.x), round(b.y)), round(b.r * radius), int(level), -1, cv2.LINE_AA)


def place(page: np.ndarray, *, angle: float = 0.0, scale: float = 1.0, canvas: tuple[int, int] | None = None,
          background: int = 255, perspective: float = 0.0, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """The page rotated by ``angle`` degrees (counter-clockwise), scaled and
    centred on a ``canvas`` (w, h) of ``background``; ``perspective`` tilts the
    far edge (fraction of the width) like a handheld photo."""
    h, w = page.shape[:2]
    cw, ch = canvas or (round(max(w, h) * 1.25 * scale), round(max(w, h) * 1.25 * scale))
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    p = perspective * w
    dst = np.float32([[p, 0], [w - p, 0], [w, h], [0, h]])
    pers = cv2.getPerspectiveTransform(src, dst)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    rot = np.vstack([rot, [0, 0, 1]])
    rot[0, 2] += cw / 2 - w / 2 + shift[0]
    rot[1, 2] += ch / 2 - h / 2 + shift[1]
    m = rot @ pers
    return cv2.warpPerspective(page, m, (cw, ch), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                               borderValue=background)


def shade(img: np.ndarray, strength: float = 0.5, seed: int = 0) -> np.ndarray:
    """Uneven light: a smooth brightness gradient (darkest corner at ``1 - strength``)."""
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1, 1, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = (a * xx / w + b * yy / h)
    g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
    light = 1 - strength * g
    return np.clip(img.astype(np.float32) * light, 0, 255).astype(np.uint8)


def noise(img: np.ndarray, sigma: float = 8.0, speckle: float = 0.002, seed: int = 0) -> np.ndarray:
    """Gaussian sensor noise plus salt-and-pepper speckle (fraction of pixels)."""
    rng = np.random.default_rng(seed)
    out = img.astype(np.float32) + rng.normal(0, sigma, img.shape)
    mask = rng.random(img.shape) < speckle
    out[mask] = rng.choice([0, 255], int(mask.sum()))
    return np.clip(out, 0, 255).astype(np.uint8)


def barrel(img: np.ndarray, k: float = 0.03, background: int = 255) -> np.ndarray:
    """Radial lens distortion: ``k`` is the relative displacement at the corners."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2, h / 2
    nx, ny = (xx - cx) / cx, (yy - cy) / cy
    r2 = (nx * nx + ny * ny) / 2
    f = 1 + k * r2
    mapx, mapy = cx + nx * f * cx, cy + ny * f * cy
    return cv2.remap(img, mapx, mapy, cv2.INTER_LINEAR, borderValue=background)


def jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()
