"""The recognition engine: pure functions over numpy arrays and dataclasses.

Nothing here imports the web framework or touches a database; files are read and written only
by the command line (``python -m batches.omr``).
"""

from .layout import PageLayout, page_layout
from .payload import PayloadError, QrPayload, decode_payload
from .template import Template, TemplateError, builtin_names, load_template

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
