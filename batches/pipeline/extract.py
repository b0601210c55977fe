"""Turning an upload (ZIP, PDF, TIFF or a single image) into page images, safely.

Nothing here writes a file named after anything in the upload: callers get
``Page`` objects (bytes plus the name to show) and store them under generated
names. A ZIP's raw directory is walked before ``zipfile`` parses it
(``open_zip``), every entry is checked before anything is read
(``inspect_zip``), and the bytes actually read, and the bytes of the pages to
be written, are counted against the caps. PDF pages are rendered (or their
scanned JPEG taken) by PDFium in a child process with a time limit
(``batches.pipeline.pdfpages``), because PDFium is not thread-safe and a hostile PDF can
make it spin. See docs/input.md.

Errors are ``ExtractError`` with a plain sentence that names the file or the
entry, and a limit's value and setting; the pipeline fails the batch with it.
"""

from __future__ import annotations

import io
import json
import lzma
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..display import CONTROL_CHARACTERS, display_name

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PDF_EXTENSIONS = {".pdf"}
ARCHIVE_EXTENSIONS = {".zip", ".rar", ".7z", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".cab", ".jar", ".lz",
                      ".lzma", ".z", ".arj"}
UPLOAD_EXTENSIONS = IMAGE_EXTENSIONS | PDF_EXTENSIONS | {".zip"}
# Files scanners and desktops add to archives; skipped without complaint.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_ZIP_HEADER = 30  # fixed part of a local file header, in bytes
_SMALL_ENTRY = 1024 * 1024  # the ratio cap applies above this size


class ExtractError(ValueError):
    """An upload that cannot be turned into pages; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class Limits:
    """What one upload may contain."""

    max_entries: int = 20_000
    max_pages: int = 10_000
    max_pixels: int = 60_000_000
    max_uncompressed: int = 8 * 1024**3
    max_image_entry: int = 512 * 1024**2  # an image entry is decoded from memory whole
    max_ratio: int = 200
    max_name_length: int = 255
    pdf_dpi: int = 200
    pdf_timeout: float = 600.0
    pdf_max_memory_mb: int = 2048  # the renderer child's address space

    @classmethod
    def from_settings(cls) -> Limits:
        from django.conf import settings

        return cls(
            max_entries=settings.OMR_MAX_ENTRIES,
            max_pages=settings.OMR_MAX_PAGES,
            max_pixels=settings.OMR_MAX_PIXELS,
            max_uncompressed=settings.OMR_MAX_UNCOMPRESSED_BYTES,
            max_image_entry=settings.OMR_MAX_IMAGE_ENTRY_BYTES,
            max_ratio=settings.OMR_MAX_COMPRESSION_RATIO,
            max_name_length=settings.OMR_MAX_NAME_LENGTH,
            pdf_dpi=settings.OMR_PDF_DPI,
            pdf_timeout=settings.OMR_PDF_TIMEOUT,
            pdf_max_memory_mb=settings.OMR_PDF_MAX_MEMORY_MB,
        )


@dataclass(frozen=True)
class Page:
    """One page image to store: its bytes, file extension and where it came from.

    A page that is an archive entry stored uncompressed has ``span`` (offset,
    length): its bytes are that range of the upload, unchanged, so nothing is
    copied (``data`` is empty). Such a page's CRC is checked by the time the
    iteration of ``iter_pages`` ends."""

    source_name: str  # for display and the CSV; never a path
    source_page: int  # 1-based page within that file
    extension: str  # ".jpg", ".png", ...
    data: bytes
    span: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.span[1] if self.span is not None else len(self.data)


def sniff(data: bytes) -> str:
    """The kind of a file from its first bytes: zip, pdf, tiff, jpeg, png, bmp,
    webp, gzip, 7z, rar, or "" when unknown."""
    # Magic numbers at the start first: "%PDF-" may sit anywhere in the first
    # KB (readers allow junk before it), so a JPEG with it in a comment is a JPEG.
    head = data[:1024]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"Rar!"):
        return "rar"
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"BM"):
        return "bmp"
    return ""


_EXT_FOR_KIND = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp", "webp": ".webp", "pdf": ".pdf"}


def upload_extension(filename: str) -> str:
    """The lower-case extension of an uploaded file name, checked; raises ``ExtractError``."""
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if ext not in UPLOAD_EXTENSIONS:
        raise ExtractError(f"{display_name(filename)}: unsupported file type {ext or '(none)'}; "
                           "upload a ZIP, PDF, TIFF, JPEG or PNG file")
    return ext


# ---------------------------------------------------------------- ZIP archives


@dataclass(frozen=True)
class Member:
    """An archive entry accepted for reading."""

    info: zipfile.ZipInfo
    name: str  # the name to show (re-decoded as UTF-8 where that works)


@dataclass(frozen=True)
class ZipPlan:
    """What ``inspect_zip`` found: the entries to read, in file order, and the skipped ones."""

    members: list[Member]
    skipped: list[str]
    uncompressed_bytes: int


def _entry_name(info: zipfile.ZipInfo) -> str:
    name = info.orig_filename
    if not info.flag_bits & 0x800:
        # zipfile decoded the raw bytes as CP437; most tools really wrote UTF-8.
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass  # keep the CP437 reading: shown in reports only, never a path
    return name


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", name)]


def _name_key(name: str) -> str:
    """What two entry names must differ in to be different files anywhere: Unicode
    normalisation (NFKC), case, and empty or ``.`` path segments."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "/".join(part for part in folded.split("/") if part not in ("", "."))


