"""``manage.py rundramatiq``: django_dramatiq's command, whose worker
processes are started in the worker role (``OMR_PROCESS_ROLE=worker``).

The role is what the process is started as, never guessed from its command
line: a worker keeps its database connection between messages, hands
progress wake-ups to an event loop of its own, warms the engine up before its
first message and arms the page watchdog (``docs/server.md``). Everything
else, the web server and the other commands included, runs in the ``web``
role. (This app is listed before django_dramatiq in ``INSTALLED_APPS`` so
that this command is the one ``manage.py`` runs.)
"""

import os

from django_dramatiq.management.commands.rundramatiq import Command as DramatiqCommand


class Command(DramatiqCommand):
    def handle(self, *args, **options):
        # The command execs the dramatiq program, whose processes inherit this.
        os.environ["OMR_PROCESS_ROLE"] = "worker"
        return super().handle(*args, **options)
