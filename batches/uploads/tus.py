"""Resumable uploads: the storage side of the tus 1.0 protocol (core,
creation, checksum, expiration, termination); its HTTP endpoints under
``/api/uploads/`` are in ``web/tus.py`` (docs/uploads.md).

``POST /api/uploads/`` creates an upload and, at once, its batch in stage
``uploading``; each ``PATCH`` appends one chunk to
``MEDIA_ROOT/uploads/<id>/data`` and fsyncs it before the offset is stored, so
``HEAD`` only ever reports bytes that are on disk. A chunk is written while an
exclusive ``flock`` on ``uploads/<id>/lock`` is held: a second request to the
same upload, from any process on any thread, gets 423 instead of waiting, and
the kernel drops the lock of a process that dies. When the last byte is in,
the whole file is checked against the checksum the client declared in
``Upload-Metadata`` (``sha256`` or ``sha1``) and handed to the batch
(``accept.store_upload``), which queues the pipeline.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from django.conf import settings
from django.core.files.base import File
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import lifecycle
from ..display import display_name, size_text
from ..exams.services import upload_exam
from ..models import Stage, Upload, batch_upload_path, upload_expiry
from ..storage import fsync_path
from . import accept

logger = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,checksum,termination"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
READ_SIZE = 1024 * 1024  # the request body is read and written in pieces this large
METADATA_MAX_CHARS = 4096
#: Response headers a browser client reads (same origin needs no CORS; listed
#: so a proxy that adds CORS for another origin only has to allow it).
EXPOSED_HEADERS = ("Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
                   "Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, Upload-Batch-Id, Location")


class TusError(Exception):
    """A tus request that cannot be done: the HTTP status and plain words."""

    def __init__(self, status: int, message: str, **headers):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ---------------------------------------------------------------- files


def upload_dir(upload_id) -> Path:
    """The folder of one upload's bytes (``data``) and its lock file."""
    return Path(settings.MEDIA_ROOT) / "uploads" / str(uuid.UUID(str(upload_id)))


def data_path(upload_id) -> Path:
    return upload_dir(upload_id) / "data"


