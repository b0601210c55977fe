"""Decoding uploaded image files into numpy arrays, safely.

Every size check happens on the file header, before any pixel is decoded, so a
small file claiming a huge image (a "decompression bomb") is refused without
allocating memory for it. Reasons given in ``ImageError`` are plain sentences
meant to be shown to the person who uploaded the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

#: Default upper bound on the pixels of one page (60 megapixels: an A4 page at
#: 600 dpi is 35 MP, a 50 MP phone photo still passes).
MAX_PIXELS = 60_000_000
#: A multi-page file may not decode to more than this many pages.
MAX_PAGES = 500

# Page long sides in inches, to guess the resolution of a page-sized scan.
_PAGE_LONG_IN = (11.69, 11.0)  # A4, US Letter
_PAGE_SHORT_IN = (8.27, 8.5)
#: The fast path only shrinks a scan while the page keeps at least this resolution.
MIN_READ_DPI = 140.0
#: ...and a photo only while its short side keeps at least this many pixels
#: (a 48 MP photo is halved, a 12 MP one is not).
PHOTO_MIN_SHORT = 1700


class ImageError(ValueError):
    """An uploaded file that cannot be decoded; ``str(exc)`` is the plain reason."""


class PixelLimitError(ImageError):
    """An image over the pixel cap (``max_pixels``): callers that set the cap
    can say where it comes from."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels."""

    format: str  # "JPEG", "PNG", "TIFF", ...
    width: int
    height: int
    pages: int
    dpi: float  # declared resolution, 0 when the file does not say


