"""How a simulated capture becomes the file a scanner or a phone writes.

Real files carry more than their pixels, and not always every grey level:

* bitonal and posterised scans (``grey_levels``): office scanners in "black &
  white" mode keep two levels (300 dpi, often saved as PNG or TIFF), some
  document software a palette of a few greys;
* the EXIF orientation tag: a phone stores the photo the way the sensor saw it
  and writes in the tag how to turn it for viewing;
* bytes after the JPEG's end marker: phones append a preview image, a maker's
  trailer or a motion-photo video, scanner software its own notes.

Everything here is deterministic given its ``rng``.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..imageio import apply_orientation

#: How each EXIF orientation stores an upright image (the inverse of what a
#: viewer applies, ``imageio.apply_orientation``).
_STORE = {
    1: lambda img: img,
    2: lambda img: cv2.flip(img, 1),
    3: lambda img: cv2.rotate(img, cv2.ROTATE_180),
    4: lambda img: cv2.flip(img, 0),
    5: cv2.transpose,
    6: lambda img: cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE),
    7: lambda img: cv2.rotate(cv2.transpose(img), cv2.ROTATE_180),
    8: lambda img: cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE),
}


def quantise_grey(image: np.ndarray, levels: int, threshold: float) -> np.ndarray:
    """A colour capture as a scanner's grey mode with ``levels`` grey levels.

    Two levels: black where the grey is under ``threshold`` (0-255), white
    elsewhere, as a scanner's "black & white" mode. More: the grey range cut
    into ``levels`` equal steps (a palette scan). Returns BGR with equal planes.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if levels == 2:
        out = np.where(grey < threshold, 0, 255).astype(np.uint8)
    else:
        step = 255.0 / (levels - 1)
        out = (np.round(np.round(grey.astype(np.float32) / step) * step)).clip(0, 255).astype(np.uint8)
    return cv2.merge([out, out, out])


def exif_segment(orientation: int) -> bytes:
    """A JPEG APP1 segment holding an EXIF block with this orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = int(orientation)
    body = exif.tobytes()  # starts with "Exif\0\0"
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def with_exif(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF orientation segment, after its JFIF header as cameras write it."""
    i = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF's APP0 first
        i = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:i] + exif_segment(orientation) + jpeg[i:]


def stored_sideways(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an ``upright`` view under ``orientation``."""
    return np.ascontiguousarray(_STORE[int(orientation)](upright))


def encode_oriented(upright: np.ndarray, quality: int, orientation: int) -> tuple[bytes, np.ndarray]:
    """JPEG bytes storing ``upright`` turned as ``orientation`` says, with the tag.

    Returns the bytes and the image a viewer (and ``imageio``) shows from them.
    """
    stored = stored_sideways(upright, orientation)
    ok, buf = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, max(1, min(100, quality))])
    if not ok:
        raise ValueError("JPEG encoding failed")
    data = buf.tobytes()
    if orientation != 1:
        data = with_exif(data, orientation)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return data, apply_orientation(decoded, orientation)


def trailer(image: np.ndarray, size: int, rng: np.random.Generator) -> bytes:
    """``size`` bytes a phone or scanner might write after the image: a small
    preview JPEG of it first (as the MPF and maker formats do), then a maker's
    block of binary data."""
    if size <= 0:
        return b""
    h, w = image.shape[:2]
    scale = 160.0 / max(h, w)
    preview = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", preview, [cv2.IMWRITE_JPEG_QUALITY, 70])
    head = buf.tobytes() if ok else b""
    head = head[:size]
    rest = size - len(head)
    block = b"MAKERNOTE\x00" + rng.integers(0, 256, max(0, rest - 10), dtype=np.uint8).tobytes()
    return head + block[:rest]
