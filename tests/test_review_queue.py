"""The review queue: its order, the reviewers' leases (two reviewers, expiry,
takeover, a race between threads), corrections and acceptances recorded and
shown in the sheet's history, undo, and access scoped to the user's batches.

The order and the leases use sheet rows made here; the pages use a batch read
by the real pipeline from simulated sheets."""

from __future__ import annotations

import csv
import datetime
import io
import random
import re
import threading

import pytest
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches.models import Answer, Batch, Correction, Sheet, SheetScore, SheetStatus, Stage
from batches.pipeline import stages
from batches.review import queue
from batches.roles import REVIEWERS
from batches.uploads import accept

from .conftest import TEMPLATE, make_zip, simulated_sheet

pytestmark = pytest.mark.django_db(transaction=True)


# ---------------------------------------------------------------- sheet rows made by hand


def hand_batch(owner, specs: list[dict], stage=Stage.COMPLETED) -> tuple[Batch, list[Sheet]]:
    """A batch whose sheets are rows made here: each spec gives ``status``,
    ``error``, ``flags``, ``review`` (default True) and ``fields``
    ({name: (flags, confidence, corrected)})."""
    batch = Batch.objects.create(owner=owner, template=TEMPLATE, original_filename="hand.zip", stage=stage)
    sheets = []
    for i, spec in enumerate(specs, 1):
        sheet = Sheet.objects.create(batch=batch, index=i, source_name=f"s{i}.jpg", image="none",
                                     status=spec.get("status", SheetStatus.DONE), error=spec.get("error", ""),
                                     flags=spec.get("flags", []), needs_review=spec.get("review", True),
                                     template=TEMPLATE, template_page=1)
        for name, (flags, confidence, *corrected) in spec.get("fields", {}).items():
            Answer.objects.create(sheet=sheet, field=name, value="A", flags=flags, confidence=confidence,
                                  corrected=bool(corrected and corrected[0]))
        Answer.objects.create(sheet=sheet, field="q20", value="B", flags=[], confidence=0.9)
        Answer.objects.create(sheet=sheet, field="q19", value="", flags=["blank"], confidence=0.9)
        sheets.append(sheet)
    return batch, sheets


def test_queue_order_failed_and_misaligned_first_then_by_doubt(owner):
    _batch, s = hand_batch(owner, [
        {"fields": {"q1": (["ambiguous"], 0.4)}},                        # 0: doubt 2 x 0.6 = 1.2
        {"status": SheetStatus.FAILED, "error": "truncated JPEG"},       # 1: nothing read
        {"flags": ["misaligned"], "fields": {"q1": (["faint"], 0.6)}},   # 2: whole reading in question
        {"flags": ["qr_missing"]},                                       # 3: another sheet problem
        {"fields": {"q1": (["multiple"], 0.6), "q2": (["multiple"], 0.6)}},  # 4: 2 x 3 x 0.4 = 2.4
        {"fields": {"q1": (["faint"], 0.5)}},                            # 5: 1.5 x 0.5 = 0.75
        {"review": False, "fields": {"q1": (["multiple"], 0.1)}},        # 6: not in review
        {"fields": {"q1": (["multiple"], 0.1, True)}},                   # 7: its doubt corrected already
        {"flags": ["unreadable"]},                                       # 8: nothing read
        {"fields": {"q1": (["faint"], 0.5)}},                            # 9: as 5, later in the upload
    ])
    order = [item.sheet_id for item in queue.ordered_queue(Batch.objects.all())]
    assert order == [s[1].pk, s[8].pk, s[2].pk, s[3].pk, s[4].pk, s[0].pk, s[5].pk, s[9].pk, s[7].pk]
    two_doubles = queue.ordered_queue(Batch.objects.all())[4]
    assert two_doubles.fields == 2 and two_doubles.doubt == pytest.approx(2.4)