def probe(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read an image file's header and enforce the pixel cap, decoding nothing.

    ``data`` is the whole file. Returns the format, size in pixels, page count
    and declared dpi. Raises ``ImageError`` ("empty file", "not an image", "image
    is W x H pixels, over the limit of N MP").
    """
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images; the cap below is ours to enforce.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError("not an image (the file is not a JPEG, PNG or TIFF picture)") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses huge headers itself (twice its own limit); say it our way.
        size = _header_size(data)
        what = f"{size[0]} x {size[1]} pixels" if size else _bomb_pixels(str(exc))
        raise PixelLimitError(f"image is {what}, over the limit of {max_pixels / 1e6:g} MP") from None
    fmt = im.format or "?"
    sizes = [im.size]
    pages = 1
    if getattr(im, "n_frames", 1) > 1:
        pages = im.n_frames
        if pages > MAX_PAGES:
            raise ImageError(f"file has {pages} pages, over the limit of {MAX_PAGES}")
        sizes = []
        for i in range(pages):
            try:
                im.seek(i)  # TIFF: parses the page's IFD only
            except (EOFError, OSError, ValueError):
                raise ImageError(f"damaged {fmt} file (page {i + 1} cannot be read)") from None
            sizes.append(im.size)
    for w, h in sizes:
        if w <= 0 or h <= 0:
            raise ImageError("not an image (zero size)")
        if w * h > max_pixels:
            raise PixelLimitError(f"image is {w} x {h} pixels, over the limit of {max_pixels / 1e6:g} MP")
    dpi = 0.0
    raw_dpi = im.info.get("dpi")
    if raw_dpi:
        try:
            dpi = float(max(raw_dpi))
        except (TypeError, ValueError):
            dpi = 0.0
    elif im.info.get("jfif_unit") == 1:  # JFIF density in dots per inch
        dpi = float(max(im.info.get("jfif_density", (0, 0))))
    if dpi < 20:  # "1 x 1" or 72-dpi placeholders say nothing about a scan
        dpi = 0.0
    return ImageInfo(fmt, sizes[0][0], sizes[0][1], pages, dpi)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header, without Pillow."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h = int.from_bytes(data[i + 5:i + 7], "big")
                w = int.from_bytes(data[i + 7:i + 9], "big")
                return w, h
            i += 2 + length
    return None


def _bomb_pixels(message: str) -> str:
    import re

    m = re.search(r"\((\d+) pixels\)", message)
    return f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too large"


def _jpeg_complete(data: bytes) -> bool:
    # A complete JPEG ends with the EOI marker (FF D9); some writers pad after it.
    # libjpeg decodes a cut file without error, filling the rest with grey, which
    # would read as a column of marks: refuse it instead.
    tail = data[-4096:].rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit or float pages scaled to uint8; alpha composited over white paper."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        hi = float(f.max()) if f.size else 1.0
        img = np.clip(f * (255.0 / (hi if hi > 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    elif img.ndim == 3 and img.shape[2] == 2:  # grey + alpha
        alpha = img[:, :, 1].astype(np.float32) / 255.0
        img = (img[:, :, 0].astype(np.float32) * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return np.ascontiguousarray(img)


def _pil_pages(data: bytes, grey: bool) -> list[np.ndarray]:
    """Every page through Pillow (multi-page TIFF, fax/LZW compression, odd modes)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        for frame in ImageSequence.Iterator(im):
            mode = frame.mode
            if mode.startswith("I;16") or mode in ("I", "F"):
                arr = np.asarray(frame)
                if mode == "F":
                    arr = arr.astype(np.float32)
                else:  # 16-bit (or 32-bit integer holding 16-bit data)
                    arr = np.clip(arr.astype(np.int64), 0, 65535).astype(np.uint16)
                arr = _to_uint8(arr)
            elif mode in ("1", "L") or (grey and mode not in ("RGBA", "LA", "PA", "P")):
                arr = np.asarray(frame.convert("L"))
            elif mode in ("RGBA", "LA", "PA", "P"):
                arr = cv2.cvtColor(_to_uint8(np.asarray(frame.convert("RGBA"))), cv2.COLOR_RGB2BGR)
            else:
                arr = cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR)
            if grey and arr.ndim == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
            out.append(np.ascontiguousarray(arr))
    return out


def _decode(data: bytes, info: ImageInfo, flag: int, grey: bool) -> list[np.ndarray]:
    if info.format == "JPEG" and not _jpeg_complete(data):
        raise ImageError("truncated JPEG (the file is incomplete; upload it again)")
    buf = np.frombuffer(data, np.uint8)
    if info.format in ("JPEG", "PNG", "BMP", "WEBP") and info.pages == 1:
        if info.format != "JPEG":
            # Keep 16-bit depth and alpha for _to_uint8 (no EXIF rotation in these).
            flag = cv2.IMREAD_UNCHANGED
        img = cv2.imdecode(buf, flag)
        if img is not None:
            img = _to_uint8(img)
            if grey and img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            return [img]
    try:
        pages = _pil_pages(data, grey)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        what = info.format if info.format != "?" else "image"
        reason = "truncated" if "truncat" in str(exc).lower() else "damaged"
        raise ImageError(f"{reason} {what} file (it cannot be decoded)") from None
    if not pages:
        raise ImageError(f"damaged {info.format} file (no pages)")
    return pages


def load_images(data: bytes, name: str = "", *, max_pixels: int = MAX_PIXELS, grey: bool = False) -> list[np.ndarray]:
    """Decode an uploaded image file into one array per page.

    ``data``: the file's bytes (JPEG, PNG, TIFF incl. multi-page, BMP, WebP).
    ``name``: the file name, only used in messages. ``max_pixels``: refuse any
    page larger than this, checked on the header before decoding. ``grey``:
    return single-channel pages.

    Returns a list of uint8 arrays, HxW (grey) or HxWx3 (BGR), one per page, in
    file order. Raises ``ImageError`` with a plain reason.
    """
    try:
        info = probe(data, max_pixels)
        # JPEG: grey stays grey, colour comes as BGR, EXIF orientation applied.
        flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_ANYCOLOR
        return _decode(data, info, flag, grey)
    except ImageError as exc:
        if name:
            raise ImageError(f"{name}: {exc}") from None
        raise


@dataclass(frozen=True)
class ReadPage:
    """A grey page ready for reading and how it was shrunk while decoding.

    ``scale`` is (pixels in the file) / (pixels in ``image``): 1, 2, 4 or 8.
    Multiply coordinates found in ``image`` by ``scale`` to draw on the original.
    """

    image: np.ndarray
    scale: int
    width: int  # size in the file, in pixels
    height: int


def reduction_for(info: ImageInfo, min_dpi: float = MIN_READ_DPI) -> int:
    """How much a JPEG may be shrunk while decoding (1, 2, 4 or 8) for reading.

    Only page-sized scans are shrunk: the file must declare a resolution that
    makes it an A4/Letter page, or, without one, have a page's aspect ratio. The
    page must keep at least ``min_dpi`` after shrinking. Photos (page somewhere
    in a larger frame) are decoded whole, since the page may be small in them,
    unless they are very large (short side >= 2 x ``PHOTO_MIN_SHORT``).
    """
    if info.format != "JPEG" or info.pages != 1:
        return 1
    long_side, short_side = max(info.width, info.height), min(info.width, info.height)

    def photo() -> int:
        # A photo: the page may fill only part of the frame, so only very large
        # ones are shrunk, keeping at least PHOTO_MIN_SHORT px across.
        return 2 if short_side / 2 >= PHOTO_MIN_SHORT else 1

    if info.dpi:
        inches = long_side / info.dpi
        if not 10.3 <= inches <= 12.4:
            return photo()
        dpi = info.dpi
    else:
        aspect = long_side / short_side
        if not any(abs(aspect - lo / sh) < 0.025 for lo, sh in zip(_PAGE_LONG_IN, _PAGE_SHORT_IN, strict=True)):
            return photo()
        dpi = long_side / 11.69
    for factor in (8, 4, 2):
        if dpi / factor >= min_dpi:
            return factor
    return 1


_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def load_grey_for_reading(data: bytes, name: str = "", *, max_pixels: int = MAX_PIXELS,
                          min_dpi: float = MIN_READ_DPI) -> list[ReadPage]:
    """Decode a file for the reader: grey, and as small as reading allows.

    Large page-sized JPEG scans are decoded straight at 1/2, 1/4 or 1/8 size by
    libjpeg (much faster than decoding fully and shrinking), as long as the page
    keeps at least ``min_dpi`` dots per inch (see ``reduction_for``). Everything
    else is decoded at full size. Returns one ``ReadPage`` per page; raises
    ``ImageError`` like ``load_images``.
    """
    try:
        info = probe(data, max_pixels)
        factor = reduction_for(info, min_dpi)
        if factor > 1:
            if not _jpeg_complete(data):
                raise ImageError("truncated JPEG (the file is incomplete; upload it again)")
            img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[factor])
            if img is not None:
                # libjpeg rounds the reduced size up; the exact factor matters for overlays.
                # An EXIF orientation turns the image a quarter: its size turns with it.
                w, h = info.width, info.height
                if (img.shape[1] > img.shape[0]) != (w > h) and w != h:
                    w, h = h, w
                return [ReadPage(img, factor, w, h)]
        pages = _decode(data, info, cv2.IMREAD_GRAYSCALE, True)
    except ImageError as exc:
        if name:
            raise ImageError(f"{name}: {exc}") from None
        raise
    return [ReadPage(p, 1, p.shape[1], p.shape[0]) for p in pages]
