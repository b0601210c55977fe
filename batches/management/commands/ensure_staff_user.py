"""``manage.py ensure_staff_user [--username staff] [--reset-password] [--reviewer]``:
make sure a staff login exists for the README's run command, and print it.
``--reviewer`` makes a staff member who is not a superuser, in the Reviewers
group (``batches/roles.py``): they see and review only their own batches."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from batches.roles import ensure_reviewers_group


class Command(BaseCommand):
    help = "Create a staff superuser (or leave the existing one) and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("OMR_STAFF_USER", "staff"))
        parser.add_argument("--reset-password", action="store_true", help="give an existing user a new password")
        parser.add_argument("--reviewer", action="store_true",
                            help="a new user is staff in the Reviewers group, not a superuser")

    def handle(self, username, reset_password, reviewer=False, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        password = os.environ.get("OMR_STAFF_PASSWORD") or secrets.token_urlsafe(12)
        if user is None and reviewer:
            user = User.objects.create_user(username=username, email="", password=password, is_staff=True)
            user.groups.add(ensure_reviewers_group())
            self.stdout.write(f"Reviewer login: user {username}, password {password}")
        elif user is None:
            User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Staff login: user {username}, password {password}")
        elif reset_password:
            user.set_password(password)
            user.is_staff = user.is_active = True
            user.save()
            self.stdout.write(f"Staff login: user {username}, new password {password}")
        else:
            if not user.is_staff:
                user.is_staff = True
                user.save(update_fields=["is_staff"])
            self.stdout.write(f"Staff login: user {username} (password unchanged; "
                              "run `manage.py ensure_staff_user --reset-password` for a new one)")
