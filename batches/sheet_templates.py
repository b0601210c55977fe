"""Every sheet template a batch can use: the engine's built-ins, and templates
staff upload in the admin site (``SheetTemplate`` rows), either in this
project's own format (``omr-template/1``) or imported from OMRChecker
(``template.json`` with its marker or reference image and ``config.json``).

``resolve(name)`` gives a ``Resolved`` template whatever its kind; the
pipeline, the CSV, the review checks and the overlay go through it. A custom
template is parsed once per process and parsed again when its row changes
(the cache key includes ``updated_at``), so an edit in the admin reaches every
worker without a restart.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

BUILTIN = "builtin"
NATIVE = "omr-template/1"
OMRCHECKER = "omrchecker"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Resolved:
    """A template ready to read with: ``kind`` is BUILTIN, NATIVE or OMRCHECKER;
    ``template`` an engine ``Template`` or an ``OmrCheckerTemplate``."""

    name: str
    kind: str
    template: Any

    @property
    def is_omrchecker(self) -> bool:
        return self.kind == OMRCHECKER

    @property
    def pages(self) -> int:
        return 1 if self.is_omrchecker else self.template.pages

    def field_names(self) -> list[str]:
        """The answer columns, in the template's order (OMRChecker: its output
        columns, custom labels joined)."""
        if self.is_omrchecker:
            return list(self.template.output_columns)
        return list(self.template.field_names())

    @property
    def uses_qr(self) -> bool:
        """OMRChecker sheets carry no QR code: pages are read with the batch's template."""
        return not self.is_omrchecker

    def read_image_bytes(self, data: bytes, *, source: str, batch_has_qr: bool, max_pixels: int) -> list:
        """The engine's readings (one per page) of an image file, for a batch of
        this template: with QR codes each page is read with the template its
        code names (built-in or this project's own, by name only: a QR code is
        untrusted input), without them with this template."""
        if self.is_omrchecker:
            from .omr.omrchecker import read_omrchecker_image_bytes

            return read_omrchecker_image_bytes(data, self.template, source=source, max_pixels=max_pixels)
        from .omr.reader import read_image_bytes

        template = None if batch_has_qr and self.uses_qr else self.template
        return read_image_bytes(data, template, source=source, resolve=resolve_for_qr, max_pixels=max_pixels)

    def read_image(self, image, page: int | None = None):
        """The engine's reading of one decoded page image (a fresh reading for
        the overlay, whose stored reading kept no bubbles)."""
        if self.is_omrchecker:
            from .omr.omrchecker import read_omrchecker_sheet

            return read_omrchecker_sheet(image, self.template)
        from .omr.reader import read_sheet

        return read_sheet(image, self.template, page=page)

    def layout(self, page: int | None = None):
        """The bubble layout of ``page`` in mm, or ``None`` for an OMRChecker
        template (its groups are its fields: group keys name them already)."""
        if self.is_omrchecker:
            return None
        from .omr.align import layout_mm

        return layout_mm(self.template, int(page or 1))


@lru_cache(maxsize=1)
def builtin_names() -> tuple[str, ...]:
    from .omr.template import builtin_names as names

    return tuple(names())


@lru_cache(maxsize=32)
def _builtin(name: str) -> Resolved:
    from .omr.template import load_template

    return Resolved(name, BUILTIN, load_template(name))


_custom_cache: dict[str, tuple[Any, Resolved]] = {}
_cache_lock = threading.Lock()


def parse_definition(name: str, kind: str, definition: dict) -> Resolved:
    """A stored definition as a template; raises ``ValueError`` (the engine's
    ``TemplateError`` and ``OmrCheckerTemplateError`` are ValueErrors) naming the fault."""
    if kind == OMRCHECKER:
        from .omr.omrchecker import OmrCheckerTemplate

        return Resolved(name, kind, OmrCheckerTemplate.from_dict({**definition, "name": name}))
    if kind == NATIVE:
        from .omr.template import load_template

        return Resolved(name, kind, load_template({**definition, "name": name}))
    raise ValueError(f"unknown template kind {kind!r}")


def custom_names() -> list[str]:
    from .models import SheetTemplate

    return list(SheetTemplate.objects.order_by("name").values_list("name", flat=True))


def names() -> list[str]:
    """Every template name a batch may use: built-ins first, then custom ones."""
    return [*builtin_names(), *custom_names()]


def resolve(name: str) -> Resolved:
    """The template called ``name``; raises ``FileNotFoundError`` when there is
    none, ``ValueError`` when a stored one no longer parses."""
    if name in builtin_names():
        return _builtin(name)
    from .models import SheetTemplate

    row = SheetTemplate.objects.filter(name=name).values("kind", "definition", "updated_at").first()
    if row is None:
        raise FileNotFoundError(f"no sheet template {name!r}")
    key = row["updated_at"]
    with _cache_lock:
        hit = _custom_cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    resolved = parse_definition(name, row["kind"], row["definition"])
    with _cache_lock:
        _custom_cache[name] = (key, resolved)
    return resolved


def reads_qr(template: str, has_qr: bool) -> bool:
    """Whether a batch with ``template`` and ``has_qr`` identifies its pages by
    their QR codes: OMRChecker sheets carry none, whatever ``has_qr`` says."""
    if not has_qr:
        return False
    try:
        return resolve(template).uses_qr
    except (FileNotFoundError, ValueError):
        return True  # (the reading reports the template's trouble)


def resolve_for_qr(name: str):
    """Template lookup for the name a QR code gives: built-in names and this
    project's own custom templates only (a QR code is untrusted input and never
    names a file); returns the engine ``Template``."""
    if not NAME_RE.match(name or ""):
        raise FileNotFoundError(f"no sheet template {name!r}")
    resolved = resolve(name)
    if resolved.is_omrchecker:
        raise FileNotFoundError(f"{name!r} is an OMRChecker template; its sheets carry no QR code")
    return resolved.template