def _read_directory(fileobj, filename: str, limits: Limits) -> None:
    """Walk the central directory's records before ``zipfile`` parses it.

    ``zipfile.ZipFile()`` builds a ``ZipInfo`` for every record, however many
    there are, and fails with ``UnicodeDecodeError`` on a name flagged UTF-8
    that is not; so the count and the names are checked here first, on the raw
    records, the way zipfile will read them. Anything else malformed is left to
    zipfile, whose errors ``open_zip`` turns into ``ExtractError``.
    """
    try:
        endrec = zipfile._EndRecData(fileobj)
    except (OSError, ValueError, struct.error, OverflowError):
        return
    if not endrec:
        return
    size_cd, offset_cd = endrec[zipfile._ECD_SIZE], endrec[zipfile._ECD_OFFSET]
    start = endrec[zipfile._ECD_LOCATION] - size_cd
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0 or offset_cd < 0:
        return
    # An honest record is 46 bytes plus a name, a few extra fields and rarely a
    # comment: 1 KB each is generous. A bigger directory is parsed by nobody.
    cap = limits.max_entries * 1024 + 65536
    if size_cd > cap:
        raise ExtractError(f"{display_name(filename)}: the archive's directory is {_size(size_cd)}, too large "
                           f"for the limit of {limits.max_entries:,} entries (OMR_MAX_ENTRIES)")
    fileobj.seek(start)
    directory = fileobj.read(size_cd)
    count = pos = 0
    while pos + _CENTRAL.size <= len(directory) and directory[pos:pos + 4] == b"PK\x01\x02":
        fields = _CENTRAL.unpack_from(directory, pos)
        flags, name_len, extra_len, comment_len = fields[5], fields[12], fields[13], fields[14]
        raw = directory[pos + _CENTRAL.size:pos + _CENTRAL.size + name_len]
        if flags & 0x800:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                shown = display_name(raw.decode("utf-8", "replace"))
                raise ExtractError(f"entry {shown!r}: the name is not valid UTF-8 although the archive says it is "
                                   "(a damaged archive)") from None
        count += 1
        pos += _CENTRAL.size + name_len + extra_len + comment_len
    if count > limits.max_entries:
        raise ExtractError(f"the archive has {count:,} entries; the limit is {limits.max_entries:,} "
                           "(OMR_MAX_ENTRIES)")


_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # a central directory record, 46 bytes
# What zipfile and the decompressors may raise on hostile input besides
# BadZipFile, parsing the directory or reading an entry (the property tests in
# tests/test_extract_property.py throw such input at them).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error, OverflowError,
               NotImplementedError, IndexError, KeyError, zlib.error, lzma.LZMAError, RuntimeError)


