"""Settings, all driven by the environment, with safe defaults for a laptop.

Environment variables (all optional):

- ``SECRET_KEY``: set it in production (default: a random key kept in ``var/secret_key``).
- ``DEBUG``: ``1``/``true`` for development. Default: off.
- ``ALLOWED_HOSTS``: comma-separated. Default: ``127.0.0.1,localhost`` (+ ``*`` in DEBUG).
- ``CSRF_TRUSTED_ORIGINS``: comma-separated origins behind a proxy.
- ``SECURE_SSL``: ``1`` behind HTTPS (secure cookies, HSTS, redirect). Default: off.
- ``SECURE_HSTS_INCLUDE_SUBDOMAINS``, ``SECURE_HSTS_PRELOAD``: ``1`` to add these to the HSTS header
  (with ``SECURE_SSL``). Default: off; each binds more than this server.
- ``BEHIND_PROXY``: ``1`` to trust ``X-Forwarded-Proto`` from the proxy.
- ``DATABASE_URL``: e.g. ``postgres://user@host:5432/omr``. Default: SQLite in ``var/``.
- ``REDIS_URL``: the Dramatiq broker and the channel layer. Default ``redis://127.0.0.1:6379/0``.
- ``MEDIA_ROOT``: where uploads, page images and CSV files go. Default ``var/media``.
- ``OMR_MAX_UPLOAD_MB``, ``OMR_MAX_ENTRIES``, ``OMR_MAX_PAGES``, ``OMR_MAX_PIXELS``,
  ``OMR_MAX_UNCOMPRESSED_MB``, ``OMR_MAX_IMAGE_ENTRY_MB``, ``OMR_MAX_COMPRESSION_RATIO``: the limits on
  what an upload may contain.
- ``OMR_UPLOAD_EXPIRY_HOURS``, ``OMR_TUS_MAX_CHUNK_MB``: resumable uploads (expiry, largest PATCH body).
- ``OMR_API_TOKEN_DAYS``: how long an API token works after it is made. Default 90.
- ``OMR_LOGIN_FAILURES_PER_ADDRESS`` (30), ``OMR_LOGIN_FAILURES_PER_USER`` (10), ``OMR_LOGIN_WINDOW_MINUTES`` (15):
  failed logins allowed before the login pages answer 429.
- ``OMR_PRINT_IN_REQUEST_PAGES``, ``OMR_PRINT_EXPIRY_HOURS``: printed sheets (largest print built in the
  request, how long a worker-built PDF is kept).
- ``OMR_DB_POOL_SIZE``, ``OMR_DB_POOL_TIMEOUT``: the web process's PostgreSQL connection pool.
- ``OMR_MAX_STREAMS_PER_USER``, ``OMR_STREAM_MAX_SECONDS``: open progress streams per user, and their lifetime.
- ``OMR_PROCESS_ROLE``: ``worker`` in the processes ``manage.py rundramatiq`` starts (it sets it), else ``web``.
- ``OMR_OUTAGE_BUDGET_MINUTES`` (60), ``OMR_OUTAGE_MAX_BACKOFF_MS`` (15000): how long, and how far apart at most,
  a database or Redis outage is retried before work is given up.
- ``OMR_RECOVERY_INTERVAL`` (10), ``OMR_RECOVERY_IDLE`` (30): seconds between the workers' looks for lost work,
  and how long a batch must be idle to be looked at (0 interval: off).
- ``OMR_BROKER_HEARTBEAT_TIMEOUT_MS`` (15000): how soon a dead worker's messages go to another.

The test suite runs with ``settings_test.py``, these settings and what a test run sets for itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# What this process was started as: "worker" for the processes of
# ``manage.py rundramatiq`` (the command sets it), "web" for everything else.
# Nothing guesses it; the test suite's settings are in settings_test.py.
OMR_PROCESS_ROLE = env("OMR_PROCESS_ROLE", "web")
if OMR_PROCESS_ROLE not in {"web", "worker"}:
    raise ImproperlyConfigured(f"OMR_PROCESS_ROLE must be web or worker, not {OMR_PROCESS_ROLE!r}")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    # A laptop needs no set-up: a random key kept in var/. Production sets
    # SECRET_KEY (the same on every host, or sessions break between them).
    _key_file = Path(env("OMR_VAR_DIR", str(BASE_DIR / "var"))) / "secret_key"
    try:
        SECRET_KEY = _key_file.read_text().strip()
    except FileNotFoundError:
        import secrets

        _key_file.parent.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" + (",*" if DEBUG else ""))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",  # first, so runserver serves ASGI
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    # Before django_dramatiq: its rundramatiq command is this app's (it starts the workers in their role).
    "batches",
    "django_dramatiq",
    "django_htmx",
    "template_partials",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # No GZipMiddleware: it buffers Server-Sent Events.
]

ROOT_URLCONF = "omrsite.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "omrsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ---------------------------------------------------------------- database

VAR_DIR = Path(env("OMR_VAR_DIR", str(BASE_DIR / "var")))
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
# A worker process keeps its database connection between messages: Django's
# default closes it after each one, and a fan-out of hundreds of chunks then
# paid a new PostgreSQL connection for each. Health checks replace a
# connection that a database restart broke. The web process keeps Django's
# default (0) under ASGI.
DATABASES = {"default": dj_database_url.parse(
    DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 600 if OMR_PROCESS_ROLE == "worker" else 0),
    conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    name = DATABASES["default"]["NAME"]
    if name and name != ":memory:":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # Workers and the web process write at once: wait for the lock rather
        # than fail, take the write lock up front (no upgrade deadlocks), and let
        # readers run beside a writer (WAL).
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
# PostgreSQL: a process without persistent connections (the web process)
# shares a pool of at most OMR_DB_POOL_SIZE connections among its requests and
# streams (a stream takes one only for each short read); a request waits up to
# OMR_DB_POOL_TIMEOUT seconds for one. Workers keep their own persistent one
# (a pool cannot be used with CONN_MAX_AGE). OMR_DB_POOL_SIZE=0 turns it off.
OMR_DB_POOL_SIZE = env_int("OMR_DB_POOL_SIZE", 10)
if (DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and OMR_DB_POOL_SIZE > 0
        and DATABASES["default"]["CONN_MAX_AGE"] == 0):
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, OMR_DB_POOL_SIZE), "max_size": OMR_DB_POOL_SIZE,
        "timeout": env_float("OMR_DB_POOL_TIMEOUT", 10.0)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------- Redis, workers, channels

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
# Key prefixes in Redis, so several installs (or test runs) can share one server.
REDIS_NAMESPACE = env("OMR_REDIS_NAMESPACE", "omr")
DRAMATIQ_MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "dramatiq.middleware.CurrentMessage",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "batches.pipeline.workers.WorkerSetup",
]


def dramatiq_broker(backend: str) -> dict:
    """The broker: "redis", or Dramatiq's in-process "stub" (the test suite's)."""
    if backend == "stub":
        return {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": DRAMATIQ_MIDDLEWARE}
    return {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {
            "url": REDIS_URL,
            "namespace": f"{REDIS_NAMESPACE}-dramatiq",
            # How soon the messages of a worker that died (SIGKILL, lost host)
            # are given to another worker. Each consumer beats every second or
            # so whatever its actors do, so 15 s is ample; Dramatiq's 60 s left
            # a killed worker's sheets waiting a minute.
            "heartbeat_timeout": env_int("OMR_BROKER_HEARTBEAT_TIMEOUT_MS", 15_000),
            # Share (per million broker commands) that also look for dead
            # workers and requeue their messages. Dramatiq's 1,000 means a
            # SIGKILLed worker's messages wait ~15 min on a quiet queue; 50,000
            # (5 %) brings that near the heartbeat timeout at no real cost.
            "maintenance_chance": env_int("OMR_BROKER_MAINTENANCE_CHANCE", 50_000),
        },
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }


DRAMATIQ_BACKEND = env("OMR_BROKER", "redis")
DRAMATIQ_BROKER = dramatiq_broker(DRAMATIQ_BACKEND)
DRAMATIQ_TASKS_DATABASE = "default"
# The actors live in batches/pipeline/tasks.py, batches/review/tasks.py and batches/printing/tasks.py.
DRAMATIQ_AUTODISCOVER_MODULES = ["pipeline.tasks", "review.tasks", "printing.tasks"]

def channel_layers(backend: str) -> dict:
    """The channel layer: "redis", or the in-process "memory" one (the test suite's)."""
    if backend == "memory":
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # Streams send a keep-alive every OMR_STREAM_KEEPALIVE seconds (at most 15), so
                # the Redis socket timeout must be longer than that or idle streams break.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 60, "socket_connect_timeout": 5}],
                "prefix": f"{REDIS_NAMESPACE}-asgi",
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }


CHANNEL_LAYER_BACKEND = env("OMR_CHANNEL_LAYER", "redis")
CHANNEL_LAYERS = channel_layers(CHANNEL_LAYER_BACKEND)


def caches(backend: str) -> dict:
    """The cache, which counts failed logins: "redis", so every web process
    shares the counts, or the in-process "memory" one (the test suite's)."""
    if backend == "memory":
        return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                        "KEY_PREFIX": f"{REDIS_NAMESPACE}-cache"}}


CACHES = caches(env("OMR_CACHE", "redis"))

# ---------------------------------------------------------------- files and limits

MEDIA_ROOT = Path(env("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [p for p in [BASE_DIR / "static"] if p.is_dir()]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024  # larger uploads spool to a temporary file

OMR_MAX_UPLOAD_BYTES = env_int("OMR_MAX_UPLOAD_MB", 4096) * 1024 * 1024
OMR_MAX_ENTRIES = env_int("OMR_MAX_ENTRIES", 20_000)
OMR_MAX_PAGES = env_int("OMR_MAX_PAGES", 10_000)
OMR_MAX_PIXELS = env_int("OMR_MAX_PIXELS", 60_000_000)
OMR_MAX_UNCOMPRESSED_BYTES = env_int("OMR_MAX_UNCOMPRESSED_MB", 8192) * 1024 * 1024
OMR_MAX_IMAGE_ENTRY_BYTES = env_int("OMR_MAX_IMAGE_ENTRY_MB", 512) * 1024 * 1024  # one image in an archive
OMR_MAX_COMPRESSION_RATIO = env_int("OMR_MAX_COMPRESSION_RATIO", 200)
OMR_MAX_NAME_LENGTH = 255
OMR_PDF_DPI = env_int("OMR_PDF_DPI", 200)
OMR_PDF_TIMEOUT = env_int("OMR_PDF_TIMEOUT", 600)  # seconds to render one PDF
OMR_PDF_MAX_MEMORY_MB = env_int("OMR_PDF_MAX_MEMORY_MB", 2048)  # address space of the PDF renderer's process
# Resumable (tus) uploads: an unfinished upload expires this long after its
# last chunk; one PATCH body may be at most this large (the view counts it).
OMR_UPLOAD_EXPIRY_HOURS = env_float("OMR_UPLOAD_EXPIRY_HOURS", 24.0)
OMR_TUS_MAX_CHUNK_BYTES = env_int("OMR_TUS_MAX_CHUNK_MB", 64) * 1024 * 1024
OMR_TUS_BROWSER_CHUNK_BYTES = int(env_float("OMR_TUS_BROWSER_CHUNK_MB", 8.0) * 1024 * 1024)  # the upload page's PATCH size
OMR_DEFAULT_TEMPLATE = env("OMR_DEFAULT_TEMPLATE", "a4-100q-5")
# Printed sheets: prints of up to this many pages are built in the request,
# larger ones by a worker, kept for OMR_PRINT_EXPIRY_HOURS (cleanup_uploads removes them).
OMR_PRINT_IN_REQUEST_PAGES = env_int("OMR_PRINT_IN_REQUEST_PAGES", 50)
OMR_PRINT_EXPIRY_HOURS = env_float("OMR_PRINT_EXPIRY_HOURS", 24.0)
OMR_CHUNK_SIZE = env_int("OMR_CHUNK_SIZE", 10)  # sheets per worker message
OMR_SHEET_MAX_ATTEMPTS = env_int("OMR_SHEET_MAX_ATTEMPTS", 3)
# A page still being read after this many seconds is stuck (in C code, where
# Dramatiq's time limit cannot reach): the worker's watchdog kills the process,
# the message comes back, and the attempt counter fails the page (batches/pipeline/watchdog.py).
OMR_SHEET_TIME_LIMIT = env_float("OMR_SHEET_TIME_LIMIT", 120.0)
OMR_PROGRESS_INTERVAL = env_float("OMR_PROGRESS_INTERVAL", 2.0)  # seconds between processing events
OMR_STREAM_KEEPALIVE = min(env_float("OMR_STREAM_KEEPALIVE", 10.0), 15.0)
OMR_STREAM_POLL = env_float("OMR_STREAM_POLL", 5.0)  # the DB safety net under the wake-ups
# Open progress streams per user, counted across web processes in Redis (0: no
# limit); a stream ends after OMR_STREAM_MAX_SECONDS (0: never) and the client
# resumes with Last-Event-ID.
OMR_MAX_STREAMS_PER_USER = env_int("OMR_MAX_STREAMS_PER_USER", 20)
OMR_STREAM_MAX_SECONDS = env_float("OMR_STREAM_MAX_SECONDS", 1800.0)
OMR_WORKER_POLL_MS = env_int("OMR_WORKER_POLL_MS", 100)  # longest wait of an idle worker for a message
OMR_HEARTBEAT_INTERVAL = env_float("OMR_HEARTBEAT_INTERVAL", 10.0)
# Outages of the database or Redis are retried, at most this far apart, for
# this long before a batch or a chunk's sheets are given up (docs/server.md).
OMR_OUTAGE_MAX_BACKOFF_MS = env_int("OMR_OUTAGE_MAX_BACKOFF_MS", 15_000)
OMR_OUTAGE_BUDGET_MINUTES = env_float("OMR_OUTAGE_BUDGET_MINUTES", 60.0)
OMR_OUTAGE_RETRIES = 5 + int(OMR_OUTAGE_BUDGET_MINUTES * 60_000 / max(OMR_OUTAGE_MAX_BACKOFF_MS, 1))
# The recovery job of the worker processes: how often one of them looks for
# lost work, and how long a batch must have been idle to be looked at.
OMR_RECOVERY_INTERVAL = env_float("OMR_RECOVERY_INTERVAL", 10.0)
OMR_RECOVERY_IDLE = env_float("OMR_RECOVERY_IDLE", 30.0)
# OpenCV reads this once, before its first import: refuse giant images up front.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OMR_MAX_PIXELS))

# ---------------------------------------------------------------- security

SECURE_SSL = env_bool("SECURE_SSL", False)  # on in production, behind HTTPS
SESSION_COOKIE_SECURE = SECURE_SSL
CSRF_COOKIE_SECURE = SECURE_SSL
SECURE_SSL_REDIRECT = SECURE_SSL and env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if SECURE_SSL else 0)
# Both reach beyond this server (every subdomain; browsers' built-in lists,
# hard to leave again), so each is its own decision, off unless set.
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_SSL and env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = SECURE_SSL and env_bool("SECURE_HSTS_PRELOAD", False)
# check --deploy warns about each while it is off: off is the documented default.
SILENCED_SYSTEM_CHECKS = [*(["security.W005"] if not SECURE_HSTS_INCLUDE_SUBDOMAINS else []),
                          *(["security.W021"] if not SECURE_HSTS_PRELOAD else [])]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY") else None
SECURE_REDIRECT_EXEMPT = [r"^api/health$"]  # load balancers probe over plain HTTP
X_FRAME_OPTIONS = "DENY"
LOGIN_URL = env("LOGIN_URL", "batches:login")
# API tokens stop working this many days after they are made (make a new one
# with ``manage.py create_api_token``).
OMR_API_TOKEN_DAYS = env_int("OMR_API_TOKEN_DAYS", 90)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed logins (both login pages) allowed per client address and per username
# within the window; past either, the login pages answer 429 (batches/web/login_throttle.py).
OMR_LOGIN_FAILURES_PER_ADDRESS = env_int("OMR_LOGIN_FAILURES_PER_ADDRESS", 30)
OMR_LOGIN_FAILURES_PER_USER = env_int("OMR_LOGIN_FAILURES_PER_USER", 10)
OMR_LOGIN_WINDOW_MINUTES = env_float("OMR_LOGIN_WINDOW_MINUTES", 15.0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# ---------------------------------------------------------------- logging

LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    # Keep Django's own loggers (django.request tracebacks) alive.
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "batches": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "dramatiq": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

VERSION = "0.1.0"
PROCESS_STARTED = time.time()  # for the health check's uptime