def test_the_doubt_counted_in_sql_is_the_rule_written_in_python(owner):
    rng = random.Random(5)
    flags = [["multiple"], ["ambiguous"], ["erasure"], ["misaligned"], ["faint"], ["gap"], ["circled"],
             ["blank", "faint"], ["faint", "multiple"], ["smudge"], ["blank"], []]
    specs = [{"fields": {f"q{q}": (rng.choice(flags), rng.choice([None, 0.0, 0.3, 0.55, 1.0]), rng.random() < 0.2)
                         for q in range(1, 15)}} for _ in range(12)]
    _batch, sheets = hand_batch(owner, specs)
    counted = queue.doubt_by_sheet(Sheet.objects.all())
    for sheet, spec in zip(sheets, specs, strict=True):
        open_fields = [(f, c) for f, c, corrected in spec["fields"].values() if not corrected and set(f) - {"blank"}]
        expected = sum(queue.field_doubt(f, c) for f, c in open_fields)
        doubt, low, fields = counted.get(sheet.pk, (0.0, 1.0, 0))
        assert doubt == pytest.approx(expected) and fields == len(open_fields)
        assert low == pytest.approx(min([0.5 if c is None else c for _f, c in open_fields], default=1.0))


def test_the_queue_leaves_out_running_batches_and_other_users(owner, colleague):
    hand_batch(owner, [{"fields": {"q1": (["multiple"], 0.5)}}], stage=Stage.PROCESSING_SHEETS)
    _done, sheets = hand_batch(owner, [{"fields": {"q1": (["multiple"], 0.5)}}])
    hand_batch(colleague, [{"fields": {"q1": (["multiple"], 0.5)}}])
    assert [i.sheet_id for i in queue.ordered_queue(Batch.objects.filter(owner=owner))] == [sheets[0].pk]


# ---------------------------------------------------------------- leases


def test_a_sheet_with_a_block_placed_apart_asks_for_every_answer_to_be_checked(owner):
    # A block found apart from the rest of the page may have neighbours read
    # a row or a column off without a flag of their own: the page says so.
    _batch, (apart, faint) = hand_batch(owner, [{"fields": {"q1": (["misaligned"], 0.5)}},
                                                {"fields": {"q1": (["faint"], 0.5)}}])
    client = logged_in(owner)
    page = client.get(reverse("batches:review-sheet", args=[apart.pk])).content.decode()
    assert "check every answer on the picture" in page
    # It names the fields as their cards do.
    assert "fields marked “bubbles not where expected”" in page
    page = client.get(reverse("batches:review-sheet", args=[faint.pk])).content.decode()
    assert "check every answer on the picture" not in page


def doubtful_rows(owner, count: int) -> tuple[Batch, list[Sheet]]:
    return hand_batch(owner, [{"fields": {"q1": (["multiple"], 0.5 + i / 100)}} for i in range(count)])


def test_two_reviewers_never_get_the_same_sheet(owner, admin_user):
    batch, sheets = doubtful_rows(owner, 3)
    items = queue.ordered_queue(Batch.objects.all())
    alice, root = queue.Reviewer(owner, "a" * 32), queue.Reviewer(admin_user, "r" * 32)

    assert queue.claim_next(items, alice) == sheets[0].pk
    # The second reviewer gets the next sheet nobody holds
    assert queue.claim_next(items, root) == sheets[1].pk
    assert queue.claim(sheets[0].pk, root) is False
    assert queue.held_by_others([s.pk for s in sheets], root) == {sheets[0].pk}
    held = Sheet.objects.get(pk=sheets[0].pk)
    assert queue.holder_of(held, root) == "alice" and queue.holder_of(held, alice) is None

    # Alice moves on: she holds one sheet at a time, so the first is free again
    assert queue.claim_next(items, alice, after=sheets[0].pk) == sheets[2].pk
    assert Sheet.objects.get(pk=sheets[0].pk).review_token == ""
    assert queue.claim(sheets[0].pk, root) is True
    # Root took the first one, so gave back the second, which alice gets next
    assert queue.claim_next(items, alice, after=sheets[2].pk) == sheets[1].pk
    assert Sheet.objects.get(pk=sheets[2].pk).review_token == ""
    # A queue whose every sheet is held by someone else gives nothing
    assert queue.claim_next([i for i in items if i.sheet_id == sheets[0].pk], alice) is None


def test_one_login_in_two_browsers_is_two_reviewers(owner):
    _batch, sheets = doubtful_rows(owner, 2)
    items = queue.ordered_queue(Batch.objects.all())
    first, second = queue.Reviewer(owner, "1" * 32), queue.Reviewer(owner, "2" * 32)
    assert queue.claim_next(items, first) == sheets[0].pk
    assert queue.claim_next(items, second) == sheets[1].pk


