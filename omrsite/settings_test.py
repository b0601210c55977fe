"""The settings the test suite runs with (``pyproject.toml``): the production
settings of ``settings.py``, and what a test run sets for itself, none of it
guessed by the code: Dramatiq's in-process StubBroker and the in-memory
channel layer and a per-process cache (no Redis needed; ``OMR_BROKER``,
``OMR_CHANNEL_LAYER`` and ``OMR_CACHE`` may still choose Redis), the test client's host name, no worker heartbeats, and a
test database file of each run's own. The end-to-end and browser tests start
real servers with ``settings.py`` and an environment of their own.
"""

import os
import tempfile
from pathlib import Path

from .settings import *  # noqa: F403
from .settings import ALLOWED_HOSTS, DATABASES, caches, channel_layers, dramatiq_broker, env, env_float

ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]

DRAMATIQ_BACKEND = env("OMR_BROKER", "stub")
DRAMATIQ_BROKER = dramatiq_broker(DRAMATIQ_BACKEND)
CHANNEL_LAYER_BACKEND = env("OMR_CHANNEL_LAYER", "memory")
CHANNEL_LAYERS = channel_layers(CHANNEL_LAYER_BACKEND)
CACHES = caches(env("OMR_CACHE", "memory"))
OMR_HEARTBEAT_INTERVAL = env_float("OMR_HEARTBEAT_INTERVAL", 0.0)

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not the shared in-memory database: worker threads in the tests
    # then wait for locks (busy timeout) the way real processes do.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(tempfile.gettempdir()) / f"omr-test-{os.getpid()}.sqlite3")}
