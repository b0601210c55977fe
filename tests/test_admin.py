"""The admin review: sheets filtered by review and flags, the page image with
the marks drawn over it, answers corrected inline (each correction recorded,
the CSV rewritten), and the actions Read again, Mark as reviewed and
Regenerate CSV. Batches here are read by the real pipeline from simulated
sheets."""

from __future__ import annotations

import csv
import io
import random
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from batches.models import Answer, Batch, Correction, Sheet, Stage
from batches.pipeline import stages
from batches.review import actions as review
from batches.review import overlay
from batches.roles import REVIEWER_PERMISSIONS, REVIEWERS
from batches.uploads import accept

from .conftest import TEMPLATE, make_zip, run_queue, simulated_sheet

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:batches_sheet_changelist")


def reviewer(user):
    """Put a staff user (not a superuser) in the Reviewers group, which
    ``migrate`` created: everything below shows the group is enough to review."""
    user.groups.add(Group.objects.get(name=REVIEWERS))
    return user


def doubtful_sheet() -> tuple[bytes, dict]:
    """A clean scan with one question marked twice (q3 = A and C)."""
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    answers = simulate.random_answers(t, 1, random.Random(99))
    answers["q3"] = "AC"
    sim = simulate.simulate_sheet(t, answers, seed=99, preset="clean", exam="EXAM1", student="S9999")
    return sim.encode_jpeg(), sim.truth["answers"]


@pytest.fixture
def batch(owner):
    """A completed batch of three sheets; the second has a double mark on q3."""
    reviewer(owner)
    bad, truth = doubtful_sheet()
    entries = [(simulated_sheet(0).name, simulated_sheet(0).jpeg), ("scan_double.jpg", bad),
               (simulated_sheet(1).name, simulated_sheet(1).jpeg)]
    b = accept.create_batch(owner, ContentFile(make_zip(entries), name="exam.zip"), filename="exam.zip",
                              template=TEMPLATE, has_qr=True, start=False)
    b = stages.run_inline(b.pk)
    assert b.stage == Stage.COMPLETED, b.error
    b.truth = truth
    return b


def csv_rows(batch: Batch) -> list[dict]:
    batch.refresh_from_db()
    with default_storage.open(batch.results_csv.name, "rb") as f:
        return list(csv.DictReader(io.StringIO(f.read().decode("utf-8-sig"))))