@contextmanager
def open_zip(fileobj, filename: str, limits: Limits) -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile(fileobj)``, after ``_read_directory``'s checks, with
    every parsing error turned into ``ExtractError`` naming ``filename``."""
    _read_directory(fileobj, filename, limits)
    fileobj.seek(0)
    try:
        zf = zipfile.ZipFile(fileobj)
    except NotImplementedError as exc:
        raise ExtractError(f"{display_name(filename)}: this kind of ZIP archive is not supported ({exc})") from None
    except _ZIP_ERRORS as exc:
        raise ExtractError(f"{display_name(filename)}: not a valid ZIP archive ({exc})") from None
    with zf:
        yield zf


def check_archive(fileobj, filename: str, limits: Limits) -> ZipPlan:
    """Open and inspect an uploaded ZIP (``open_zip`` + ``inspect_zip``), reading
    no entry. Raises ``ExtractError``."""
    with open_zip(fileobj, filename, limits) as zf:
        return inspect_zip(zf, limits)


#: Compression methods zipfile can read: stored, deflate, bzip2, LZMA.
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_AES = 99  # WinZip AES encryption: a "compression method" in the format


def inspect_zip(zf: zipfile.ZipFile, limits: Limits) -> ZipPlan:
    """Check every entry of an archive before anything is extracted.

    Rejects (``ExtractError`` naming the entry and the limit): too many entries,
    names that are too long, absolute, with a drive letter, backslashes, ``..``
    or control characters, symlinks and other special files, encrypted entries,
    unknown compression methods, nested archives, duplicate names (after
    Unicode normalisation, case folding and ``.`` segments), entries whose
    compression ratio or declared sizes exceed the caps, and overlapping
    entries. Returns the image and PDF entries in natural file order, and the
    names of the others.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise ExtractError(f"the archive has {len(infos):,} entries; the limit is {limits.max_entries:,} "
                           "(OMR_MAX_ENTRIES)")
    seen: dict[str, str] = {}
    members: list[Member] = []
    skipped: list[str] = []
    total = 0
    for info in infos:
        raw = info.orig_filename
        name = _entry_name(info)
        shown = display_name(name)
        if not raw:
            raise ExtractError("an entry of the archive has no name (a damaged archive)")
        if len(raw) > limits.max_name_length:
            raise ExtractError(f"entry {shown!r}: the name is {len(raw):,} characters long; the limit is "
                               f"{limits.max_name_length} characters")
        if CONTROL_CHARACTERS.search(raw):
            raise ExtractError(f"entry {shown!r}: name contains control characters (unsafe path)")
        if "\\" in raw:
            raise ExtractError(f"entry {shown!r}: name contains a backslash (unsafe path)")
        if raw.startswith("/") or _DRIVE_RE.match(raw):
            raise ExtractError(f"entry {shown!r}: absolute path (unsafe path)")
        if ".." in raw.split("/"):
            raise ExtractError(f"entry {shown!r}: name goes up a folder with '..' (unsafe path)")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ExtractError(f"entry {shown!r}: symbolic links are not allowed in archives")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ExtractError(f"entry {shown!r}: special files (devices, pipes) are not allowed in archives")
        if info.flag_bits & 0x1 or info.compress_type == _AES:
            raise ExtractError(f"entry {shown!r}: password-protected archives are not supported")
        key = _name_key(name)
        if key in seen:
            raise ExtractError(f"entry {shown!r}: duplicate name (same as {display_name(seen[key])!r})")
        seen[key] = name
        if info.is_dir():
            continue
        base = PurePosixPath(name).name
        ext = PurePosixPath(base).suffix.lower()
        if base.lower() in _JUNK_NAMES or base.startswith("._") or name.startswith("__MACOSX/"):
            continue
        if ext in ARCHIVE_EXTENSIONS:
            raise ExtractError(f"entry {shown!r}: nested archives are not supported; put the images in one ZIP")
        if info.compress_type not in _METHODS:
            raise ExtractError(f"entry {shown!r}: compression method {info.compress_type} is not supported")
        if info.file_size and not info.compress_size:
            raise ExtractError(f"entry {shown!r}: declared sizes are inconsistent (damaged archive or zip bomb)")
        if info.file_size > _SMALL_ENTRY and info.file_size > limits.max_ratio * info.compress_size:
            ratio = info.file_size / info.compress_size
            raise ExtractError(f"entry {shown!r}: compression ratio {ratio:,.0f}:1; the limit is "
                               f"{limits.max_ratio}:1 (OMR_MAX_COMPRESSION_RATIO); a zip bomb?")
        total += info.file_size
        if total > limits.max_uncompressed:
            declared = sum(i.file_size for i in infos)
            raise ExtractError(f"the archive's entries unpack to {_size(declared)} in all; the limit is "
                               f"{_size(limits.max_uncompressed)} (OMR_MAX_UNCOMPRESSED_MB)")
        if ext in IMAGE_EXTENSIONS:
            # Image entries are read into memory to be checked and decoded (PDFs stream to their renderer).
            _check_image_size(info.file_size, f"entry {shown!r}", limits)
        if ext in IMAGE_EXTENSIONS or ext in PDF_EXTENSIONS:
            members.append(Member(info, name))
        else:
            skipped.append(name)
    _check_overlaps(zf, infos)
    members.sort(key=lambda m: _natural_key(m.name))
    return ZipPlan(members, skipped, total)


