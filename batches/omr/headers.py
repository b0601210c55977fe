"""Size, declared resolution and EXIF orientation of a plain JPEG or PNG file,
read from its header in pure Python.

Pillow reads the same (``imageio.probe``, ``imageio.exif_orientation``), but
importing it and loading its format plugins costs a command-line process
about 30-50 ms before the first sheet, more than reading a small sheet. The
files scanners and phones write are plain: these functions read those and
answer ``None`` for anything else (a multi-picture JPEG, a 12-bit one, an
animated PNG, a damaged or unusual segment), which the caller then hands to
Pillow. What they return is what Pillow would say of the same file, to the
number: the reader shrinks a scan by the resolution it declares, and the
same file must always read the same (``tests/omr/test_headers.py`` holds
the two side by side).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Header:
    """What a plain file's header says. ``dpi``: the resolution Pillow puts in
    ``info["dpi"]`` (x, y), or ``None`` when it puts none there."""

    format: str
    width: int
    height: int
    dpi: tuple[float, float] | None


def read_header(data: bytes) -> Header | None:
    """The header of a plain JPEG or PNG file, ``None`` for any other file."""
    if data[:3] == b"\xff\xd8\xff":
        jpeg = _jpeg(data)
        return jpeg.header if jpeg else None
    if data[:8] == _PNG_MAGIC:
        return _png(data)
    return None


def jpeg_orientation(data: bytes) -> int | None:
    """A plain JPEG's EXIF orientation as Pillow's ``getexif()`` gives it (the
    XMP ``tiff:Orientation`` when the EXIF has none; 1 when neither says), not
    yet checked to be 1-8. ``None``: not a plain JPEG, or an EXIF block this
    reader leaves to Pillow."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    jpeg = _jpeg(data)
    if jpeg is None:
        return None
    value = 1
    if jpeg.exif is not None:
        tags = _ifd0(jpeg.exif)
        if tags is None:
            return None
        if _ORIENTATION in tags:
            return _single_int(tags, _ORIENTATION)
    if jpeg.xmp is not None:
        match = _XMP_ORIENTATION.search(jpeg.xmp)
        if match:
            value = int(match[2])
    return value


# --- JPEG ---------------------------------------------------------------------

#: Start-of-frame markers Pillow reads a size from (DHP, 0xDE, is left to it).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: Segments skipped by length: Huffman and arithmetic tables, restart interval, comment.
_SKIPPED = {0xC4, 0xCC, 0xDD, 0xFE}
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


@dataclass(frozen=True)
class _Jpeg:
    header: Header
    exif: bytes | None  # the TIFF block of the one Exif segment
    xmp: bytes | None


def _jpeg(data: bytes) -> _Jpeg | None:
    """The segments before the first scan, as Pillow's JPEG plugin reads them;
    ``None`` at anything it would read otherwise than a plain walk."""
    n = len(data)
    i = 2
    size = None
    dpi = None
    exif = xmp = None
    while True:
        if i + 4 > n or data[i] != 0xFF:
            return None  # cut, or fill bytes and junk between segments
        marker = data[i + 1]
        length = (data[i + 2] << 8) | data[i + 3]
        end = i + 2 + length
        if length < 2 or end > n:
            return None
        s = data[i + 4:end]
        if marker == 0xDA:
            break
        if marker in _SOF:
            if size is not None or len(s) < 6 or s[0] != 8 or s[5] not in (1, 3, 4):
                return None  # two frames, or one Pillow refuses (not 8-bit, odd layers)
            size = ((s[3] << 8) | s[4], (s[1] << 8) | s[2])
        elif marker == 0xDB:
            if not _quantization_ok(s):
                return None
        elif 0xE0 <= marker <= 0xEF:
            if marker == 0xE0 and s.startswith(b"JFIF"):
                if len(s) >= 12:
                    unit = s[7]
                    density = ((s[8] << 8) | s[9], (s[10] << 8) | s[11])
                    if unit == 1:
                        dpi = density
                    elif unit == 2:  # dots per cm
                        dpi = tuple(d * 2.54 for d in density)
            elif marker == 0xE1 and s.startswith(b"Exif\0\0"):
                if exif is not None:
                    return None  # Pillow joins several; left to it
                exif = s
            elif marker == 0xE1 and s.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
                xmp = s.split(b"\x00", 1)[1]
            elif marker == 0xE2 and (s.startswith(b"MPF\0") or (s.startswith(b"ICC_PROFILE\0") and len(s) < 14)):
                return None  # a multi-picture file (Pillow opens it as MPO), or a cut ICC profile
            elif marker == 0xEE and s.startswith(b"Adobe") and len(s) < 7:
                return None
        elif marker not in _SKIPPED:
            return None
        i = end
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    if dpi is None and exif is not None:
        dpi = _exif_dpi(exif)
        if dpi is None:
            return None
    return _Jpeg(Header("JPEG", size[0], size[1], dpi), exif, xmp)