class FormFields(HTMLParser):
    """The fields a browser would submit for the form with id ``form_id``."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.data, self._select = form_id, False, {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside:
            return
        if tag == "input" and a.get("name") and a.get("type") not in ("submit", "button"):
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.data[a["name"]] = a.get("value", "on")
            else:
                self.data[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and "selected" in a:
            self.data[self._select] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        if tag == "select":
            self._select = None


def change_form(client, sheet) -> tuple[str, dict]:
    url = reverse("admin:batches_sheet_change", args=[sheet.pk])
    response = client.get(url)
    assert response.status_code == 200
    parser = FormFields("sheet_form")
    parser.feed(response.content.decode())
    return url, parser.data


def answer_key(data: dict, sheet, field: str) -> str:
    """The form name of the inline ``value`` input of ``field``."""
    answer = Answer.objects.get(sheet=sheet, field=field)
    prefix = next(k[: -len("-id")] for k, v in data.items() if k.endswith("-id") and v == str(answer.pk)
                  and k.startswith("answers-"))
    return f"{prefix}-value"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# ---------------------------------------------------------------- lists and filters


def test_the_sheet_list_filters_by_review_and_by_flag(owner, batch):
    client = logged_in(owner)
    doubtful = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    assert doubtful.needs_review

    in_review = client.get(CHANGELIST, {"batch__id__exact": batch.pk, "needs_review__exact": "1"})
    assert in_review.status_code == 200
    assert [s.pk for s in in_review.context["cl"].result_list] == [doubtful.pk]

    multiple = client.get(CHANGELIST, {"flag": "multiple"})
    assert [s.pk for s in multiple.context["cl"].result_list] == [doubtful.pk]
    assert "q3: multiple" in multiple.content.decode()

    everything = client.get(CHANGELIST, {"batch__id__exact": batch.pk})
    assert len(everything.context["cl"].result_list) == 3


def test_the_batch_list_and_page_show_stage_counts_and_timings(owner, batch):
    client = logged_in(owner)
    html = client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert "exam.zip" in html and "Completed" in html and "3 / 3" in html
    page = client.get(reverse("admin:batches_batch_change", args=[batch.pk])).content.decode()
    assert "Processing sheets" in page and "Generating CSV" in page  # the stage timings table
    assert reverse("batches:api-results", args=[batch.pk]) in page


def test_a_colleague_sees_none_of_it(owner, colleague, batch):
    reviewer(colleague)
    client = logged_in(colleague)
    sheet = Sheet.objects.filter(batch=batch).first()
    assert list(client.get(CHANGELIST).context["cl"].result_list) == []
    assert client.get(reverse("admin:batches_sheet_change", args=[sheet.pk])).status_code == 302  # "does not exist"
    assert client.get(reverse("admin:batches_batch_change", args=[batch.pk])).status_code == 302
    assert client.get(reverse("batches:sheet-overlay", args=[batch.pk, sheet.index])).status_code == 404


# ---------------------------------------------------------------- the image


def test_the_review_page_shows_the_page_with_the_marks_drawn(owner, batch):
    client = logged_in(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    html = client.get(reverse("admin:batches_sheet_change", args=[sheet.pk])).content.decode()
    url = reverse("batches:sheet-overlay", args=[batch.pk, sheet.index])
    assert f'src="{url}"' in html

    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png" and response["X-Content-Type-Options"] == "nosniff"
    png = b"".join(response.streaming_content) if response.streaming else response.content
    assert png.startswith(b"\x89PNG")
    assert len(png) < 1_500_000


def colour_at(image: np.ndarray, x: float, y: float, r: float) -> np.ndarray:
    """Mean BGR on a ring just inside a bubble's outline (where the fill
    colour and the outline colour both show, but not the pencil)."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    pts = [(int(round(x + r * np.cos(a))), int(round(y + r * np.sin(a)))) for a in angles]
    return np.mean([image[py, px] for px, py in pts], axis=0)


def test_overlay_colours_marked_doubtful_and_blank_bubbles(owner, batch):
    # Given the stored reading of the sheet with the double mark
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    reading = sheet.reading
    page = overlay.decode_page(sheet.read_image())
    drawn = overlay.draw_overlay(page, reading, max_width=page.shape[1])  # full size: page px = overlay px
    marks = {(row[0], row[1]): m for row, m in zip(reading["bubbles"], overlay.bubble_marks(reading), strict=True)}

    def kind_colour(group, value):
        m = marks[(group, value)]
        return m.kind, colour_at(drawn, m.x, m.y, m.r * 1.12)

    # Then q3's two marks are red (in doubt), a sure mark is green, a blank is blue
    for value in ("A", "C"):
        kind, bgr = kind_colour("q3", value)
        assert kind == "doubt-marked" and bgr[2] > bgr[0] + 40 and bgr[2] > bgr[1] + 40, bgr
    sure = next(k for k, m in marks.items() if m.kind == "marked")
    kind, bgr = kind_colour(*sure)
    assert bgr[1] > bgr[2] + 30 and bgr[1] > bgr[0], bgr
    blank = next(k for k, m in marks.items() if m.kind == "blank")
    kind, bgr = kind_colour(*blank)
    assert bgr[0] > bgr[2] + 30, bgr


def test_readings_stored_without_bubbles_are_read_again_for_the_drawing(owner, batch):
    sheet = Sheet.objects.get(batch=batch, source_name=simulated_sheet(0).name)
    assert not sheet.needs_review and not (sheet.reading or {}).get("bubbles")  # kept only for review
    png = overlay.render_overlay_png(sheet.read_image(), sheet.reading)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    green = (image[:, :, 1] > 120) & (image[:, :, 1] > image[:, :, 2] + 40) & (image[:, :, 1] > image[:, :, 0] + 40)
    assert green.sum() > 500  # the marked bubbles are drawn


# ---------------------------------------------------------------- corrections


