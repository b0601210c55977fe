"""The recognition engine: pure functions over numpy arrays and dataclasses.

Nothing here imports the web framework or touches a database; files are read and written only
by the command line (``python -m batches.omr``).

The names below are loaded on first use: reading a sheet (an OMRChecker
template's above all) needs none of the template format's machinery, and a
command-line process should not pay for importing it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layout import PageLayout, page_layout
    from .payload import PayloadError, QrPayload, decode_payload
    from .template import Template, TemplateError, builtin_names, load_template

#: Public name -> the module defining it.
_HOMES = {
    "PageLayout": "layout",
    "page_layout": "layout",
    "PayloadError": "payload",
    "QrPayload": "payload",
    "decode_payload": "payload",
    "Template": "template",
    "TemplateError": "template",
    "builtin_names": "template",
    "load_template": "template",
}

__all__ = [
    "PageLayout",
    "PayloadError",
    "QrPayload",
    "Template",
    "TemplateError",
    "builtin_names",
    "decode_payload",
    "load_template",
    "page_layout",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
