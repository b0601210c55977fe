"""The header reader (``batches.omr.headers``) says of a file what Pillow says:
format, size, pages, declared dpi and EXIF orientation. Each file is probed
twice, once as the engine does (headers first) and once through Pillow
alone, and the two must agree, on real scans and photos, on files written
with every resolution and orientation field, and on damaged copies."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from batches.omr import headers, imageio

# Pillow warns about the damaged EXIF blocks these tests make on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REAL = Path(__file__).resolve().parents[1] / "data" / "real-sheets"


def _through_pillow(data: bytes, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(imageio, "read_header", lambda _data: None)
        m.setattr(imageio, "jpeg_orientation", lambda _data: None)
        return _probe(data)


def _probe(data: bytes) -> tuple:
    try:
        info = imageio.probe(data)
    except imageio.ImageError as exc:
        return ("error", str(exc))
    return (info, imageio.exif_orientation(data))


def _same_as_pillow(data: bytes, monkeypatch) -> tuple:
    ours = _probe(data)
    assert ours == _through_pillow(data, monkeypatch)
    return ours


def _image(mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (48, 64, 3 if mode == "RGB" else 1), dtype=np.uint8)
    return Image.fromarray(a[:, :, 0] if mode == "L" else a, mode)


def _jpeg(**save) -> bytes:
    buf = io.BytesIO()
    _image(save.pop("mode", "L")).save(buf, "JPEG", **save)
    return buf.getvalue()


def _png(**save) -> bytes:
    buf = io.BytesIO()
    _image().save(buf, "PNG", **save)
    return buf.getvalue()


def _exif(entries: list[tuple[int, int, int, bytes]], order: str = "<") -> bytes:
    """An Exif segment body: IFD0 with (tag, type, count, value) entries,
    values over 4 bytes placed after the directory."""
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    after = 8 + 2 + 12 * len(entries) + 4
    table, extra = b"", b""
    for tag, typ, count, value in entries:
        if len(value) > 4:
            table += struct.pack(order + "HHLL", tag, typ, count, after + len(extra))
            extra += value
        else:
            table += struct.pack(order + "HHL", tag, typ, count) + value.ljust(4, b"\0")
    return b"Exif\0\0" + head + struct.pack(order + "H", len(entries)) + table + b"\0\0\0\0" + extra


def _with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """``jpeg`` with one more segment right after its start marker."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _without_jfif(jpeg: bytes) -> bytes:
    assert jpeg[2:4] == b"\xff\xe0"
    return jpeg[:2] + jpeg[4 + struct.unpack(">H", jpeg[4:6])[0]:]


def _short(order: str, value: int) -> bytes:
    return struct.pack(order + "H", value)


def _rational(order: str, num: int, den: int) -> bytes:
    return struct.pack(order + "LL", num, den)