def _check_overlaps(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    # An overlapping-entry bomb points many entries at the same compressed data.
    # Each entry's header and data must end before the next entry starts.
    spans = sorted(infos, key=lambda i: i.header_offset)
    end_of_data = getattr(zf, "start_dir", None)
    for index, current in enumerate(spans):
        following = spans[index + 1] if index + 1 < len(spans) else None
        try:
            name_len = len(current.orig_filename.encode("utf-8" if current.flag_bits & 0x800 else "cp437"))
        except UnicodeEncodeError:
            name_len = 0
        end = current.header_offset + _ZIP_HEADER + name_len + current.compress_size
        limit = following.header_offset if following is not None else end_of_data
        if current.header_offset < 0 or (limit is not None and end > limit):
            raise ExtractError(f"entry {display_name(_entry_name(current))!r}: overlaps another entry "
                               "(a zip bomb or a damaged archive)")


class MemberReader:
    """An entry's bytes as a stream that counts what it gives and stops one
    byte past what the entry declared or past ``budget`` (what is left of
    ``limits.max_uncompressed``), with zipfile's errors as ``ExtractError``."""

    def __init__(self, zf: zipfile.ZipFile, member: Member, budget: int, limits: Limits):
        self.name = display_name(member.name)
        self.declared = member.info.file_size
        self.cap = min(self.declared, budget)
        self.limits = limits
        self.count = 0
        self._prefix = b""
        self._file = self._guard(lambda: zf.open(member.info))

    def _guard(self, call):
        try:
            return call()
        except RuntimeError as exc:  # zipfile raises this for encrypted entries
            raise ExtractError(f"entry {self.name!r}: {exc}") from None
        except NotImplementedError:
            raise ExtractError(f"entry {self.name!r}: unsupported compression method") from None
        except _ZIP_ERRORS as exc:
            raise ExtractError(f"entry {self.name!r}: the archive is truncated or damaged ({exc})") from None

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes, which ``read`` then gives again."""
        self._prefix = self.read(n)
        return self._prefix

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            if 0 <= n < len(data):
                data, self._prefix = data[:n], data[n:]
            elif n < 0 or n > len(data):
                data += self.read(-1 if n < 0 else n - len(data))
            return data
        want = self.cap + 1 - self.count if n < 0 else min(n, self.cap + 1 - self.count)
        data = self._guard(lambda: self._file.read(want))
        self.count += len(data)
        if self.count > self.cap:
            if self.cap < self.declared:
                limit = _size(self.limits.max_uncompressed)
                raise ExtractError(f"entry {self.name!r}: the archive unpacks to more than {limit}; the limit is "
                                   f"{limit} (OMR_MAX_UNCOMPRESSED_MB)")
            raise ExtractError(f"entry {self.name!r}: holds more data than it declares (zip bomb?)")
        return data

    def close(self) -> None:
        self._file.close()


def _size(n: int) -> str:
    """A byte count for messages, in the unit the settings use (MB = 2**20 bytes)."""
    if n >= 1024**2:
        return f"{n / 1024**2:,.0f} MB"
    return f"{n:,} bytes"


# ---------------------------------------------------------------- pages


def iter_pages(fileobj, filename: str, limits: Limits, workdir: str | os.PathLike | None = None) -> Iterator[Page]:
    """Every page of an uploaded file, in order, as ``Page`` objects.

    ``fileobj`` is a seekable binary file; ``filename`` the uploaded name (for
    messages). A PDF page that is one JPEG comes out as that JPEG, any other
    as a grey PNG at ``limits.pdf_dpi``; pages of a multi-page TIFF as grey
    PNGs; JPEG, PNG and single-page TIFF files as they are (the reader decodes
    them). The pages together may not exceed
    ``limits.max_uncompressed`` bytes (what the caller will write) nor
    ``limits.max_pages``. Raises ``ExtractError``.
    """
    head = fileobj.read(1024)
    fileobj.seek(0)
    kind = sniff(head)
    count = written = 0

    def counted(pages: Iterable[Page]) -> Iterator[Page]:
        nonlocal count, written
        for page in pages:
            count += 1
            written += page.size
            if count > limits.max_pages:
                raise ExtractError(f"the upload has more than {limits.max_pages:,} pages; the limit is "
                                   f"{limits.max_pages:,} (OMR_MAX_PAGES)")
            if written > limits.max_uncompressed:
                raise ExtractError(f"the pages of the upload take more than {_size(limits.max_uncompressed)}; "
                                   f"the limit is {_size(limits.max_uncompressed)} (OMR_MAX_UNCOMPRESSED_MB)")
            yield page

    if kind == "zip":
        with open_zip(fileobj, filename, limits) as zf, _CrcChecks(fileobj) as checks:
            plan = inspect_zip(zf, limits)
            budget = limits.max_uncompressed
            for member in plan.members:
                reader = MemberReader(zf, member, budget, limits)
                try:
                    kind = sniff(reader.peek(1024))
                    if kind in {"zip", "gzip", "7z", "rar"}:
                        raise ExtractError(f"entry {display_name(member.name)!r}: nested archives are not supported")
                    if kind == "pdf":  # streamed to the renderer's file: a PDF may be large
                        yield from counted(pdf_pages(reader, member.name, limits, workdir))
                    else:
                        _check_image_size(member.info.file_size, f"entry {display_name(member.name)!r}", limits)
                        span = _stored_span(fileobj, member, reader) if kind in _SPAN_KINDS else None
                        if span is not None:
                            checks.add(member, span)
                            reader.count = span[1]
                            yield from counted([Page(member.name, 1, _EXT_FOR_KIND[kind], b"", span)])
                        else:
                            yield from counted(_file_pages(reader.read(), member.name, limits, workdir))
                finally:
                    reader.close()
                budget -= reader.count
            checks.wait()
        return
    if kind == "pdf":
        yield from counted(pdf_pages(fileobj, filename, limits, workdir))
        return
    start = fileobj.tell()
    size = fileobj.seek(0, os.SEEK_END) - start
    fileobj.seek(start)
    _check_image_size(size, repr(display_name(filename)), limits)
    data = fileobj.read()
    yield from counted(_file_pages(data, filename, limits, workdir))


#: Kinds of entry that are kept as a range of the upload when stored
#: uncompressed: single images the reader decodes as they are. (A TIFF may
#: hold several pages, which are split, so it is copied out as before.)
_SPAN_KINDS = {"jpeg", "png"}


def _stored_span(fileobj, member: Member, reader: MemberReader) -> tuple[int, int] | None:
    """Where an entry stored uncompressed lies in the upload, as (offset,
    length), when its bytes can be used in place; None to copy it out. The
    local header has been checked by ``zipfile`` when the entry was opened,
    and ``inspect_zip`` checked that no two entries overlap."""
    info = member.info
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size or info.flag_bits & 0x1:
        return None
    if info.file_size > reader.cap or info.file_size == 0:
        return None  # over what is left of the budget: the copy path says so
    try:
        fileobj.seek(info.header_offset)
        header = fileobj.read(_ZIP_HEADER)
        end = fileobj.seek(0, os.SEEK_END)
    except (OSError, ValueError):
        return None
    if len(header) != _ZIP_HEADER or header[:4] != zipfile.stringFileHeader:
        return None
    fields = struct.unpack(zipfile.structFileHeader, header)
    offset = info.header_offset + _ZIP_HEADER + fields[zipfile._FH_FILENAME_LENGTH] + \
        fields[zipfile._FH_EXTRA_FIELD_LENGTH]
    if offset + info.file_size > end:
        return None  # truncated: the copy path reports it
    return offset, info.file_size


class _CrcChecks:
    """The CRC-32 checks of the entries kept in place (``_stored_span``), on
    two threads beside the walk through the archive: the check is the only
    pass over their bytes, and ``zlib.crc32`` lets go of the GIL. The upload
    is mapped into memory when it is a real file (no copy); otherwise each
    range is read. ``wait`` raises ``ExtractError`` for the first bad entry in
    file order."""

    def __init__(self, fileobj):
        self._fileobj = fileobj
        self._futures: list = []
        self._pool = None
        self._map = None

    def __enter__(self) -> _CrcChecks:
        return self

    def add(self, member: Member, span: tuple[int, int]) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="omr-extract-crc")
            try:
                import mmap

                self._map = mmap.mmap(self._fileobj.fileno(), 0, access=mmap.ACCESS_READ)
            except (AttributeError, OSError, ValueError):
                self._map = None  # not a real file (tests pass BytesIO): read the ranges
        if self._map is not None:
            self._futures.append((member, self._pool.submit(self._crc_mapped, span)))
        else:
            self._fileobj.seek(span[0])
            data = self._fileobj.read(span[1])
            self._futures.append((member, self._pool.submit(lambda: (zlib.crc32(data), len(data)))))

    def _crc_mapped(self, span: tuple[int, int]) -> tuple[int, int]:
        with memoryview(self._map) as whole, whole[span[0]:span[0] + span[1]] as part:
            return zlib.crc32(part), len(part)

    def wait(self) -> None:
        for member, future in self._futures:
            crc, length = future.result()
            if length != member.info.file_size:
                raise ExtractError(f"entry {display_name(member.name)!r}: the archive is truncated or damaged")
            if crc != member.info.CRC:
                raise ExtractError(f"entry {display_name(member.name)!r}: the archive is truncated or damaged "
                                   f"(Bad CRC-32 for file {member.info.orig_filename!r})")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # no thread still holds the map
        if self._map is not None:
            self._map.close()


def _check_image_size(size: int, label: str, limits: Limits) -> None:
    """Images are decoded from memory whole: refuse one larger than the cap first."""
    if size > limits.max_image_entry:
        raise ExtractError(f"{label}: an image of {_size(size)}; the limit is "
                           f"{_size(limits.max_image_entry)} per image (OMR_MAX_IMAGE_ENTRY_MB)")


def _file_pages(data: bytes, name: str, limits: Limits, workdir) -> Iterator[Page]:
    kind = sniff(data)
    if kind == "pdf":
        yield from pdf_pages(data, name, limits, workdir)
    elif kind == "tiff":
        yield from tiff_pages(data, name, limits)
    else:
        # Unknown content keeps its name's extension: the reader then fails that
        # one sheet with "not an image" while the batch goes on.
        ext = _EXT_FOR_KIND.get(kind) or PurePosixPath(name).suffix.lower() or ".bin"
        if ext not in IMAGE_EXTENSIONS:
            ext = ".bin"
        yield Page(name, 1, ext, data)


def tiff_pages(data: bytes, name: str, limits: Limits) -> Iterator[Page]:
    """A TIFF file's pages: itself when it has one page, else one grey PNG per page.

    The header of every page is checked against the pixel cap before any page
    is decoded (``imageio.probe``); a file that fails that check, or cannot be
    parsed, is passed on whole so that the reader fails that sheet with the reason.
    """
    from batches.omr.imageio import ImageError, probe

    try:
        info = probe(data, limits.max_pixels)
    except ImageError:
        yield Page(name, 1, ".tif", data)  # the reader reports why, for this sheet only
        return
    if info.pages <= 1:
        yield Page(name, 1, ".tif", data)
        return
    import warnings

    import cv2
    import numpy as np
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # probe() enforced our own cap
        with Image.open(io.BytesIO(data)) as im:
            for index in range(info.pages):
                # One damaged page costs its sheet, not the upload: the others are read.
                try:
                    im.seek(index)
                    frame = np.asarray(im.convert("L"))
                except (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError):
                    yield damaged_page(name, index + 1, f"page {index + 1} of the TIFF file is damaged: "
                                                        "its pixels cannot be decoded")
                    continue
                ok, png = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                if not ok:
                    yield damaged_page(name, index + 1, f"page {index + 1} of the TIFF file cannot be converted")
                    continue
                yield Page(name, index + 1, ".png", png.tobytes())


#: A page that extraction could not take out of its file is stored as a short
#: text file with this extension saying why; reading it fails its sheet with that reason.
DAMAGED_PAGE_EXTENSION = ".damaged"


def damaged_page(name: str, page: int, reason: str) -> Page:
    return Page(name, page, DAMAGED_PAGE_EXTENSION, reason.encode())


def damaged_page_reason(image_name: str, data: bytes) -> str | None:
    """The reason stored for a damaged page, or None for a real page image."""
    if not image_name.endswith(DAMAGED_PAGE_EXTENSION):
        return None
    return data.decode("utf-8", "replace")


def renderer_environment(tmp) -> dict[str, str]:
    """The PDF child's whole environment: nothing of the worker's (no
    SECRET_KEY, no DATABASE_URL), one thread per library, temporary files in
    its own folder."""
    keep = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "OPENCV_IO_MAX_IMAGE_PIXELS")
            if name in os.environ}
    return {**keep, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}


def pdf_pages(source, name: str, limits: Limits, workdir=None) -> Iterator[Page]:
    """A PDF's pages, by PDFium in a child process (``batches.pipeline.pdfpages``): a
    page that is one JPEG as that JPEG, any other page rendered to a grey PNG.

    ``source`` is the PDF's bytes or a binary file positioned at its start. The
    child gets ``limits.pdf_timeout`` seconds at most and is killed after that;
    it refuses more than ``limits.max_pages`` pages or more than
    ``limits.max_uncompressed`` bytes of pages, and clamps the scale of a huge
    page box to ``limits.max_pixels``. An encrypted or malformed PDF gives a
    clear ``ExtractError``. Its files live in a temporary folder (under
    ``workdir``: the pipeline gives the batch's own work folder), removed when
    the pages have been taken or the generator is closed. The child gets a
    minimal environment (``renderer_environment``), limits on its memory and
    CPU time, and dies with this process (``pdfpages.confine``).
    """
    with tempfile.TemporaryDirectory(prefix="omr-pdf-", dir=workdir) as tmp:
        path = Path(tmp) / "in.pdf"
        try:
            with path.open("wb") as f:
                if isinstance(source, bytes | bytearray | memoryview):
                    f.write(source)
                else:
                    shutil.copyfileobj(source, f, 1024 * 1024)
        except OSError as exc:
            raise ExtractError(f"{display_name(name)}: the PDF cannot be unpacked for rendering "
                               f"({exc.strerror or exc})") from None
        out = Path(tmp) / "pages"
        out.mkdir()
        timeout = limits.pdf_timeout
        cmd = [sys.executable, "-m", "batches.pipeline.pdfpages", str(path), str(out), "--dpi", str(limits.pdf_dpi),
               "--max-pages", str(limits.max_pages), "--max-pixels", str(limits.max_pixels),
               "--max-bytes", str(limits.max_uncompressed), "--max-memory-mb", str(limits.pdf_max_memory_mb),
               "--max-cpu-seconds", str(max(1, math.ceil(timeout))), "--parent-pid", str(os.getpid())]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                                  cwd=Path(__file__).resolve().parents[2], env=renderer_environment(tmp))
        except subprocess.TimeoutExpired:  # run() has killed the child
            raise ExtractError(f"{display_name(name)}: the PDF took longer than {timeout:g} s to render; "
                               f"the limit is {timeout:g} s (OMR_PDF_TIMEOUT)") from None
        try:
            result = json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
        except ValueError:
            result = {}
        if not isinstance(result, dict):
            result = {}
        if proc.returncode != 0 or "error" in result:
            reason = result.get("error") or f"the PDF renderer stopped (exit code {proc.returncode})"
            raise ExtractError(f"{display_name(name)}: {reason}")
        # The child writes 00001.jpg (a page's own JPEG) or 00001.png (rendered).
        for index, page in enumerate(sorted(p for p in out.iterdir() if p.suffix in (".jpg", ".png")), start=1):
            yield Page(name, index, page.suffix, page.read_bytes())
