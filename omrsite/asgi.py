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

from batches.web.body_limit import RequestBodyLimit  # noqa: E402

# Bodies over their URL's limit are refused before Django reads them (batches/web/body_limit.py).
application = ProtocolTypeRouter({"http": RequestBodyLimit(django_asgi_app)})


def _skip_twisted_form_parsing() -> None:
    # Twisted parses every multipart POST body itself (for request.args, which
    # Daphne never reads) with the email parser, in the reactor thread: about
    # 18 s for a 344 MB upload, during which every other request and stream
    # on that server stalls. Django parses the body anyway.
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # served by another ASGI server
        return
    if getattr(WebRequest, "_omr_no_form_parsing", False):
        return
    original_init = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False  # Twisted sets it per request

    WebRequest.__init__ = __init__
    WebRequest._omr_no_form_parsing = True


_skip_twisted_form_parsing()