def test_real_scans_and_photos_are_read_from_their_headers(monkeypatch):
    files = [p for p in REAL.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(files) >= 14
    for path in files:
        data = path.read_bytes()
        assert headers.read_header(data) is not None, path
        _same_as_pillow(data, monkeypatch)


def test_resolution_fields_give_pillows_dpi(monkeypatch):
    base = _without_jfif(cv2.imencode(".jpg", np.full((40, 30), 200, np.uint8))[1].tobytes())
    jfif = [_jpeg(dpi=(300, 300)), _jpeg(dpi=(96, 200)), _jpeg(dpi=(1, 1)), _jpeg()]
    cm = bytearray(_jpeg(dpi=(118, 118)))
    cm[2 + 4 + 7] = 2  # JFIF unit: dots per cm
    exif = []
    for order in "<>":
        for unit in (2, 3, 1):
            exif.append(_with_segment(base, 0xE1, _exif([(0x011A, 5, 1, _rational(order, 600, 1)),
                                                          (0x0128, 3, 1, _short(order, unit))], order)))
        exif.append(_with_segment(base, 0xE1, _exif([(0x011A, 5, 1, _rational(order, 300, 0)),
                                                      (0x0128, 3, 1, _short(order, 2))], order)))
        exif.append(_with_segment(base, 0xE1, _exif([(0x011A, 5, 1, _rational(order, 300, 1))], order)))
        exif.append(_with_segment(base, 0xE1, _exif([(0x011A, 3, 1, _short(order, 250)),
                                                      (0x0128, 3, 1, _short(order, 2))], order)))
    png = [_png(dpi=(300, 300)), _png(dpi=(72.5, 600)), _png()]
    seen = set()
    for data in jfif + [bytes(cm)] + exif + png:
        assert headers.read_header(data) is not None
        info, _orientation = _same_as_pillow(data, monkeypatch)
        seen.add(info.dpi)
    assert {0.0, 300.0, 600.0, 250.0, 600 * 2.54} <= seen


@pytest.mark.parametrize("order", "<>")
def test_exif_and_xmp_orientation_give_pillows(order, monkeypatch):
    base = _without_jfif(_jpeg())
    cases = []
    for value in range(0, 10):
        cases.append(_with_segment(base, 0xE1, _exif([(0x0112, 3, 1, _short(order, value))], order)))
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta tiff:Orientation=\"6\"/>"
    cases.append(_with_segment(base, 0xE1, xmp))
    cases.append(_with_segment(cases[3], 0xE1, xmp))  # the EXIF's 3 wins
    cases.append(_with_segment(_with_segment(base, 0xE1, _exif([(0x0100, 4, 1, struct.pack(order + "L", 9))],
                                                               order)), 0xE1, xmp))
    got = []
    for data in cases:
        assert headers.jpeg_orientation(data) is not None
        got.append(_same_as_pillow(data, monkeypatch)[1])
    assert got == [1, 1, 2, 3, 4, 5, 6, 7, 8, 1, 6, 3, 6]


def test_files_left_to_pillow(monkeypatch):
    base = _jpeg()
    mpo = _with_segment(base, 0xE2, b"MPF\0" + b"\0" * 20)
    two_exif = _with_segment(_with_segment(base, 0xE1, _exif([(0x0112, 3, 1, _short("<", 6))])), 0xE1,
                             _exif([(0x0112, 3, 1, _short("<", 3))]))
    odd_type = _with_segment(base, 0xE1, _exif([(0x0112, 4, 2, b"\6\0\0\0\3\0\0\0")]))
    buf = io.BytesIO()
    _image().save(buf, "PNG", save_all=True, append_images=[_image("L").transpose(Image.Transpose.ROTATE_180)])
    apng = buf.getvalue()
    bad_crc = bytearray(_png(dpi=(300, 300)))
    bad_crc[29] ^= 1  # inside IHDR's checksum
    tiff = io.BytesIO()
    _image().save(tiff, "TIFF")
    for data in (mpo, two_exif, odd_type, apng, bytes(bad_crc), tiff.getvalue()):
        assert headers.read_header(data) is None or headers.jpeg_orientation(data) is None
        _same_as_pillow(data, monkeypatch)


def test_damaged_headers_read_as_pillow_reads_them(monkeypatch):
    """Random bytes of the headers changed: wherever the header reader still
    answers, Pillow gives the same answer (or the same refusal)."""
    rng = random.Random(5)
    exif = _exif([(0x0112, 3, 1, _short("<", 6)), (0x011A, 5, 1, _rational("<", 300, 1)),
                  (0x0128, 3, 1, _short("<", 2))])
    sources = [_with_segment(_without_jfif(_jpeg()), 0xE1, exif), _jpeg(dpi=(200, 200)), _png(dpi=(300, 300)),
               (REAL / "omrchecker" / "sample1" / "MobileCamera" / "sheet1.jpg").read_bytes()]
    answered = 0
    for data in sources:
        head = min(len(data), 400)
        for _ in range(150):
            copy = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                copy[rng.randrange(head)] = rng.randrange(256)
            copy = bytes(copy)
            answered += headers.read_header(copy) is not None
            _same_as_pillow(copy, monkeypatch)
    assert answered > 100  # most damaged copies still took the header reader's way


def test_png_chunks_are_checked_as_pillow_checks_them(monkeypatch):
    png = _png(dpi=(300, 300))
    # A gAMA chunk cut to 2 bytes: Pillow refuses the file, and so does the probe.
    body = b"\0\1"
    chunk = struct.pack(">L", len(body)) + b"gAMA" + body + struct.pack(">L", zlib.crc32(body, zlib.crc32(b"gAMA")))
    cut = png[:33] + chunk + png[33:]
    assert headers.read_header(cut) is None
    assert _same_as_pillow(cut, monkeypatch)[0] == "error"
