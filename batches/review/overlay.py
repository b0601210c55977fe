"""A sheet's page image with the detected marks drawn over it, as PNG.

Reviewers judge a reading by looking at the page, so every bubble is drawn
where the reader found it: green for a bubble read as marked in a field the
reader is sure of, orange for the bubbles of a doubtful field (red when
marked), a thin blue outline for a bubble read as blank.

The drawing comes from the stored reading (``bubbles``: group, value, score,
marked, x, y in the image's own pixels; ``homography``: page mm to image px)
and the template layout (bubble radius, group to field). Readings stored
without bubbles (sheets not in review keep none) are read again here, in
memory, without storing anything.

The output is always a freshly encoded PNG of decoded pixels: the uploaded
file itself is never sent back, so nothing in it can reach the browser as
anything but an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..omr.align import jacobians, to_grey
from ..omr.flags import NOT_REVIEW
from ..omr.imageio import ImageError, load_images

#: Widest overlay sent to the browser, px: enough to read a bubble, small enough to load fast.
MAX_WIDTH = 1400

# BGR colours.
GREEN = (74, 158, 30)
ORANGE = (0, 140, 240)
RED = (30, 30, 210)
BLUE = (216, 100, 28)
MAGENTA = (160, 40, 170)

@dataclass
class Mark:
    """One bubble to draw, in overlay pixels."""

    x: float
    y: float
    r: float
    kind: str  # "marked", "doubt-marked", "doubt", "blank"


def field_of(group_key: str) -> str:
    """``q12`` -> ``q12``; ``student_number[3]`` -> ``student_number``."""
    return group_key.split("[", 1)[0]


def doubtful_fields(reading: dict) -> set[str]:
    """Fields the reader was not sure of (any flag other than a plain blank)."""
    flags = reading.get("flags") or {}
    return {name for name, f in flags.items() if set(f or []) - NOT_REVIEW}


def bubble_marks(reading: dict, scale: float = 1.0) -> list[Mark]:
    """The marks to draw for ``reading`` at ``scale`` (overlay px per image px)."""
    rows = reading.get("bubbles") or []
    if not rows:
        return []
    radii = _radii(reading, rows)
    doubt = doubtful_fields(reading)
    group_field = group_fields(reading)
    marks = []
    for i, (group, _value, score, marked, x, y) in enumerate(rows):
        name = group_field.get(group, field_of(group))
        r = radii[i] if radii is not None else None
        if r is None or not math.isfinite(r):
            r = 12.0
        if name in doubt:
            kind = "doubt-marked" if marked else ("doubt" if score >= 0.15 else "blank")
        else:
            kind = "marked" if marked else "blank"
        marks.append(Mark(x * scale, y * scale, r * scale, kind))
    return marks


def _resolved(reading: dict):
    from ..sheet_templates import resolve

    try:
        return resolve(reading["template"])
    except (KeyError, TypeError, ValueError, FileNotFoundError, OSError):
        return None


def _layout(reading: dict, resolved=None):
    """The reading's bubble layout, in the units its homography takes: page
    mm, or an OMRChecker template's page px (its ``Resolved.layout`` is None:
    the review's value rules take its fields as free text)."""
    resolved = resolved or _resolved(reading)
    if resolved is not None and resolved.is_omrchecker:
        from ..omr.omrchecker.reader import layout_of

        return layout_of(resolved.template)
    try:
        return resolved.layout(reading.get("page")) if resolved is not None else None
    except (KeyError, TypeError, ValueError, FileNotFoundError, OSError):
        return None


def group_fields(reading: dict) -> dict[str, str]:
    """{bubble group: the answer field (column) it is read into}. An
    OMRChecker template's custom label joins several fields into one column
    (``Roll``: ``roll1..7`` and a check letter), and the column carries the
    flags: its fields' bubbles are drawn and zoomed as that column's."""
    resolved = _resolved(reading)
    if resolved is None:
        return {}
    if resolved.is_omrchecker:
        return {label: column for column, labels in resolved.template.custom_labels.items() for label in labels}
    lay = _layout(reading, resolved)
    return {g.key: g.field for g in lay.groups} if lay else {}


def _radii(reading: dict, rows: list) -> list[float] | None:
    """Each bubble's radius in image px: the template's radius (mm; an
    OMRChecker template's half bubble box, page px) times the local scale of
    the page-to-image homography."""
    lay = _layout(reading)
    H = reading.get("homography")
    if lay is None or H is None:
        return None
    bubbles = lay.bubbles
    if len(bubbles) != len(rows):
        return None
    pts = np.array([[b.x, b.y] for b in bubbles], np.float64)
    J = jacobians(np.asarray(H, np.float64), pts)
    scale = np.sqrt(np.abs(np.linalg.det(J)))
    return [float(b.r * s) for b, s in zip(bubbles, scale, strict=True)]