def test_correcting_an_answer_records_it_and_rewrites_the_csv(owner, batch):
    # Given the sheet with the double mark on q3, open in the admin
    client = logged_in(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    assert Answer.objects.get(sheet=sheet, field="q3").value == "AC"
    url, data = change_form(client, sheet)

    # When the reviewer types "c" for q3 (the student's real answer) and saves
    data[answer_key(data, sheet, "q3")] = "c"
    data.pop("needs_review", None)  # and unticks "needs review"
    response = client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]

    # Then the answer is corrected, in the reader's spelling
    answer = Answer.objects.get(sheet=sheet, field="q3")
    assert (answer.value, answer.corrected) == ("C", True)
    # And who, when, what is recorded
    fix = Correction.objects.get(sheet=sheet, field="q3")
    assert (fix.user, fix.old_value, fix.new_value) == (owner, "AC", "C")
    assert Correction.objects.get(sheet=sheet, field="needs_review").new_value == "false"
    # And the batch's count and the CSV follow
    batch.refresh_from_db()
    assert batch.sheets_needs_review == Sheet.objects.filter(batch=batch, needs_review=True).count()
    row = next(r for r in csv_rows(batch) if r["source_file"] == "scan_double.jpg")
    assert row["q3"] == "C" and row["needs_review"] == "false"
    # And the original reading stays on the sheet
    sheet.refresh_from_db()
    assert sheet.reading["answers"]["q3"] == "AC"


