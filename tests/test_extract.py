"""Hostile uploads (docs/reliability.md Z1-Z10, I1-I4), each run through the real
pipeline: the batch fails with a reason that names the entry and the limit, or
the one sheet fails while the batch goes on. Every test also checks, through
the ``sandbox`` fixture, that nothing was written outside the batch's folder
under MEDIA_ROOT (another batch's files untouched), that no page of a failed
batch is left behind, and that the temporary folder is empty afterwards."""

from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import tempfile
import textwrap
import unicodedata
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.files.base import ContentFile

from batches import storage
from batches.models import Batch, ProgressEvent, Sheet, SheetStatus, Stage
from batches.pipeline import stages
from batches.pipeline.extract import ExtractError, Limits, iter_pages, upload_extension
from batches.uploads import accept
from tests.conftest import TEMPLATE, make_zip, simulated_sheet

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100 + b"\xff\xd9"


# ---------------------------------------------------------------- archives built byte by byte


@dataclass
class Entry:
    """One stored entry of ``raw_zip``: the name exactly as bytes, and header fields to lie with."""

    name: bytes
    data: bytes = JPEG
    flags: int = 0
    method: int = 0
    create_system: int = 0
    external_attr: int = 0
    file_size: int | None = None  # declared in the central directory (default: the truth)
    crc: int | None = None


def raw_zip(entries: list[Entry]) -> bytes:
    """A ZIP written by hand, so that names and header fields are whatever the
    test says (zipfile's writer refuses or rewrites the interesting ones)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        size = len(e.data) if e.file_size is None else e.file_size
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, e.flags, e.method, 0, 0x21, crc, len(e.data),
                           size, len(e.name), 0) + e.name + e.data
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, e.create_system, 20, 0, e.flags, e.method, 0,
                               0x21, crc, len(e.data), size, len(e.name), 0, 0, 0, 0, e.external_attr,
                               offset) + e.name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def sheet(i: int) -> bytes:
    return simulated_sheet(i).jpeg


# ---------------------------------------------------------------- the checks every case makes


@dataclass
class Sandbox:
    root: Path  # the test's own folder: media/ and tmp/ and nothing else
    media: Path
    tmp: Path
    bystander: Path  # a file of another batch, which must survive untouched


@pytest.fixture(autouse=True)
def sandbox(tmp_path, settings, monkeypatch) -> Sandbox:
    """A private MEDIA_ROOT (from conftest) and a private temporary folder
    (``tempfile.tempdir`` and ``TMPDIR``, which the PDF child inherits), plus
    another batch's upload that no test may touch."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    media = Path(settings.MEDIA_ROOT)
    bystander = media / "batches" / str(uuid.uuid4()) / "upload" / "original.zip"
    bystander.parent.mkdir(parents=True)
    bystander.write_bytes(b"another batch's upload")
    return Sandbox(tmp_path, media, tmp, bystander)


def run(owner, data: bytes, name: str = "scans.zip") -> Batch:
    """Upload ``data`` as ``name`` and run the whole pipeline in this process."""
    batch = accept.create_batch(owner, ContentFile(data, name=name), filename=name, template=TEMPLATE,
                                  has_qr=True, start=False)
    return stages.run_inline(batch.pk)


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def assert_contained(batch: Batch, box: Sandbox) -> None:
    """Nothing outside the batch's storage folder (but the bystander, unchanged);
    the temporary folder empty."""
    own = f"media/{batch.storage_prefix}"
    other = str(box.bystander.relative_to(box.root))
    stray = [f for f in all_files(box.root) if not f.startswith(own) and f != other]
    assert stray == [], f"files outside {own}: {stray}"
    assert box.bystander.read_bytes() == b"another batch's upload"
    assert list(box.tmp.iterdir()) == [], "temporary files left behind"


def assert_failed(batch: Batch, box: Sandbox, *reasons: str) -> str:
    """The batch failed, saying each of ``reasons``, in its error and in its last
    event; no sheet and no page of it exists; nothing else was written."""
    batch.refresh_from_db()
    assert batch.stage == Stage.FAILED, (batch.stage, batch.error)
    for reason in reasons:
        assert reason in batch.error, (reason, batch.error)
    last = ProgressEvent.objects.filter(batch=batch).latest("id")
    assert last.stage == Stage.FAILED and batch.error in last.message
    assert not Sheet.objects.filter(batch=batch).exists()
    pages = box.media / storage.pages_prefix(batch)
    assert not pages.exists() or all_files(pages) == [], "pages of a failed batch left behind"
    assert_contained(batch, box)
    return batch.error