def _quantization_ok(s: bytes) -> bool:
    """Pillow refuses a quantization segment whose tables are cut short."""
    while s:
        table = 1 + (1 if s[0] // 16 == 0 else 2) * 64
        if len(s) < table:
            return False
        s = s[table:]
    return True


def _exif_dpi(exif: bytes) -> tuple[float, float] | None:
    """The resolution Pillow takes from a JPEG's EXIF when JFIF gives none:
    XResolution (in cm when ResolutionUnit is 3), 72 when either tag is
    missing or the value is not a number. ``None``: left to Pillow."""
    tags = _ifd0(exif)
    if tags is None:
        return None
    if _RESOLUTION_UNIT not in tags or _X_RESOLUTION not in tags:
        return 72, 72
    unit = _single_int(tags, _RESOLUTION_UNIT)
    typ, count, raw = tags[_X_RESOLUTION]
    if unit is None or count != 1:
        return None
    if typ == 5:  # RATIONAL
        num, den = struct.unpack(tags.endian + "LL", raw)
        if den == 0:
            return 72, 72  # not a number
        dpi = num / den
    else:
        dpi = _single_int(tags, _X_RESOLUTION)
        if dpi is None:
            return None
    if unit == 3:
        dpi *= 2.54
    return dpi, dpi


# --- EXIF (a TIFF block) ---------------------------------------------------------

_ORIENTATION = 0x0112
_X_RESOLUTION = 0x011A
_RESOLUTION_UNIT = 0x0128
#: Bytes per value of each TIFF field type Pillow reads.
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8}


class _Tags(dict):
    """IFD0's entries, tag -> (type, count, value bytes), and the byte order."""

    endian = "<"


def _ifd0(exif: bytes) -> _Tags | None:
    """The first directory of an Exif segment; ``None`` unless every entry is
    of a known type and inside the block, without repeats (where Pillow has
    rules of its own, it decides)."""
    tiff = exif
    for _ in range(2):  # Pillow drops the name once or twice
        if tiff.startswith(b"Exif\0\0"):
            tiff = tiff[6:]
    if len(tiff) < 8:
        return None
    if tiff[:4] == b"II*\0":
        endian = "<"
    elif tiff[:4] == b"MM\0*":
        endian = ">"
    else:
        return None
    n = len(tiff)
    offset = struct.unpack(endian + "L", tiff[4:8])[0]
    if offset + 2 > n:
        return None
    count = struct.unpack(endian + "H", tiff[offset:offset + 2])[0]
    if offset + 2 + 12 * count + 4 > n:
        return None
    tags = _Tags()
    tags.endian = endian
    out_of_line = 0
    for k in range(count):
        at = offset + 2 + 12 * k
        tag, typ, values = struct.unpack(endian + "HHL", tiff[at:at + 8])
        if tag in tags or typ not in _TYPE_SIZE:
            return None
        size = values * _TYPE_SIZE[typ]
        if size == 0:
            return None
        if size > 4:
            start = struct.unpack(endian + "L", tiff[at + 8:at + 12])[0]
            out_of_line += size
            if start + size > n or out_of_line > n:
                return None
            raw = tiff[start:start + size]
        else:
            raw = tiff[at + 8:at + 8 + size]
        tags[tag] = (typ, values, raw)
    return tags


def _single_int(tags: _Tags, tag: int) -> int | None:
    """A SHORT or LONG entry holding one value, else ``None``."""
    typ, count, raw = tags[tag]
    if count != 1 or typ not in (3, 4):
        return None
    return struct.unpack(tags.endian + ("H" if typ == 3 else "L"), raw)[0]


# --- PNG ------------------------------------------------------------------------

#: (bit depth, colour type) pairs Pillow opens.
_PNG_MODES = {(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3),
              (8, 4), (16, 4), (8, 6), (16, 6)}
#: Chunks before the image data that Pillow reads without fail when they are
#: this long at least (shorter, it refuses the file).
_PNG_PLAIN = {b"PLTE": 0, b"pHYs": 9, b"sRGB": 1, b"gAMA": 4, b"cHRM": 32, b"bKGD": 0, b"tIME": 0, b"sBIT": 0,
              b"tEXt": 0}


def _png(data: bytes) -> Header | None:
    """A PNG's chunks up to its image data, as Pillow reads them (checksums
    included); ``None`` for an animated PNG or any chunk not plain."""
    n = len(data)
    i = 8
    size = None
    dpi = None
    while True:
        if i + 8 > n:
            return None
        length = struct.unpack(">L", data[i:i + 4])[0]
        cid = data[i + 4:i + 8]
        end = i + 8 + length
        if cid == b"IDAT":
            break
        if end + 4 > n:
            return None
        s = data[i + 8:end]
        if zlib.crc32(s, zlib.crc32(cid)) != struct.unpack(">L", data[end:end + 4])[0]:
            return None
        if cid == b"IHDR":
            if size is not None or length < 13 or (s[8], s[9]) not in _PNG_MODES or s[11]:
                return None
            size = struct.unpack(">LL", s[:8])
        elif length < _PNG_PLAIN.get(cid, length + 1):
            return None  # not a plain chunk, or one cut short
        elif cid == b"pHYs":
            px, py = struct.unpack(">LL", s[:8])
            if s[8] == 1:  # pixels per metre
                dpi = px * 0.0254, py * 0.0254
        i = end + 4
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return Header("PNG", size[0], size[1], dpi)
