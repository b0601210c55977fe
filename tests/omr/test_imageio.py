"""Decoding uploads: formats, pages, damaged files and the pixel cap."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from batches.omr.imageio import ImageError, load_grey_for_reading, load_images, probe, reduction_for
from batches.omr.reader import read_image_bytes


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _jpeg(img: np.ndarray, dpi: int | None = None) -> bytes:
    out = io.BytesIO()
    pil = Image.fromarray(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    pil.save(out, "JPEG", quality=85, **({"dpi": (dpi, dpi)} if dpi else {}))
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming a size, with a tiny (wrong) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_empty_file():
    with pytest.raises(ImageError, match="empty file"):
        load_images(b"")


def test_not_an_image():
    with pytest.raises(ImageError, match="not an image"):
        load_images(b"%PDF-1.4 hello, this is not a picture" * 10)


def test_truncated_jpeg():
    img = np.full((400, 300), 200, np.uint8)
    cv2.putText(img, "x", (50, 200), cv2.FONT_HERSHEY_SIMPLEX, 4, 0, 8)
    data = _jpeg(img)
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_images(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_grey_for_reading(data[: len(data) // 2])


def test_truncated_png():
    img = (np.random.default_rng(0).random((300, 300)) * 255).astype(np.uint8)
    data = _png(img)
    with pytest.raises(ImageError):
        load_images(data[: len(data) // 2])


def test_pixel_cap_is_checked_before_decoding():
    data = _png_header_only(50000, 50000)
    t = time.perf_counter()
    with pytest.raises(ImageError, match=r"50000 x 50000 pixels, over the limit of 60 MP"):
        load_images(data)
    assert time.perf_counter() - t < 0.5  # nothing was decoded
    with pytest.raises(ImageError, match="over the limit of 1 MP"):
        load_images(_png(np.zeros((1200, 1000), np.uint8)), max_pixels=1_000_000)


def test_name_prefixes_the_reason():
    with pytest.raises(ImageError, match=r"^scan7\.jpg: empty file$"):
        load_images(b"", "scan7.jpg")


def test_colour_grey_and_16_bit():
    colour = np.zeros((60, 80, 3), np.uint8)
    colour[:, :, 2] = 255
    (page,) = load_images(_png(colour))
    assert page.shape == (60, 80, 3) and page[0, 0, 2] == 255
    (grey,) = load_images(_png(colour), grey=True)
    assert grey.shape == (60, 80)
    deep = np.full((50, 40), 40000, np.uint16)
    (p16,) = load_images(_png(deep))
    assert p16.dtype == np.uint8 and p16.shape == (50, 40) and abs(int(p16[0, 0]) - 156) <= 1


def test_alpha_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    (page,) = load_images(_png(rgba), grey=True)
    assert page.min() == 255


def test_multi_page_tiff():
    frames = [Image.fromarray(np.full((120, 90), v, np.uint8)) for v in (10, 120, 250)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    pages = load_images(out.getvalue())
    assert [int(p[0, 0]) for p in pages] == [10, 120, 250]
    assert probe(out.getvalue()).pages == 3
    reading_pages = load_grey_for_reading(out.getvalue())
    assert len(reading_pages) == 3 and all(p.scale == 1 for p in reading_pages)


def test_bilevel_fax_tiff():
    img = np.full((200, 160), 255, np.uint8)
    img[50:100, 40:120] = 0
    out = io.BytesIO()
    Image.fromarray(img).convert("1").save(out, "TIFF", compression="group4")
    (page,) = load_images(out.getvalue())
    assert page.dtype == np.uint8 and page[75, 80] == 0 and page[10, 10] == 255


def test_scans_are_shrunk_while_decoding_photos_are_not():
    scan = np.full((3508, 2480), 230, np.uint8)
    data = _jpeg(scan, dpi=300)
    info = probe(data)
    assert info.dpi == 300 and reduction_for(info) == 2
    (page,) = load_grey_for_reading(data)
    assert page.scale == 2 and page.image.shape == (1754, 1240) and (page.width, page.height) == (2480, 3508)
    # A 150-dpi scan would drop under the reading resolution: decoded whole.
    assert reduction_for(probe(_jpeg(np.full((1754, 1240), 230, np.uint8), dpi=150))) == 1
    # A 4:3 phone photo: the page may be small in it, decoded whole.
    assert reduction_for(probe(_jpeg(np.full((3000, 4000), 230, np.uint8)))) == 1
    # ...unless it is huge: a 48 MP photo is halved.
    assert reduction_for(probe(_jpeg(np.full((6000, 8000), 230, np.uint8)))) == 2
    # A 600-dpi scan keeps at least 140 dpi at a quarter.
    assert reduction_for(probe(_jpeg(np.full((7016, 4960), 230, np.uint8), dpi=600))) == 4


def test_undecodable_upload_gives_one_unreadable_reading():
    for data in (b"", b"garbage" * 50):
        (r,) = read_image_bytes(data, source="x.jpg")
        d = r.to_dict()
        assert d["error"] and d["sheet_flags"] == ["unreadable"] and d["needs_review"]
        assert d["answers"] == {} and d["file"] == "x.jpg"


def test_exif_orientation_is_applied_and_sizes_follow():
    from batches.omr import load_template
    from tests.omr.reader_sheets import draw_sheet

    t = load_template("a4-100q-5")
    pil = Image.fromarray(draw_sheet(t, dpi=300, answers={"q1": "C"}))
    exif = pil.getexif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    out = io.BytesIO()
    pil.save(out, "JPEG", quality=85, dpi=(300, 300), exif=exif.tobytes())
    (r,) = read_image_bytes(out.getvalue(), t)
    d = r.to_dict()
    assert d["image_size"] == [3508, 2480] and d["orientation"] == 90 and d["answers"]["q1"] == "C"