def assert_completed(batch: Batch, box: Sandbox, failed: dict[str, str] | None = None) -> dict[str, Sheet]:
    """The batch completed; the sheets named in ``failed`` failed with those
    reasons, every other sheet was read; pages stored under generated names, or
    (entries stored uncompressed) read in place from the upload."""
    batch.refresh_from_db()
    assert batch.stage == Stage.COMPLETED, (batch.stage, batch.error)
    sheets = list(Sheet.objects.filter(batch=batch).order_by("index"))
    failed = failed or {}
    for s in sheets:
        if s.image_length is None:
            assert s.image == f"{storage.pages_prefix(batch)}{s.index:05d}{Path(s.image).suffix}"
        else:
            assert s.image == batch.upload.name and s.image_offset > 0
        key = s.source_name if s.source_page == 1 else f"{s.source_name}#{s.source_page}"
        if key in failed:
            assert s.status == SheetStatus.FAILED and failed[key] in s.error, (key, s.status, s.error)
        else:
            assert s.status == SheetStatus.DONE, (key, s.error)
    assert batch.sheets_failed == len(failed)
    assert_contained(batch, box)
    return {s.source_name if s.source_page == 1 else f"{s.source_name}#{s.source_page}": s for s in sheets}


# ---------------------------------------------------------------- Z1 unsafe names


@pytest.mark.parametrize(("name", "reason"), [
    (b"../evil.jpg", "unsafe path"),
    (b"a/../../evil.jpg", "unsafe path"),
    (b"/etc/evil.jpg", "absolute path"),
    (b"C:/evil.jpg", "absolute path"),
    (b"C:evil.jpg", "absolute path"),
    (b"dir\\..\\evil.jpg", "backslash"),
    (b"ok/\x01evil.jpg", "control characters"),
    (b"ok/evil\x00.jpg", "control characters"),  # zipfile would cut the name at the NUL
])
def test_z1_unsafe_names_reject_the_whole_archive(owner, sandbox, name, reason):
    data = raw_zip([Entry(b"good.jpg"), Entry(name)])
    message = assert_failed(run(owner, data), sandbox, reason, "evil")
    assert message.startswith("entry ")


def test_z1_symlinks_reject_the_whole_archive(owner, sandbox):
    link = Entry(b"link.jpg", b"/etc/passwd", create_system=3, external_attr=0o120777 << 16)
    assert_failed(run(owner, raw_zip([Entry(b"good.jpg"), link])), sandbox,
                  "entry 'link.jpg': symbolic links are not allowed")


# ---------------------------------------------------------------- Z2 duplicates


@pytest.mark.parametrize(("first", "second"), [
    ("Scan.jpg", "scan.JPG"),
    ("caf\u00e9.jpg", "cafe\u0301.jpg"),  # NFC and NFD
    ("\uff33can.jpg", "scan.jpg"),  # a fullwidth S
    ("a.jpg", "a.jpg"),
    ("dir/a.jpg", "dir/./a.jpg"),
])
def test_z2_duplicate_names_are_rejected(owner, sandbox, first, second):
    data = raw_zip([Entry(first.encode(), flags=0x800), Entry(second.encode(), flags=0x800)])
    assert_failed(run(owner, data), sandbox, "duplicate name", "same as")


# ---------------------------------------------------------------- Z3 bombs and lies


def test_z3_compression_bomb_is_stopped_by_the_ratio_cap(owner, sandbox):
    data = make_zip([("bomb.tif", b"\0" * 20_000_000)], compression=zipfile.ZIP_DEFLATED)
    assert_failed(run(owner, data), sandbox, "entry 'bomb.tif': compression ratio",
                  "the limit is 200:1 (OMR_MAX_COMPRESSION_RATIO)")


def test_z3_total_size_cap(owner, sandbox, settings):
    settings.OMR_MAX_UNCOMPRESSED_BYTES = 3 * len(JPEG)
    data = make_zip([(f"p{i}.jpg", JPEG) for i in range(5)])
    assert_failed(run(owner, data), sandbox,
                  "the archive's entries unpack to 530 bytes in all; the limit is 318 bytes (OMR_MAX_UNCOMPRESSED_MB)")


def test_z3_an_entry_that_lies_about_its_size_is_rejected(owner, sandbox):
    # The central directory says 10 bytes; the stored data is longer.
    data = raw_zip([Entry(b"good.jpg"), Entry(b"big.jpg", JPEG * 50, file_size=10)])
    assert_failed(run(owner, data), sandbox, "entry 'big.jpg'", "damaged", "Bad CRC-32")


def test_z3_bytes_read_never_exceed_the_declared_size():
    # A bomb that declares 1,000 bytes (and the CRC of its first 1,000) yields
    # 1,000 bytes: what is read is counted, not what the data could expand to.
    payload = b"\xff\xd8\xff" + b"\0" * 20_000_000
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packed.compress(payload) + packed.flush()
    lie = Entry(b"lie.jpg", deflated, method=8, file_size=1000, crc=zlib.crc32(payload[:1000]))
    data = bytearray(raw_zip([lie]))
    struct.pack_into("<L", data, 22, 1000)  # the local header tells the same lie
    [page] = iter_pages(io.BytesIO(bytes(data)), "lie.zip", Limits())
    assert len(page.data) == 1000


