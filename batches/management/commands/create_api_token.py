"""``manage.py create_api_token USER [--name NAME]``: print a new API token once
(on stdout) and when it expires (on stderr)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from batches.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USER and print it (it is stored hashed and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for")

    def handle(self, username, name, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user {username!r}") from None
        if not user.is_staff:
            self.stderr.write(f"warning: {username} is not staff; the API refuses non-staff users")
        row, token = ApiToken.objects.issue(user, name=name)
        self.stdout.write(token)
        # On stderr, so TOKEN=$(manage.py create_api_token USER) keeps the token alone.
        self.stderr.write(f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC "
                          f"(OMR_API_TOKEN_DAYS={settings.OMR_API_TOKEN_DAYS})")
