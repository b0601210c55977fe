"""The JSON API: upload, list, detail, results, retry, delete, health; who may
see what (X3, X5), CSRF for session requests (X6)."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from batches.models import ApiToken, Batch, ProgressEvent, Stage, WorkerHeartbeat
from batches.pipeline import stages
from batches.uploads import accept
from tests.conftest import TEMPLATE, sheets_zip, token_client

pytestmark = pytest.mark.django_db


def post_upload(client, data=b"PK\x05\x06" + b"\0" * 18, name="scans.zip", **fields):
    body = {"file": ContentFile(data, name=name), "template": TEMPLATE, "has_qr": "true", **fields}
    return client.post(reverse("batches:api-upload"), body)


@pytest.fixture
def finished_batch(owner):
    data, _sheets = sheets_zip(2)
    batch = accept.create_batch(owner, ContentFile(data, name="s.zip"), filename="s.zip", template=TEMPLATE,
                                  start=False)
    return stages.run_inline(batch.pk)


def test_upload_answers_202_with_the_links(api, owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_upload(api)
    assert response.status_code == 202
    body = response.json()
    batch = Batch.objects.get(pk=body["batch_id"])
    assert batch.owner == owner and batch.template == TEMPLATE and batch.has_qr
    assert body["status_url"].endswith(f"/api/batches/{batch.pk}")
    assert body["stream_url"].endswith(f"/api/batches/{batch.pk}/stream")
    assert body["results_url"].endswith(f"/api/batches/{batch.pk}/results.csv")
    # The pipeline is queued once the upload is committed, not before
    assert [c for c in callbacks if "enqueue_batch" in c.__qualname__]
    assert list(ProgressEvent.objects.filter(batch=batch).values_list("stage", flat=True)) == ["uploading"] * 2
    assert len(batch.sha256) == 64


@pytest.mark.parametrize(("fields", "name", "words"), [
    ({"template": "no-such-template"}, "scans.zip", "unknown template"),
    ({"has_qr": "maybe"}, "scans.zip", "has_qr"),
    ({}, "notes.txt", "unsupported file type"),
])
def test_upload_errors_are_400_and_say_what_is_wrong(api, fields, name, words):
    response = post_upload(api, name=name, **fields)
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert not Batch.objects.exists()


def test_upload_without_a_file_is_400(api):
    response = api.post(reverse("batches:api-upload"), {"template": TEMPLATE})
    assert response.status_code == 400 and "file" in response.json()["error"]


def test_upload_over_the_limit_is_413(api, settings):
    settings.OMR_MAX_UPLOAD_BYTES = 100
    response = post_upload(api, data=b"PK\x03\x04" + b"x" * 500)
    assert response.status_code == 413
    assert response.json()["error"].endswith("over the limit of 100 bytes (OMR_MAX_UPLOAD_MB)")
    assert not Batch.objects.exists()


def test_upload_default_template(api, settings):
    response = api.post(reverse("batches:api-upload"), {"file": ContentFile(b"PK\x05\x06" + b"\0" * 18,
                                                                            name="a.zip")})
    assert response.status_code == 202
    assert Batch.objects.get().template == settings.OMR_DEFAULT_TEMPLATE


def test_list_shows_only_my_batches_and_superusers_see_all(api, colleague_api, admin_user, finished_batch):
    assert [b["batch_id"] for b in api.get(reverse("batches:api-list")).json()["batches"]] == [str(finished_batch.pk)]
    assert colleague_api.get(reverse("batches:api-list")).json()["batches"] == []
    root = token_client(admin_user)
    assert len(root.get(reverse("batches:api-list")).json()["batches"]) == 1
    assert root.get(reverse("batches:api-detail", args=[finished_batch.pk])).status_code == 200


def test_detail_shows_stage_counts_and_links(api, finished_batch):
    body = api.get(reverse("batches:api-detail", args=[finished_batch.pk])).json()
    assert body["stage"] == "completed" and body["finished"] and body["results_ready"]
    assert (body["sheets_total"], body["sheets_processed"], body["sheets_failed"]) == (2, 2, 0)
    assert body["overall_percentage"] == 100.0
    assert body["started_at"] and body["finished_at"]


def test_results_download(client, api, colleague_api, finished_batch):
    # X3. Anonymous: 401 for scripts, the login page for a browser
    url = reverse("batches:api-results", args=[finished_batch.pk])
    assert client.get(url).status_code == 401
    browser = client.get(url, headers={"Accept": "text/html"})
    assert browser.status_code == 302 and "login" in browser["Location"]
    # Another user: 404
    assert colleague_api.get(url).status_code == 404
    # The owner: an attachment that no browser sniffs into something else
    response = api.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content).decode("utf-8-sig").startswith("sheet,source_file")


def test_results_of_an_unfinished_batch_is_409(api, owner):
    batch = Batch.objects.create(owner=owner, template=TEMPLATE, stage=Stage.PROCESSING_SHEETS)
    assert api.get(reverse("batches:api-results", args=[batch.pk])).status_code == 409


@pytest.mark.parametrize(("method", "name"), [
    ("get", "api-detail"), ("get", "api-stream"), ("get", "api-results"), ("post", "api-retry"),
    ("post", "api-delete"), ("delete", "api-detail"),
])
def test_another_users_batch_is_404_everywhere_with_no_side_effect(colleague_api, owner, method, name):
    # X5
    batch = Batch.objects.create(owner=owner, template=TEMPLATE, stage=Stage.FAILED, error="x")
    response = getattr(colleague_api, method)(reverse(f"batches:{name}", args=[batch.pk]))
    assert response.status_code == 404
    batch.refresh_from_db()
    assert batch.stage == Stage.FAILED and batch.error == "x"


def test_unknown_batch_is_404(api):
    assert api.get("/api/batches/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/batches/not-a-uuid").status_code == 404


def test_delete_removes_the_batch_and_its_files(api, finished_batch):
    from django.core.files.storage import default_storage

    assert default_storage.exists(finished_batch.upload.name)
    response = api.delete(reverse("batches:api-detail", args=[finished_batch.pk]))
    assert response.status_code == 204
    assert not Batch.objects.filter(pk=finished_batch.pk).exists()
    assert not default_storage.exists(finished_batch.upload.name)
    assert not default_storage.exists(finished_batch.results_csv.name)


def test_retry_only_failed_batches(api, owner, django_capture_on_commit_callbacks):
    batch = Batch.objects.create(owner=owner, template=TEMPLATE, stage=Stage.FAILED, error="boom")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(reverse("batches:api-retry", args=[batch.pk]))
    assert response.status_code == 202
    assert [c for c in callbacks if "enqueue_batch" in c.__qualname__]
    batch.refresh_from_db()
    assert batch.stage == Stage.QUEUED and batch.error == ""
    assert api.post(reverse("batches:api-retry", args=[batch.pk])).status_code == 409


def test_session_writes_need_a_csrf_token(owner):
    # X6. A browser session without the CSRF token is refused
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    response = post_upload(browser)
    assert response.status_code == 403
    assert not Batch.objects.exists()
    # With the token it goes through
    browser.get(reverse("batches:api-list"))  # any page; the cookie is set on login pages too
    from django.middleware.csrf import get_token
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    token = get_token(request)
    browser.cookies["csrftoken"] = request.META["CSRF_COOKIE"]
    response = browser.post(
        reverse("batches:api-upload"),
        {"file": ContentFile(b"PK\x05\x06" + b"\0" * 18, name="a.zip"), "template": TEMPLATE},
        headers={"X-CSRFToken": token})
    assert response.status_code == 202


def test_token_requests_need_no_csrf_token(owner):
    _row, token = ApiToken.objects.issue(owner)
    script = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {token}"})
    assert post_upload(script).status_code == 202


def test_bad_tokens_and_non_staff_are_refused(outsider, owner):
    assert Client(headers={"Authorization": "Bearer nope"}).get(reverse("batches:api-list")).status_code == 401
    assert Client(headers={"Authorization": "Basic abc"}).get(reverse("batches:api-list")).status_code == 401
    assert token_client(outsider).get(reverse("batches:api-list")).status_code == 403
    owner.is_active = False
    owner.save()
    _row, token = ApiToken.objects.issue(owner)
    assert Client(headers={"Authorization": f"Bearer {token}"}).get(reverse("batches:api-list")).status_code == 401


def test_tokens_are_stored_hashed(owner):
    row, token = ApiToken.objects.issue(owner)
    assert token not in (row.digest, row.prefix) and len(row.digest) == 64


def test_health_without_login(client):
    # No worker has a heartbeat yet: 503, saying which part is down
    response = client.get(reverse("batches:api-health"))
    assert response.status_code == 503
    body = response.json()
    assert body["database"]["ok"] and body["redis"]["ok"] and not body["workers"]["ok"]
    # With a live worker: 200
    WorkerHeartbeat.objects.create(name="host:1", hostname="host", pid=1)
    response = client.get(reverse("batches:api-health"))
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_health_tells_only_ok_per_part_without_staff_login(client, outsider, owner, settings):
    WorkerHeartbeat.objects.create(name="db-host-7:4242", hostname="db-host-7", pid=4242)
    settings.DRAMATIQ_BACKEND = "redis"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # down: its error text names the address

    # Anyone, and a logged-in user who is not staff: ok or not per part, nothing more
    eve = Client()
    eve.force_login(outsider)
    for who in (client, eve, Client(headers={"Authorization": "Bearer omr_not-a-token"})):
        response = who.get(reverse("batches:api-health"))
        assert response.status_code == 503
        assert response.json() == {"status": "error", "database": {"ok": True}, "redis": {"ok": False},
                                   "workers": {"ok": True}}
        assert b"db-host-7" not in response.content and b"4242" not in response.content
        assert b"127.0.0.1" not in response.content and settings.VERSION.encode() not in response.content

    # Staff (session or token): the details
    staff = Client()
    staff.force_login(owner)
    for who in (staff, token_client(owner)):
        body = who.get(reverse("batches:api-health")).json()
        assert body["workers"]["names"] == ["db-host-7:4242"] and body["workers"]["alive"] == 1
        assert "error" in body["redis"] and "length" in body["queue"]
        assert body["version"] == settings.VERSION and body["uptime_seconds"] >= 0


def test_health_reports_redis_down(client, settings):
    settings.DRAMATIQ_BACKEND = "redis"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    WorkerHeartbeat.objects.create(name="host:1", hostname="host", pid=1)
    response = client.get(reverse("batches:api-health"))
    assert response.status_code == 503
    assert response.json()["redis"]["ok"] is False


def test_create_api_token_command(owner):
    import io

    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", "alice", stdout=out, stderr=err)
    token = out.getvalue().strip()  # alone on stdout, for TOKEN=$(...)
    assert token.startswith("omr_")
    expiry = ApiToken.objects.get(user__username="alice").expires_at
    assert f"expires {expiry:%Y-%m-%d %H:%M} UTC" in err.getvalue()
    assert Client(headers={"Authorization": f"Bearer {token}"}).get(reverse("batches:api-list")).status_code == 200


def test_ensure_staff_user_command(django_user_model):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("ensure_staff_user", stdout=out)
    assert "password" in out.getvalue()
    user = django_user_model.objects.get(username="staff")
    assert user.is_staff
    call_command("ensure_staff_user", stdout=io.StringIO())
    assert django_user_model.objects.filter(username="staff").count() == 1


def test_api_tokens_expire_with_a_clear_401(owner, settings):
    import datetime

    from django.utils import timezone

    settings.OMR_API_TOKEN_DAYS = 30
    row, token = ApiToken.objects.issue(owner)
    assert abs((row.expires_at - timezone.now()) - datetime.timedelta(days=30)) < datetime.timedelta(minutes=1)
    script = Client(headers={"Authorization": f"Bearer {token}"})
    assert script.get(reverse("batches:api-list")).status_code == 200

    # Past its expiry the same token is refused, saying why
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    response = script.get(reverse("batches:api-list"))
    assert response.status_code == 401
    assert "expired" in response.json()["error"] and "create_api_token" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")