def test_z3_pages_made_from_an_entry_count_against_the_size_cap(owner, sandbox, settings):
    # A small PDF whose rendered pages are large: the PNG bytes to be written count.
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (150, 150), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PDF", resolution=15)  # a 10-inch page: 2,000 x 2,000 pixels at 200 dpi, ~80 KB of PNG
    assert len(buf.getvalue()) < 20_000
    settings.OMR_MAX_UNCOMPRESSED_BYTES = 64 * 1024
    assert_failed(run(owner, make_zip([("noise.pdf", buf.getvalue())])), sandbox,
                  "noise.pdf", "take more than 65,536 bytes", "the limit is 65,536 bytes (OMR_MAX_UNCOMPRESSED_MB)")


# ---------------------------------------------------------------- Z4 overlapping entries


def test_z4_overlapping_entries_are_rejected(owner, sandbox):
    # Two directory records pointing at one local entry (the kernel of an
    # overlapping-entry bomb).
    data = make_zip([("a.jpg", JPEG)])
    cd_start = data.index(b"PK\x01\x02")
    cd = data[cd_start:data.index(b"PK\x05\x06")]
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(cd) * 2, cd_start, 0)
    bomb = data[:cd_start] + cd + cd.replace(b"a.jpg", b"b.jpg") + end
    assert_failed(run(owner, bomb), sandbox, "overlaps another entry")


def test_z4_an_entry_whose_data_runs_into_the_next_is_rejected(owner, sandbox):
    data = bytearray(raw_zip([Entry(b"a.jpg"), Entry(b"b.jpg")]))
    struct.pack_into("<L", data, data.index(b"PK\x01\x02") + 20, len(JPEG) + 50)  # a.jpg's compressed size
    assert_failed(run(owner, bytes(data)), sandbox, "entry 'a.jpg': overlaps another entry")


# ---------------------------------------------------------------- Z5 nested, too many, too long


def test_z5_nested_archives_by_name_and_by_content(owner, sandbox):
    inner = make_zip([("x.jpg", JPEG)])
    assert_failed(run(owner, make_zip([("good.jpg", JPEG), ("inner.zip", inner)])), sandbox,
                  "entry 'inner.zip': nested archives are not supported")


def test_z5_nested_archive_disguised_as_an_image(owner, sandbox):
    inner = make_zip([("x.jpg", JPEG)])
    assert_failed(run(owner, make_zip([("sneaky.jpg", inner)])), sandbox,
                  "entry 'sneaky.jpg': nested archives are not supported")


def test_z5_too_many_entries_at_the_default_limit(owner, sandbox, settings):
    assert settings.OMR_MAX_ENTRIES == 20_000
    data = raw_zip([Entry(f"{i}.txt".encode(), b"") for i in range(20_001)])
    assert_failed(run(owner, data), sandbox, "the archive has 20,001 entries; the limit is 20,000 (OMR_MAX_ENTRIES)")


def test_z5_a_lying_entry_count_does_not_get_past_the_limit(owner, sandbox, settings):
    settings.OMR_MAX_ENTRIES = 3
    data = bytearray(raw_zip([Entry(f"{i}.jpg".encode()) for i in range(5)]))
    struct.pack_into("<2H", data, len(data) - 14, 1, 1)  # the end record claims one entry
    assert_failed(run(owner, bytes(data)), sandbox, "the archive has 5 entries; the limit is 3 (OMR_MAX_ENTRIES)")


def test_z5_names_too_long(owner, sandbox):
    data = make_zip([("x" * 300 + ".jpg", JPEG)])
    assert_failed(run(owner, data), sandbox, "the name is 304 characters long; the limit is 255 characters")


# ---------------------------------------------------------------- Z6 encryption


@pytest.mark.parametrize("entry", [Entry(b"secret.jpg", flags=0x1), Entry(b"secret.jpg", method=99)],
                         ids=["zipcrypto", "aes"])
def test_z6_encrypted_entries(owner, sandbox, entry):
    assert_failed(run(owner, raw_zip([Entry(b"good.jpg"), entry])), sandbox,
                  "entry 'secret.jpg': password-protected archives are not supported")


# ---------------------------------------------------------------- Z7 names that are not UTF-8


def test_z7_non_utf8_names_get_generated_names_and_keep_theirs(owner, sandbox):
    # CP437 (the ZIP default) and Latin-1 bytes that are valid as neither UTF-8 nor a path.
    data = raw_zip([Entry(b"sch\x81ler_000.jpg", sheet(0)), Entry(b"\xe9l\xe8ve\xff.jpg", sheet(1))])
    batch = run(owner, data)
    sheets = assert_completed(batch, sandbox)
    assert set(sheets) == {"sch\u00fcler_000.jpg", "\u0398l\u03a6ve\u00a0.jpg"}  # read as CP437
    # Stored uncompressed, the entries are read in place: no file is named after them.
    assert all(s.image == batch.upload.name for s in sheets.values())
    assert sheets["sch\u00fcler_000.jpg"].read_image() == sheet(0)
    assert not (sandbox.media / storage.pages_prefix(batch)).exists()


