"""Text from outside (file names, upload metadata, QR codes, template labels,
CSV cells) checked once where it enters.

Control characters have no place in any of it: a NUL is refused by PostgreSQL
in text and JSON (a 500, or a lost reading, where SQLite stored it), and the
others garble messages, logs and spreadsheets. Each entry point either refuses
such text with a clear message (``check``), or removes the characters where
refusing would lose real work (``strip``). Tab, line feed and carriage return
are allowed only where a value may span lines (``multiline=True``).

Part of the engine (pure Python), which checks QR codes with it;
the server checks everything else it takes in with it too.
"""

from __future__ import annotations

import re

#: ASCII control characters (C0 and DEL).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
#: The same without tab, line feed and carriage return.
CONTROL_CHARACTERS_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class TextError(ValueError):
    """Text holding a control character; ``str(exc)`` says which, and where."""


def _pattern(multiline: bool) -> re.Pattern:
    return CONTROL_CHARACTERS_MULTILINE if multiline else CONTROL_CHARACTERS


def first_control(text: str, *, multiline: bool = False) -> str | None:
    """The first control character in ``text`` as ``U+XXXX``, or None."""
    match = _pattern(multiline).search(text)
    return f"U+{ord(match.group()):04X}" if match else None


def check(text: str, what: str, *, multiline: bool = False) -> str:
    """``text`` unchanged, or ``TextError`` naming ``what`` and the character."""
    found = first_control(text, multiline=multiline)
    if found:
        raise TextError(f"{what} holds a control character ({found}), which is not allowed")
    return text


def strip(text: str, *, multiline: bool = False) -> str:
    """``text`` without its control characters."""
    return _pattern(multiline).sub("", text)


def check_json(value, what: str, path: str = "") -> None:
    """``check`` every key and string in parsed JSON; the error names the
    path (``fieldBlocks.q1.fieldLabels[2]``) of the first bad one."""
    where = f"{what} at {path}" if path else what
    if isinstance(value, str):
        check(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            check(key_text, f"{where}: the key {key_text!r}")
            check_json(item, what, f"{path}.{key_text}" if path else key_text)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, what, f"{path}[{i}]")
