"""A sheet's reading and the loop over a file's pages, shared by both readers
(built-in templates, ``reader.py``; OMRChecker templates, ``omrchecker/``).

Kept apart from the readers so that a reader imports only what it uses: an
OMRChecker sheet needs neither the built-in templates' page locator nor the
QR decoder. ``SheetReading.to_dict()`` is the JSON described in ``reader.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .flags import NOT_REVIEW
from .imageio import MAX_PIXELS, ImageError, load_grey_for_reading

if TYPE_CHECKING:
    from .payload import QrPayload


def in_doubt(error, sheet_flags, flags: dict[str, list[str]]) -> bool:
    """The review rule (see ``reader.py``), on a reading's parts: an
    error, any sheet flag, or any field flag other than a plain blank."""
    return bool(error or sheet_flags) or any(set(f) - NOT_REVIEW for f in flags.values())


@dataclass
class SheetReading:
    """The reading of one sheet image; see ``reader.py`` for the JSON."""

    file: str = ""
    template: str | None = None
    page: int | None = None
    qr: QrPayload | None = None
    qr_error: str | None = None
    answers: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    flags: dict[str, list[str]] = field(default_factory=dict)
    sheet_flags: list[str] = field(default_factory=list)
    error: str | None = None
    orientation: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    marks_px: np.ndarray | None = None
    homography: np.ndarray | None = None
    pixel_scale: float = 1.0  # file px per px of the image read (decoded shrunk): to_dict() converts
    _bubble_data: tuple | None = field(default=None, repr=False)

    @property
    def bubbles(self) -> list[list]:
        """[group, value, score, marked, x, y] per bubble; x, y in the file's
        pixels (pixel centres at whole numbers), where the bubble was read."""
        if self._bubble_data is None:
            return []
        lay, score, marked, cen = self._bubble_data
        keys = [(g.key, b.value) for g in lay.groups for b in g.bubbles]
        pts = self._to_file(cen)
        xs = np.round(pts[:, 0], 1).tolist()
        ys = np.round(pts[:, 1], 1).tolist()
        return [[k, v, s, bool(mk), x, y]
                for (k, v), s, mk, x, y in zip(keys, score.tolist(), marked.tolist(), xs, ys, strict=True)]

    @property
    def needs_review(self) -> bool:
        """True when any doubt remains (see ``reader.py``)."""
        return in_doubt(self.error, self.sheet_flags, self.flags)

    def _scale_matrix(self) -> np.ndarray:
        # A pixel of an image decoded at 1/s covers s x s pixels of the file:
        # its centre is at s * x + (s - 1) / 2 there.
        s = self.pixel_scale
        return np.array([[s, 0.0, (s - 1) / 2], [0.0, s, (s - 1) / 2], [0.0, 0.0, 1.0]])

    def _to_file(self, pts: np.ndarray) -> np.ndarray:
        s = self.pixel_scale
        return np.asarray(pts, np.float64) * s + (s - 1) / 2

    def flag(self, name: str) -> None:
        if name not in self.sheet_flags:
            self.sheet_flags.append(name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (plain lists, floats and strings)."""
        marks = None
        if self.marks_px is not None:
            marks = [[round(float(x), 1), round(float(y), 1)] for x, y in self._to_file(self.marks_px)]
        hom = None
        if self.homography is not None:
            Hs = self._scale_matrix() @ self.homography
            Hs = Hs / Hs[2, 2]
            hom = [[float(f"{v:.9g}") for v in row] for row in Hs]
        bubbles = self.bubbles
        return {
            "file": self.file,
            "template": self.template,
            "page": self.page,
            "qr": self.qr.to_dict() if self.qr else None,
            "qr_error": self.qr_error,
            "answers": dict(self.answers),
            "confidence": dict(self.confidence),
            "flags": {k: list(v) for k, v in self.flags.items()},
            "sheet_flags": list(self.sheet_flags),
            "needs_review": self.needs_review,
            "error": self.error,
            "orientation": self.orientation,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "image_size": list(self.image_size) if self.image_size else None,
            "marks_px": marks,
            "homography": hom,
            "bubbles": bubbles,
        }


def read_pages(data: bytes, read: Callable, unreadable: Callable[[str], SheetReading], *, source: str = "",
               max_pixels: int = MAX_PIXELS, reduction: Callable | None = None) -> list:
    """Decode every page of an image file and ``read(image, name)`` each: the
    loop both readers (built-in and OMRChecker templates) share. A page decoded
    at reduced size whose reading failed is read again at full size; a file that
    cannot be decoded gives ``[unreadable(reason)]``. Readings get the page's
    scale, size and decode time. ``reduction``: see ``load_grey_for_reading``."""
    t0 = time.perf_counter()
    try:
        pages = load_grey_for_reading(data, max_pixels=max_pixels, reduction=reduction)
    except ImageError as exc:
        r = unreadable(str(exc))
        r.timings_ms = {"decode": (time.perf_counter() - t0) * 1000}
        r.timings_ms["total"] = r.timings_ms["decode"]
        return [r]
    decode_ms = (time.perf_counter() - t0) * 1000 / max(1, len(pages))
    out = []
    for k, p in enumerate(pages):
        name = source if len(pages) == 1 else f"{source}#{k + 1}" if source else f"#{k + 1}"
        r = read(p.image, name)
        if p.scale != 1 and r.error and "unreadable" not in r.sheet_flags:
            # A shrunk decode that failed: try the full image before giving up.
            t1 = time.perf_counter()
            try:
                full = load_grey_for_reading(data, min_dpi=1e9, max_pixels=max_pixels)[0]
                r2 = read(full.image, name)
                decode_ms += (time.perf_counter() - t1) * 1000 - r2.timings_ms.get("total", 0.0)
                if not r2.error:
                    r, p = r2, full
            except ImageError:
                pass
        r.pixel_scale = float(p.scale)
        r.image_size = (p.width, p.height)
        r.timings_ms["decode"] = decode_ms
        r.timings_ms["total"] = r.timings_ms.get("total", 0.0) + decode_ms
        out.append(r)
    return out
