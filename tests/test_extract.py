"""Archive and file checks (RELIABILITY Z1-Z9, I3-I4): every bad archive is
rejected with a reason that names the entry, before anything is written."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from batches.extract import ExtractError, Limits, iter_pages, upload_extension
from tests.conftest import make_zip

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100 + b"\xff\xd9"


DEFAULT = Limits()


def pages(data: bytes, limits: Limits = DEFAULT, name: str = "upload.zip"):
    return list(iter_pages(io.BytesIO(data), name, limits))


def rejected(data: bytes, limits: Limits = DEFAULT) -> str:
    with pytest.raises(ExtractError) as info:
        pages(data, limits)
    return str(info.value)


def test_good_archive_gives_pages_in_natural_order_and_skips_junk():
    data = make_zip([("scan10.jpg", JPEG), ("scan2.jpg", JPEG), ("notes.txt", b"hi"), ("__MACOSX/._scan2.jpg", b"x"),
                     ("sub/", b""), ("sub/scan1.jpg", JPEG), (".DS_Store", b"x")])
    assert [p.source_name for p in pages(data)] == ["scan2.jpg", "scan10.jpg", "sub/scan1.jpg"]
    assert all(p.extension == ".jpg" and p.data == JPEG for p in pages(data))


@pytest.mark.parametrize("name", ["../evil.jpg", "a/../../evil.jpg", "/etc/evil.jpg", "C:/evil.jpg",
                                  "C:evil.jpg", "dir\\evil.jpg", "ok/\x01evil.jpg"])
def test_z1_unsafe_names_reject_the_whole_archive(name):
    info = zipfile.ZipInfo("placeholder.jpg")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("good.jpg", JPEG)
        zf.writestr(info, JPEG)
    raw = buf.getvalue().replace(b"placeholder.jpg", name.encode().ljust(15, b"_")[:15]) if len(name) <= 15 else None
    if raw is None:  # longer names: write them directly (zipfile keeps them as given)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("good.jpg", JPEG)
            zf.writestr(zipfile.ZipInfo(name), JPEG)
        raw = buf.getvalue()
    message = rejected(raw)
    assert "unsafe path" in message or "control characters" in message
    assert "evil" in message


def test_z1_symlinks_are_rejected():
    link = zipfile.ZipInfo("link.jpg")
    link.create_system = 3
    link.external_attr = (0o120777 << 16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    assert "link.jpg" in rejected(buf.getvalue()) and "symbolic link" in rejected(buf.getvalue())


@pytest.mark.parametrize(("first", "second"), [("Scan.jpg", "scan.JPG"), ("caf\u00e9.jpg", "cafe\u0301.jpg"),
                                               ("a.jpg", "a.jpg")])
def test_z2_duplicate_names_are_rejected(first, second):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(first, JPEG)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate itself
            zf.writestr(second, JPEG)
    assert "duplicate name" in rejected(buf.getvalue())


def test_z3_compression_bomb_is_stopped_by_the_ratio_cap():
    data = make_zip([("bomb.tif", b"\0" * 20_000_000)], compression=zipfile.ZIP_DEFLATED)
    message = rejected(data)
    assert "bomb.tif" in message and "ratio" in message


def test_z3_total_size_cap():
    data = make_zip([(f"p{i}.jpg", JPEG) for i in range(5)])
    assert "over the limit" in rejected(data, Limits(max_uncompressed=3 * len(JPEG)))


def test_z3_an_entry_that_lies_about_its_size_is_rejected():
    data = bytearray(make_zip([("big.jpg", JPEG * 50)]))
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # declared uncompressed size: 10 bytes
    message = rejected(bytes(data))
    assert "big.jpg" in message


def test_z4_overlapping_entries_are_rejected():
    data = make_zip([("a.jpg", JPEG)])
    cd_start = data.index(b"PK\x01\x02")
    eocd = data.index(b"PK\x05\x06")
    cd = data[cd_start:eocd]
    cd2 = cd.replace(b"a.jpg", b"b.jpg")
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(cd) * 2, cd_start, 0)
    message = rejected(data[:cd_start] + cd + cd2 + end)
    assert "overlaps another entry" in message


def test_z5_nested_archives_are_rejected_by_name_and_by_content():
    inner = make_zip([("x.jpg", JPEG)])
    assert "nested archives" in rejected(make_zip([("inner.zip", inner)]))
    message = rejected(make_zip([("sneaky.jpg", inner)]))
    assert "sneaky.jpg" in message and "nested archives" in message


def test_z5_too_many_entries_and_long_names():
    assert "over the limit of 3" in rejected(make_zip([(f"{i}.jpg", JPEG) for i in range(4)]), Limits(max_entries=3))
    assert "longer than" in rejected(make_zip([("x" * 300 + ".jpg", JPEG)]))


def test_z6_encrypted_entries():
    data = bytearray(make_zip([("secret.jpg", JPEG)]))
    struct.pack_into("<H", data, 6, 1)  # local header: encrypted
    struct.pack_into("<H", data, data.index(b"PK\x01\x02") + 8, 1)  # central directory: encrypted
    message = rejected(bytes(data))
    assert "password-protected archives are not supported" in message and "secret.jpg" in message


def test_z7_non_utf8_names_are_read_and_reported():
    data = make_zip([("placeholder.jpg", JPEG)]).replace(b"placeholder.jpg", b"sch\x81ler_000.jpg")
    [page] = pages(data)
    assert page.source_name == "sch\u00fcler_000.jpg"  # CP437, as the ZIP format says


def test_z8_truncated_and_bad_crc_archives():
    data = make_zip([("a.jpg", JPEG * 20), ("b.jpg", JPEG * 20)])
    assert "not a valid ZIP" in rejected(data[: len(data) // 2])
    broken = bytearray(data)
    broken[60] ^= 0xFF  # a byte inside a.jpg's stored data
    assert "damaged" in rejected(bytes(broken))


def test_z9_unknown_content_keeps_its_image_extension():
    [page] = pages(make_zip([("renamed.png", b"plain text")]))
    assert page.extension == ".png" and page.data == b"plain text"


def test_single_files_and_page_limit():
    assert [p.extension for p in pages(JPEG, name="one.jpg")] == [".jpg"]
    assert "more than 2 pages" in rejected(make_zip([(f"{i}.jpg", JPEG) for i in range(3)]), Limits(max_pages=2))


def test_i3_pdf_with_too_many_pages():
    from PIL import Image

    buf = io.BytesIO()
    frames = [Image.new("L", (50, 70), 255) for _ in range(3)]
    frames[0].save(buf, "PDF", save_all=True, append_images=frames[1:])
    message = rejected(buf.getvalue(), Limits(max_pages=2))
    assert "3 pages, over the limit of 2" in message


def test_i3_huge_pdf_page_box_is_clamped_to_the_pixel_cap():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (2000, 2000), 255).save(buf, "PDF", resolution=10)  # a 5 m x 5 m page
    [page] = pages(buf.getvalue(), Limits(max_pixels=1_000_000), name="poster.pdf")
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(page.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape[0] * image.shape[1] <= 1_000_000


def test_i4_malformed_pdf():
    assert "damaged" in rejected(b"%PDF-1.7\n1 0 obj broken", Limits())


def test_upload_extension_checks():
    assert upload_extension("Scans.ZIP") == ".zip"
    with pytest.raises(ExtractError, match="unsupported file type"):
        upload_extension("evil.exe")


def test_crc_helper_sanity():
    # The test archives above are real ZIPs: their CRCs are right until broken.
    data = make_zip([("a.jpg", JPEG)])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("a.jpg").CRC == zlib.crc32(JPEG)
