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

from .align import apply_h
from .payload import PayloadError, QrPayload, decode_payload

#: Sampling of the cut-out, px per mm (6 ~ 150 dpi: 5-6 px per module).
QR_PX_PER_MM = 6.0
#: White kept around the box when cutting it out, mm (absorbs small misfits).
QR_MARGIN_MM = 3.0


@dataclass(frozen=True)
class QrResult:
    """Outcome of reading the QR code.

    ``status``: "ok" (``payload`` set), "qr_missing" (no code found),
    "qr_foreign" (a code that is not an answer-sheet code) or "qr_damaged" (ours,
    but its text does not parse). ``text``: the raw text when a code was
    decoded. ``message``: a plain sentence for anything but "ok".
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
        except PayloadError as exc:
            if text.startswith("OMR1"):
                damaged = damaged or QrResult("qr_damaged", None, text, str(exc))
            else:
                foreign = foreign or QrResult("qr_foreign", None, text, str(exc))
    return damaged or foreign  # type: ignore[return-value]


def read_qr(grey: np.ndarray, H: np.ndarray, box: tuple[float, float, float, float], *,
            thorough: bool = True) -> QrResult:
    """Decode the QR code in page rectangle ``box`` (mm: x, y, w, h) of a grey
    image whose page homography (page mm -> image px) is ``H``.

    Tries a plain cut-out at ~150 dpi, then binarised ones, then (``thorough``)
    a larger scale and margin. Returns a ``QrResult``.
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
    return QrResult("qr_missing", message="no QR code found in the QR box")


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
