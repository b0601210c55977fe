"""``manage.py ensure_staff_user [--username staff] [--reset-password]``: make sure a
staff login exists for the README's run command, and print it."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a staff superuser (or leave the existing one) and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("OMR_STAFF_USER", "staff"))
        parser.add_argument("--reset-password", action="store_true", help="give an existing user a new password")

    def handle(self, username, reset_password, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        password = os.environ.get("OMR_STAFF_PASSWORD") or secrets.token_urlsafe(12)
        if user is None:
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