def test_an_expired_lease_is_taken_over_and_a_renewed_one_is_not(owner, admin_user):
    _batch, sheets = doubtful_rows(owner, 1)
    alice, root = queue.Reviewer(owner, "a" * 32), queue.Reviewer(admin_user, "r" * 32)
    start = timezone.now()
    assert queue.claim(sheets[0].pk, alice, now=start)
    later = start + datetime.timedelta(seconds=queue.LEASE_SECONDS - 5)
    assert not queue.claim(sheets[0].pk, root, now=later)
    # Alice's page renews the lease
    assert queue.claim(sheets[0].pk, alice, now=later)
    assert not queue.claim(sheets[0].pk, root, now=later + datetime.timedelta(seconds=60))
    # She closes the laptop: once the lease runs out, root takes it over
    expired = later + datetime.timedelta(seconds=queue.LEASE_SECONDS + 1)
    assert queue.claim(sheets[0].pk, root, now=expired)
    sheet = Sheet.objects.get(pk=sheets[0].pk)
    assert sheet.review_holder == admin_user and sheet.review_token == "r" * 32
    # And alice's renewal now fails: her page says the sheet was taken over
    assert not queue.claim(sheets[0].pk, alice, now=expired)
    assert queue.release(sheets[0].pk, alice) is False
    assert queue.release(sheets[0].pk, root) is True
    assert Sheet.objects.get(pk=sheets[0].pk).review_lease_until is None


