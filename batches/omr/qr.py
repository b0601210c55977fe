"""Reading the sheet's QR code.

Only the QR box is decoded: it is cut out through the page homography (which
also turns it upright and sets its scale), so zbar sees a small, clean image.
Several renderings are tried in turn (plain, Otsu binarised, local threshold,
larger scale) because photos and faxed scans defeat one or another.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pyzbar import pyzbar

from .homography import apply_h
from .payload import PayloadError, PayloadInvalid, QrPayload, decode_payload
from .text import strip as strip_controls

#: Sampling of the cut-out, px per mm (6 ~ 150 dpi: 5-6 px per module).
QR_PX_PER_MM = 6.0
#: White kept around the box when cutting it out, mm (absorbs small misfits).
QR_MARGIN_MM = 3.0


@dataclass(frozen=True)
class QrResult:
    """Outcome of reading the QR code.

    ``status``: "ok" (``payload`` set), "qr_missing" (no code found),
    "qr_foreign" (a code that is not an answer-sheet code), "qr_invalid" (ours,
    read whole, but a value holds a control character: ``payload`` is the rest,
    that value left empty, or None when it is the template name) or
    "qr_damaged" (ours, but its text does not parse). ``text``: the raw text
    when a code was decoded, without control characters. ``message``: a plain
    sentence for anything but "ok".
    """

    status: str
    payload: QrPayload | None = None
    text: str | None = None
    message: str | None = None


def _cut(grey: np.ndarray, H: np.ndarray, box: tuple[float, float, float, float], scale: float,
         margin: float) -> np.ndarray:
    """The page rectangle ``box`` (mm) plus ``margin`` as an upright image."""
    x, y, w, h = box
    x0, y0 = x - margin, y - margin
    ow, oh = int(round((w + 2 * margin) * scale)), int(round((h + 2 * margin) * scale))
    # output px -> page mm -> image px
    S = np.array([[1 / scale, 0, x0], [0, 1 / scale, y0], [0, 0, 1]], np.float64)
    M = H @ S
    return cv2.warpPerspective(grey, M, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=255)


def _renderings(img: np.ndarray):
    """The cut-out as zbar may see it best: plain, then binarised two ways."""
    yield img
    _, otsu = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    yield otsu
    block = max(15, (min(img.shape) // 6) | 1)
    yield cv2.adaptiveThreshold(img, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 8)


def _decode(img: np.ndarray) -> list[str]:
    try:
        found = pyzbar.decode(img, symbols=[pyzbar.ZBarSymbol.QRCODE])
    except Exception:  # zbar rejects odd buffers; that is "nothing found"
        return []
    out = []
    for f in found:
        try:
            out.append(f.data.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(f.data.decode("latin-1"))
    return out


def classify(texts: list[str]) -> QrResult:
    """Turn decoded texts into a ``QrResult``: our code wins over any other."""
    if not texts:
        return QrResult("qr_missing", message="no QR code found on the sheet")
    damaged: QrResult | None = None
    foreign: QrResult | None = None
    for text in texts:
        try:
            return QrResult("ok", decode_payload(text), text)
        except PayloadInvalid as exc:
            damaged = damaged or QrResult("qr_invalid", exc.payload, strip_controls(text), str(exc))
        except PayloadError as exc:
            # The raw text is kept for display only, without control characters.
            if text.startswith("OMR1"):
                damaged = damaged or QrResult("qr_damaged", None, strip_controls(text), str(exc))
            else:
                foreign = foreign or QrResult("qr_foreign", None, strip_controls(text), str(exc))
    return damaged or foreign  # type: ignore[return-value]


def read_qr(grey: np.ndarray, H: np.ndarray, box: tuple[float, float, float, float], *,
            thorough: bool = True, modules: bool = False) -> QrResult:
    """Decode the QR code in page rectangle ``box`` (mm: x, y, w, h) of a grey
    image whose page homography (page mm -> image px) is ``H``.

    Tries a plain cut-out at ~150 dpi, then binarised ones, then (``thorough``)
    a larger scale and margin, then (``modules``) module by module on the
    code's known geometry (``read_qr_modules``). Returns a ``QrResult``.
    """
    attempts = [(QR_PX_PER_MM, QR_MARGIN_MM)]
    if thorough:
        attempts.append((QR_PX_PER_MM * 1.5, QR_MARGIN_MM * 2.5))
    best: QrResult | None = None
    for scale, margin in attempts:
        cut = _cut(grey, H, box, scale, margin)
        for img in _renderings(cut):
            texts = _decode(img)
            if texts:
                res = classify(texts)
                if res.status == "ok":
                    return res
                best = best or res
        if best is not None:
            return best
    if modules:
        return read_qr_modules(grey, H, box)
    return QrResult("qr_missing", message="no QR code found in the QR box")


#: The printed code keeps this many modules of quiet zone inside its box.
QR_BORDER_MODULES = 4


def _fixed_score(bits: np.ndarray) -> float:
    """How well a module matrix shows the fixed parts of every code: the three
    finder patterns and the two timing lines (0..1)."""
    pat = np.ones((7, 7), bool)
    pat[1:6, 1:6] = False
    pat[2:5, 2:5] = True
    n = bits.shape[0]
    parts = [np.mean(c == pat) for c in (bits[:7, :7], bits[:7, n - 7:], bits[n - 7:, :7])]
    timing = (np.arange(8, n - 8) % 2) == 0
    parts.append(np.mean(bits[6, 8:n - 8] == timing))
    parts.append(np.mean(bits[8:n - 8, 6] == timing))
    return float(np.mean(parts))


def read_qr_modules(grey: np.ndarray, H: np.ndarray, box: tuple[float, float, float, float]) -> QrResult:
    """Decode a blurred or shaken code by its known geometry.

    The sheet prints the code centred in its box with ``QR_BORDER_MODULES`` of
    quiet zone, so for each symbol size the module centres are known on the
    page. Each module is read as the mean of its middle (blur spreads across
    module edges more than into their centres), sharpened against its
    neighbours, thresholded against its surroundings and redrawn as a clean
    code for zbar. Symbol sizes and small shifts (the box is placed to a few
    tenths of a mm) are ranked by how well the fixed patterns come out, and
    the best few decoded. Returns a ``QrResult``.
    """
    x, y, w, h = box
    side = min(w, h)
    ppm = _px_per_mm(H, box)
    def grid(n: int, dx: float, dy: float) -> np.ndarray:
        module = side / (n + 2 * QR_BORDER_MODULES)
        x0 = x + (w - n * module) / 2 + dx
        y0 = y + (h - n * module) / 2 + dy
        sub = (np.arange(3) - 1) * module * 0.15
        cx = x0 + (np.arange(n) + 0.5) * module
        cy = y0 + (np.arange(n) + 0.5) * module
        gx = np.broadcast_to(cx[None, :, None, None] + sub[None, None, None, :], (n, n, 3, 3))
        gy = np.broadcast_to(cy[:, None, None, None] + sub[None, None, :, None], (n, n, 3, 3))
        p = apply_h(H, np.stack([gx, gy], -1).reshape(-1, 2)).astype(np.float32)
        return cv2.remap(grey, p[:, 0].reshape(1, -1), p[:, 1].reshape(1, -1), cv2.INTER_LINEAR,
                         borderValue=255).reshape(n, n, 9).astype(np.float32).mean(2)

    def binarise(vals: np.ndarray, amount: float) -> np.ndarray:
        pad = np.pad(vals, 1, mode="edge")
        neighbours = (cv2.blur(pad, (3, 3)) * 9 - pad)[1:-1, 1:-1] / 8
        v = vals + amount * (vals - neighbours)
        local = cv2.blur(v, (7, 7), borderType=cv2.BORDER_REPLICATE)
        return v < 0.5 * local + 0.5 * float(np.median(v))

    sizes = []
    for version in range(1, 8):
        n = 17 + 4 * version
        if side / (n + 2 * QR_BORDER_MODULES) * ppm < 2.0:  # under 2 px per module: nothing to read
            continue
        sizes.append((_fixed_score(binarise(grid(n, 0.0, 0.0), 0.5)), n))
    sizes.sort(reverse=True)
    tries = []
    for _, n in sizes[:2]:
        for dx in (-0.2, -0.1, 0.0, 0.1, 0.2):
            for dy in (-0.2, -0.1, 0.0, 0.1, 0.2):
                vals = grid(n, dx, dy)
                for amount in (0.5, 1.0):
                    bits = binarise(vals, amount)
                    tries.append((_fixed_score(bits), n, bits))
    tries.sort(key=lambda t_: -t_[0])
    for score, n, bits in tries[:6]:
        if score < 0.75:
            break
        q = QR_BORDER_MODULES
        img = np.full((n + 2 * q, n + 2 * q), 255, np.uint8)
        img[q:q + n, q:q + n] = np.where(bits, 0, 255)
        img = cv2.resize(img, None, fx=6, fy=6, interpolation=cv2.INTER_NEAREST)
        texts = _decode(img)
        if texts:
            return classify(texts)
    return QrResult("qr_missing", message="no QR code found in the QR box")


def _px_per_mm(H: np.ndarray, box: tuple[float, float, float, float]) -> float:
    x, y, w, h = box
    c = np.array([[x + w / 2, y + h / 2], [x + w / 2 + 1, y + h / 2]])
    p = apply_h(H, c)
    return float(np.linalg.norm(p[1] - p[0]))


def scan_region(grey: np.ndarray, H: np.ndarray, box: tuple[float, float, float, float],
                scale: float = 4.5) -> QrResult:
    """Look for a QR code anywhere in a larger page region (mm), e.g. the top
    part of a page whose layout is not known yet."""
    cut = _cut(grey, H, box, scale, 0.0)
    for img in _renderings(cut):
        texts = _decode(img)
        if texts:
            return classify(texts)
    return QrResult("qr_missing", message="no QR code found on the sheet")


def box_corners_px(H: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The four corners of a page box (mm) in image px, for overlays."""
    x, y, w, h = box
    return apply_h(H, np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64))