@contextlib.contextmanager
def locked(upload_id):
    """Hold the upload's write lock, or raise ``TusError`` 423 at once when
    another request holds it. An ``flock`` belongs to the open file, so it
    excludes other threads and processes alike, and dies with its process."""
    try:
        fd = os.open(upload_dir(upload_id) / "lock", os.O_RDWR | os.O_CREAT, 0o640)
    except FileNotFoundError:
        raise TusError(404, "no such upload (it was terminated or has expired)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TusError(423, "another request is writing to this upload; send HEAD, then resume") from None
        yield
    finally:
        os.close(fd)  # releases the lock


class StagedFile(File):
    """The finished upload's data file; ``temporary_file_path`` lets
    FileSystemStorage move it into the batch's folder instead of copying it."""

    def __init__(self, path: Path, name: str):
        super().__init__(open(path, "rb"), name=name)  # noqa: SIM115 - closed by store_upload's caller
        self._path = str(path)

    def temporary_file_path(self) -> str:
        return self._path


# ---------------------------------------------------------------- protocol parsing


def parse_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: ``key base64value,key2,...`` as a dict of text."""
    if len(header) > METADATA_MAX_CHARS:
        raise TusError(400, f"Upload-Metadata is over {METADATA_MAX_CHARS} characters")
    result: dict[str, str] = {}
    for pair in header.split(","):
        if not pair.strip():
            continue
        parts = pair.strip().split(" ")
        key = parts[0]
        if len(parts) > 2 or not key:
            raise TusError(400, f"Upload-Metadata pair {display_name(pair, 40)!r} is not 'key base64-value'")
        if key in result:
            raise TusError(400, f"Upload-Metadata names {display_name(key, 40)!r} twice")
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise TusError(400, f"Upload-Metadata value of {display_name(key, 40)!r} is not base64 "
                                    f"of UTF-8 text") from None
        result[key] = value
    return result


def metadata_header(metadata: dict[str, str]) -> str:
    """The ``Upload-Metadata`` header for ``metadata`` (the reverse of ``parse_metadata``)."""
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
                    for key, value in metadata.items())


def parse_digest(name: str, value: str) -> str:
    """A whole-file checksum from the metadata, in hex or base64; as hex."""
    size = CHECKSUMS[name]().digest_size
    value = value.strip()
    if re.fullmatch(f"[0-9a-fA-F]{{{2 * size}}}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != size:
        raise TusError(400, f"the metadata {name} must be the file's {name} digest in hex or base64")
    return raw.hex()


def parse_checksum_header(header: str) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; None when absent.
    An algorithm this server does not know is 400 (the tus checksum extension)."""
    if not header:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUMS:
        raise TusError(400, f"checksum algorithm {display_name(algorithm, 20)!r} is not supported; "
                            f"use one of {', '.join(CHECKSUMS)}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != CHECKSUMS[algorithm]().digest_size:
        raise TusError(400, f"Upload-Checksum must be '{algorithm} <base64 of the chunk's {algorithm} digest>'")
    return algorithm, digest


def parse_int_header(request, name: str) -> int:
    value = request.headers.get(name, "").strip()
    if not value.isdigit():
        raise TusError(400, f"{name} must be a whole number of bytes" if value else f"{name} is required")
    return int(value)


def _mb(size: int) -> str:
    """Progress in MB of 2**20 bytes, the unit of the settings."""
    return f"{size / 2**20:,.1f} MB"


# ---------------------------------------------------------------- write actions


def create_upload(owner, *, length: int, metadata: dict[str, str]) -> Upload:
    """A new upload of ``length`` bytes and its batch (stage ``uploading``).
    Metadata: ``filename``, ``template``, ``has_qr``, ``exam``, optional ``sha256``/``sha1``
    of the whole file. Raises ``TusError`` or ``ServiceError`` (400, 413)."""
    if length > settings.OMR_MAX_UPLOAD_BYTES:
        raise TusError(413, f"Upload-Length {_mb(length)} is over the limit of {accept.upload_limit_text()}")
    filename = metadata.get("filename") or metadata.get("name") or "upload"
    has_qr = accept.parse_bool(metadata.get("has_qr"), default=True)
    digests = {name: parse_digest(name, metadata[name]) for name in CHECKSUMS if metadata.get(name)}
    upload_id = uuid.uuid4()
    directory = upload_dir(upload_id)
    directory.mkdir(parents=True, mode=0o750)
    try:
        with transaction.atomic():
            exam, template = upload_exam(owner, metadata.get("exam"), metadata.get("template", ""))
            batch = accept.begin_batch(owner, filename=filename, template=template, has_qr=has_qr, size=length,
                                       exam=exam)
            upload = Upload.objects.create(id=upload_id, owner=owner, batch=batch, length=length, metadata=metadata,
                                           sha256=digests.get("sha256", ""), sha1=digests.get("sha1", ""))
            with open(directory / "data", "xb") as handle:
                os.fsync(handle.fileno())
            fsync_path(directory)
            fsync_path(directory.parent)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    logger.info("Upload %s created for batch %s: %s, %d bytes", upload.pk, batch.pk, display_name(filename), length)
    return upload


def write_chunk(request, upload: Upload) -> Upload:
    """Append the PATCH body to the upload at ``Upload-Offset`` (tus core):
    415 wrong Content-Type, 409 wrong offset, 413 past the declared length or
    over ``OMR_TUS_MAX_CHUNK_BYTES``, 460 checksum mismatch (chunk discarded),
    423 another request is writing, 410 expired. The body is read in pieces
    and counted here; nothing of a refused chunk stays on disk."""
    if request.content_type != "application/offset+octet-stream":
        raise TusError(415, "a PATCH body must be sent as Content-Type: application/offset+octet-stream")
    offset = parse_int_header(request, "Upload-Offset")
    checksum = parse_checksum_header(request.headers.get("Upload-Checksum", ""))
    declared = request.META.get("CONTENT_LENGTH", "")
    declared = int(declared) if str(declared).isdigit() else None
    _check_writable(upload, offset)
    try:
        with locked(upload.pk):
            try:
                upload.refresh_from_db()
            except Upload.DoesNotExist:
                raise TusError(404, "no such upload (it was terminated)") from None
            _check_writable(upload, offset)
            # (offset == length here: every byte is in, but finishing was cut short: finish now.)
            if upload.offset < upload.length:
                room = upload.length - upload.offset
                limit = min(room, settings.OMR_TUS_MAX_CHUNK_BYTES)
                if declared is not None and declared > limit:
                    raise TusError(413, _too_much(upload, room))
                digests = running_digests.start_chunk(upload)
                received = _append_body(request, upload, limit, checksum, room, digests)
                now = timezone.now()
                changes = {"offset": upload.offset + received, "updated_at": now, "expires_at": upload_expiry(now)}
                if received:
                    changes["chunks"] = F("chunks") + 1
                if not Upload.objects.filter(pk=upload.pk, offset=upload.offset).update(**changes):
                    raise TusError(404, "no such upload (its batch was deleted meanwhile)")
                running_digests.stored(upload.pk, upload.offset + received, digests)
                upload.refresh_from_db()
                if received:
                    _publish_progress(upload, now)
            if upload.offset == upload.length:
                finish_upload(upload)
    finally:
        if upload.is_finished:  # its data moved to the batch (or was refused): only the lock file is left
            shutil.rmtree(upload_dir(upload.pk), ignore_errors=True)
    return upload


class RunningDigests:
    """The whole file's digests, kept up to date in this process as chunks are
    stored, so the last chunk need not read the whole file again (that read
    took a third of a large upload's time). Keyed by upload and by the offset
    they cover: a chunk stored by another process (several Daphne processes)
    or a restart leaves no entry at the new offset, and the file is then read
    once at the end as before. Only digests of bytes durably stored are kept."""

    limit = 256  # uploads in progress per process; the oldest are forgotten first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict = OrderedDict()

    def names(self, upload: Upload) -> list[str]:
        return ["sha256", "sha1"] if upload.sha1 else ["sha256"]

    def start_chunk(self, upload: Upload) -> dict | None:
        """Copies of the digests up to ``upload.offset`` (fresh ones at 0), to be
        fed the chunk's bytes; None when this process has not seen them all."""
        if upload.offset == 0:
            return {name: CHECKSUMS[name]() for name in self.names(upload)}
        with self._lock:
            entry = self._entries.get(upload.pk)
        if entry is None or entry[0] != upload.offset:
            return None
        return {name: hasher.copy() for name, hasher in entry[1].items()}

    def stored(self, upload_id, offset: int, hashers: dict | None) -> None:
        if hashers is None:
            return
        with self._lock:
            self._entries[upload_id] = (offset, hashers)
            self._entries.move_to_end(upload_id)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)

    def take(self, upload: Upload) -> dict[str, str] | None:
        """The hex digests of the whole file if they cover it, and forget them."""
        with self._lock:
            entry = self._entries.pop(upload.pk, None)
        if entry is None or entry[0] != upload.length:
            return None
        return {name: hasher.hexdigest() for name, hasher in entry[1].items()}

    def forget(self, upload_id) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)


