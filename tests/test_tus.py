"""Resumable uploads (tus 1.0, ``batches/tus.py``): the protocol over raw HTTP
with Django's test client (U1–U8, X5, X6), the cleanup command, and, against a
real Daphne, the official Python tus client (``tuspy``) killed mid-upload and
resumed, a server restart and a connection cut mid-chunk (U6), and a chunked
body over the cap (U8)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches.models import Batch, ProgressEvent, Stage, Upload
from batches.uploads import tus
from tests.conftest import TEMPLATE, sheets_zip

pytestmark = pytest.mark.django_db

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK_TYPE = "application/offset+octet-stream"


def metadata(**fields) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in fields.items())


def create(client, length: int, filename="scans.zip", headers=None, **fields):
    fields = {"filename": filename, "template": TEMPLATE, "has_qr": "true", **fields}
    return client.generic("POST", reverse("batches:tus-uploads"), b"",
                          headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(**fields),
                                   **(headers or {})})


def patch(client, url, body: bytes, offset: int, content_type=CHUNK_TYPE, **headers):
    return client.generic("PATCH", url, body, content_type=content_type,
                          headers={**TUS, "Upload-Offset": str(offset), **headers})


def head(client, url):
    return client.head(url, headers=TUS)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def stored(upload_url) -> bytes:
    upload_id = upload_url.rstrip("/").rsplit("/", 1)[1]
    return tus.data_path(upload_id).read_bytes()


def upload_of(response) -> Upload:
    return Upload.objects.get(pk=response["Location"].rsplit("/", 1)[1])


@pytest.fixture
def payload():
    """A real ZIP of two simulated sheets (about 0.4 MB)."""
    data, _sheets = sheets_zip(2)
    return data


@pytest.fixture
def started(api, payload):
    """An upload of ``payload`` created by Alice, nothing sent yet."""
    response = create(api, len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert response.status_code == 201, response.content
    return response["Location"]


# ---------------------------------------------------------------- core, creation, options


def test_options_advertises_version_extensions_limits_without_a_login(client, settings):
    response = client.options(reverse("batches:tus-uploads"))
    assert response.status_code == 204
    assert response["Tus-Resumable"] == response["Tus-Version"] == "1.0.0"
    assert set(response["Tus-Extension"].split(",")) == {"creation", "expiration", "checksum", "termination"}
    assert response["Tus-Max-Size"] == str(settings.OMR_MAX_UPLOAD_BYTES)
    assert set(response["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256"}


def test_a_wrong_or_missing_protocol_version_is_412_and_every_answer_says_tus_resumable(api, started, client):
    for headers in ({"Tus-Resumable": "0.2.2"}, {}):
        response = api.head(started, headers=headers)
        assert response.status_code == 412 and response["Tus-Version"] == "1.0.0"
        assert response["Tus-Resumable"] == "1.0.0"
    # Errors carry it too: no login (401), and a 404.
    assert client.head(started, headers=TUS)["Tus-Resumable"] == "1.0.0"
    assert client.head(started, headers=TUS).status_code == 401
    missing = api.head(reverse("batches:tus-upload", args=["00000000-0000-0000-0000-000000000000"]), headers=TUS)
    assert missing.status_code == 404 and missing["Tus-Resumable"] == "1.0.0"


def test_creation_gives_a_location_and_a_batch_at_once(api, owner, payload):
    response = create(api, len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert response.status_code == 201
    upload = upload_of(response)
    assert response["Location"] == f"http://testserver/api/uploads/{upload.pk}"
    assert response["Upload-Batch-Id"] == str(upload.batch_id)
    assert response["Upload-Expires"].endswith("GMT")
    body = response.json()
    assert body["batch_id"] == str(upload.batch_id) and body["upload_url"] == response["Location"]
    assert body["stream_url"].endswith(f"/api/batches/{upload.batch_id}/stream")
    assert body["status_url"].endswith(f"/api/batches/{upload.batch_id}")
    assert body["results_url"].endswith(f"/api/batches/{upload.batch_id}/results.csv")
    batch = Batch.objects.get(pk=upload.batch_id)
    assert batch.owner == owner and batch.stage == Stage.UPLOADING and batch.size == len(payload)
    assert batch.template == TEMPLATE and batch.has_qr and not batch.upload
    assert [e.message for e in batch.events.all()] == ["Receiving scans.zip"]
    assert upload.length == len(payload) and upload.offset == 0 and upload.sha256 == hashlib.sha256(payload).hexdigest()
    assert tus.data_path(upload.pk).read_bytes() == b""
    # HEAD: nothing received yet, never cached.
    answer = head(api, response["Location"])
    assert answer.status_code == 200
    assert (answer["Upload-Offset"], answer["Upload-Length"]) == ("0", str(len(payload)))
    assert answer["Cache-Control"] == "no-store"
    assert tus.parse_metadata(answer["Upload-Metadata"])["filename"] == "scans.zip"


@pytest.mark.parametrize(("length", "fields", "status", "words"), [
    (None, {}, 400, "Upload-Length is required"),
    ("12x", {}, 400, "Upload-Length must be a whole number"),
    (100, {"template": "no-such-template"}, 400, "unknown template"),
    (100, {"has_qr": "maybe"}, 400, "has_qr"),
    (100, {"filename": "notes.txt"}, 400, "unsupported file type"),
    (0, {}, 400, "is empty"),
    (100, {"sha256": "abc"}, 400, "sha256"),
    (10 * 1024**3, {}, 413, "over the limit"),  # U4: declared length over the limit
])
def test_creation_errors_name_the_problem_and_leave_nothing(api, media_root, length, fields, status, words):
    headers = {**TUS, "Upload-Metadata": metadata(**{"filename": "scans.zip", "template": TEMPLATE, **fields})}
    if length is not None:
        headers["Upload-Length"] = str(length)
    response = api.generic("POST", reverse("batches:tus-uploads"), b"", headers=headers)
    assert response.status_code == status
    assert words in response.json()["error"]
    assert not Batch.objects.exists() and not Upload.objects.exists()
    assert not list((media_root / "uploads").glob("*")) if (media_root / "uploads").exists() else True


def test_bad_metadata_is_400(api):
    response = api.generic("POST", reverse("batches:tus-uploads"), b"",
                           headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"})
    assert response.status_code == 400 and "base64" in response.json()["error"]


def test_a_chunked_upload_becomes_a_batch_with_the_file_and_its_checksum(
        api, payload, django_capture_on_commit_callbacks, settings):
    # Given an upload of a real ZIP, with the whole file's sha256 declared
    response = create(api, len(payload), sha256=hashlib.sha256(payload).hexdigest())
    url, upload = response["Location"], upload_of(response)
    # When it arrives in four chunks, each with its own checksum
    size = -(-len(payload) // 4)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for offset in range(0, len(payload), size):
            chunk = payload[offset:offset + size]
            answer = patch(api, url, chunk, offset, **{"Upload-Checksum": checksum("sha256", chunk)})
            assert answer.status_code == 204, answer.content
            assert answer["Upload-Offset"] == str(min(len(payload), offset + size))
            assert answer["Upload-Batch-Id"] == str(upload.batch_id)
    # Then the batch has the file, its SHA-256, and the pipeline is queued
    batch = Batch.objects.get(pk=upload.batch_id)
    with batch.upload.open("rb") as handle:
        assert handle.read() == payload
    assert batch.upload.name == f"batches/{batch.pk}/upload/original.zip"
    assert batch.sha256 == hashlib.sha256(payload).hexdigest()
    assert [c for c in callbacks if "enqueue_batch" in c.__qualname__]
    upload.refresh_from_db()
    assert upload.is_finished and upload.offset == len(payload) and upload.chunks == 4
    assert not tus.upload_dir(upload.pk).exists()  # the data was moved, not copied
    # The uploading stage published chunk events with rising percentages, then "Upload complete"
    events = list(ProgressEvent.objects.filter(batch=batch))
    assert {e.stage for e in events} == {"uploading"}
    messages = [e.message for e in events]
    assert messages[0] == "Receiving scans.zip" and messages[-1].startswith("Upload complete")
    assert any(m.startswith("Received chunk ") and " MB of " in m for m in messages)
    assert [e.progress_percentage for e in events] == sorted(e.progress_percentage for e in events)
    assert events[-1].progress_percentage == 100
    # HEAD after the end: all of it, no expiry; GET: the same links as the plain upload's answer
    done = head(api, url)
    assert done["Upload-Offset"] == str(len(payload)) and "Upload-Expires" not in done
    body = api.get(url).json()
    assert body["finished"] and body["batch_id"] == str(batch.pk) and body["stream_url"].endswith("/stream")


def upload_in_chunks(api, payload: bytes, parts: int, *, between=None, **digests) -> Batch:
    response = create(api, len(payload), **digests)
    url, upload = response["Location"], upload_of(response)
    size = -(-len(payload) // parts)
    for i, offset in enumerate(range(0, len(payload), size)):
        if between:
            between(i)
        assert patch(api, url, payload[offset:offset + size], offset).status_code == 204
    return Batch.objects.get(pk=upload.batch_id)


def test_the_whole_file_digest_is_kept_as_chunks_arrive_and_not_read_again(api, payload, monkeypatch):
    # Given a process that sees every chunk of an upload
    def no_second_read(path, names):
        raise AssertionError("the whole file was read again")

    monkeypatch.setattr(tus, "file_digests", no_second_read)
    sha1 = hashlib.sha1(payload).hexdigest()

    # When it arrives in five chunks, with both whole-file digests declared
    batch = upload_in_chunks(api, payload, 5, sha256=hashlib.sha256(payload).hexdigest(), sha1=sha1)

    # Then both were checked from the running digests, and the batch got the file
    assert batch.sha256 == hashlib.sha256(payload).hexdigest() and batch.stage != Stage.FAILED
    with batch.upload.open("rb") as handle:
        assert handle.read() == payload


def test_a_chunk_stored_by_another_process_makes_the_end_read_the_file_once(api, payload):
    # Given an upload whose third chunk was stored by another web process
    # (this process's running digest is gone from then on)
    def elsewhere(i):
        if i == 2:
            tus.running_digests = tus.RunningDigests()

    batch = upload_in_chunks(api, payload, 4, between=elsewhere, sha256=hashlib.sha256(payload).hexdigest())

    # Then the file was read at the end and matched
    assert batch.sha256 == hashlib.sha256(payload).hexdigest() and batch.stage != Stage.FAILED


def test_a_mismatch_found_by_the_running_digest_fails_the_batch(api, payload):
    # The declared digest is of other bytes; the running digest must catch it as the full read did
    response = create(api, len(payload), sha256=hashlib.sha256(b"other bytes").hexdigest())
    url, upload = response["Location"], upload_of(response)
    half = len(payload) // 2
    assert patch(api, url, payload[:half], 0).status_code == 204
    last = patch(api, url, payload[half:], half)
    assert last.status_code == 460 and "does not match its sha256" in last.json()["error"]
    batch = Batch.objects.get(pk=upload.batch_id)
    assert batch.stage == Stage.FAILED and "does not match its sha256" in batch.error


def test_a_discarded_chunk_does_not_enter_the_running_digest(api, payload, monkeypatch):
    # Given a chunk refused for its checksum, then sent again correctly
    monkeypatch.setattr(tus, "file_digests", lambda path, names: (_ for _ in ()).throw(AssertionError("read")))
    response = create(api, len(payload), sha256=hashlib.sha256(payload).hexdigest())
    url, upload = response["Location"], upload_of(response)
    half = len(payload) // 2
    assert patch(api, url, payload[:half], 0).status_code == 204
    bad = patch(api, url, payload[half:], half, **{"Upload-Checksum": checksum("sha256", b"not this")})
    assert bad.status_code == 460
    assert patch(api, url, payload[half:], half).status_code == 204

    # Then the digest covers the stored bytes only, and the file is accepted
    batch = Batch.objects.get(pk=upload.batch_id)
    assert batch.sha256 == hashlib.sha256(payload).hexdigest() and batch.stage != Stage.FAILED


def test_progress_events_are_throttled_not_one_per_chunk(api, settings):
    settings.OMR_PROGRESS_INTERVAL = 3600
    data = b"PK\x05\x06" + os.urandom(99_996)
    url = create(api, len(data))["Location"]
    for offset in range(0, len(data), 1000):
        assert patch(api, url, data[offset:offset + 1000], offset).status_code == 204
    chunk_events = ProgressEvent.objects.filter(message__startswith="Received chunk")
    # 100 chunks: one event per 10 % at most, and the last chunk always
    assert 5 <= chunk_events.count() <= 11
    assert chunk_events.last().message == "Received chunk 100 (0.1 MB of 0.1 MB)"


def test_the_same_upload_through_x_http_method_override(api, payload):
    url = create(api, len(payload))["Location"]
    response = api.generic("POST", url, payload, content_type=CHUNK_TYPE,
                           headers={**TUS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    assert response.status_code == 204 and response["Upload-Offset"] == str(len(payload))
    assert Upload.objects.get().is_finished


# ---------------------------------------------------------------- U1–U4


def test_u1_a_chunk_at_the_wrong_offset_is_409_and_the_bytes_stay(api, started, payload):
    assert patch(api, started, payload[:1000], 0).status_code == 204
    for wrong in (0, 500, 2000):
        response = patch(api, started, b"x" * 1000, wrong)
        assert response.status_code == 409
        assert response["Upload-Offset"] == "1000" and "1000 bytes stored" in response.json()["error"]
    assert stored(started) == payload[:1000]


def test_u2_a_chunk_sent_again_after_a_lost_answer_is_409_then_the_client_resyncs(api, started, payload):
    # Given two chunks stored, the answer to the second one lost
    assert patch(api, started, payload[:100_000], 0).status_code == 204
    assert patch(api, started, payload[100_000:200_000], 100_000).status_code == 204
    # When the client sends the second chunk again
    again = patch(api, started, payload[100_000:200_000], 100_000)
    # Then 409, and HEAD tells it where to go on
    assert again.status_code == 409
    offset = int(head(api, started)["Upload-Offset"])
    assert offset == 200_000
    assert patch(api, started, payload[offset:], offset).status_code == 204
    batch = Upload.objects.get().batch
    assert hashlib.sha256(batch.upload.open("rb").read()).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_u3_a_wrong_checksum_is_460_and_the_chunk_is_discarded(api, started, payload, algorithm):
    assert patch(api, started, payload[:1000], 0, **{"Upload-Checksum": checksum(algorithm, payload[:1000])}
                 ).status_code == 204
    response = patch(api, started, payload[1000:2000], 1000,
                     **{"Upload-Checksum": checksum(algorithm, b"something else")})
    assert response.status_code == 460 and "mismatch" in response.json()["error"]
    assert head(api, started)["Upload-Offset"] == "1000"
    assert stored(started) == payload[:1000]
    # The same chunk with its right checksum goes in
    assert patch(api, started, payload[1000:2000], 1000,
                 **{"Upload-Checksum": checksum(algorithm, payload[1000:2000])}).status_code == 204


@pytest.mark.parametrize("header", ["md5 1B2M2Y8AsgTpgAmY7PhCfg==", "crc32 AAAA", "sha256 not-base64!", "sha1"])
def test_u3_an_unknown_algorithm_or_malformed_checksum_is_400(api, started, payload, header):
    response = patch(api, started, payload[:1000], 0, **{"Upload-Checksum": header})
    assert response.status_code == 400
    assert stored(started) == b""


def test_u3_a_whole_file_checksum_mismatch_fails_the_batch_with_the_reason(api, payload):
    url = create(api, len(payload), sha256=hashlib.sha256(b"another file").hexdigest())["Location"]
    response = patch(api, url, payload, 0)
    assert response.status_code == 460
    assert "does not match its sha256" in response.json()["error"]
    upload = Upload.objects.get()
    batch = upload.batch
    assert batch.stage == Stage.FAILED and "does not match its sha256" in batch.error and not batch.upload
    assert batch.events.last().stage == "failed"
    assert not tus.upload_dir(upload.pk).exists()
    assert patch(api, url, payload[:10], 0).status_code == 409


def test_whole_file_sha1_is_checked_too(api, payload):
    url = create(api, len(payload), sha1=base64.b64encode(hashlib.sha1(payload).digest()).decode())["Location"]
    assert patch(api, url, payload, 0).status_code == 204
    assert Upload.objects.get().batch.upload


def test_u4_bytes_past_the_declared_length_are_413_and_nothing_is_appended(api, started, payload):
    assert patch(api, started, payload[:1000], 0).status_code == 204
    response = patch(api, started, payload[1000:] + b"one byte too many", 1000)
    assert response.status_code == 413 and "past the declared Upload-Length" in response.json()["error"]
    assert stored(started) == payload[:1000] and head(api, started)["Upload-Offset"] == "1000"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "multipart/form-data; boundary=x",
                                          "text/plain"])
def test_u4_a_wrong_content_type_is_415_and_nothing_is_appended(api, started, payload, content_type):
    response = patch(api, started, payload[:1000], 0, content_type=content_type)
    assert response.status_code == 415 and "application/offset+octet-stream" in response.json()["error"]
    assert stored(started) == b"" and head(api, started)["Upload-Offset"] == "0"


def test_u8_a_chunk_over_the_cap_is_413_and_nothing_is_appended(api, started, payload, settings):
    settings.OMR_TUS_MAX_CHUNK_BYTES = 4096
    response = patch(api, started, payload[:5000], 0)
    assert response.status_code == 413 and "at most 4,096 bytes (OMR_TUS_MAX_CHUNK_MB)" in response.json()["error"]
    assert stored(started) == b""
    assert patch(api, started, payload[:4096], 0).status_code == 204


def test_u8_the_view_counts_the_bytes_it_reads_whatever_the_headers_say(api, started, payload, settings):
    # Given a request whose body is longer than the cap but whose headers do
    # not say so (no usable Content-Length, as with a chunked body)
    settings.OMR_TUS_MAX_CHUNK_BYTES = 4096

    class Body:
        def __init__(self, data):
            self.data, self.reads = data, []

        def read(self, size):
            self.reads.append(size)
            piece, self.data = self.data[:size], self.data[size:]
            return piece

    upload = Upload.objects.get()
    body = Body(payload[:100_000])
    # When the view appends it
    with pytest.raises(tus.TusError) as error:
        tus._append_body(body, upload, 4096, None, upload.length)
    # Then it stopped one byte past the cap: 413, the file as it was
    assert error.value.status == 413
    assert sum(body.reads) <= 4096 + 1 + tus.READ_SIZE and len(body.data) >= 100_000 - 4097
    assert stored(started) == b""


# ---------------------------------------------------------------- U5 locking


def test_u5_a_patch_while_another_request_writes_is_423_and_changes_nothing(api, started, payload):
    upload = Upload.objects.get()
    with tus.locked(upload.pk):  # another request is writing this upload
        response = patch(api, started, payload[:1000], 0)
    assert response.status_code == 423
    assert stored(started) == b"" and head(api, started)["Upload-Offset"] == "0"
    assert patch(api, started, payload[:1000], 0).status_code == 204


def test_u5_the_lock_holds_across_processes_and_dies_with_its_process(api, started, payload):
    # Given another process (another Daphne, say) holding the upload's lock
    lock = tus.upload_dir(Upload.objects.get().pk) / "lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # When a PATCH comes in: 423, nothing written
        assert patch(api, started, payload[:1000], 0).status_code == 423
        assert stored(started) == b""
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # Then, the holder killed, its lock is gone with it
    assert patch(api, started, payload[:1000], 0).status_code == 204


@pytest.mark.django_db(transaction=True)
def test_u5_two_patches_at_once_one_wins_and_the_file_is_never_interleaved(owner, settings):
    from tests.conftest import token_client

    settings.OMR_TUS_MAX_CHUNK_BYTES = 64 * 1024 * 1024
    size = 8 * 1024 * 1024
    clients = [token_client(owner), token_client(owner)]
    url = create(clients[0], size, filename="big.zip")["Location"]
    bodies = [b"A" * size, b"B" * size]
    barrier, results = threading.Barrier(2), [None, None]

    def send(i):
        barrier.wait()
        results[i] = patch(clients[i], url, bodies[i], 0).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results)[0] == 204 and sorted(results)[1] in (409, 423), results
    upload = Upload.objects.get()
    upload.refresh_from_db()
    assert upload.is_finished and upload.offset == size
    data = upload.batch.upload.open("rb").read()
    assert data in bodies  # all of one writer's bytes, none of the other's


# ---------------------------------------------------------------- U6 (in process), U7, termination, X5, X6


def test_u6_bytes_past_the_stored_offset_after_a_crash_are_not_reported_and_are_overwritten(api, started, payload):
    # Given a process that died after writing part of a chunk, before storing the offset
    assert patch(api, started, payload[:1000], 0).status_code == 204
    with open(tus.data_path(Upload.objects.get().pk), "ab") as handle:
        handle.write(b"half a chunk of garbage")
    # Then HEAD reports only the bytes stored, and the upload resumes intact
    assert head(api, started)["Upload-Offset"] == "1000"
    assert patch(api, started, payload[1000:], 1000).status_code == 204
    assert Upload.objects.get().batch.upload.open("rb").read() == payload


def test_u6_an_upload_whose_server_died_before_handing_it_over_is_finished_by_head(api, started, payload):
    # Given every byte stored, but the process died before the file reached the batch
    upload = Upload.objects.get()
    tus.data_path(upload.pk).write_bytes(payload)
    Upload.objects.filter(pk=upload.pk).update(offset=len(payload))
    # When the client asks where it stands
    answer = head(api, started)
    # Then it is finished now, and the batch has its file
    assert answer.status_code == 200 and answer["Upload-Offset"] == str(len(payload))
    upload.refresh_from_db()
    assert upload.is_finished and upload.batch.upload.open("rb").read() == payload
    assert upload.batch.sha256 == hashlib.sha256(payload).hexdigest()


def test_u6_a_crash_after_the_file_was_moved_before_the_database_knew_is_recovered(api, started, payload, media_root):
    upload = Upload.objects.get()
    moved = media_root / "batches" / str(upload.batch_id) / "upload" / "original.zip"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(payload)
    tus.data_path(upload.pk).unlink()
    Upload.objects.filter(pk=upload.pk).update(offset=len(payload))
    response = api.generic("PATCH", started, b"", headers={**TUS, "Upload-Offset": str(len(payload))},
                           CONTENT_TYPE=CHUNK_TYPE)  # an empty chunk at the end: finish
    assert response.status_code == 204 and response["Upload-Offset"] == str(len(payload))
    batch = Batch.objects.get(pk=upload.batch_id)
    assert batch.upload.name == f"batches/{batch.pk}/upload/original.zip"
    assert batch.upload.open("rb").read() == payload and Upload.objects.get().is_finished


def test_cleanup_finishes_an_upload_that_has_all_its_bytes(api, started, payload):
    upload = Upload.objects.get()
    tus.data_path(upload.pk).write_bytes(payload)
    Upload.objects.filter(pk=upload.pk).update(offset=len(payload), updated_at=timezone.now() - timedelta(hours=1))
    assert f"would finish complete upload {upload.pk}" in call(["--dry-run"])
    assert not Upload.objects.get().is_finished
    assert f"finished complete upload {upload.pk}" in call([])
    upload.refresh_from_db()
    assert upload.is_finished and upload.batch.upload.open("rb").read() == payload


def test_a_batch_deleted_mid_upload_takes_its_upload_along(api, started, payload):
    assert patch(api, started, payload[:1000], 0).status_code == 204
    upload = Upload.objects.get()
    assert api.delete(reverse("batches:api-detail", args=[upload.batch_id])).status_code == 204
    assert patch(api, started, payload[1000:2000], 1000).status_code == 404
    assert not Upload.objects.exists()


def test_u7_an_abandoned_upload_expires_and_cleanup_removes_it(api, started, payload, media_root):
    # Given an upload that got one chunk, then nothing for longer than the expiry
    assert patch(api, started, payload[:1000], 0).status_code == 204
    upload = Upload.objects.get()
    assert head(api, started)["Upload-Expires"]
    Upload.objects.filter(pk=upload.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    # Then it answers 410 Gone
    assert head(api, started).status_code == 410
    assert patch(api, started, payload[1000:2000], 1000).status_code == 410
    # And a dry run of the cleanup lists it but removes nothing
    out = call(["--dry-run"])
    assert f"would remove expired upload {upload.pk}" in out
    assert Upload.objects.filter(pk=upload.pk).exists() and tus.upload_dir(upload.pk).exists()
    # When the cleanup runs
    out = call([])
    # Then its row and files are gone, its batch failed with the reason, and it answers 404
    assert f"removed expired upload {upload.pk}" in out and "1 expired uploads" in out
    assert not Upload.objects.exists() and not tus.upload_dir(upload.pk).exists()
    batch = Batch.objects.get(pk=upload.batch_id)
    assert batch.stage == Stage.FAILED and "expired unfinished: 1000 of" in batch.error
    assert head(api, started).status_code == 404


def test_cleanup_removes_folders_of_uploads_and_batches_that_no_longer_exist(api, started, media_root):
    import uuid

    upload = Upload.objects.get()
    ghosts = [media_root / "batches" / str(uuid.uuid4()), media_root / "uploads" / str(uuid.uuid4())]
    keep = media_root / "batches" / "not-a-uuid"
    for folder in [*ghosts, keep]:
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(b"x")
        old = time.time() - 3600
        os.utime(folder, (old, old))
    out = call([])
    assert all(f"{g.parent.name}/{g.name}/" in out for g in ghosts)
    assert not any(g.exists() for g in ghosts)
    assert keep.exists() and tus.upload_dir(upload.pk).exists()  # not ours, and a live upload


def call(args) -> str:
    import io

    out = io.StringIO()
    call_command("cleanup_uploads", *args, stdout=out)
    return out.getvalue()


def test_termination_removes_the_upload_its_files_and_its_batch(api, started, payload):
    assert patch(api, started, payload[:1000], 0).status_code == 204
    upload = Upload.objects.get()
    response = api.delete(started, headers=TUS)
    assert response.status_code == 204 and response["Tus-Resumable"] == "1.0.0"
    assert not Upload.objects.exists() and not Batch.objects.filter(pk=upload.batch_id).exists()
    assert not tus.upload_dir(upload.pk).exists()
    assert head(api, started).status_code == 404
    assert patch(api, started, payload[1000:2000], 1000).status_code == 404


def test_terminating_a_finished_upload_keeps_its_batch(api, started, payload):
    assert patch(api, started, payload, 0).status_code == 204
    batch_id = Upload.objects.get().batch_id
    assert api.delete(started, headers=TUS).status_code == 204
    assert not Upload.objects.exists() and Batch.objects.get(pk=batch_id).upload


def test_x5_another_users_upload_is_404_on_every_method_with_no_side_effect(api, colleague_api, started, payload):
    assert patch(api, started, payload[:1000], 0).status_code == 204
    upload = Upload.objects.get()
    for response in (head(colleague_api, started), colleague_api.get(started),
                     patch(colleague_api, started, payload[1000:2000], 1000),
                     colleague_api.delete(started, headers=TUS),
                     colleague_api.generic("POST", started, b"", headers={**TUS, "X-HTTP-Method-Override": "DELETE"})):
        assert response.status_code == 404, response
        assert response["Tus-Resumable"] == "1.0.0"
    upload.refresh_from_db()
    assert upload.offset == 1000 and stored(started) == payload[:1000]
    assert Batch.objects.filter(pk=upload.batch_id, stage=Stage.UPLOADING).exists()


def test_x6_a_session_patch_needs_the_csrf_token_a_token_request_does_not(owner, payload):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    browser.get(reverse("batches:list"))  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    refused = create(browser, len(payload))
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    url = create(browser, len(payload), headers={"X-CSRFToken": token})["Location"]
    assert patch(browser, url, payload[:1000], 0).status_code == 403
    assert stored(url) == b""
    assert patch(browser, url, payload[:1000], 0, **{"X-CSRFToken": token}).status_code == 204
    assert head(browser, url)["Upload-Offset"] == "1000"  # HEAD is safe: no token needed


def test_non_staff_and_anonymous_cannot_upload(client, outsider, payload):
    assert create(client, len(payload)).status_code == 401
    client.force_login(outsider)
    assert create(client, len(payload)).status_code == 403
    assert not Upload.objects.exists()


def test_reconcile_leaves_a_batch_that_is_still_uploading_alone(api, started):
    import io

    batch = Upload.objects.get().batch
    ProgressEvent.objects.filter(batch=batch).update(timestamp=timezone.now() - timedelta(hours=2))
    out = io.StringIO()
    call_command("reconcile_batches", stdout=out)
    assert "0 batches reconciled" in out.getvalue()
    batch.refresh_from_db()
    assert batch.stage == Stage.UPLOADING


# ---------------------------------------------------------------- real servers: tuspy, U6, U8

TUSPY_SCRIPT = """
import sys
from tusclient import client
from tusclient.storage.filestorage import FileStorage

