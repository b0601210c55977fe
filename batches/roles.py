"""The "Reviewers" group: what staff who are not superusers need to review
their own batches in the admin site (see the sheets, correct answers, read the
corrections, run the review actions) and to make API tokens for their scripts.
Every admin page still shows a reviewer only their own batches.

The group is created, and its permissions set, after every ``migrate``.
"""

from __future__ import annotations

REVIEWERS = "Reviewers"

REVIEWER_PERMISSIONS = [
    "view_batch", "change_batch",
    "view_sheet", "change_sheet",
    "view_answer", "change_answer",
    "view_correction",
    "view_sheettemplate",
    "view_apitoken", "add_apitoken", "delete_apitoken",
    *(f"{a}_{m}" for m in ("exam", "rosterentry") for a in ("view", "add", "change")), "view_sheetscore", "view_examchange",
]


def ensure_reviewers_group(using: str = "default"):
    """Create the group if needed and give it exactly ``REVIEWER_PERMISSIONS``."""
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.using(using).get_or_create(name=REVIEWERS)
    perms = Permission.objects.using(using).filter(content_type__app_label="batches",
                                                   codename__in=REVIEWER_PERMISSIONS)
    group.permissions.set(perms)
    return group


def on_post_migrate(sender, using="default", **kwargs) -> None:
    ensure_reviewers_group(using)