def decode_page(data: bytes) -> np.ndarray:
    """The first page of an image file, grey (``ImageError`` when it is not an image)."""
    pages = load_images(data, grey=True)
    if not pages:
        raise ImageError("no page in the image")
    return pages[0]


def page_base(image: np.ndarray, max_width: int = MAX_WIDTH) -> tuple[np.ndarray, float]:
    """The page as a light grey BGR picture at most ``max_width`` px wide, and
    the scale used. Paper is lifted to white and the greys are reduced to 16
    levels: scan noise then costs almost nothing in the PNG (a 300-dpi scan
    goes from ~2.5 MB to ~0.5 MB) while pencil marks, faint ones included,
    keep their darkness relative to the paper."""
    grey = to_grey(image)
    h, w = grey.shape[:2]
    scale = min(1.0, max_width / float(w))
    if scale < 1.0:
        grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    paper = max(float(np.percentile(grey, 90)), 1.0)
    level = np.clip(grey.astype(np.float32) * (255.0 / paper), 0, 255)
    # Lighten the whole page a little so the colours stand out over the marks.
    level = 70.0 + level * (185.0 / 255.0)
    flat = np.where(level >= 240, 255, (level // 12) * 12 + 6).astype(np.uint8)
    return cv2.cvtColor(flat, cv2.COLOR_GRAY2BGR), scale


def draw_overlay(image: np.ndarray, reading: dict | None, max_width: int = MAX_WIDTH) -> np.ndarray:
    """``image`` (BGR or grey, the page as stored) scaled to at most
    ``max_width`` px wide, with the reading's bubbles drawn over it."""
    canvas, scale = page_base(image, max_width)
    if not reading:
        return canvas
    fill = canvas.copy()
    marks = bubble_marks(reading, scale)
    thin = max(1, round(canvas.shape[1] / 900))
    thick = thin + 1
    for m in marks:
        c = (round(m.x), round(m.y))
        r = max(3, round(m.r * 1.12))
        if m.kind == "marked":
            cv2.circle(fill, c, r, GREEN, -1, cv2.LINE_AA)
            cv2.circle(canvas, c, r, GREEN, thick, cv2.LINE_AA)
        elif m.kind == "doubt-marked":
            cv2.circle(fill, c, r, RED, -1, cv2.LINE_AA)
            cv2.circle(canvas, c, r + thick, RED, thick + 1, cv2.LINE_AA)
        elif m.kind == "doubt":
            cv2.circle(canvas, c, r + thick, ORANGE, thick + 1, cv2.LINE_AA)
        else:
            cv2.circle(canvas, c, r, BLUE, thin, cv2.LINE_AA)
    # Translucent fills keep the pencil mark visible under the colour.
    canvas = cv2.addWeighted(fill, 0.4, canvas, 0.6, 0)
    for x, y in (reading.get("marks_px") or [])[:4]:
        cv2.drawMarker(canvas, (round(x * scale), round(y * scale)), MAGENTA, cv2.MARKER_CROSS,
                       max(12, round(40 * scale)), thick, cv2.LINE_AA)
    return canvas


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of ``image`` (zlib level 6: level 9 is ten times slower for 5 % less)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError("could not encode the overlay")
    return buf.tobytes()


def needs_fresh_reading(reading: dict | None) -> bool:
    """True when the stored reading has no bubbles to draw but the page was read."""
    return bool(reading) and not reading.get("bubbles") and not reading.get("error") and bool(reading.get("template"))


def render_overlay_png(data: bytes, reading: dict | None, max_width: int = MAX_WIDTH) -> bytes:
    """The overlay PNG for a stored page image (``data``) and its reading.

    Readings stored without bubbles are read again in memory for the drawing.
    Raises ``ImageError`` when ``data`` is not an image.
    """
    image = decode_page(data)
    if needs_fresh_reading(reading):
        from ..sheet_templates import resolve

        fresh = resolve(reading["template"]).read_image(image, reading.get("page") or None).to_dict()
        # Draw the fresh geometry with the stored decisions' flags.
        reading = {**fresh, "flags": reading.get("flags") or fresh.get("flags")}
    return encode_png(draw_overlay(image, reading, max_width))