url, token, path, store, stop_after = sys.argv[1:6]
tus = client.TusClient(url, headers={"Authorization": "Bearer " + token})
uploader = tus.uploader(path, chunk_size=256 * 1024, store_url=True, url_storage=FileStorage(store),
                        metadata={"filename": "scans.zip", "template": sys.argv[6], "has_qr": "true"},
                        upload_checksum=True)
print("start", uploader.offset, uploader.url, flush=True)
chunks = 0
while uploader.offset < uploader.stop_at:
    uploader.upload_chunk()
    chunks += 1
    print("chunk", chunks, uploader.offset, uploader.url, flush=True)
print("done", uploader.url, flush=True)
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory, django_db_blocker):
    """Daphne, a real worker and Redis (tests/test_end_to_end.py's Servers)."""
    import redis

    from tests.test_end_to_end import Servers, redis_url

    try:
        redis.Redis.from_url(redis_url(), socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {redis_url()} (bin/ensure-redis starts one)", pytrace=False)
    servers = Servers(tmp_path_factory.mktemp("tus"))
    try:
        servers.start("tususer")
        yield servers
    finally:
        servers.stop()


def live_status(live, batch_id) -> dict:
    status, _headers, raw = live.request("GET", f"/api/batches/{batch_id}")
    assert status == 200, raw
    return json.loads(raw)


def wait_finished(live, batch_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = live_status(live, batch_id)
        if body["finished"]:
            return body
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} not finished: {body}\n{live.logs()}")


def settled_offset(live, path: str, timeout: float = 10.0) -> tuple[int, dict, int]:
    """HEAD until the stored offset holds still for half a second.

    The killed client may have sent its next chunk whole before it died; the
    server then stores it a moment later, so one HEAD taken at once can be a
    chunk behind the offset the next client resumes from.
    """
    deadline = time.monotonic() + timeout
    _, headers, _ = live.request("HEAD", path, headers=TUS)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        status, again, _ = live.request("HEAD", path, headers=TUS)
        if again["Upload-Offset"] == headers["Upload-Offset"]:
            return status, again, int(again["Upload-Offset"])
        headers = again
    raise AssertionError(f"the stored offset of {path} kept moving: {headers}\n{live.logs()}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_tuspy_killed_mid_upload_resumes_and_the_file_arrives_intact(live, tmp_path):
    # Given a ZIP of real sheets, several tus chunks long
    data, sheets = sheets_zip(6)
    assert len(data) > 4 * 256 * 1024
    source = tmp_path / "scans.zip"
    source.write_bytes(data)
    store = tmp_path / "tus-urls.json"
    script = tmp_path / "tuspy_upload.py"
    script.write_text(TUSPY_SCRIPT)
    endpoint = f"http://127.0.0.1:{live.port}/api/uploads/"
    args = [sys.executable, str(script), endpoint, live.token, str(source), str(store), "0", TEMPLATE]
    # When the official client is killed (SIGKILL) after its third chunk
    first = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        while len([line for line in lines if line.startswith("chunk")]) < 3:
            line = first.stdout.readline()
            assert line, f"tuspy stopped early: {lines}\n{live.logs()}"
            lines.append(line.strip())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert lines[0] == "start 0 None"  # a new upload
    upload_url = lines[-1].split()[3]
    assert upload_url.startswith(endpoint)
    status, headers, stored_offset = settled_offset(live, urlparse(upload_url).path)
    assert status == 200 and 3 * 256 * 1024 <= stored_offset < len(data)
    # And a new client resumes from its URL storage
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    out = second.stdout.split("\n")
    assert out[0] == f"start {stored_offset} {upload_url}"  # it resumed, it did not start again
    assert out[-2] == f"done {upload_url}"
    # Then the server's file is the source, byte for byte, and the batch is read
    batch_id = headers["Upload-Batch-Id"]
    stored_file = live.tmp / "media" / "batches" / batch_id / "upload" / "original.zip"
    assert hashlib.sha256(stored_file.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    body = wait_finished(live, batch_id)
    assert body["stage"] == "completed", body
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["sheets_total"] == len(sheets)


def live_create(live, data: bytes, declare_sha256: bool = True) -> tuple[str, str]:
    fields = {"filename": "scans.zip", "template": TEMPLATE, "has_qr": "true"}
    if declare_sha256:
        fields["sha256"] = hashlib.sha256(data).hexdigest()
    status, headers, raw = live.request("POST", "/api/uploads/", b"", {
        **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata(**fields)})
    assert status == 201, raw
    return urlparse(headers["Location"]).path, headers["Upload-Batch-Id"]


def live_patch(live, url, body, offset) -> tuple[int, dict]:
    status, headers, raw = live.request("PATCH", url, body, {**TUS, "Content-Type": CHUNK_TYPE,
                                                             "Upload-Offset": str(offset)})
    return status, headers


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_u6_the_server_killed_mid_upload_then_head_gives_the_stored_bytes_and_it_resumes(live):
    data, _sheets = sheets_zip(3)
    url, batch_id = live_create(live, data)
    third = len(data) // 3
    assert live_patch(live, url, data[:third], 0)[0] == 204
    # When the web server is killed outright and started again
    os.killpg(live.web.pid, signal.SIGKILL)
    live.web.wait(10)
    live.start_web()
    live.wait_healthy()
    # Then HEAD gives the bytes stored before the crash, and the upload completes intact
    status, headers, _ = live.request("HEAD", url, headers=TUS)
    assert status == 200 and headers["Upload-Offset"] == str(third)
    assert live_patch(live, url, data[third:], third)[0] == 204
    stored_file = live.tmp / "media" / "batches" / batch_id / "upload" / "original.zip"
    assert stored_file.read_bytes() == data
    assert wait_finished(live, batch_id)["stage"] == "completed"


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_u6_a_connection_cut_mid_chunk_stores_none_of_it_and_the_chunk_is_sent_again(live):
    data, _sheets = sheets_zip(2)
    url, batch_id = live_create(live, data)
    half = len(data) // 2
    assert live_patch(live, url, data[:half], 0)[0] == 204
    # When a chunk's connection is cut half-way
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall((f"PATCH {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {live.token}\r\nTus-Resumable: 1.0.0\r\n"
                      f"Content-Type: {CHUNK_TYPE}\r\nUpload-Offset: {half}\r\n"
                      f"Content-Length: {len(data) - half}\r\n\r\n").encode() + data[half:half + 1000])
    time.sleep(0.5)
    # Then HEAD says the bytes before it, and the whole chunk sent again completes the upload
    status, headers, _ = live.request("HEAD", url, headers=TUS)
    assert status == 200 and headers["Upload-Offset"] == str(half)
    assert live_patch(live, url, data[half:], half)[0] == 204
    body = wait_finished(live, batch_id)
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["stage"] == "completed"


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_u8_a_chunked_body_without_content_length_is_capped_by_the_view(live):
    data = b"PK\x05\x06" + os.urandom(80 * 1024 * 1024)  # over the 64 MB cap of one chunk
    url, _batch_id = live_create(live, data)
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=120)
    try:
        pieces = (data[i:i + 1024 * 1024] for i in range(0, 70 * 1024 * 1024, 1024 * 1024))
        conn.request("PATCH", url, body=pieces, encode_chunked=True,
                     headers={**TUS, "Authorization": f"Bearer {live.token}", "Content-Type": CHUNK_TYPE,
                              "Upload-Offset": "0"})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413 and "at most" in body["error"]
    status, headers, _ = live.request("HEAD", url, headers=TUS)
    assert headers["Upload-Offset"] == "0"


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_u5_two_daphne_processes_patching_one_upload_at_once_never_interleave(live):
    from tests.test_end_to_end import free_port

    # Given a second Daphne process on the same database and media root
    port = free_port()
    log = (live.tmp / "web2.log").open("ab")
    second = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "omrsite.asgi:application"], cwd=Path(__file__).resolve().parents[1], env=live.env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("OPTIONS", "/api/uploads/")
                if conn.getresponse().status == 204:
                    break
            except OSError:
                assert time.monotonic() < deadline, live.logs()
                time.sleep(0.2)
            finally:
                conn.close()
        size = 16 * 1024 * 1024
        bodies = [b"PK\x03\x04" + b"A" * (size - 4), b"PK\x03\x04" + b"B" * (size - 4)]
        url, batch_id = live_create(live, bodies[0], declare_sha256=False)  # either body may win
        barrier, results = threading.Barrier(2), [None, None]

        # When each process gets a whole-file PATCH at the same moment
        def send(i, to_port):
            conn = http.client.HTTPConnection("127.0.0.1", to_port, timeout=120)
            try:
                conn.putrequest("PATCH", url)
                for name, value in {**TUS, "Authorization": f"Bearer {live.token}", "Content-Type": CHUNK_TYPE,
                                    "Upload-Offset": "0", "Content-Length": str(size)}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                conn.send(bodies[i][:-1])
                barrier.wait()
                conn.send(bodies[i][-1:])  # both requests complete together
                response = conn.getresponse()
                response.read()
                results[i] = response.status
            finally:
                conn.close()

        threads = [threading.Thread(target=send, args=(0, live.port)), threading.Thread(target=send, args=(1, port))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Then one wins, the other is refused, and the file is one body whole
        assert sorted(results)[0] == 204 and sorted(results)[1] in (409, 423), results
        stored_file = live.tmp / "media" / "batches" / batch_id / "upload" / "original.zip"
        assert stored_file.read_bytes() == bodies[results.index(204)]
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(20)

