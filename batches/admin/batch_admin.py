"""The admin: batches with their stage, counts and timings, and the sheet
review screen (the page image with the detected marks drawn over it, the
answers editable inline, every correction recorded).

Everything a reviewer changes goes through ``batches.review``, which records
the corrections and rewrites the results CSV; the admin itself never saves a
sheet or an answer row directly. Staff see their own batches only (superusers
see all), the same rule as the pages and the API.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Case, Q, TextField, Value, When
from django.db.models.functions import Cast
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from ..models import Answer, ApiToken, Batch, Correction, ProgressEvent, Sheet, Stage, WorkerHeartbeat
from ..omr.flags import NOT_REVIEW, Flag
from ..review import actions as review
from ..review import tasks as review_tasks
from ..uploads import accept
from ..web.auth import batches_for
from ..web.timeline import format_duration, stage_steps

#: Sheets one admin action queues to be read again (a worker reads them, ~0.2 s a sheet).
READ_AGAIN_LIMIT = 500

#: Flags offered by the sheet filter: every flag but a plain blank.
KNOWN_FLAGS = [(flag.value, flag.label) for flag in Flag if flag not in NOT_REVIEW]


def _regenerate(modeladmin, request, batch_ids) -> None:
    done = skipped = 0
    for batch_id in batch_ids:
        if review.regenerate_csv(batch_id):
            done += 1
        else:
            skipped += 1
    if done:
        modeladmin.message_user(request, ngettext("Results CSV regenerated for %d batch.",
                                                  "Results CSV regenerated for %d batches.", done) % done,
                                messages.SUCCESS)
    if skipped:
        modeladmin.message_user(request, ngettext("%d batch is not completed: it has no results CSV to regenerate.",
                                                  "%d batches are not completed: they have no results CSV to regenerate.",
                                                  skipped) % skipped, messages.WARNING)


# ---------------------------------------------------------------- batches


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ["original_filename", "owner", "stage_badge", "sheets", "sheets_failed", "review_link",
                    "created_at", "duration"]
    list_filter = ["stage", "has_qr", "template", "created_at"]
    search_fields = ["original_filename", "=id", "sha256"]
    date_hierarchy = "created_at"
    actions = ["regenerate_csv"]
    readonly_fields = ["id", "owner", "original_filename", "template", "has_qr", "size", "sha256", "stage",
                       "overall_percentage", "sheets_total", "sheets_processed", "sheets_failed",
                       "sheets_needs_review", "error", "created_at", "started_at", "finished_at",
                       "duration", "stage_timings", "links"]
    fieldsets = [
        (None, {"fields": ["original_filename", "owner", "template", "has_qr", "links"]}),
        ("Progress", {"fields": ["stage", "overall_percentage", "sheets_total", "sheets_processed", "sheets_failed",
                                 "sheets_needs_review", "error"]}),
        ("Timings", {"fields": ["created_at", "started_at", "finished_at", "duration", "stage_timings"]}),
        ("File", {"fields": ["id", "size", "sha256"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return batches_for(request.user).select_related("owner")

    def has_add_permission(self, request):
        return False  # batches start from an upload, never from a blank form

    @admin.display(description="Stage", ordering="stage")
    def stage_badge(self, obj):
        return obj.get_stage_display()

    @admin.display(description="Sheets read")
    def sheets(self, obj):
        return f"{obj.sheets_processed} / {obj.sheets_total}"

    @admin.display(description="To review", ordering="sheets_needs_review")
    def review_link(self, obj):
        if not obj.sheets_needs_review:
            return "0"
        url = reverse("admin:batches_sheet_changelist") + f"?batch__id__exact={obj.pk}&needs_review__exact=1"
        return format_html('<a href="{}">{}</a>', url, obj.sheets_needs_review)

    @admin.display(description="Duration")
    def duration(self, obj):
        if not obj.started_at:
            return "—"
        run = obj.run_seconds()
        return format_duration(obj.elapsed_seconds() if run is None else run)

    @admin.display(description="Stages")
    def stage_timings(self, obj):
        steps = stage_steps(ProgressEvent.objects.filter(batch=obj).order_by("id"), obj.stage)
        rows = [(s.label, s.state, format_duration(s.seconds) if s.state != "pending" else "") for s in steps]
        return format_html('<table class="stage-timings"><tbody>{}</tbody></table>',
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows))

    @admin.display(description="Links")
    def links(self, obj):
        parts = [("Batch page", reverse("batches:detail", args=[obj.pk])),
                 ("Sheets", reverse("admin:batches_sheet_changelist") + f"?batch__id__exact={obj.pk}")]
        if obj.stage == Stage.COMPLETED:
            parts.append(("results.csv", reverse("batches:api-results", args=[obj.pk])))
        return format_html_join(" · ", '<a href="{}">{}</a>', ((url, label) for label, url in parts))

    @admin.action(description="Regenerate the results CSV")
    def regenerate_csv(self, request, queryset):
        _regenerate(self, request, list(queryset.values_list("pk", flat=True)))

    def delete_model(self, request, obj):
        accept.delete_batch(obj)  # the batch's files go with it

    def delete_queryset(self, request, queryset):
        for batch in queryset:
            accept.delete_batch(batch)


# ---------------------------------------------------------------- sheets


class FlagFilter(admin.SimpleListFilter):
    """Sheets with a flag, on the sheet itself or on any of its answers."""

    title = "flag"
    parameter_name = "flag"

    def lookups(self, request, model_admin):
        return KNOWN_FLAGS

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        # Flags are JSON lists of strings: match the quoted name, which works on
        # SQLite and PostgreSQL alike.
        quoted = f'"{value}"'
        with_answer = Answer.objects.filter(flags__icontains=quoted).values("sheet_id")
        return queryset.filter(Q(flags__icontains=quoted) | Q(pk__in=with_answer))


class AnswerFormSet(BaseInlineFormSet):
    """Answer rows of one sheet; only ``value`` is editable, checked against
    the sheet's template the way ``review.apply_corrections`` will store it."""

    def clean(self):
        super().clean()
        sheet = self.instance
        rules = review.field_rules(sheet.template or sheet.batch.template, sheet.template_page)
        for form in self.forms:
            if "value" not in form.changed_data or not form.instance.pk:
                continue
            try:
                form.cleaned_data["value"] = review.clean_value(form.cleaned_data.get("value", ""),
                                                                rules.get(form.instance.field))
            except review.ReviewError as exc:
                form.add_error("value", str(exc))