def test_an_impossible_value_is_refused_and_nothing_is_recorded(owner, batch):
    client = logged_in(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    url, data = change_form(client, sheet)
    data[answer_key(data, sheet, "q3")] = "Z"  # a 4-option template has A-D
    response = client.post(url, data)
    assert response.status_code == 200
    assert "not an option here" in response.content.decode()
    assert not Correction.objects.exists()
    assert Answer.objects.get(sheet=sheet, field="q3").value == "AC"


def test_saving_without_the_csrf_token_is_refused(owner, batch):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    url, data = change_form(client, sheet)
    data.pop("csrfmiddlewaretoken")
    data[answer_key(data, sheet, "q3")] = "C"
    assert client.post(url, data).status_code == 403
    assert not Correction.objects.exists()
    read_again = reverse("admin:batches_sheet_read_again", args=[sheet.pk])
    assert client.post(read_again).status_code == 403


# ---------------------------------------------------------------- actions


def test_read_again_keeps_what_a_person_corrected(owner, batch, broker, worker):
    client = logged_in(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")
    review.apply_corrections(sheet, owner, {"q3": "C"})
    read_before = Sheet.objects.get(pk=sheet.pk).read_at
    page_url = reverse("admin:batches_sheet_change", args=[sheet.pk])

    # When the sheet is read again from its page, the request only queues it for a worker
    worker.pause()
    response = client.post(reverse("admin:batches_sheet_read_again", args=[sheet.pk]), follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "queued to be read again" in page and '<meta http-equiv="refresh"' in page
    assert Sheet.objects.get(pk=sheet.pk).read_at == read_before  # nothing was read in the request
    assert broker.queues["default"].qsize() == 1

    # Then the worker reads it, and the page shows the result
    worker.resume()
    run_queue(broker, worker)
    page = client.get(page_url).content.decode()
    assert "Read again: needs review" in page and '<meta http-equiv="refresh"' not in page

    # The reading is fresh, the person's value still wins, and nothing is doubled
    sheet.refresh_from_db()
    assert sheet.read_at is not None and sheet.reading["answers"]["q3"] == "AC"
    answers = Answer.objects.filter(sheet=sheet)
    assert answers.get(field="q3").value == "C" and answers.get(field="q3").corrected
    assert answers.count() == len(batch.truth)
    assert answers.get(field="q1").value == batch.truth["q1"]
    assert Sheet.objects.filter(batch=batch).count() == 3
    row = next(r for r in csv_rows(batch) if r["source_file"] == "scan_double.jpg")
    assert row["q3"] == "C"


def test_actions_mark_reviewed_and_regenerate_csv(owner, batch):
    client = logged_in(owner)
    sheet = Sheet.objects.get(batch=batch, source_name="scan_double.jpg")

    # Mark as reviewed: recorded, counted
    response = client.post(CHANGELIST, {"action": "mark_reviewed", "_selected_action": [sheet.pk]})
    assert response.status_code == 302
    sheet.refresh_from_db()
    batch.refresh_from_db()
    assert not sheet.needs_review and batch.sheets_needs_review == 0
    assert Correction.objects.get(sheet=sheet).field == "needs_review"

    # Regenerate CSV: the file comes back from the rows
    default_storage.delete(batch.results_csv.name)
    response = client.post(reverse("admin:batches_batch_changelist"),
                           {"action": "regenerate_csv", "_selected_action": [batch.pk]})
    assert response.status_code == 302
    rows = csv_rows(batch)
    assert len(rows) == 3 and all(r["needs_review"] == "false" for r in rows)


def test_read_again_from_the_list_action(owner, batch, broker, worker):
    client = logged_in(owner)
    ids = list(Sheet.objects.filter(batch=batch).values_list("pk", flat=True))
    before = dict(Sheet.objects.filter(batch=batch).values_list("pk", "read_at"))
    response = client.post(CHANGELIST, {"action": "read_again", "_selected_action": ids})
    assert response.status_code == 302
    run_queue(broker, worker)
    assert not Sheet.objects.filter(batch=batch, read_again_queued_at__isnull=False).exists()
    after = dict(Sheet.objects.filter(batch=batch).values_list("pk", "read_at"))
    assert all(after[i] > before[i] for i in ids)
    assert Answer.objects.filter(sheet__batch=batch).count() == 3 * len(batch.truth)


def test_values_are_checked_against_the_template():
    rules = review.field_rules(TEMPLATE, 1)
    assert review.clean_value(" db ", rules["q1"]) == "BD"
    assert review.clean_value("", rules["q1"]) == ""
    with pytest.raises(review.ReviewError):
        review.clean_value("E", rules["q1"])
    number = next(name for name, rule in rules.items() if rule.kind == "digit")
    assert review.clean_value("0042", rules[number]) == "0042"
    with pytest.raises(review.ReviewError):
        review.clean_value("12a", rules[number])


def test_migrate_makes_the_reviewers_group_with_exactly_its_permissions():
    group = Group.objects.get(name=REVIEWERS)
    assert sorted(group.permissions.values_list("codename", flat=True)) == sorted(REVIEWER_PERMISSIONS)
    assert not group.permissions.filter(codename__startswith="delete_").exclude(codename="delete_apitoken").exists()


def test_ensure_staff_user_reviewer_makes_a_staff_member_who_is_not_a_superuser(django_user_model):
    from django.core.management import call_command

    out = io.StringIO()
    call_command("ensure_staff_user", "--username", "jo", "--reviewer", stdout=out)
    jo = django_user_model.objects.get(username="jo")
    assert jo.is_staff and not jo.is_superuser
    assert list(jo.groups.values_list("name", flat=True)) == [REVIEWERS]
    assert jo.has_perm("batches.change_answer") and not jo.has_perm("batches.delete_batch")
    assert out.getvalue().startswith("Reviewer login: user jo, password ")


# ---------------------------------------------------------------- API tokens


def test_a_reviewer_sees_and_deletes_only_their_own_api_tokens(owner, colleague, admin_user):
    from batches.models import ApiToken

    reviewer(owner)
    reviewer(colleague)
    mine, _ = ApiToken.objects.issue(owner, name="alice-script")
    theirs, _ = ApiToken.objects.issue(colleague, name="bob-script")
    client = logged_in(owner)
    tokens = reverse("admin:batches_apitoken_changelist")

    # The list shows Alice's token, not Bob's
    page = client.get(tokens).content.decode()
    assert "alice-script" in page and "bob-script" not in page
    # Bob's token has no page for her, and cannot be deleted from its URL or by the list action
    assert client.get(reverse("admin:batches_apitoken_change", args=[theirs.pk])).status_code == 302
    client.post(reverse("admin:batches_apitoken_delete", args=[theirs.pk]), {"post": "yes"})
    client.post(tokens, {"action": "delete_selected", "_selected_action": [theirs.pk, mine.pk], "post": "yes"})
    assert ApiToken.objects.filter(pk=theirs.pk).exists()
    assert not ApiToken.objects.filter(pk=mine.pk).exists()  # her own went

    # A token cannot be handed to someone else
    again, _ = ApiToken.objects.issue(owner, name="again")
    client.post(reverse("admin:batches_apitoken_change", args=[again.pk]), {"name": "renamed", "user": colleague.pk})
    again.refresh_from_db()
    assert again.user == owner

    # A superuser sees everyone's
    page = logged_in(admin_user).get(tokens).content.decode()
    assert "bob-script" in page and "again" in page
