"""Settings from the environment (X1: ``check --deploy`` is clean with
production values) and the logging that keeps Django's own loggers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMR_", "DJANGO_"))}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_values(tmp_path):
    env = {
        "SECRET_KEY": "x" * 30 + "a-long-random-production-secret-key-value",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "omr.example.org",
        "SECURE_SSL": "1",
        "BEHIND_PROXY": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "OMR_VAR_DIR": str(tmp_path),
    }
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_environment_drives_the_settings(tmp_path):
    env = {"DATABASE_URL": "postgres://u:p@db.example:5433/omr", "REDIS_URL": "redis://cache:6390/3",
           "MEDIA_ROOT": str(tmp_path / "m"), "OMR_MAX_UPLOAD_MB": "7", "ALLOWED_HOSTS": "a.example,b.example",
           "OMR_VAR_DIR": str(tmp_path)}
    code = ("from django.conf import settings as s; import json; print(json.dumps([s.DATABASES['default']['HOST'],"
            " s.DATABASES['default']['PORT'], s.DRAMATIQ_BROKER['OPTIONS']['url'],"
            " s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]['address'],"
            " s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]['socket_timeout'], s.OMR_STREAM_KEEPALIVE,"
            " str(s.MEDIA_ROOT), s.OMR_MAX_UPLOAD_BYTES, s.ALLOWED_HOSTS, s.LOGGING['disable_existing_loggers']]))")
    result = run_manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    import json

    last_line = result.stdout.strip().splitlines()[-1]  # shell may print a banner first
    host, port, broker, layer, socket_timeout, keepalive, media, limit, hosts, disable = json.loads(last_line)
    assert (host, port) == ("db.example", 5433)
    assert broker == layer == "redis://cache:6390/3"
    assert socket_timeout > keepalive  # idle streams must outlive the Redis socket timeout
    assert media == str(tmp_path / "m")
    assert limit == 7 * 1024 * 1024
    assert hosts == ["a.example", "b.example"]
    assert disable is False


def test_daphne_leaves_multipart_bodies_to_django():
    # Twisted would parse every multipart upload in the reactor thread (18 s
    # for 344 MB, stalling every stream); Django parses it anyway.
    from unittest import mock

    from daphne.http_protocol import WebRequest

    import omrsite.asgi  # noqa: F401  (applies the setting)

    request = WebRequest(mock.MagicMock(), queued=False)
    assert request._parsePOSTFormSubmission is False


@pytest.mark.django_db
def test_readings_are_stored_with_lz4_on_postgresql_and_other_databases_are_left_alone():
    import importlib

    from django.db import connection

    migration = importlib.import_module("batches.migrations.0006_sheet_reading_lz4")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT attcompression FROM pg_attribute "
                           "WHERE attrelid = 'batches_sheet'::regclass AND attname = 'reading'")
            assert cursor.fetchone()[0] == "l"  # lz4 (Debian's PostgreSQL 15 has it)
    else:
        class Recorder:
            def __init__(self):
                self.connection, self.sql = connection, []

            def execute(self, sql, params=()):
                self.sql.append(sql)

        editor = Recorder()
        migration.use_lz4(None, editor)
        assert editor.sql == []


def test_the_worker_role_is_what_rundramatiq_starts(monkeypatch):
    # manage.py rundramatiq is this project's command: the dramatiq program it
    # execs (and so every worker process) runs in the worker role.
    from django.core.management import call_command, get_commands

    assert get_commands()["rundramatiq"] == "batches"
    started = []

    def execvp(program, args):
        started.append((program, args, os.environ.get("OMR_PROCESS_ROLE")))

    monkeypatch.setenv("OMR_PROCESS_ROLE", "web")  # and put back as it was afterwards
    monkeypatch.setattr(os, "execvp", execvp)
    call_command("rundramatiq", "--processes", "2", "--threads", "1")
    (program, args, role), = started
    assert program.endswith("dramatiq") and role == "worker"
    assert "batches.pipeline.tasks" in args


def test_the_role_sets_how_a_process_keeps_its_database_connection(tmp_path):
    code = "from django.conf import settings as s; print(s.OMR_PROCESS_ROLE, s.DATABASES['default']['CONN_MAX_AGE'])"
    env = {"OMR_VAR_DIR": str(tmp_path)}
    assert run_manage("shell", "-c", code, env=env).stdout.split()[-2:] == ["web", "0"]
    assert run_manage("shell", "-c", code, env={**env, "OMR_PROCESS_ROLE": "worker"}).stdout.split()[-2:] == [
        "worker", "600"]
    wrong = run_manage("shell", "-c", code, env={**env, "OMR_PROCESS_ROLE": "tests"})
    assert wrong.returncode != 0 and "OMR_PROCESS_ROLE must be web or worker" in wrong.stderr


def test_hsts_preload_and_subdomains_are_separate_choices_off_by_default(tmp_path):
    code = ("from django.conf import settings as s; import json; print(json.dumps([s.SECURE_HSTS_SECONDS,"
            " s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD]))")
    base = {"SECURE_SSL": "1", "OMR_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    import json

    # SECURE_SSL alone: HSTS for this host, nothing that binds other hosts or browsers' lists
    result = run_manage("shell", "-c", code, env=base)
    assert result.returncode == 0, result.stderr
    seconds, subdomains, preload = json.loads(result.stdout.strip().splitlines()[-1])
    assert seconds > 0 and subdomains is False and preload is False

    # Each is turned on by its own setting
    result = run_manage("shell", "-c", code, env={**base, "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1"})
    assert json.loads(result.stdout.strip().splitlines()[-1])[1:] == [True, False]
    result = run_manage("shell", "-c", code, env={**base, "SECURE_HSTS_PRELOAD": "1"})
    assert json.loads(result.stdout.strip().splitlines()[-1])[1:] == [False, True]