running_digests = RunningDigests()


def _too_much(upload: Upload, room: int) -> str:
    if room <= settings.OMR_TUS_MAX_CHUNK_BYTES:
        return (f"the chunk goes past the declared Upload-Length of {upload.length} bytes "
                f"({room} bytes are still expected)")
    return (f"a chunk may be at most {size_text(settings.OMR_TUS_MAX_CHUNK_BYTES)} (OMR_TUS_MAX_CHUNK_MB); "
            "send smaller chunks")


def _check_writable(upload: Upload, offset: int) -> None:
    if upload.is_expired():
        raise TusError(410, f"this upload expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC; start a new one")
    if upload.error:
        raise TusError(409, f"this upload failed: {upload.error}", **{"Upload-Offset": str(upload.offset)})
    if offset != upload.offset:
        raise TusError(409, f"Upload-Offset {offset} does not match the {upload.offset} bytes stored; "
                            f"send HEAD and resume from there", **{"Upload-Offset": str(upload.offset)})
    if upload.is_finished:
        raise TusError(409, "this upload is already complete", **{"Upload-Offset": str(upload.offset)})


def _append_body(request, upload: Upload, limit: int, checksum, room: int, digests: dict | None = None) -> int:
    """Write at most ``limit`` bytes of the body at the stored offset, fsynced;
    returns the count. Bytes past a crash's last stored offset are cut first.
    ``digests`` (whole-file hashers, see ``RunningDigests``) are fed the bytes."""
    hasher = CHECKSUMS[checksum[0]]() if checksum else None
    received = 0
    with open(data_path(upload.pk), "r+b") as handle:
        handle.seek(upload.offset)
        handle.truncate()
        try:
            while True:
                # One byte past the limit is enough to know the body is too long.
                piece = request.read(min(READ_SIZE, limit - received + 1))
                if not piece:
                    break
                received += len(piece)
                if received > limit:
                    raise TusError(413, _too_much(upload, room))
                if hasher is not None:
                    hasher.update(piece)
                for whole in (digests or {}).values():
                    whole.update(piece)
                handle.write(piece)
            if hasher is not None and hasher.digest() != checksum[1]:
                raise TusError(460, f"Upload-Checksum mismatch: the chunk's {checksum[0]} is not the one sent; "
                                    f"the chunk was discarded, send it again",
                               **{"Upload-Offset": str(upload.offset)})
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.truncate(upload.offset)
            handle.flush()
            os.fsync(handle.fileno())
            raise
    return received