class AnswerForm(forms.ModelForm):
    class Meta:
        model = Answer
        fields = ["value"]
        widgets = {"value": forms.TextInput(attrs={"size": 8, "autocomplete": "off", "spellcheck": "false"})}


class AnswerInline(admin.TabularInline):
    model = Answer
    form = AnswerForm
    formset = AnswerFormSet
    fields = ["field", "value", "reader", "confidence_text", "corrected_mark"]
    readonly_fields = ["field", "reader", "confidence_text", "corrected_mark"]
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name = "answer"
    verbose_name_plural = "answers: fields in doubt first (edit a value to correct it; every change is recorded)"

    def get_queryset(self, request):
        # Fields the reader flagged (anything but a plain blank) come first, so
        # the reviewer starts where the doubt is. Flags are JSON lists; their
        # text is the same on SQLite and PostgreSQL.
        plain = Case(When(flags_text__in=["[]", f'["{Flag.BLANK}"]'], then=Value(1)), default=Value(0))
        return (super().get_queryset(request).annotate(flags_text=Cast("flags", TextField()))
                .annotate(plain=plain).order_by("plain", "id"))

    @admin.display(description="Reader's flags")
    def reader(self, obj):
        flags = [f for f in (obj.flags or []) if f not in NOT_REVIEW]
        if not flags:
            return "blank" if obj.value == "" and not obj.corrected else ""
        return format_html_join(" ", '<span class="flag">{}</span>', ((f,) for f in flags))

    @admin.display(description="Confidence")
    def confidence_text(self, obj):
        return "" if obj.confidence is None else f"{obj.confidence * 100:.0f} %"

    @admin.display(description="Corrected")
    def corrected_mark(self, obj):
        return "✓ by a person" if obj.corrected else ""


