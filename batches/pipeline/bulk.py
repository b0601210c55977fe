"""The two hot writes of the fan-out, in bulk SQL: a chunk's answer rows and
its sheet rows. Everything else goes through the ORM."""

from __future__ import annotations

import orjson
from django.db import connection

from ..models import Answer, Sheet

SHEET_FIELDS = ["status", "template", "template_page", "qr_payload", "qr_error", "student", "exam", "needs_review",
                 "engine_review", "flags", "error", "reading", "read_at", "claim_token"]


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_EMPTY_JSON_LIST = "[]"


def _json_text(value) -> str:
    """JSON text of a reading or a flag list. The stdlib encoder took half the
    time of storing a chunk (a reading kept for review is ~30 KB); orjson writes
    the same JSON about 20x faster."""
    return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()


def _json_param(value):
    """A JSON value as a query parameter for a JSONField column, encoded with
    orjson (jsonb on PostgreSQL, text on SQLite)."""
    if value is None:
        return None
    if connection.vendor == "postgresql":
        from psycopg.types.json import Jsonb

        return Jsonb(value, dumps=_json_text)
    return _json_text(value)


def insert_answers(rows: list[tuple]) -> None:
    """Insert answer rows ``(sheet_id, field, value, confidence, flags_json,
    corrected)`` in one ``executemany``. About 100 rows per sheet: building a
    model instance for each cost more than reading the page did, so this one
    hot path skips the ORM."""
    if not rows:
        return
    meta = Answer._meta
    qn = connection.ops.quote_name
    columns = ", ".join(qn(meta.get_field(name).column)
                        for name in ("sheet", "field", "value", "confidence", "flags", "corrected"))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg's executemany still sends one statement per row; COPY
            # streams them all (flags as JSON text, which jsonb reads as such).
            with cursor.cursor.copy(f"COPY {qn(meta.db_table)} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row((*row[:4], _json_text(row[4]) if row[4] else _EMPTY_JSON_LIST, row[5]))
        else:
            cursor.executemany(f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES (%s, %s, %s, %s, %s, %s)",
                               [(*row[:4], _json_text(row[4]) if row[4] else _EMPTY_JSON_LIST, row[5])
                                for row in rows])


_JSONSHEET_FIELDS = {"flags", "reading"}


def update_sheets(values: list[dict], now) -> None:
    """Write the result fields of several sheets: one ``executemany`` of plain
    UPDATEs (``bulk_update``'s CASE expressions cost more to build than the
    database takes to run them). ``values``: dicts with ``pk`` and every field of
    ``SHEET_FIELDS`` except ``read_at`` (set to ``now``)."""
    if not values:
        return
    meta = Sheet._meta
    qn = connection.ops.quote_name
    names = [n for n in SHEET_FIELDS if n != "read_at"]
    assignments = ", ".join(f"{qn(meta.get_field(n).column)} = %s" for n in [*names, "read_at"])
    sql = f"UPDATE {qn(meta.db_table)} SET {assignments} WHERE {qn(meta.pk.column)} = %s"
    read_at = connection.ops.adapt_datetimefield_value(now)
    rows = []
    for v in values:
        row = [_json_param(v[n]) if n in _JSONSHEET_FIELDS else v[n] for n in names]
        rows.append((*row, read_at, v["pk"]))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
