"""Decoding uploaded image files into numpy arrays, safely.

Every size check happens on the file header, before any pixel is decoded, so a
small file claiming a huge image (a "decompression bomb") is refused without
allocating memory for it. Reasons given in ``ImageError`` are plain sentences
meant to be shown to the person who uploaded the file.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .headers import jpeg_orientation, read_header

# Pillow is imported where a file needs it: plain JPEG and PNG files are
# probed without it (``headers``), which spares a command-line process its
# import and plugin loading.

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
    header = read_header(data)
    if header is not None:
        fmt, sizes, pages, info = header.format, [(header.width, header.height)], 1, {}
        if header.dpi is not None:
            info["dpi"] = header.dpi
    else:
        fmt, sizes, pages, info = _pillow_probe(data, max_pixels)
    for w, h in sizes:
        if w <= 0 or h <= 0:
            raise ImageError("not an image (zero size)")
        if w * h > max_pixels:
            raise PixelLimitError(f"image is {w} x {h} pixels, over the limit of {max_pixels / 1e6:g} MP")
    dpi = 0.0
    raw_dpi = info.get("dpi")
    if raw_dpi:
        try:
            dpi = float(max(raw_dpi))
        except (TypeError, ValueError):
            dpi = 0.0
    elif info.get("jfif_unit") == 1:  # JFIF density in dots per inch
        dpi = float(max(info.get("jfif_density", (0, 0))))
    if dpi < 20:  # "1 x 1" or 72-dpi placeholders say nothing about a scan
        dpi = 0.0
    return ImageInfo(fmt, sizes[0][0], sizes[0][1], pages, dpi)


def _pillow_probe(data: bytes, max_pixels: int) -> tuple[str, list[tuple[int, int]], int, dict]:
    """(format, size of every page, page count, Pillow's info) of a file the
    header reader leaves to Pillow."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns about large images; the cap is ours to enforce.
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
    return fmt, sizes, pages, im.info


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
    # A complete JPEG ends with the EOI marker (FF D9). libjpeg decodes a cut file
    # without error, filling the rest with grey, which would read as a column of
    # marks: refuse it instead. Most files end right at EOI (or with padding);
    # the others carry bytes after it (see _jpeg_image_end).
    tail = data[-4096:].rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9") or _jpeg_image_end(data) is not None


# Markers that stand alone, without a length: TEM and RST0-7 (SOI and EOI are handled apart).
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg_image_end(data: bytes) -> int | None:
    """Offset just past the EOI marker that ends the main image, None if it is cut.

    Scanner and phone software write other bytes after the image (a second
    preview image, a maker's trailer, a video): the image itself is complete
    and valid. Walks the marker segments and the entropy-coded scans, so an
    EOI inside an embedded EXIF thumbnail is not mistaken for the image's end.
    """
    if data[:2] != b"\xff\xd8":
        return None
    n = len(data)
    i = 2
    while i + 1 < n:
        if data[i] != 0xFF:
            return None  # not a marker where one must be: damaged
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker in _STANDALONE:
            i += 2
            continue
        if i + 4 > n:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            i = _scan_end(data, i)
            if i is None:
                return None
    return None


# In entropy-coded data an FF byte is followed by 00 (a stuffed FF), by D0-D7
# (restart markers, part of the scan) or by FF (fill); anything else is the
# marker that ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _scan_end(data: bytes, start: int) -> int | None:
    m = _SCAN_END.search(data, start)
    return m.start() if m else None


#: EXIF orientation (tag 0x0112) -> how to turn the stored pixels upright.
_ORIENTATION_TAG = 0x0112
#: Where a PNG can say its orientation (chunk types and text keys are stored
#: uncompressed): an eXIf chunk, an "exif" or "Raw profile type exif" text,
#: XMP ("XML:com.adobe.xmp").
_PNG_ORIENTATION_KEYS = (b"eXIf", b"exif", b"xmp")


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of an image file (1-8; 1 when absent or invalid).

    Phones store a photo the way the sensor saw it and write in this tag how to
    turn it for viewing; every viewer does, so a person sees the sheet upright.
    JPEG, PNG (eXIf chunk), WebP and TIFF carry it.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n") and not any(key in data for key in _PNG_ORIENTATION_KEYS):
        # Pillow decodes a whole PNG to look for EXIF after its pixels; a PNG
        # with no chunk or text key that can carry an orientation is upright.
        return 1
    value = jpeg_orientation(data)
    if value is not None:
        return value if 1 <= value <= 8 else 1
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = Image.open(io.BytesIO(data)).getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not refuse a readable image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright as EXIF ``orientation`` says (as viewers do)."""
    if orientation == 2:
        img = cv2.flip(img, 1)
    elif orientation == 3:
        img = cv2.rotate(img, cv2.ROTATE_180)
    elif orientation == 4:
        img = cv2.flip(img, 0)
    elif orientation == 5:
        img = cv2.transpose(img)
    elif orientation == 6:
        img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    elif orientation == 7:
        img = cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    elif orientation == 8:
        img = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return np.ascontiguousarray(img)


def to_grey(image: np.ndarray) -> np.ndarray:
    """A uint8 single-channel view of ``image`` (BGR, BGRA or grey)."""
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        else:
            image = image[:, :, 0]
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _turns_quarter(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


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
    from PIL import Image, ImageSequence

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
            out.append(apply_orientation(arr, _frame_orientation(frame)))
    return out


def _frame_orientation(frame) -> int:  # a PIL.Image.Image
    # Each page of a TIFF carries its own orientation tag.
    try:
        value = frame.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged tag leaves the page as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode(data: bytes, info: ImageInfo, flag: int, grey: bool) -> list[np.ndarray]:
    if info.format == "JPEG" and not _jpeg_complete(data):
        raise ImageError("truncated JPEG (the file is incomplete; upload it again)")
    buf = np.frombuffer(data, np.uint8)
    if info.format in ("JPEG", "PNG", "BMP", "WEBP") and info.pages == 1:
        if info.format != "JPEG":
            # Keep 16-bit depth and alpha for _to_uint8.
            flag = cv2.IMREAD_UNCHANGED
        # The orientation is applied below, the same way for every format.
        img = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is not None:
            img = _to_uint8(img)
            if grey and img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            return [apply_orientation(img, exif_orientation(data))]
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
                          min_dpi: float = MIN_READ_DPI,
                          reduction: Callable[[ImageInfo], int] | None = None) -> list[ReadPage]:
    """Decode a file for the reader: grey, and as small as reading allows.

    Large page-sized JPEG scans are decoded straight at 1/2, 1/4 or 1/8 size by
    libjpeg (much faster than decoding fully and shrinking), as long as the page
    keeps at least ``min_dpi`` dots per inch (see ``reduction_for``). Everything
    else is decoded at full size. Returns one ``ReadPage`` per page; raises
    ``ImageError`` like ``load_images``. ``reduction``: chooses the factor
    (1, 2, 4 or 8) instead of ``reduction_for``, for a reader that knows what
    resolution it needs.
    """
    try:
        info = probe(data, max_pixels)
        factor = reduction(info) if reduction is not None else reduction_for(info, min_dpi)
        if factor > 1:
            if not _jpeg_complete(data):
                raise ImageError("truncated JPEG (the file is incomplete; upload it again)")
            img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
            if img is not None:
                # libjpeg rounds the reduced size up; the exact factor matters for overlays.
                # An EXIF orientation turning the image a quarter turns its size with it.
                orientation = exif_orientation(data)
                w, h = (info.height, info.width) if _turns_quarter(orientation) else (info.width, info.height)
                return [ReadPage(apply_orientation(img, orientation), factor, w, h)]
        pages = _decode(data, info, cv2.IMREAD_GRAYSCALE, True)
    except ImageError as exc:
        if name:
            raise ImageError(f"{name}: {exc}") from None
        raise
    return [ReadPage(p, 1, p.shape[1], p.shape[0]) for p in pages]
