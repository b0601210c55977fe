"""Property tests of archive inspection and extraction (Hypothesis): random
bytes, and valid archives mutated (bytes flipped, inserted, cut; entries
renamed to hostile names, duplicated, given lying sizes, flags, methods and
file types) give either ``ExtractError`` with a one-line reason, or pages that
land only in the target folder under generated names. Never another
exception, never a file anywhere else, never a temporary file left behind."""

from __future__ import annotations

import io
import re
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from batches.pipeline.extract import IMAGE_EXTENSIONS, ExtractError, Limits, check_archive, iter_pages

# Pillow warns (and goes on) about corrupt TIFF metadata: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

LIMITS = Limits(max_entries=12, max_pages=20, max_uncompressed=300_000, max_ratio=50, max_name_length=64,
                pdf_timeout=20)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


def _payloads() -> dict[str, bytes]:
    import cv2
    import numpy as np
    from PIL import Image

    grey = (np.arange(24 * 16, dtype=np.uint8).reshape(24, 16) * 7).astype(np.uint8)
    tiff = io.BytesIO()
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    return {
        "jpeg": cv2.imencode(".jpg", grey)[1].tobytes(),
        "png": cv2.imencode(".png", grey)[1].tobytes(),
        "tiff": tiff.getvalue(),
        "text": b"not a picture\n" * 20,
        "zeros": b"\0" * 60_000,  # compresses 500:1
        "empty": b"",
        "zip": b"PK\x05\x06" + b"\0" * 18,
    }


PAYLOADS = _payloads()
GOOD_NAMES = [b"scan_001.jpg", b"scan_002.png", b"pages.tif", b"sub/scan_003.jpg", b"notes.txt", b"sub/"]
HOSTILE_NAMES = [b"../evil.jpg", b"a/../../evil.jpg", b"/etc/evil.jpg", b"C:/evil.jpg", b"C:evil.jpg",
                 b"dir\\evil.jpg", b"ok/\x01evil.jpg", b"ok/evil\x00.jpg", b"SCAN_001.JPG", b"./scan_001.jpg",
                 b"sch\x81ler.jpg", b"\xff\xfe.jpg", b"inner.zip", b"x" * 70 + b".jpg", b"", b"/", b".",
                 b"__MACOSX/._scan.jpg", "caf\u00e9.jpg".encode(), "cafe\u0301.jpg".encode()]
MODES = [0, 0o100644 << 16, 0o040755 << 16, 0o120777 << 16, 0o020644 << 16, 0o010644 << 16]


def _pack(method: int, data: bytes) -> bytes:
    if method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        packer = zipfile._get_compressor(method)
        return packer.compress(data) + packer.flush()
    return data


@st.composite
def entries(draw):
    # Mostly well-formed, so that many examples get as far as reading the data.
    name = draw(st.one_of(st.sampled_from(GOOD_NAMES), st.sampled_from(GOOD_NAMES), st.sampled_from(GOOD_NAMES),
                          st.sampled_from(HOSTILE_NAMES), st.binary(max_size=20)))
    data = PAYLOADS[draw(st.sampled_from(sorted(PAYLOADS)))]
    method = draw(st.sampled_from([0, 0, 0, 8, 8, 8, 12, 14, 99, 6]))
    packed = _pack(method, data)
    size = len(data) + draw(st.sampled_from([0] * 6 + [-1, 1, -len(data), 10**6, 2**32 - 1 - len(data)]))
    return {
        "name": name, "packed": packed, "size": max(0, min(size, 2**32 - 1)), "method": method,
        "crc": zlib.crc32(data) ^ draw(st.sampled_from([0] * 6 + [1])),
        "flags": draw(st.sampled_from([0] * 6 + [0x800, 0x800, 0x1, 0x8, 0x41])),
        "system": draw(st.sampled_from([0, 3, 3, 19])), "mode": draw(st.sampled_from(MODES[:2] * 6 + MODES)),
    }


def build(items: list[dict]) -> bytes:
    out, central = bytearray(), bytearray()
    for e in items:
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, e["flags"], e["method"], 0, 0x21, e["crc"],
                           len(e["packed"]), e["size"], len(e["name"]), 0) + e["name"] + e["packed"]
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, e["system"], 20, 0, e["flags"], e["method"], 0,
                               0x21, e["crc"], len(e["packed"]), e["size"], len(e["name"]), 0, 0, 0, 0, e["mode"],
                               offset) + e["name"]
    n = len(items)
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), 0))


