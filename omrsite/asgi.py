"""ASGI entry point, served by Daphne (``daphne omrsite.asgi:application``).

HTTP goes to Django, whose async views serve the Server-Sent Event streams;
the channel layer is used only to wake those streams, so no WebSocket routes
are needed.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omrsite.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app})
