"""Names and sizes as messages show them. File names come from users and
archives: they are shown cleaned and cut, never used as paths."""

from __future__ import annotations

from .omr.text import CONTROL_CHARACTERS  # a name shown in a message must not carry them


def display_name(name: str, limit: int = 120) -> str:
    """A file name safe to show in a message: control characters replaced, shortened."""
    cleaned = CONTROL_CHARACTERS.sub("?", name)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def size_text(size: int) -> str:
    """Bytes as the limits are set: ``OMR_MAX_UPLOAD_MB`` counts MB of 2**20 bytes."""
    if size < 2**20:
        return f"{size:,} bytes"
    return f"{size / 2**20:,.1f} MB".replace(".0 MB", " MB")