@st.composite
def archives(draw):
    """A ZIP of a few entries, some duplicated, then a few byte-level mutations."""
    items = draw(st.lists(entries(), min_size=0, max_size=6))
    if items and draw(st.booleans()):
        items.append(dict(items[draw(st.integers(0, len(items) - 1))]))  # a duplicate entry
    data = bytearray(build(items))
    for op, where, value in draw(st.lists(st.tuples(st.sampled_from(["flip", "insert", "cut", "field"]),
                                                    st.floats(0, 1), st.integers(0, 2**32 - 1)), max_size=3)):
        at = int(where * len(data))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 + value % 255
        elif op == "insert":
            data[at:at] = value.to_bytes(4, "little")
        elif op == "cut":
            del data[at:]
        elif op == "field" and len(data) >= at + 4:
            data[at:at + 4] = value.to_bytes(4, "little")  # a size, offset or count rewritten
    return bytes(data)


@st.composite
def damaged_data(draw):
    """A well-formed ZIP of good entries whose entry data (not the directory)
    has a few bytes changed: gets past the inspection to the reading."""
    names = draw(st.lists(st.sampled_from(["a.jpg", "b.png", "c.tif", "d.txt", "e.jpg"]), min_size=1, max_size=4,
                          unique=True))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            payload = PAYLOADS[draw(st.sampled_from(["jpeg", "png", "tiff", "text", "zeros"]))]
            zf.writestr(name, payload, compress_type=draw(st.sampled_from([0, 8, 12, 14])))
    data = bytearray(buf.getvalue())
    data_end = data.index(b"PK\x01\x02")  # where the central directory starts
    for at, value in draw(st.lists(st.tuples(st.integers(0, data_end - 1), st.integers(1, 255)), max_size=3)):
        data[at] ^= value
    return bytes(data)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The target folder for pages, and a private temporary folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp_path


def extract_into(target: Path, data: bytes, name: str = "fuzz.zip") -> list[Path] | str:
    """What the pipeline does, without the database: inspect (ZIPs), then store
    every page under a generated name; on ``ExtractError`` remove the pages."""
    target.mkdir()
    written: list[Path] = []
    try:
        if name.endswith(".zip"):
            check_archive(io.BytesIO(data), name, LIMITS)
        for index, page in enumerate(iter_pages(io.BytesIO(data), name, LIMITS), start=1):
            assert page.extension in IMAGE_EXTENSIONS | {".bin"}
            assert isinstance(page.source_name, str) and page.source_page >= 1
            path = target / f"{index:05d}{page.extension}"
            path.write_bytes(page.data)
            written.append(path)
    except ExtractError as exc:
        for path in written:
            path.unlink()
        reason = str(exc)
        assert reason and "\n" not in reason and "\r" not in reason
        return reason
    return written


def check(scratch: Path, data: bytes, name: str = "fuzz.zip") -> None:
    target = scratch / "pages"
    try:
        result = extract_into(target, data, name)
        everything = sorted(p for p in scratch.rglob("*") if p.is_file() or p.is_symlink())
        # Shown by --hypothesis-show-statistics: which outcomes the examples reached.
        event(re.sub(r"'[^']*'|\([^)]*\)|[\d,]+", "_", result)[:70] if isinstance(result, str) else "extracted")
        if isinstance(result, str):
            assert everything == [], f"rejected ({result}) but files remain: {everything}"
        else:
            assert everything == sorted(result), "a file outside the target folder, or not under its generated name"
            assert len(result) <= LIMITS.max_pages
            assert sum(p.stat().st_size for p in result) <= LIMITS.max_uncompressed
        assert list((scratch / "tmp").iterdir()) == [], "temporary files left behind"
    finally:
        for path in sorted(target.rglob("*"), reverse=True) if target.exists() else []:
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        if target.exists():
            target.rmdir()


@FAST
@given(data=st.one_of(archives(), damaged_data()))
@example(data=build([]))
@example(data=b"PK\x05\x06" + b"\0" * 18)
def test_mutated_archives_are_rejected_cleanly_or_extracted_inside_the_target(scratch, data):
    check(scratch, data)


@FAST
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b),
                      st.binary(max_size=300).map(lambda b: b + b"PK\x05\x06" + b[:18].ljust(18, b"\xff")),
                      st.binary(max_size=300).map(lambda b: b"II*\x00" + b),
                      st.binary(max_size=300).map(lambda b: b"MM\x00*" + b)))
def test_random_bytes_are_rejected_cleanly_or_passed_on(scratch, data):
    check(scratch, data, name="upload")  # no extension: what the bytes are decides


def _pdf() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (40, 60), 200).save(buf, "PDF", save_all=True, append_images=[Image.new("L", (60, 40), 90)])
    return buf.getvalue()


PDF = _pdf()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, len(PDF) - 1), st.integers(1, 255)), min_size=1, max_size=6),
       cut=st.integers(20, len(PDF)))
def test_mutated_pdfs_are_rejected_cleanly_or_rendered(scratch, flips, cut):
    # Each example starts the renderer's child process: few examples.
    data = bytearray(PDF)
    for at, value in flips:
        data[at] ^= value
    check(scratch, bytes(data[:cut]), name="fuzz.pdf")