def test_z7_compressed_entries_are_copied_out_under_generated_names(owner, sandbox):
    data = make_zip([("sch\u00fcler_000.jpg", sheet(0)), ("\u00e9l\u00e8ve.jpg", sheet(1))], zipfile.ZIP_DEFLATED)
    sheets = assert_completed(run(owner, data), sandbox)
    assert sorted(s.image.rsplit("/", 1)[1] for s in sheets.values()) == ["00001.jpg", "00002.jpg"]


def test_z7_a_name_flagged_utf8_that_is_not_is_rejected_cleanly(owner, sandbox):
    data = raw_zip([Entry(b"good.jpg"), Entry(b"bad\xff\xfe.jpg", flags=0x800)])
    assert_failed(run(owner, data), sandbox, "entry 'bad\ufffd\ufffd.jpg'", "not valid UTF-8")


# ---------------------------------------------------------------- Z8 truncated, bad CRC


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_z8_truncated_archive(owner, sandbox, cut):
    data = make_zip([("a.jpg", sheet(0)), ("b.jpg", sheet(1))])
    assert_failed(run(owner, data[: int(len(data) * cut)]), sandbox, "scans.zip: not a valid ZIP archive")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_z8_bad_crc_fails_the_batch_and_removes_pages_already_written(owner, sandbox, monkeypatch, compression):
    saved = []
    real_save = stages.save
    monkeypatch.setattr(stages, "save", lambda name, data: saved.append(name) or real_save(name, data))
    data = bytearray(make_zip([("a.jpg", sheet(0)), ("b.jpg", sheet(1))], compression))
    data[data.index(b"b.jpg") + 100] ^= 0xFF  # a byte inside b.jpg's data
    # (A flipped byte of deflated data mostly breaks the decompression before the CRC.)
    reasons = ["Bad CRC-32"] if compression == zipfile.ZIP_STORED else []
    assert_failed(run(owner, bytes(data)), sandbox, "entry 'b.jpg': the archive is truncated or damaged", *reasons)
    if compression == zipfile.ZIP_STORED:
        assert saved == []  # read in place: nothing was copied out
    else:
        assert saved and saved[0].endswith("pages/00001.jpg")  # a.jpg had been written, and is gone