class CorrectionInline(admin.TabularInline):
    model = Correction
    fields = ["created_at", "user", "field", "old_value", "new_value"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    # The sheet's history: every correction, and every acceptance (field
    # needs_review), from this screen or the review queue.
    verbose_name_plural = "history: corrections and acceptances (newest first)"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Sheet)
class SheetAdmin(admin.ModelAdmin):
    list_display = ["index", "batch_name", "source_name", "status", "needs_review", "flag_summary", "student"]
    list_display_links = ["index", "source_name"]
    list_filter = ["needs_review", "status", FlagFilter, "template"]
    search_fields = ["source_name", "student", "exam", "batch__original_filename"]
    list_select_related = ["batch"]
    list_per_page = 50
    actions = ["read_again", "mark_reviewed", "regenerate_csv"]
    inlines = [AnswerInline, CorrectionInline]
    readonly_fields = ["batch_link", "source", "status", "template", "template_page", "student", "exam",
                       "qr_payload", "qr_error", "flag_summary", "error", "read_at", "attempts"]
    # What a reviewer decides on first; where the page came from below, folded.
    fieldsets = [
        (None, {"fields": ["batch_link", "student", "flag_summary", "error", "needs_review"]}),
        ("Source and identification", {"fields": ["source", "status", "template", "template_page", "exam",
                                                  "qr_payload", "qr_error", "read_at", "attempts"],
                                       "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return Sheet.objects.filter(batch__in=batches_for(request.user)).select_related("batch")

    def lookup_allowed(self, lookup, value, request=None):
        # The batch pages link to one batch's sheets; the batch is not a list
        # filter (there may be thousands of batches).
        if lookup == "batch__id__exact":
            return True
        return super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # sheets belong to their batch: delete the batch

    @admin.display(description="Batch", ordering="batch__created_at")
    def batch_name(self, obj):
        return obj.batch.original_filename

    @admin.display(description="Batch")
    def batch_link(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("batches:detail", args=[obj.batch_id]),
                           obj.batch.original_filename)

    @admin.display(description="Page")
    def source(self, obj):
        return f"{obj.index} in the upload: {obj.source_name}, page {obj.source_page}"

    @admin.display(description="Flags")
    def flag_summary(self, obj):
        """Sheet flags, then the fields the reader was not sure of."""
        parts = list(obj.flags or [])
        fields = (obj.reading or {}).get("flags") or {}
        doubtful = [f"{name}: {', '.join(x for x in f if x not in NOT_REVIEW)}" for name, f in fields.items()
                    if set(f or []) - NOT_REVIEW]
        parts += doubtful[:6]
        if len(doubtful) > 6:
            parts.append(f"+{len(doubtful) - 6} more fields")
        return "; ".join(parts) or "—"

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and not obj.error:
            # An empty "Error: -" line is noise on the review screen.
            first = dict(fieldsets[0][1], fields=[f for f in fieldsets[0][1]["fields"] if f != "error"])
            fieldsets = [(fieldsets[0][0], first), *fieldsets[1:]]
        return fieldsets

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "is_nav_sidebar_enabled": False})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        sheet = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if sheet is not None:
            extra["overlay_url"] = reverse("batches:sheet-overlay", args=[sheet.batch_id, sheet.index])
            nxt = (self.get_queryset(request).filter(batch_id=sheet.batch_id, needs_review=True, index__gt=sheet.index)
                   .order_by("index").values_list("pk", flat=True).first())
            if nxt:
                extra["next_review_url"] = reverse("admin:batches_sheet_change", args=[nxt])
            extra["batch_running"] = not sheet.batch.is_finished
            extra["read_again_queued"] = sheet.read_again_queued_at is not None
            extra["title"] = "Review sheet"
            extra["subtitle"] = f"Sheet {sheet.index} of {sheet.batch.original_filename}"
            extra["is_nav_sidebar_enabled"] = False  # the page image needs the width
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def get_urls(self):
        own = [path("<path:object_id>/read-again/", self.admin_site.admin_view(self.read_again_view),
                    name="batches_sheet_read_again")]
        return own + super().get_urls()

    def read_again_view(self, request, object_id):
        """POST from the sheet's page: read it again, then back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        sheet = self.get_object(request, object_id)
        if sheet is None or not self.has_change_permission(request, sheet):
            raise Http404("no such sheet")
        try:
            review_tasks.queue_read_again([sheet], request.user)
        except review.ReviewError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, f"Sheet {sheet.index} is queued to be read again; this page shows the "
                                       "result when it is done.", messages.SUCCESS)
        return redirect("admin:batches_sheet_change", sheet.pk)

    def save_model(self, request, obj, form, change):
        # Only needs_review is editable here; it is a recorded correction too.
        if "needs_review" in form.changed_data:
            try:
                review.set_needs_review(obj, request.user, form.cleaned_data["needs_review"])
            except review.ReviewError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    def save_formset(self, request, form, formset, change):
        # The admin's change message reads what formset.save() would have set.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        if formset.model is not Answer:
            return  # corrections are history, never edited
        edited = [f for f in formset.forms if f.instance.pk and "value" in f.changed_data]
        changes = {f.instance.field: f.cleaned_data["value"] for f in edited}
        if not changes:
            return
        formset.changed_objects = [(f.instance, ["value"]) for f in edited]
        try:
            made = review.apply_corrections(form.instance, request.user, changes)
        except review.ReviewError as exc:
            self.message_user(request, f"Nothing was corrected: {exc}", messages.ERROR)
            return
        if made:
            self.message_user(request, ngettext("%d answer corrected; the results CSV was regenerated.",
                                                "%d answers corrected; the results CSV was regenerated.",
                                                len(made)) % len(made), messages.SUCCESS)

    @admin.action(description="Read again")
    def read_again(self, request, queryset):
        sheets = list(queryset.order_by("batch_id", "index")[: READ_AGAIN_LIMIT + 1])
        if len(sheets) > READ_AGAIN_LIMIT:
            self.message_user(request, f"Select at most {READ_AGAIN_LIMIT} sheets to read again at once.",
                              messages.ERROR)
            return
        try:
            queued = review_tasks.queue_read_again(sheets, request.user)
        except review.ReviewError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, ngettext("%d sheet is queued to be read again; each sheet's page shows the "
                                            "result when it is done.",
                                            "%d sheets are queued to be read again; each sheet's page shows the "
                                            "result when it is done.", queued) % queued, messages.SUCCESS)

    @admin.action(description="Mark as reviewed")
    def mark_reviewed(self, request, queryset):
        count = 0
        for sheet in queryset.filter(needs_review=True):
            try:
                count += review.set_needs_review(sheet, request.user, False) is not None
            except review.ReviewError as exc:
                self.message_user(request, f"sheet {sheet.index}: {exc}", messages.ERROR)
                return
        self.message_user(request, ngettext("%d sheet marked as reviewed.", "%d sheets marked as reviewed.",
                                            count) % count, messages.SUCCESS)

    @admin.action(description="Regenerate the results CSV of their batches")
    def regenerate_csv(self, request, queryset):
        _regenerate(self, request, list(queryset.values_list("batch_id", flat=True).distinct()))


# ---------------------------------------------------------------- the rest, read-only


@admin.register(Correction)
class CorrectionAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "sheet", "field", "old_value", "new_value"]
    list_filter = ["field", "created_at"]
    search_fields = ["field", "sheet__batch__original_filename", "user__username"]
    list_select_related = ["user", "sheet"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(sheet__batch__in=batches_for(request.user))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the audit trail stays


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """A reviewer sees, renames and deletes their own tokens only; superusers
    see everyone's (to revoke a leaked one). A token never changes hands."""

    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "expires_at"]
    readonly_fields = ["user", "prefix", "digest", "created_at", "last_used_at", "expires_at"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at", "expires_at"]

    def get_queryset(self, request):
        tokens = super().get_queryset(request).select_related("user")
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def has_add_permission(self, request):
        return False  # tokens are issued by a command, which shows the secret once


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "hostname", "pid", "started_at", "beat_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