def _publish_progress(upload: Upload, now) -> None:
    """An ``uploading`` event when the interval has passed, every 10 % or
    at the last chunk; never one per chunk of a fast upload."""
    percent = 100.0 * upload.offset / upload.length
    last = upload.progress_published_at
    due = (last is None or (now - last).total_seconds() >= settings.OMR_PROGRESS_INTERVAL
           or percent - upload.progress_published_percent >= 10.0 or upload.offset == upload.length)
    if not due:
        return
    Upload.objects.filter(pk=upload.pk).update(progress_published_at=now, progress_published_percent=percent)
    lifecycle.advance(upload.batch_id, Stage.UPLOADING,
                      f"Received chunk {upload.chunks} ({_mb(upload.offset)} of {_mb(upload.length)})",
                      progress=percent)


def finish_upload(upload: Upload) -> None:
    """Check the complete file against the declared checksums and give it to
    the batch, which starts the pipeline. A mismatch fails the batch (460).
    Called with the upload's lock held."""
    batch = upload.batch
    path = data_path(upload.pk)
    moved = Path(settings.MEDIA_ROOT) / batch_upload_path(batch, "")
    if not path.exists() and moved.exists() and not batch.upload:
        # A crash after the file was moved into the batch's folder, before the
        # database said so: put it back and finish again.
        os.rename(moved, path)
    size = path.stat().st_size
    if size != upload.length:  # never expected: offsets move only after an fsync
        raise TusError(500, f"the stored upload has {size} bytes, not {upload.length}")
    actual = running_digests.take(upload) or file_digests(path, running_digests.names(upload))
    for name in CHECKSUMS:
        expected = getattr(upload, name)
        if expected and actual[name] != expected:
            message = (f"the file received does not match its {name}: {display_name(batch.original_filename)} "
                       f"was declared as {expected} and arrived as {actual[name]}; upload it again")
            upload.error, upload.finished_at = message, timezone.now()
            with transaction.atomic():
                Upload.objects.filter(pk=upload.pk).update(error=message, finished_at=upload.finished_at)
                lifecycle.fail_upload(batch, message)
            path.unlink(missing_ok=True)
            raise TusError(460, message, **{"Upload-Offset": str(upload.offset)})
    staged = StagedFile(path, batch.original_filename)
    try:
        with transaction.atomic():
            accept.store_upload(batch, staged, sha256=actual["sha256"])
            now = timezone.now()
            Upload.objects.filter(pk=upload.pk).update(finished_at=now, updated_at=now)
    finally:
        staged.close()
    upload.refresh_from_db()
    logger.info("Upload %s complete: batch %s queued", upload.pk, batch.pk)


def file_digests(path: Path, names: list[str]) -> dict[str, str]:
    """Hex digests of a whole stored file (when this process did not see every chunk)."""
    hashers = {name: CHECKSUMS[name]() for name in names}
    with open(path, "rb") as handle:
        while piece := handle.read(READ_SIZE):
            for hasher in hashers.values():
                hasher.update(piece)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def complete_stalled(upload: Upload) -> Upload:
    """Finish an upload whose last byte is stored but which was never handed
    to its batch (the server died in between): a client that then sees
    ``Upload-Offset == Upload-Length`` on HEAD sends nothing more."""
    if upload.is_finished or upload.offset != upload.length:
        return upload
    try:
        with locked(upload.pk):
            upload.refresh_from_db()
            if not upload.is_finished and upload.offset == upload.length:
                finish_upload(upload)
    except TusError as exc:
        # 423: the request holding the lock is finishing it; 460: the file did
        # not match its checksum, and the upload now says so.
        if exc.status not in (423, 460):
            raise
    if upload.is_finished:
        shutil.rmtree(upload_dir(upload.pk), ignore_errors=True)
    return upload


def terminate_upload(upload: Upload) -> None:
    """tus termination: an unfinished upload is removed with its batch (which
    has no file yet); a finished (or failed) one only forgets the upload: its
    batch stays, and is deleted through the batch API."""
    upload_id = upload.pk
    if upload.is_finished:
        upload.delete()
    else:
        with locked(upload_id):
            accept.delete_batch(upload.batch)  # the upload row goes with it
    running_digests.forget(upload_id)
    shutil.rmtree(upload_dir(upload_id), ignore_errors=True)
    logger.info("Upload %s terminated", upload_id)