def test_z8_a_damaged_pdf_entry_is_stopped_while_streaming_to_the_renderer(owner, sandbox):
    # A PDF entry is copied from the archive to the renderer's temporary file;
    # its bad CRC shows at the end of that copy, and the file goes with it.
    pdf = jpeg_pdf(sheet(0))
    data = bytearray(make_zip([("a.pdf", pdf)]))
    data[data.index(b"a.pdf") + len(pdf) // 2] ^= 0xFF
    assert_failed(run(owner, bytes(data)), sandbox, "entry 'a.pdf': the archive is truncated or damaged",
                  "Bad CRC-32")


# ---------------------------------------------------------------- Z9 not an image


def test_z9_a_non_image_named_png_fails_alone(owner, sandbox):
    data = make_zip([("scan_001.jpg", sheet(0)), ("renamed.png", b"plain text, not a picture")])
    sheets = assert_completed(run(owner, data), sandbox, failed={"renamed.png": "not an image"})
    assert sheets["renamed.png"].image.endswith("/00001.png")  # a generated name, in natural file order


# ---------------------------------------------------------------- Z10 disk full


class _Quota:
    """Files opened for writing under ``folder`` share ``size`` bytes; past
    that, ``write`` raises ENOSPC, as a full disk does."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size, self.used = str(folder), size, 0

    def wrap(self, file, path):
        if not str(path).startswith(self.folder + os.sep) or "r" in getattr(file, "mode", "r").replace("+", ""):
            return file
        quota = self

        class Limited:
            def write(self, data):
                quota.used += len(data)
                if quota.used > quota.size:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return file.write(data)

            def __getattr__(self, name):
                return getattr(file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                file.close()

        return Limited()


@pytest.fixture
def small_disk(monkeypatch):
    """``small_disk(folder, size, injected_size=None)`` makes ``folder`` a disk
    of ``size`` bytes (``injected_size`` when injected).

    For real where it can: a tmpfs mounted on the folder (needs root and mount
    rights, as in CI and on the development machine), and the kernel says "No
    space left on device", to this process and to the PDF renderer's child
    alike. Where mounting is not permitted, ENOSPC is injected instead at the
    lowest layer this process writes through: the file objects returned by
    ``os.fdopen`` (Django's FileSystemStorage) and ``io.open`` (``Path.open``,
    used for the renderer's input); the child's own writes are then not
    limited. Returns "tmpfs" or "injected"."""
    mounted = []

    def make(folder: Path, size: int, injected_size: int | None = None) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                  capture_output=True, check=False).returncode == 0
        except OSError:  # no mount command
            done = False
        if done:
            mounted.append(folder)
            return "tmpfs"
        quota = _Quota(folder, injected_size or size)
        real_fdopen, real_open = os.fdopen, io.open
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: quota.wrap(real_fdopen(fd, *a, **k),
                                                                          os.readlink(f"/proc/self/fd/{fd}")))
        monkeypatch.setattr(io, "open", lambda path, *a, **k: quota.wrap(real_open(path, *a, **k), path))
        return "injected"

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_z10_disk_full_during_extraction(owner, sandbox, small_disk, monkeypatch):
    """A full disk: MEDIA_ROOT holds 3 MB (see ``small_disk``); the 2 MB upload fits, its pages do not."""
    saved = []
    real_save = stages.save
    monkeypatch.setattr(stages, "save", lambda name, data: saved.append(name) or real_save(name, data))
    media = sandbox.media
    keep = sandbox.bystander.read_bytes()
    mode = small_disk(media, 3 * 1024**2)
    sandbox.bystander.parent.mkdir(parents=True, exist_ok=True)
    sandbox.bystander.write_bytes(keep)
    rng = __import__("random").Random(7)
    entries = [(f"p{i}.jpg", b"\xff\xd8\xff" + rng.randbytes(256 * 1024)) for i in range(8)]
    upload = make_zip(entries, zipfile.ZIP_DEFLATED)  # copied out (stored entries are read in place)
    batch = run(owner, upload)
    assert_failed(batch, sandbox, "the pages could not be stored", "No space left on device")
    assert 1 < len(saved) < 8  # some pages were written before the disk filled; none is left
    if mode == "tmpfs":
        disk = os.statvfs(media)
        assert (disk.f_blocks - disk.f_bfree) * disk.f_bsize < len(upload) + 100_000  # their space is free again


def test_z10_work_folder_full_while_rendering_a_pdf(owner, sandbox, small_disk):
    """The PDF renderer works in the batch's own folder, on MEDIA_ROOT: a disk
    (see ``small_disk``) that holds the upload but not also the renderer's copy
    of it and the pages."""
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(2).integers(0, 255, (600, 600), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PDF", save_all=True, append_images=[noise.copy()], resolution=60)  # 2 x ~650 KB of PNG
    keep = sandbox.bystander.read_bytes()
    small_disk(sandbox.media, len(buf.getvalue()) + 256 * 1024)
    sandbox.bystander.parent.mkdir(parents=True, exist_ok=True)
    sandbox.bystander.write_bytes(keep)
    assert_failed(run(owner, buf.getvalue(), name="scans.pdf"), sandbox, "scans.pdf:", "No space left on device")


def test_the_pdf_renderer_gets_no_secrets_and_works_in_the_batch_folder(owner, sandbox, monkeypatch):
    from batches.pipeline import extract

    monkeypatch.setenv("SECRET_KEY", "s3cret-key-of-the-worker")
    monkeypatch.setenv("DATABASE_URL", "postgres://omr:db-password@db/omr")
    calls = []
    real_run = subprocess.run

    def spy(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(extract.subprocess, "run", spy)
    batch = run(owner, pdf_of((50, 70)), name="scan.pdf")
    assert batch.stage == Stage.COMPLETED, batch.error
    [(cmd, kwargs)] = calls
    env = kwargs["env"]
    assert "SECRET_KEY" not in env and "DATABASE_URL" not in env
    assert not any("s3cret" in v or "db-password" in v for v in env.values())
    # Its files, and its TMPDIR, are in the batch's own work folder, not the system's temporary folder
    work = sandbox.media / "batches" / str(batch.pk) / "work"
    assert Path(cmd[cmd.index("-m") + 2]).is_relative_to(work) and Path(env["TMPDIR"]).is_relative_to(work)
    # It is told its limits and its parent
    assert cmd[cmd.index("--max-memory-mb") + 1] == "2048"
    assert cmd[cmd.index("--parent-pid") + 1] == str(os.getpid())
    assert int(cmd[cmd.index("--max-cpu-seconds") + 1]) >= 1


def test_the_pdf_renderer_confines_itself():
    """``confine`` as the child runs it: memory and CPU limits, SIGKILL when its parent dies."""
    import sys

    code = textwrap.dedent("""
        import ctypes, os, resource, sys
        from batches.pipeline.pdfpages import confine
        confine(256, 7, os.getppid())
        libc = ctypes.CDLL(None)
        sig = ctypes.c_int()
        libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
        print(resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20, resource.getrlimit(resource.RLIMIT_CPU)[0],
              sig.value, flush=True)
        try:
            block = bytearray(512 * 2**20)
            print("allocated")
        except MemoryError:
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["256", "7", "9", "refused"]

    # A renderer whose parent is killed dies with it
    parent = textwrap.dedent("""
        import subprocess, sys, os
        child = subprocess.Popen([sys.executable, "-c",
            "import os, time; from batches.pipeline.pdfpages import confine; confine(None, None, os.getppid()); "
            "print(os.getpid(), flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
        print(child.stdout.readline().strip(), flush=True)
        import time; time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    child_pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child_pid}").exists():
        status = Path(f"/proc/{child_pid}/status").read_text() if Path(f"/proc/{child_pid}/status").exists() else ""
        if "State:\tZ" in status:
            break
        time.sleep(0.05)
    status = Path(f"/proc/{child_pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


# ---------------------------------------------------------------- I1 huge dimensions in a small file


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idat = zlib.compress(b"\0" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return sheet(0)[:2] + sof + b"\xff\xd9"


def tiff_claiming(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, width if tag == 256 else height)
    return bytes(data)


def test_i1_huge_dimensions_are_refused_before_decoding(owner, sandbox, monkeypatch):
    import cv2
    from PIL import ImageFile

    bombs = {"huge.png": png_claiming(100_000, 100_000), "huge.jpg": jpeg_claiming(65_000, 65_000),
             "huge.tif": tiff_claiming(60_000, 60_000)}
    assert all(len(b) < 2000 for b in bombs.values())
    decoded = []
    real_imdecode, real_load = cv2.imdecode, ImageFile.ImageFile.load
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flag: decoded.append(bytes(buf[:64])) or real_imdecode(buf, flag))

    def load(im):
        decoded.append(im.size)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = make_zip([("scan_001.jpg", sheet(0)), *bombs.items()])
    assert_completed(run(owner, data), sandbox, failed={
        "huge.png": "image is 100000 x 100000 pixels, over the limit of 60 MP",
        "huge.jpg": "image is 65000 x 65000 pixels, over the limit of 60 MP",
        "huge.tif": "image is 3600 megapixels, over the limit of 60 MP",
    })
    assert decoded  # the good sheet was decoded...
    assert not any(d in {b[:64] for b in bombs.values()} or d in {(100_000,) * 2, (60_000,) * 2} for d in decoded)


def test_i1_a_huge_single_image_upload_fails_its_sheet(owner, sandbox):
    assert_completed(run(owner, png_claiming(100_000, 100_000), name="poster.png"), sandbox,
                     failed={"poster.png": "over the limit of 60 MP"})


# ---------------------------------------------------------------- I2 truncated, empty, multi-page


def test_i2_truncated_and_empty_files_fail_alone_and_tiff_pages_become_sheets(owner, sandbox):
    import numpy as np
    from PIL import Image

    frames = [Image.fromarray(np.asarray(Image.open(io.BytesIO(sheet(i))).convert("L"))) for i in (1, 2, 3)]
    tiff = io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:], dpi=(300, 300), compression="tiff_lzw")
    good = sheet(0)
    data = make_zip([("a_good.jpg", good), ("b_cut.jpg", good[: len(good) // 2]), ("c_empty.jpg", b""),
                     ("d_three.tif", tiff.getvalue())])
    sheets = assert_completed(run(owner, data), sandbox, failed={"b_cut.jpg": "truncated JPEG",
                                                                 "c_empty.jpg": "empty file"})
    assert list(sheets) == ["a_good.jpg", "b_cut.jpg", "c_empty.jpg", "d_three.tif", "d_three.tif#2",
                            "d_three.tif#3"]
    assert [sheets[k].student for k in ("d_three.tif", "d_three.tif#2", "d_three.tif#3")] == [
        simulated_sheet(i).student for i in (1, 2, 3)]


def test_i2_a_damaged_page_of_a_multi_page_tiff_fails_only_that_sheet(owner, sandbox):
    import numpy as np
    from PIL import Image

    frames = [Image.fromarray(np.asarray(Image.open(io.BytesIO(sheet(i))).convert("L"))) for i in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_adobe_deflate")
    tiff = bytearray(buf.getvalue())
    with Image.open(io.BytesIO(bytes(tiff))) as im:  # zero the compressed pixels of page 2
        im.seek(1)
        for offset, count in zip(im.tag_v2[273], im.tag_v2[279], strict=True):
            tiff[offset:offset + count] = bytes(count)

    sheets = assert_completed(run(owner, bytes(tiff), name="three.tif"), sandbox, failed={
        "three.tif#2": "page 2 of the TIFF file is damaged: its pixels cannot be decoded"})
    assert list(sheets) == ["three.tif", "three.tif#2", "three.tif#3"]
    assert (sheets["three.tif"].student, sheets["three.tif#3"].student) == (simulated_sheet(1).student,
                                                                             simulated_sheet(3).student)


def test_i2_an_empty_upload_is_refused_before_a_batch_exists(owner, sandbox):
    with pytest.raises(accept.ServiceError, match="empty"):
        accept.create_batch(owner, ContentFile(b"", name="scan.jpg"), filename="scan.jpg", template=TEMPLATE,
                              start=False)
    assert not Batch.objects.exists()
    assert_contained(Batch(pk=uuid.uuid4()), sandbox)  # nothing written at all


# ---------------------------------------------------------------- I3 PDF pages and page boxes


def pdf_of(*sizes: tuple[int, int], resolution: float = 72.0) -> bytes:
    from PIL import Image

    frames = [Image.new("L", size, 255) for size in sizes]
    buf = io.BytesIO()
    frames[0].save(buf, "PDF", save_all=True, append_images=frames[1:], resolution=resolution)
    return buf.getvalue()


def test_i3_pdf_with_too_many_pages(owner, sandbox, settings):
    settings.OMR_MAX_PAGES = 2
    assert_failed(run(owner, pdf_of((50, 70), (50, 70), (50, 70)), name="long.pdf"), sandbox,
                  "long.pdf: the PDF has 3 pages; the limit is 2 (OMR_MAX_PAGES)")


def test_i3_upload_with_too_many_pages(owner, sandbox, settings):
    settings.OMR_MAX_PAGES = 2
    assert_failed(run(owner, make_zip([(f"{i}.jpg", JPEG) for i in range(3)])), sandbox,
                  "the upload has more than 2 pages; the limit is 2 (OMR_MAX_PAGES)")


def test_i3_huge_pdf_page_box_is_clamped_to_the_pixel_cap(owner, sandbox, settings):
    import cv2

    settings.OMR_MAX_PIXELS = 1_000_000
    batch = run(owner, pdf_of((2000, 2000), resolution=10), name="poster.pdf")  # a 5 m x 5 m page
    sheets = assert_completed(batch, sandbox, failed={"poster.pdf": ""})  # a blank page: no sheet on it
    assert sheets["poster.pdf"].image.endswith(".png")  # its 4 MP JPEG was over the cap: rendered instead
    image = cv2.imread(str(sandbox.media / sheets["poster.pdf"].image), cv2.IMREAD_GRAYSCALE)
    assert 900_000 < image.shape[0] * image.shape[1] <= 1_000_000


def jpeg_pdf(jpeg: bytes, *, cover: bool = True, mark: bool = False) -> bytes:
    """A one-page A4 PDF holding ``jpeg`` (over the whole page unless not
    ``cover``), with a black square drawn over it when ``mark``."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = pdfium.PdfDocument.new()
    page = pdf.new_page(595, 842)
    image = pdfium.PdfImage.new(pdf)
    image.load_jpeg(io.BytesIO(jpeg), inline=False)
    image.set_matrix(pdfium.PdfMatrix().scale(*((595, 842) if cover else (400, 600))))
    page.insert_obj(image)
    if mark:
        square = pdfium_c.FPDFPageObj_CreateNewRect(100, 100, 50, 50)
        pdfium_c.FPDFPageObj_SetFillColor(square, 0, 0, 0, 255)
        pdfium_c.FPDFPath_SetDrawMode(square, pdfium_c.FPDF_FILLMODE_ALTERNATE, 0)
        pdfium_c.FPDFPage_InsertObject(page.raw, square)
    page.gen_content()
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def test_a_scanned_pdf_page_is_its_own_jpeg(owner, sandbox):
    # Given a PDF whose page is one JPEG covering it (what scanners write)
    jpeg = sheet(0)
    # When it runs, the page stored is that JPEG, byte for byte, and reads
    sheets = assert_completed(run(owner, jpeg_pdf(jpeg), name="scan.pdf"), sandbox)
    assert sheets["scan.pdf"].image.endswith("/00001.jpg")
    assert (sandbox.media / sheets["scan.pdf"].image).read_bytes() == jpeg
    assert sheets["scan.pdf"].student == simulated_sheet(0).student


@pytest.mark.parametrize("kind", [{"cover": False}, {"mark": True}], ids=["not-covering", "drawn-over"])
def test_a_pdf_page_that_is_more_than_its_jpeg_is_rendered(kind):
    [page] = iter_pages(io.BytesIO(jpeg_pdf(sheet(0), **kind)), "scan.pdf", Limits())
    assert page.extension == ".png" and page.data[:4] == b"\x89PNG"


def test_an_embedded_jpeg_unlike_its_rendered_page_is_not_used(tmp_path, monkeypatch):
    from batches.pipeline import pdfpages

    source, out = tmp_path / "in.pdf", tmp_path / "out"
    source.write_bytes(jpeg_pdf(sheet(0)))
    out.mkdir()
    assert pdfpages.render(source, out, 100, 10, 60_000_000) == 1
    assert [p.name for p in out.iterdir()] == ["00001.jpg"]
    (out / "00001.jpg").unlink()
    monkeypatch.setattr(pdfpages, "THUMB_TOLERANCE", -1.0)  # nothing matches
    assert pdfpages.render(source, out, 100, 10, 60_000_000) == 1
    assert [p.name for p in out.iterdir()] == ["00001.png"]


# ---------------------------------------------------------------- I4 malformed, encrypted, slow PDFs


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler whose user password is not empty."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, b"01" * 16, b"01" * 16, xref))
    return bytes(out)


def test_i4_malformed_pdf(owner, sandbox):
    assert_failed(run(owner, b"%PDF-1.7\n1 0 obj broken", name="scan.pdf"), sandbox,
                  "scan.pdf: the PDF is damaged or not a PDF")


def test_i4_encrypted_pdf(owner, sandbox):
    assert_failed(run(owner, make_zip([("secret.pdf", encrypted_pdf())])), sandbox,
                  "secret.pdf: password-protected PDFs are not supported")


def test_i4_a_pdf_that_takes_too_long_is_stopped(owner, sandbox, settings):
    settings.OMR_PDF_TIMEOUT = 0.05  # shorter than the renderer takes to start
    assert_failed(run(owner, pdf_of((50, 70)), name="slow.pdf"), sandbox,
                  "slow.pdf: the PDF took longer than 0.05 s to render; the limit is 0.05 s (OMR_PDF_TIMEOUT)")


# ---------------------------------------------------------------- the good path and the helpers


def test_good_archive_gives_pages_in_natural_order_and_skips_junk():
    data = make_zip([("scan10.jpg", JPEG), ("scan2.jpg", JPEG), ("notes.txt", b"hi"), ("__MACOSX/._scan2.jpg", b"x"),
                     ("sub/", b""), ("sub/scan1.jpg", JPEG), (".DS_Store", b"x")])
    pages = list(iter_pages(io.BytesIO(data), "scans.zip", Limits()))
    assert [p.source_name for p in pages] == ["scan2.jpg", "scan10.jpg", "sub/scan1.jpg"]
    assert all(p.extension == ".jpg" and page_bytes(p, data) == JPEG for p in pages)
    assert all(p.span is not None and p.data == b"" for p in pages)  # stored: read in place, not copied
    deflated = make_zip([("scan1.jpg", JPEG)], zipfile.ZIP_DEFLATED)
    [page] = iter_pages(io.BytesIO(deflated), "scans.zip", Limits())
    assert page.span is None and page.data == JPEG


def page_bytes(page, upload: bytes) -> bytes:
    """A page's bytes: its own, or its range of the upload."""
    return page.data if page.span is None else upload[page.span[0]:page.span[0] + page.span[1]]


def test_a_jpeg_mentioning_pdf_in_a_comment_is_a_jpeg():
    from batches.pipeline.extract import sniff

    commented = b"\xff\xd8\xff\xfe\x00\x10see %PDF-1.4 \xff\xd9"
    assert sniff(commented) == "jpeg"
    assert sniff(b"junk before the header %PDF-1.7\n") == "pdf"
    upload = make_zip([("a.jpg", commented)])
    [page] = iter_pages(io.BytesIO(upload), "scans.zip", Limits())
    assert page.extension == ".jpg" and page_bytes(page, upload) == commented


def test_limits_follow_the_settings(settings):
    assert Limits.from_settings() == Limits(
        max_entries=20_000, max_pages=settings.OMR_MAX_PAGES, max_pixels=60_000_000,
        max_uncompressed=settings.OMR_MAX_UNCOMPRESSED_BYTES, max_ratio=settings.OMR_MAX_COMPRESSION_RATIO,
        pdf_dpi=settings.OMR_PDF_DPI, pdf_timeout=settings.OMR_PDF_TIMEOUT)
    assert settings.OMR_MAX_UPLOAD_BYTES == 4 * 1024**3


def test_upload_extension_checks():
    assert upload_extension("Scans.ZIP") == ".zip"
    with pytest.raises(ExtractError, match="unsupported file type"):
        upload_extension("evil.exe")


def test_unicode_folding_helper_agrees_with_the_standard():
    # The duplicate check folds like NFKC_Casefold (a fullwidth capital S is an s).
    assert unicodedata.normalize("NFKC", "\uff33").casefold() == "s"


def test_an_image_entry_over_the_per_image_cap_is_refused_before_it_is_read(owner, sandbox, settings):
    # Images are decoded from memory whole, so one larger than the cap stops the archive up front
    settings.OMR_MAX_IMAGE_ENTRY_BYTES = 2 * 1024 * 1024
    data = make_zip([("a.jpg", JPEG), ("poster.tif", b"II*\0" + b"\0" * (3 * 1024 * 1024))])
    assert_failed(run(owner, data), sandbox,
                  "entry 'poster.tif': an image of 3 MB; the limit is 2 MB per image (OMR_MAX_IMAGE_ENTRY_MB)")


def test_a_single_image_upload_over_the_per_image_cap_is_refused(owner, sandbox, settings):
    settings.OMR_MAX_IMAGE_ENTRY_BYTES = 1024 * 1024
    big = JPEG + b"\0" * (2 * 1024 * 1024)
    assert_failed(run(owner, big, name="scan.jpg"), sandbox,
                  "'scan.jpg': an image of 2 MB; the limit is 1 MB per image (OMR_MAX_IMAGE_ENTRY_MB)")


def test_the_validating_message_names_the_files_an_archive_holds_that_are_not_read(owner, sandbox):
    # A template.json (or anything else) put in the ZIP by mistake is not
    # read: the validating stage's message says which files those are.
    batch = run(owner, make_zip([("scan1.jpg", sheet(0)), ("template.json", b"{}")]))
    said = list(ProgressEvent.objects.filter(batch=batch, stage=Stage.VALIDATING).values_list("message", flat=True))
    assert "Archive is valid: 1 image/PDF files, 1 other file skipped (template.json)" in said
    many = run(owner, make_zip([("scan1.jpg", sheet(0))] + [(f"note{i}.txt", b"x") for i in range(5)]))
    said = list(ProgressEvent.objects.filter(batch=many, stage=Stage.VALIDATING).values_list("message", flat=True))
    assert "Archive is valid: 1 image/PDF files, 5 other files skipped (note0.txt, note1.txt, note2.txt and 2 more)" in said
