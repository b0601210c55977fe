"""The review queue's pictures: the page drawn by ``overlay``, turned
upright (a JPEG: see ``JPEG_QUALITY``), and where each field lies on that picture, so the page can show a
doubtful field zoomed in (a crop of the same picture, marks included).

A page scanned the wrong way round is turned by the reading's
``orientation`` (the clockwise degrees the page is turned in the image), so
reviewers read every page and every crop the right way up.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import overlay

#: Room around a field's bubbles, in bubble radii; more on the left, where the
#: question number is printed.
MARGIN_RADII = 1.8
LABEL_RADII = 6.0

_TURN_UPRIGHT = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class Box:
    """A field's place on the upright picture, in its pixels: its centre, its
    size along the page's own axes, and the page's skew there (degrees,
    clockwise), so the zoomed-in view can be turned straight."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0


def orientation(reading: dict | None) -> int:
    turn = int((reading or {}).get("orientation") or 0) % 360
    return turn if turn in _TURN_UPRIGHT else 0


def picture_size(reading: dict | None, max_width: int = overlay.MAX_WIDTH) -> tuple[int, int, float] | None:
    """(width, height, scale) of the upright picture of a page read as
    ``reading``, or None when the reading does not give the image size."""
    size = (reading or {}).get("image_size")
    if not size:
        return None
    w, h = int(size[0]), int(size[1])
    scale = min(1.0, max_width / float(w))
    sw, sh = round(w * scale), round(h * scale)
    if orientation(reading) in (90, 270):
        sw, sh = sh, sw
    return sw, sh, scale


def _upright_points(xy: np.ndarray, turn: int, w: int, h: int) -> np.ndarray:
    """Points on a ``w`` x ``h`` picture, where they are once it is turned upright."""
    x, y = xy[:, 0], xy[:, 1]
    if turn == 90:  # turned counter-clockwise
        return np.stack([y, (w - 1) - x], axis=1)
    if turn == 180:
        return np.stack([(w - 1) - x, (h - 1) - y], axis=1)
    if turn == 270:  # turned clockwise
        return np.stack([(h - 1) - y, x], axis=1)
    return xy


def field_boxes(reading: dict | None, fields, max_width: int = overlay.MAX_WIDTH) -> dict[str, Box]:
    """{field: Box} on the upright picture for each of ``fields`` whose bubbles
    the reading holds (fields of a reading without bubbles have no box)."""
    geometry = picture_size(reading, max_width)
    if geometry is None or not (reading or {}).get("bubbles"):
        return {}
    wanted = set(fields)
    marks = overlay.bubble_marks(reading, geometry[2])
    groups = overlay.group_fields(reading)
    rows = reading["bubbles"]
    turn = orientation(reading)
    # The picture before turning: the drawn page's own size.
    pw, ph = (geometry[1], geometry[0]) if turn in (90, 270) else (geometry[0], geometry[1])
    by_field: dict[str, list[tuple[float, float, float]]] = {}
    for row, mark in zip(rows, marks, strict=True):
        name = groups.get(row[0], overlay.field_of(row[0]))
        if name in wanted:
            by_field.setdefault(name, []).append((mark.x, mark.y, mark.r))
    skew = page_skew(reading, turn)
    c, si = np.cos(np.radians(skew)), np.sin(np.radians(skew))
    boxes = {}
    for name, points in by_field.items():
        xy = _upright_points(np.array([(x, y) for x, y, _r in points], np.float64), turn, pw, ph)
        r = float(np.median([p[2] for p in points]))
        # Along the page's axes: the points turned straight about their centre.
        centre = xy.mean(axis=0)
        d = xy - centre
        straight = np.stack([d[:, 0] * c + d[:, 1] * si, -d[:, 0] * si + d[:, 1] * c], axis=1)
        x0, y0 = straight.min(axis=0) - r * MARGIN_RADII
        x1, y1 = straight.max(axis=0) + r * MARGIN_RADII
        x0 -= r * (LABEL_RADII - MARGIN_RADII)
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2  # the box's centre, straight, back on the picture
        cx, cy = centre[0] + mx * c - my * si, centre[1] + mx * si + my * c
        boxes[name] = Box(round(float(cx), 1), round(float(cy), 1), round(float(x1 - x0), 1),
                          round(float(y1 - y0), 1), round(skew, 2))
    return boxes


def page_skew(reading: dict, turn: int) -> float:
    """How far the page's rows are turned clockwise on the upright picture,
    degrees (0 without a homography): the page's x axis through the reading's
    page-to-image mapping, less the quarter turns already undone."""
    H = reading.get("homography")
    if H is None:
        return 0.0
    H = np.asarray(H, np.float64)
    ends = H @ np.array([[0.0, 100.0], [0.0, 0.0], [1.0, 1.0]])
    ends = ends[:2] / ends[2]
    dx, dy = ends[:, 1] - ends[:, 0]
    angle = float(np.degrees(np.arctan2(dy, dx))) - turn
    return (angle + 45.0) % 90.0 - 45.0


#: JPEG quality of the picture: marks and pencil stay clear, and it encodes
#: in ~15 ms against ~0.5 s for a PNG of a noisy scan (and is half the size).
JPEG_QUALITY = 85


def upright_jpeg(data: bytes, reading: dict | None, max_width: int = overlay.MAX_WIDTH) -> bytes:
    """The overlay of a stored page image, turned upright, as a fresh JPEG
    (decoded pixels only, never the stored file)."""
    if overlay.needs_fresh_reading(reading):
        # No bubbles stored: the overlay module reads the page again in memory.
        png = overlay.render_overlay_png(data, reading, max_width)
        canvas = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    else:
        canvas = overlay.draw_overlay(overlay.decode_page(data), reading, max_width)
    turn = orientation(reading)
    if turn:
        canvas = cv2.rotate(canvas, _TURN_UPRIGHT[turn])
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("could not encode the picture")
    return buf.tobytes()
