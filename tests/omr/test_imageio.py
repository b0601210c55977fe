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


def _upright_test_page(height: int = 240, width: int = 180) -> np.ndarray:
    """A page no flip or turn maps onto itself: a dark block in the top-left corner."""
    img = np.full((height, width), 220, np.uint8)
    img[10:60, 10:40] = 0
    img[height - 30:height - 10, width // 2:width - 10] = 90
    return img


def _with_orientation(stored: np.ndarray, orientation: int, fmt: str, **save) -> bytes:
    pil = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    pil.save(out, fmt, exif=exif.tobytes(), **save)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_every_exif_orientation_decodes_as_viewers_show_it(fmt):
    from PIL import ImageOps

    stored = _upright_test_page()
    for orientation in range(1, 9):
        data = _with_orientation(stored, orientation, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
        (page,) = load_images(data, grey=True)
        assert page.shape == shown.shape, (fmt, orientation)
        # The tag was written and acted on: a quarter turn swaps the sides, any other changes the pixels.
        if orientation >= 5:
            assert page.shape == stored.shape[::-1], (fmt, orientation)
        elif orientation > 1:
            assert np.abs(page.astype(int) - stored.astype(int)).max() > 100, (fmt, orientation)
        assert np.abs(page.astype(int) - shown.astype(int)).max() <= 2, (fmt, orientation)
        (reading,) = load_grey_for_reading(data)
        assert np.array_equal(reading.image, page)
        assert (reading.width, reading.height) == (page.shape[1], page.shape[0])


def test_a_sideways_scan_shrunk_while_decoding_reads_upright():
    scan = np.full((3508, 2480), 230, np.uint8)
    scan[100:400, 100:300] = 0  # top-left block of the upright page
    stored = cv2.rotate(scan, cv2.ROTATE_90_COUNTERCLOCKWISE)  # what orientation 6 turns back
    data = _with_orientation(stored, 6, "JPEG", quality=85, dpi=(300, 300))
    (page,) = load_grey_for_reading(data)
    assert page.scale == 2 and (page.width, page.height) == (2480, 3508)
    assert page.image.shape == (1754, 1240)
    assert page.image[100:180, 60:130].mean() < 40 and page.image[1600:1700, 1100:1200].mean() > 200


def test_orientation_tag_of_each_tiff_page():
    stored = _upright_test_page()
    first, second = Image.fromarray(stored), Image.fromarray(stored)
    second.encoderinfo = {"tiffinfo": {0x0112: 3}}  # only the second page is stored upside down
    out = io.BytesIO()
    first.save(out, "TIFF", save_all=True, append_images=[second])
    pages = load_images(out.getvalue(), grey=True)
    assert np.array_equal(pages[0], stored)
    assert np.array_equal(pages[1], cv2.rotate(stored, cv2.ROTATE_180))


def test_jpeg_with_bytes_after_its_end_marker_decodes_as_the_image():
    img = _upright_test_page(400, 300)
    data = _jpeg(img)
    plain = load_images(data, grey=True)[0]
    thumbnail = _jpeg(np.zeros((16, 16), np.uint8))
    # An APP segment holding a whole small JPEG (as an EXIF thumbnail does): its
    # end marker is not the image's end.
    app = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = data[:2] + app + data[2:]
    trailers = {
        "maker trailer": data + b"\x00\x01maker-notes" * 300,
        "second image": data + _jpeg(np.full((60, 80), 30, np.uint8)),
        "video": data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40,
        "thumbnail and trailer": with_thumbnail + b"MotionPhoto_Data" + b"\xff\x00\x12" * 500,
    }
    for what, blob in trailers.items():
        assert np.array_equal(load_images(blob, grey=True)[0], plain), what
        assert np.array_equal(load_grey_for_reading(blob)[0].image, plain), what
    progressive = io.BytesIO()
    Image.fromarray(img).save(progressive, "JPEG", quality=85, progressive=True)
    expected = load_images(progressive.getvalue(), grey=True)[0]
    assert np.array_equal(load_images(progressive.getvalue() + b"trailer" * 200, grey=True)[0], expected)
    # A scan shrunk while decoding takes the same path.
    scan = _jpeg(np.full((3508, 2480), 230, np.uint8), dpi=300)
    (page,) = load_grey_for_reading(scan + b"scanner-trailer" * 100)
    assert page.scale == 2 and page.image.shape == (1754, 1240)


def test_cut_jpeg_is_refused_whatever_follows_the_cut():
    img = _upright_test_page(400, 300)
    data = _jpeg(img)
    thumbnail = _jpeg(np.zeros((16, 16), np.uint8))
    app = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = data[:2] + app + data[2:]
    for blob in (data[: len(data) // 2] + b"\x00" * 64,  # padded after the cut
                 data[:700],  # headers only
                 with_thumbnail[: len(with_thumbnail) - 500]):  # only the thumbnail's end marker is left
        with pytest.raises(ImageError, match="truncated JPEG"):
            load_images(blob)
        with pytest.raises(ImageError, match="truncated JPEG"):
            load_grey_for_reading(blob)


def test_broken_files_get_a_plain_reason():
    data = _jpeg(_upright_test_page(400, 300))
    cases = {
        b"\xff\xd8" + bytes(range(256)) * 20: "not an image",  # a JPEG start, then noise
        data[:2] + b"\xff\xc0\x00\x11" + data[2:60]: r"truncated JPEG|damaged JPEG|not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40: "not an image",
    }
    for blob, reason in cases.items():
        with pytest.raises(ImageError, match=reason):
            load_images(blob, "upload.jpg")


def test_real_sheets_decode_at_their_recorded_size():
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data" / "real-sheets" / "omrchecker"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    assert len(rows) == 15
    for row in rows:
        path = root / row["image"].removeprefix("omrchecker_samples/")
        (page,) = load_grey_for_reading(path.read_bytes(), path.name)
        assert (page.width, page.height) == (int(row["width"]), int(row["height"])), path


def test_png_orientation_given_by_xmp_or_a_text_chunk_is_applied():
    # A PNG may say its orientation elsewhere than in an eXIf chunk: XMP
    # (tiff:Orientation) or a "Raw profile type exif" text, as viewers read them.
    from PIL import ImageOps, PngImagePlugin

    stored = _upright_test_page()
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()[6:].hex()  # without the "Exif\0\0" header, as ImageMagick writes it
    for key, value in [("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'),
                       ("Raw profile type exif", f"\nexif\n{len(raw) // 2}\n{raw}\n")]:
        info = PngImagePlugin.PngInfo()
        (info.add_itxt if key.startswith("XML") else info.add_text)(key, value)
        out = io.BytesIO()
        Image.fromarray(stored).save(out, "PNG", pnginfo=info)
        data = out.getvalue()
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
        assert shown.shape == stored.shape[::-1], key  # the viewer turns it
        (page,) = load_images(data, grey=True)
        assert np.array_equal(page, shown), key
