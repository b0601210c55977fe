"""Resolved geometry: where every mark, bubble and the QR box of a template page
fall in pixels at a given resolution.

Pixel coordinates have their origin at the top-left corner of the page and grow
right and down; a pixel centre ``(i, j)`` is at ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .template import Template

MM_PER_INCH = 25.4


def mm_to_px(mm: float, dpi: float) -> float:
    return mm * dpi / MM_PER_INCH


@dataclass(frozen=True)
class BubbleGeom:
    """One bubble: the value it stands for and its centre and radius, in pixels."""

    field: str
    value: str
    x: float
    y: float
    r: float


@dataclass(frozen=True)
class Group:
    """Bubbles of which the reader picks one value (a question, one digit column).

    ``key`` is unique on the page (``q12``, ``student_number[3]``); ``field`` is
    the answer field it belongs to; ``position`` is the digit position for digit
    grids (0 otherwise).
    """

    key: str
    field: str
    kind: str  # "question", "digit" or "choice"
    position: int
    bubbles: tuple[BubbleGeom, ...]
    multiple_allowed: bool = False

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(b.value for b in self.bubbles)


@dataclass(frozen=True)
class Square:
    """A registration mark: centre and side, in pixels."""

    x: float
    y: float
    size: float


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


@dataclass(frozen=True)
class PageLayout:
    """Every readable element of one template page at ``dpi``."""

    template: str
    page: int
    dpi: float
    width: int
    height: int
    marks: tuple[Square, ...]  # top-left, top-right, bottom-right, bottom-left
    key: Rect
    qr: Rect
    groups: tuple[Group, ...]

    @property
    def bubbles(self) -> list[BubbleGeom]:
        return [b for g in self.groups for b in g.bubbles]

    def fields(self) -> list[str]:
        seen: dict[str, None] = {}
        for g in self.groups:
            seen.setdefault(g.field, None)
        return list(seen)

    def to_dict(self) -> dict:
        """JSON-ready geometry (what ``python -m batches.omr layout --json`` prints)."""
        return {
            "template": self.template,
            "page": self.page,
            "dpi": self.dpi,
            "width": self.width,
            "height": self.height,
            "marks": [asdict(m) for m in self.marks],
            "key": asdict(self.key),
            "qr": asdict(self.qr),
            "bubbles": [asdict(b) | {"group": g.key} for g in self.groups for b in g.bubbles],
        }


def page_layout(template: Template, page: int = 1, dpi: float = 300.0) -> PageLayout:
    """Resolve ``template``'s page ``page`` (1-based) at ``dpi`` dots per inch."""
    if not 1 <= page <= template.pages:
        raise ValueError(f"template {template.name!r} has {template.pages} page(s), not page {page}")
    return _page_layout(template, page, float(dpi))


@lru_cache(maxsize=256)
def _page_layout(template: Template, page: int, dpi: float) -> PageLayout:
    def px(mm: float) -> float:
        return mm_to_px(mm, dpi)

    r = px(template.bubble_diameter) / 2
    groups: list[Group] = []
    for block in template.digit_grids:
        if block.page != page:
            continue
        for k in range(block.digits):
            bubbles = tuple(
                BubbleGeom(block.name, v, px(block.x + k * block.column_pitch), px(block.y + j * block.row_pitch), r)
                for j, v in enumerate(block.values)
            )
            groups.append(Group(f"{block.name}[{k}]", block.name, "digit", k, bubbles))
    for block in template.choices:
        if block.page != page:
            continue
        bubbles = tuple(
            BubbleGeom(block.name, v, px(block.x + j * block.option_pitch), px(block.y), r)
            for j, v in enumerate(block.options)
        )
        groups.append(Group(block.name, block.name, "choice", 0, bubbles))
    for block in template.questions:
        if block.page != page:
            continue
        for i in range(block.count):
            number = block.first + i
            name = block.field_name(number)
            cx = block.x + (i // block.rows) * block.column_pitch
            cy = block.y + (i % block.rows) * block.row_pitch
            bubbles = tuple(
                BubbleGeom(name, v, px(cx + j * block.option_pitch), px(cy), r) for j, v in enumerate(block.options)
            )
            groups.append(Group(name, name, "question", 0, bubbles, block.multiple_allowed))
    return PageLayout(
        template=template.name,
        page=page,
        dpi=dpi,
        width=round(px(template.page_width)),
        height=round(px(template.page_height)),
        marks=tuple(Square(px(m.x), px(m.y), px(m.size)) for m in template.marks),
        key=Rect(px(template.key.x), px(template.key.y), px(template.key.w), px(template.key.h)),
        qr=Rect(px(template.qr.x), px(template.qr.y), px(template.qr.w), px(template.qr.h)),
        groups=tuple(groups),
    )