def _race(items, reviewers, rounds: int, barrier_size: int) -> list[list[int | None]]:
    """Each reviewer in a thread of its own takes the next sheet at the same
    moment, ``rounds`` times; returns what each round gave each reviewer."""
    barrier = threading.Barrier(barrier_size)
    results = [[None] * len(reviewers) for _ in range(rounds)]
    errors = []

    def run(slot: int, reviewer) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                results[r][slot] = queue.claim_next(items, reviewer)
                barrier.wait(timeout=30)
                if slot == 0:  # everyone gives their sheet back for the next round
                    Sheet.objects.update(review_holder=None, review_token="", review_lease_until=None)
                barrier.wait(timeout=30)
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread's slot
            errors.append((slot, exc))
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, rv)) for i, rv in enumerate(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_reviewers_racing_for_the_same_sheet_get_different_ones(owner, admin_user):
    """Four reviewers in four threads (own database connections) ask for the
    next sheet at the same instant, 15 times: every round, four different
    sheets, the top four of the queue."""
    _batch, sheets = doubtful_rows(owner, 6)
    items = queue.ordered_queue(Batch.objects.all())
    reviewers = [queue.Reviewer(owner, f"{i}" * 32) for i in range(3)] + [queue.Reviewer(admin_user, "r" * 32)]
    results = _race(items, reviewers, rounds=15, barrier_size=len(reviewers))
    top = {s.pk for s in sheets[:4]}
    for got in results:
        assert None not in got, got
        assert len(set(got)) == len(got), f"two reviewers got the same sheet: {got}"
        assert set(got) == top


def test_only_one_of_two_simultaneous_claims_of_one_sheet_wins(owner, admin_user):
    _batch, sheets = doubtful_rows(owner, 1)
    items = queue.ordered_queue(Batch.objects.all())
    results = _race(items, [queue.Reviewer(owner, "a" * 32), queue.Reviewer(admin_user, "r" * 32)],
                    rounds=20, barrier_size=2)
    for got in results:
        assert sorted(got, key=lambda v: v is None) == [sheets[0].pk, None], got


# ---------------------------------------------------------------- pages: a batch read by the pipeline


def doubtful_scan(seed: int, changes: dict) -> tuple[bytes, dict]:
    from batches.omr.synthetic import simulate
    from batches.omr.template import load_template

    t = load_template(TEMPLATE)
    answers = {**simulate.random_answers(t, 1, random.Random(seed)), **changes}
    sim = simulate.simulate_sheet(t, answers, seed=seed, preset="clean", exam="EXAM1", student=f"S{seed}")
    return sim.encode_jpeg(), sim.truth["answers"]


@pytest.fixture
def batch(owner):
    """A completed batch: a clean sheet, one with q3 marked A and C, one with
    q5, q7, q9 and q11 marked twice (more doubt: it comes first)."""
    one, _ = doubtful_scan(99, {"q3": "AC"})
    two, _ = doubtful_scan(98, {"q5": "BD", "q7": "AB", "q9": "AC", "q11": "BC"})
    entries = [(simulated_sheet(0).name, simulated_sheet(0).jpeg), ("scan_one.jpg", one), ("scan_two.jpg", two)]
    b = accept.create_batch(owner, ContentFile(make_zip(entries), name="exam.zip"), filename="exam.zip",
                            template=TEMPLATE, has_qr=True, start=False)
    b = stages.run_inline(b.pk)
    assert b.stage == Stage.COMPLETED, b.error
    assert b.sheets_needs_review == 2
    return b


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def csv_rows(batch: Batch) -> dict[str, dict]:
    batch.refresh_from_db()
    with default_storage.open(batch.results_csv.name, "rb") as f:
        return {r["source_file"]: r for r in csv.DictReader(io.StringIO(f.read().decode("utf-8-sig")))}


def sheet_named(batch, name) -> Sheet:
    return Sheet.objects.get(batch=batch, source_name=name)


def test_the_batch_queue_opens_the_most_doubtful_sheet_with_its_fields(owner, batch):
    client = logged_in(owner)
    two = sheet_named(batch, "scan_two.jpg")
    # The batch page links to the queue
    detail = client.get(reverse("batches:detail", args=[batch.pk])).content.decode()
    start = reverse("batches:batch-review", args=[batch.pk])
    assert f'href="{start}"' in detail and "Review sheets" in detail

    response = client.get(start)
    assert response.status_code == 302
    assert response["Location"] == reverse("batches:review-sheet", args=[two.pk]) + f"?batch={batch.pk}"
    page = client.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200
    assert page.context["left"] == 2 and page.context["position"] == 1
    flagged = [a.field for a in Answer.objects.filter(sheet=two).order_by("id") if set(a.flags) - {"blank"}]
    assert [f["name"] for f in page.context["fields"]] == flagged
    assert {"q5", "q7", "q9", "q11"} <= set(flagged)
    assert 'name="answer-q5" value="BD"' in html and 'name="answer-q7" value="AB"' in html
    assert "more than one bubble marked" in html
    assert 'data-allowed="ABCD"' in html
    # Each field zoomed in: a crop of the page picture, which the page shows too
    q5 = next(f for f in page.context["fields"] if f["name"] == "q5")
    assert "transform:rotate(" in q5["zoom"]["picture"] and page.context["picture"] in html
    picture = client.get(page.context["picture"])
    assert picture.status_code == 200 and picture["Content-Type"] == "image/jpeg"
    assert picture.content.startswith(b"\xff\xd8") and picture["Cache-Control"] == "private, max-age=3600"
    # The next sheet's picture is fetched ahead
    assert page.context["prefetch"] == reverse("batches:review-picture", args=[sheet_named(batch, "scan_one.jpg").pk]) \
        + f"?v={int(sheet_named(batch, 'scan_one.jpg').read_at.timestamp())}"
    # The lease is this browser's
    assert Sheet.objects.get(pk=two.pk).review_holder == owner
    # And the count left, with the keys listed
    assert '<strong class="num" id="sheets-left">2</strong> sheets left' in html
    assert "next field in doubt" in html


def test_a_correction_from_the_queue_is_recorded_shown_and_in_the_csv(owner, batch):
    client = logged_in(owner)
    one = sheet_named(batch, "scan_one.jpg")
    url = reverse("batches:review-sheet", args=[one.pk])
    client.get(url)
    # A field saved as it changes (htmx): the history and the field's state come back
    response = client.post(reverse("batches:review-save", args=[one.pk]), {"action": "field", "answer-q3": "c"},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="history"' in html and "q3: AC → C" in html and 'hx-swap-oob="true"' in html
    c = Correction.objects.get(sheet=one)
    assert (c.user, c.field, c.old_value, c.new_value) == (owner, "q3", "AC", "C")
    assert Answer.objects.get(sheet=one, field="q3").corrected
    assert csv_rows(batch)["scan_one.jpg"]["q3"] == "C"
    # The sheet is still in review until accepted; its page shows the history
    page = client.get(url).content.decode()
    assert "q3: AC → C" in page and "alice" in page
    # And the admin shows the same history (to a member of the Reviewers group)
    owner.groups.add(Group.objects.get(name=REVIEWERS))
    admin = client.get(reverse("admin:batches_sheet_change", args=[one.pk])).content.decode()
    assert "History: corrections and acceptances" in admin
    assert re.search(r'field-old_value">\s*<p>AC</p>', admin) and re.search(r'field-new_value">\s*<p>C</p>', admin)


def test_accepting_clears_the_review_is_recorded_and_goes_on(owner, batch):
    client = logged_in(owner)
    two, one = sheet_named(batch, "scan_two.jpg"), sheet_named(batch, "scan_one.jpg")
    client.get(reverse("batches:batch-review", args=[batch.pk]))
    response = client.post(reverse("batches:review-save", args=[two.pk]) + f"?batch={batch.pk}",
                           {"action": "accept", "answer-q5": "B", "answer-q7": "AB"})
    assert response.status_code == 302
    nxt = client.get(response["Location"])
    assert nxt.status_code == 302
    assert nxt["Location"] == reverse("batches:review-sheet", args=[one.pk]) + f"?batch={batch.pk}"
    two.refresh_from_db()
    batch.refresh_from_db()
    assert not two.needs_review and two.review_token == "" and batch.sheets_needs_review == 1
    log = [(c.field, c.old_value, c.new_value) for c in Correction.objects.filter(sheet=two).order_by("id")]
    assert log == [("q5", "BD", "B"), ("needs_review", "true", "false")]  # q7 kept as read: not a change
    assert csv_rows(batch)["scan_two.jpg"]["q5"] == "B"
    assert csv_rows(batch)["scan_two.jpg"]["needs_review"] in ("false", "False", "0", "")

    page = client.get(nxt["Location"])
    assert page.context["left"] == 1
    # The last sheet: accepted as read, and the queue is empty
    done = client.post(reverse("batches:review-save", args=[one.pk]) + f"?batch={batch.pk}", {"action": "accept"},
                       follow=True)
    assert done.status_code == 200 and done.context["left"] == 0
    assert "Nothing left to review" in done.content.decode()
    history = client.get(reverse("batches:review-sheet", args=[one.pk])).content.decode()
    assert "accepted as read" in history


def test_undo_puts_back_the_last_step_and_records_it(owner, batch):
    client = logged_in(owner)
    one = sheet_named(batch, "scan_one.jpg")
    client.get(reverse("batches:review-sheet", args=[one.pk]))
    save = reverse("batches:review-save", args=[one.pk])
    client.post(save, {"action": "field", "answer-q3": "A"}, headers={"HX-Request": "true"})
    client.post(save, {"action": "accept", "answer-q3": "A"})
    one.refresh_from_db()
    assert not one.needs_review

    # Undo the acceptance: back in review, back on the sheet
    response = client.post(reverse("batches:review-undo"))
    assert response.status_code == 302 and f"/review/sheets/{one.pk}/" in response["Location"]
    one.refresh_from_db()
    assert one.needs_review and Answer.objects.get(sheet=one, field="q3").value == "A"
    # Undo the correction: q3 as read again
    client.post(reverse("batches:review-undo"))
    assert Answer.objects.get(sheet=one, field="q3").value == "AC"
    assert csv_rows(batch)["scan_one.jpg"]["q3"] == "AC"
    log = [(c.field, c.old_value, c.new_value) for c in Correction.objects.filter(sheet=one).order_by("id")]
    assert log == [("q3", "AC", "A"), ("needs_review", "true", "false"), ("needs_review", "false", "true"),
                   ("q3", "A", "AC")]
    # Nothing more to undo
    again = client.post(reverse("batches:review-undo"), {"back": reverse("batches:review-sheet", args=[one.pk])},
                        follow=True)
    assert again.redirect_chain[-1][0] == reverse("batches:review-sheet", args=[one.pk]) + "?undone=0"
    assert "Nothing to undo." in again.content.decode()
    # A "back" address elsewhere is not followed
    away = client.post(reverse("batches:review-undo"), {"back": "https://example.com/x"})
    assert away["Location"].startswith(reverse("batches:review-queue"))


def test_an_impossible_answer_is_refused_and_nothing_recorded(owner, batch):
    client = logged_in(owner)
    one = sheet_named(batch, "scan_one.jpg")
    response = client.post(reverse("batches:review-save", args=[one.pk]), {"action": "accept", "answer-q3": "Z"})
    assert response.status_code == 422
    assert "“Z” is not an option here" in response.content.decode()
    assert not Correction.objects.filter(sheet=one).exists()
    one.refresh_from_db()
    assert one.needs_review


def test_a_sheet_open_in_another_browser_is_not_changed(owner, batch):
    first, second = logged_in(owner), logged_in(owner)
    one = sheet_named(batch, "scan_one.jpg")
    first.get(reverse("batches:review-sheet", args=[one.pk]))
    # The second browser starting the queue gets the other sheet
    response = second.get(reverse("batches:batch-review", args=[batch.pk]))
    assert f"/review/sheets/{sheet_named(batch, 'scan_two.jpg').pk}/" in response["Location"]
    # Opening the first one anyway: it says who has it, and a save is refused
    page = second.get(reverse("batches:review-sheet", args=[one.pk])).content.decode()
    assert "has this sheet open" in page
    refused = second.post(reverse("batches:review-save", args=[one.pk]), {"action": "accept", "answer-q3": "A"})
    assert refused.status_code == 409
    assert not Correction.objects.filter(sheet=one).exists()
    # The renewal keeps the first browser's lease; the second is told it is taken
    assert first.post(reverse("batches:review-renew", args=[one.pk])).status_code == 204
    taken = second.post(reverse("batches:review-renew", args=[one.pk]))
    assert taken.status_code == 200 and "has taken this sheet over" in taken.content.decode()
    # Leaving gives it back
    assert first.post(reverse("batches:review-release", args=[one.pk])).status_code == 204
    assert second.post(reverse("batches:review-renew", args=[one.pk])).status_code == 204


def test_another_users_batch_and_sheets_are_not_found(owner, colleague, outsider, batch):
    one = sheet_named(batch, "scan_one.jpg")
    client = logged_in(colleague)
    assert client.get(reverse("batches:batch-review", args=[batch.pk])).status_code == 404
    assert client.get(reverse("batches:review-sheet", args=[one.pk])).status_code == 404
    assert client.get(reverse("batches:review-sheet", args=[one.pk]) + f"?batch={batch.pk}").status_code == 404
    assert client.get(reverse("batches:review-picture", args=[one.pk])).status_code == 404
    for name in ("review-save", "review-renew", "review-release"):
        assert client.post(reverse(f"batches:{name}", args=[one.pk]), {"action": "accept"}).status_code == 404
    # Their own queue holds none of Alice's sheets
    mine = client.get(reverse("batches:review-queue"))
    assert mine.status_code == 200 and mine.context["left"] == 0
    one.refresh_from_db()
    assert one.needs_review and one.review_token == "" and not Correction.objects.exists()
    # Someone who is not staff goes to the login page
    assert logged_in(outsider).get(reverse("batches:review-queue")).status_code == 302


def test_the_queue_across_batches_takes_every_batch_of_the_user(owner, batch):
    _other, rows = doubtful_rows(owner, 1)
    client = logged_in(owner)
    response = client.get(reverse("batches:review-queue"))
    page = client.get(response["Location"])
    assert page.context["left"] == 3
    ids = {page.context["sheet"].pk}
    for _ in range(2):
        nxt = client.get(reverse("batches:review-next") + f"?after={page.context['sheet'].pk}")
        page = client.get(nxt["Location"])
        ids.add(page.context["sheet"].pk)
    assert ids == {sheet_named(batch, "scan_one.jpg").pk, sheet_named(batch, "scan_two.jpg").pk, rows[0].pk}


# ---------------------------------------------------------------- exam scores


def test_the_sheets_score_follows_a_correction_made_in_the_queue(owner):
    from .exam_helpers import KEY_A, add_batch, answers, make_exam, reading

    exam = make_exam(owner)
    # q3 read as a double mark (A and C; the key says C): the reader is unsure
    doubtful = reading(answers(KEY_A, student="1001", multiple={"q3": "AC"}))
    doubtful.update(flags={"q3": ["multiple"]}, confidence={"q3": 0.5}, needs_review=True)
    batch = add_batch(owner, exam, [doubtful])
    sheet = Sheet.objects.get(batch=batch)
    assert sheet.needs_review

    client = logged_in(owner)
    page = client.get(reverse("batches:batch-review", args=[batch.pk]), follow=True)
    assert page.context["score"].score == 19 and page.context["score"].max_score == 20
    assert re.search(r'id="score-value">19</strong><span class="muted num"> / 20', page.content.decode())

    response = client.post(reverse("batches:review-save", args=[sheet.pk]), {"action": "field", "answer-q3": "c"},
                           headers={"HX-Request": "true"})
    html = response.content.decode()
    assert re.search(r'id="sheet-score" hx-swap-oob="true">.*id="score-value">20</strong>', html, re.S)
    assert SheetScore.objects.get(sheet=sheet).score == 20
    # Undone: the score goes back
    client.post(reverse("batches:review-undo"))
    assert SheetScore.objects.get(sheet=sheet).score == 19
