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


# ---------------------------------------------------------------- JPEG headers read without Pillow


def _exif_block(entries: list[tuple[int, int, int, bytes]], big: bool = False) -> bytes:
    """An EXIF APP1 body: a TIFF header and one directory of (tag, type, count,
    value bytes) entries, values over 4 bytes stored after it."""
    e = ">" if big else "<"
    out_at = 8 + 2 + 12 * len(entries) + 4
    ifd, extra = struct.pack(e + "H", len(entries)), b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            ifd += struct.pack(e + "HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            ifd += struct.pack(e + "HHII", tag, kind, count, out_at + len(extra))
            extra += value
    head = (b"MM\x00*" if big else b"II*\x00") + struct.pack(e + "I", 8)
    return b"Exif\x00\x00" + head + ifd + b"\x00\x00\x00\x00" + extra


def _with_segments(jpeg: bytes, *bodies: tuple[int, bytes], jfif: bool = True) -> bytes:
    """``jpeg`` with its JFIF segment kept or dropped and marker segments added after it."""
    assert jpeg[2:4] == b"\xff\xe0"
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    added = b"".join(b"\xff" + bytes([m]) + struct.pack(">H", len(b) + 2) + b for m, b in bodies)
    return jpeg[:2] + (jpeg[2:app0_end] if jfif else b"") + added + jpeg[app0_end:]


def _pillow_says(data: bytes):
    """What the header says according to Pillow itself: (format, size, pages, dpi), orientation."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            raw = im.info.get("dpi")
            dpi = float(max(raw)) if raw else 0.0
            info = (im.format, im.size, getattr(im, "n_frames", 1), dpi if dpi >= 20 else 0.0)
    except Exception:  # noqa: BLE001 - refused: whatever the reason
        info = "refused"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001
        o = 1
    return info, (o if isinstance(o, int) and 1 <= o <= 8 else 1)


def _we_say(data: bytes):
    import warnings

    from batches.omr.imageio import exif_orientation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's, on the damaged files left to it
        try:
            i = probe(data)
            info = (i.format, (i.width, i.height), i.pages, i.dpi)
        except Exception:  # noqa: BLE001
            info = "refused"
        return info, exif_orientation(data)


def _header_cases() -> list[tuple[str, bytes, bool]]:
    """(name, file, whether it is plain enough to be read without Pillow)."""
    grey = np.tile(np.arange(0, 240, 2, dtype=np.uint8), (90, 1))
    plain = _jpeg(grey)
    colour = cv2.merge([grey, grey[::-1], 255 - grey])
    short = lambda v, e="<": struct.pack(e + "H", v)  # noqa: E731
    ratio = lambda a, b, e="<": struct.pack(e + "II", a, b)  # noqa: E731
    cases = [("plain", plain, True), ("300 dpi", _jpeg(grey, dpi=300), True),
             ("dots per cm", plain[:13] + b"\x02" + plain[14:], True),
             ("bytes after the end", plain + b"\x00trailer" * 50, True)]
    out = io.BytesIO()
    Image.fromarray(colour).save(out, "JPEG", quality=80, progressive=True)
    cases.append(("progressive colour", out.getvalue(), True))
    for o in range(0, 10):
        cases.append((f"orientation {o}", _with_segments(plain, (0xE1, _exif_block([(0x0112, 3, 1, short(o))]))), True))
    for jfif in (True, False):
        for unit in (None, 1, 2, 3):
            for x_res in (None, (300, 1), (7200, 24), (0, 0), (300, 0), (1, 3)):
                entries = [(0x0112, 3, 1, short(6))]
                if x_res is not None:
                    entries.append((0x011A, 5, 1, ratio(*x_res)))
                if unit is not None:
                    entries.append((0x0128, 3, 1, short(unit)))
                for big in (False, True):
                    e = ">" if big else "<"
                    entries_e = [(t, k, c, short(int.from_bytes(v[:2], "little"), e) if k == 3 else
                                  ratio(*struct.unpack("<II", v), e)) for t, k, c, v in entries]
                    data = _with_segments(plain, (0xE1, _exif_block(entries_e, big)), jfif=jfif)
                    cases.append((f"jfif {jfif} unit {unit} x_res {x_res} big {big}", data, True))
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation=\"8\"/></x:xmpmeta>"
    unusual = [
        ("orientation stored as a long", _with_segments(plain, (0xE1, _exif_block([(0x0112, 4, 1, struct.pack("<I", 6))])))),
        ("orientation twice", _with_segments(plain, (0xE1, _exif_block([(0x0112, 3, 1, short(3)), (0x0112, 3, 1, short(6))])))),
        ("two EXIF blocks", _with_segments(plain, (0xE1, _exif_block([(0x0112, 3, 1, short(3))])),
                                           (0xE1, _exif_block([(0x0112, 3, 1, short(6))])))),
        ("resolution past the block", _with_segments(
            plain, (0xE1, _exif_block([(0x011A, 5, 1, ratio(300, 1)), (0x0128, 3, 1, short(2))])[:-8]), jfif=False)),
        ("XMP orientation", _with_segments(plain, (0xE1, xmp))),
        ("EXIF header only", _with_segments(plain, (0xE1, b"Exif\x00\x00"), jfif=False)),
        ("short JFIF", plain[:4] + b"\x00\x07JFIF\x00" + plain[4 + int.from_bytes(plain[4:6], "big"):]),
        ("junk between segments", plain[:2] + b"\x00\x00" + plain[2:]),
        ("cut in its header", plain[:40]),
    ]
    return cases + [(name, data, False) for name, data in unusual]


def _png_cases() -> list[tuple[str, bytes, bool]]:
    """(name, PNG file, whether it is plain enough to be read without Pillow)."""
    grey = np.tile(np.arange(0, 240, 2, dtype=np.uint8), (90, 1))

    def pillow_png(img, **save) -> bytes:
        out = io.BytesIO()
        img.save(out, "PNG", **save)
        return out.getvalue()

    def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
        crc = zlib.crc32(kind + body) if crc is None else crc
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)

    def before_image(png: bytes, *chunks: bytes) -> bytes:
        at = png.index(b"IDAT") - 4
        return png[:at] + b"".join(chunks) + png[at:]

    plain = _png(grey)
    text = Image.fromarray(grey)
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Comment", "a scan")
    exif = Image.Exif()
    exif[0x0112] = 6
    phys = lambda x, y, unit: chunk(b"pHYs", struct.pack(">IIB", x, y, unit))  # noqa: E731
    return [
        ("grey", plain, True), ("colour", _png(cv2.merge([grey, grey[::-1], 255 - grey])), True),
        ("16 bit", _png(grey.astype(np.uint16) * 257), True),
        ("palette", pillow_png(Image.fromarray(grey).convert("P")), True),
        ("bilevel", pillow_png(Image.fromarray(grey).convert("1")), True),
        ("300 dpi", pillow_png(Image.fromarray(grey), dpi=(300, 300)), True),
        ("pixels per metre", before_image(plain, phys(11811, 11000, 1)), True),
        ("an aspect only", before_image(plain, phys(3, 2, 0)), True),
        ("gamma and sRGB", before_image(plain, chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\x00")), True),
        ("text", pillow_png(text, pnginfo=info), False),
        ("EXIF orientation", pillow_png(Image.fromarray(grey), exif=exif.tobytes()), False),
        ("EXIF after the image", plain[:-12] + chunk(b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif")
                                                    else exif.tobytes()) + plain[-12:], False),
        ("bad checksum", before_image(plain, chunk(b"gAMA", struct.pack(">I", 45455), crc=1)), False),
        ("short gamma", before_image(plain, chunk(b"gAMA", b"\x00\x01")), False),
        ("unknown chunk", before_image(plain, chunk(b"tIME", b"\x07\xea\x0c\x06\x16\x00\x00")), False),
        ("cut", plain[:60], False),
    ]


def test_a_plain_jpeg_or_png_header_is_read_as_pillow_reads_it():
    from batches.omr.imageio import _plain_header

    for name, data, plain in _header_cases() + _png_cases():
        assert _we_say(data) == _pillow_says(data), name
        # The plain ones are read without Pillow; the others are left to it.
        assert (_plain_header(data) is not None) == plain, name
