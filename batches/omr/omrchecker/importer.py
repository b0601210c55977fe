"""OMRChecker templates (``template.json``, its ``config.json`` and images) read
into a layout this engine can read sheets with.

OMRChecker (github.com/Udayraj123/OMRChecker) describes a sheet in pixels of the
page *after* its pre-processors have cropped and warped the image and resized
it to ``pageDimensions``: bubble boxes (``bubbleDimensions``, top-left corner at
each bubble point) laid out by field blocks (``origin``, ``bubblesGap``,
``labelsGap``, ``fieldLabels`` with ranges like ``q1..10``, a ``fieldType`` or
``bubbleValues`` + ``direction``), joined by ``customLabels``. What is supported
and what is refused is listed in ``docs/omrchecker.md``.

Every option is accounted for: the ones that change how a sheet is read are
implemented; the ones that only tune OMRChecker's own algorithms (kernel sizes,
thresholds for its global histogram) are accepted and named in
``OmrCheckerTemplate.notes``; anything else (an unknown key, a pre-processor
that has no equivalent here) raises ``OmrCheckerTemplateError`` naming it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT = "omrchecker-template/1"

#: OMRChecker's built-in field types (its src/constants/common.py, master). A
#: block's own ``bubbleValues`` and ``direction`` override its type's, as
#: OMRChecker merges them (``{**FIELD_TYPES[type], **block}``).
FIELD_TYPES: dict[str, dict[str, Any]] = {
    "QTYPE_INT": {"bubbleValues": list("0123456789"), "direction": "vertical"},
    "QTYPE_INT_FROM_1": {"bubbleValues": list("1234567890"), "direction": "vertical"},
    "QTYPE_MCQ4": {"bubbleValues": list("ABCD"), "direction": "horizontal"},
    "QTYPE_MCQ5": {"bubbleValues": list("ABCDE"), "direction": "horizontal"},
    "QTYPE_MCQ4_RTL": {"bubbleValues": list("DCBA"), "direction": "horizontal"},
    "QTYPE_MCQ5_RTL": {"bubbleValues": list("EDCBA"), "direction": "horizontal"},
}
#: OMRChecker's default tuning config (src/defaults/config.py) where it matters here.
DEFAULT_PROCESSING = (666, 820)  # processing_width, processing_height
FIELD_RANGE_RE = re.compile(r"^([^.\d]+)(\d+)\.{2,3}(\d+)$")

TOP_KEYS = {"pageDimensions", "bubbleDimensions", "fieldBlocks", "customLabels", "outputColumns",
            "preProcessors", "emptyValue", "$schema"}
BLOCK_KEYS = {"origin", "bubblesGap", "labelsGap", "fieldLabels", "fieldType", "bubbleValues", "direction",
              "emptyValue", "bubbleDimensions"}
#: Field block keys OMRChecker's format does not define but that its templates
#: carry: its schema lets a block hold any other key, and it ignores them.
IGNORED_BLOCK_KEYS = {
    "bubbleCount": "the number of fields comes from fieldLabels, as in OMRChecker",
}
#: Pre-processor -> {option: None (implemented) or the note given when it is accepted without effect}.
PREPROCESSORS: dict[str, dict[str, str | None]] = {
    "CropPage": {
        "morphKernel": "the page outline is found by brightness and edges at any scale, not with a fixed kernel",
        "useColoredCanny": "the page is found on the grey image",
        "maxPointsPerEdge": "the page is mapped by its four corners and then by the bubble outlines",
        "tuningOptions": "the page is mapped by its four corners and then by the bubble outlines",
    },
    "CropOnMarkers": {
        "relativePath": None,
        "sheetToMarkerWidthRatio": None,
        "min_matching_threshold": None,
        "max_matching_variation": None,
        "marker_rescale_range": "markers are searched from a quarter to 1.4 times their expected size",
        "marker_rescale_steps": "markers are searched at a fixed set of scales",
        "apply_erode_subtract": "markers are matched by normalised correlation on the grey image",
    },
    "FeatureBasedAlignment": {
        "reference": None,
        "2d": "a full homography is fitted either way (a phone's perspective is not affine)",
        "maxFeatures": "at least 2000 ORB features are used",
        "goodMatchPercent": "matches are filtered by a ratio test and RANSAC instead",
        "matcherType": "brute-force Hamming matching is used",
    },
    "GaussianBlur": {"kSize": None, "sigmaX": None},
    "MedianBlur": {"kSize": None},
    "Levels": {"low": None, "high": None, "gamma": None},
}
#: The sections of OMRChecker's config.json (its src/schemas/config_schema.py).
CONFIG_SECTIONS = ("dimensions", "threshold_params", "alignment_params", "outputs")
#: config.json sections and what becomes of them.
CONFIG_NOTES = {
    "threshold_params": "not used: thresholds come from each sheet's own bubbles",
    "alignment_params": "not used: every sheet is aligned on its printed bubble outlines",
    "outputs": "display and file output options do not apply",
}


class OmrCheckerTemplateError(ValueError):
    """A template this engine cannot read sheets with; ``errors`` names each
    problem by its path in the JSON (``fieldBlocks.Roll.fieldType: ...``)."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("unsupported OMRChecker template: " + "; ".join(errors))


@dataclass(frozen=True)
class OmrField:
    """One OMRChecker field (a question, one roll-number column): its bubbles in
    value order. ``boxes``: top-left corner of each bubble box, page px."""

    label: str
    block: str
    values: tuple[str, ...]
    boxes: tuple[tuple[float, float], ...]
    bubble_w: float
    bubble_h: float
    empty_value: str
    direction: str

    def centres(self) -> list[tuple[float, float]]:
        return [(x + self.bubble_w / 2, y + self.bubble_h / 2) for x, y in self.boxes]


@dataclass(frozen=True)
class Step:
    """One pre-processor: ``name`` and its ``options`` as given."""

    name: str
    options: dict[str, Any]


@dataclass
class OmrCheckerTemplate:
    """An imported OMRChecker template.

    ``page_w``/``page_h``: ``pageDimensions`` (px); ``fields``: every field in
    block order; ``custom_labels``: {label: [field labels]} joined in order;
    ``output_columns``: the answer keys in order (``outputColumns``, else
    OMRChecker's natural sort of custom and remaining labels); ``steps``: the
    pre-processors; ``images``: {relative path: decoded grey image} for the
    marker and reference images; ``processing``: (width, height) of
    OMRChecker's processing image (config.json ``dimensions``); ``notes``:
    options accepted without effect, by name. ``to_dict()``/``from_dict()``
    serialise it (the source JSON and the images) for storage.
    """

    name: str
    page_w: float
    page_h: float
    bubble_w: float
    bubble_h: float
    fields: tuple[OmrField, ...]
    custom_labels: dict[str, list[str]]
    output_columns: list[str]
    steps: tuple[Step, ...]
    images: dict[str, np.ndarray]
    processing: tuple[int, int]
    notes: list[str]
    source: dict[str, Any] = field(repr=False, default_factory=dict)
    config: dict[str, Any] | None = field(repr=False, default=None)
    image_bytes: dict[str, bytes] = field(repr=False, default_factory=dict)

    @property
    def mm_per_px(self) -> float:
        """Page px -> the engine's millimetres. OMRChecker pages carry no physical
        size; the bubble box is taken as 4.5 mm across, a typical printed bubble,
        so the engine's physical constants (outline widths, neighbourhoods) keep
        their proportion to the bubbles."""
        return 4.5 / max(1.0, (self.bubble_w + self.bubble_h) / 2)

    def alignment(self) -> list[str]:
        return [s.name for s in self.steps if s.name in ("CropPage", "CropOnMarkers", "FeatureBasedAlignment")]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the template and config as given, images base64-encoded."""
        return {
            "format": FORMAT,
            "name": self.name,
            "template": self.source,
            "config": self.config,
            "images": {k: base64.b64encode(v).decode("ascii") for k, v in self.image_bytes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmrCheckerTemplate:
        """The inverse of ``to_dict``."""
        if data.get("format") != FORMAT:
            raise OmrCheckerTemplateError([f"format: expected {FORMAT!r}, not {data.get('format')!r}"])
        images = {k: base64.b64decode(v) for k, v in (data.get("images") or {}).items()}
        return parse_template(data["template"], images=images, config=data.get("config"), name=data.get("name"))


def find_in_folders(folder: Path, filename: str, root: Path | None = None) -> Path | None:
    """The nearest ``filename`` in ``folder`` or a folder above it, as OMRChecker
    finds ``template.json`` and ``config.json``: it walks from the folder it is
    given down, and each folder's file holds for the folders under it.

    ``root``: look no higher than this folder (OMRChecker's input folder);
    ``folder`` must be inside it. Without it, the walk goes up to the top.
    """
    folder = folder.resolve()
    top = root.resolve() if root is not None else None
    if top is not None and folder != top and top not in folder.parents:
        return None
    for here in (folder, *folder.parents):
        candidate = here / filename
        if candidate.is_file():
            return candidate
        if here == top:
            break
    return None


def _is_omrchecker_config(path: Path) -> bool:
    # A config.json met above the template's folder may belong to something
    # else (a parent project): only one made of OMRChecker's sections is taken.
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and set(data) <= set(CONFIG_SECTIONS)


def find_omrchecker_config(template_path: Path, root: Path | None = None) -> Path | None:
    """The ``config.json`` OMRChecker uses with the template at ``template_path``:
    the one beside it, else the nearest one in a folder above (up to ``root``)
    that is an OMRChecker config. None when there is none (its defaults hold)."""
    folder = template_path.resolve().parent
    top = root.resolve() if root is not None else None
    for here in (folder, *folder.parents):
        candidate = here / "config.json"
        if candidate.is_file() and (here == folder or _is_omrchecker_config(candidate)):
            return candidate
        if here == top:
            break
    return None


def load_omrchecker_template(json_text_or_path: str | Path | dict, marker_image_bytes: bytes | None = None,
                             config: str | Path | dict | None = None, *,
                             images: dict[str, bytes] | None = None, name: str | None = None,
                             root: str | Path | None = None) -> OmrCheckerTemplate:
    """Import an OMRChecker template.

    ``json_text_or_path``: the ``template.json`` text, a path to it, or the parsed
    dict. ``marker_image_bytes``: the CropOnMarkers marker image (JPEG/PNG bytes).
    ``config``: ``config.json`` (text, path or dict); without it, a
    ``config.json`` beside a template given by path is used, else OMRChecker's
    defaults. ``images``: {relative path: bytes} for any other image the template
    names (the FeatureBasedAlignment ``reference``). Images not given are read
    from beside a template given by path. ``name``: what readings report as
    ``template`` (default: the template's folder name, else ``"omrchecker"``).
    ``root``: for a template given by path, the folder OMRChecker would be run
    on; a ``config.json`` is looked for beside the template and then in the
    folders above it up to ``root`` (see ``find_omrchecker_config``).

    Returns an ``OmrCheckerTemplate``; raises ``OmrCheckerTemplateError``.
    """
    base: Path | None = None
    if isinstance(json_text_or_path, dict):
        source = json_text_or_path
    else:
        text = str(json_text_or_path)
        if isinstance(json_text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text)
            base = path.parent
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise OmrCheckerTemplateError([f"{path}: {exc.strerror or exc}"]) from None
            if name is None:
                name = (base.name or "omrchecker")
        try:
            source = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OmrCheckerTemplateError([f"template.json is not JSON: {exc}"]) from None
    config_note = None
    if config is None and base is not None:
        found = find_omrchecker_config(base / "template.json", Path(root) if root is not None else None)
        if found is not None:
            config = found
            if found.parent != base.resolve():
                where = os.path.relpath(found, base.resolve())
                config_note = f"config.json: {where} taken (from a folder above the template's, as OMRChecker does)"
    if config is not None and not isinstance(config, dict):
        ctext = str(config)
        if isinstance(config, Path) or not ctext.lstrip().startswith("{"):
            ctext = Path(ctext).read_text(encoding="utf-8")
        try:
            config = json.loads(ctext)
        except json.JSONDecodeError as exc:
            raise OmrCheckerTemplateError([f"config.json is not JSON: {exc}"]) from None
    imgs = dict(images or {})
    if isinstance(source, dict):
        for step in source.get("preProcessors") or []:
            if not isinstance(step, dict):
                continue
            opts = step.get("options") or {}
            key = None
            if step.get("name") == "CropOnMarkers":
                key = opts.get("relativePath", "omr_marker.jpg")
                if marker_image_bytes is not None:
                    imgs.setdefault(key, marker_image_bytes)
            elif step.get("name") == "FeatureBasedAlignment":
                key = opts.get("reference")
            if key and key not in imgs and base is not None and (base / key).is_file():
                imgs[key] = (base / key).read_bytes()
    template = parse_template(source, images=imgs, config=config, name=name)
    if config_note:
        template.notes.append(config_note)
    return template


def parse_field_labels(strings: Any, path: str, errors: list[str]) -> list[str]:
    """``["q1..3", "roll"]`` -> ``["q1", "q2", "q3", "roll"]`` (OMRChecker's ranges)."""
    out: list[str] = []
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        errors.append(f"{path}: must be a list of strings")
        return out
    for s in strings:
        if "." in s:
            m = FIELD_RANGE_RE.match(s)
            if not m or int(m.group(2)) >= int(m.group(3)):
                errors.append(f"{path}: {s!r} is not a range like 'q1..10'")
                continue
            labels = [f"{m.group(1)}{n}" for n in range(int(m.group(2)), int(m.group(3)) + 1)]
        else:
            labels = [s]
        dup = set(labels) & set(out)
        if dup:
            errors.append(f"{path}: {s!r} repeats {sorted(dup)}")
        out.extend(labels)
    return out


def _natural_key(label: str) -> list:
    m = re.match(r"([^\d]+)(\d*)", label)
    if not m:
        return [label, 0]
    return [m.group(1), int(m.group(2)) if m.group(2) else 0]


def _pair(value: Any, path: str, errors: list[str]) -> tuple[float, float] | None:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)):
        errors.append(f"{path}: must be two non-negative numbers, not {value!r}")
        return None
    return float(value[0]), float(value[1])


def _number(value: Any, path: str, errors: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        errors.append(f"{path}: must be a non-negative number, not {value!r}")
        return None
    return float(value)


def decode_grey(data: bytes, what: str, errors: list[str]) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if img is None:
        errors.append(f"{what}: not a readable image")
    return img


def parse_template(source: Any, *, images: dict[str, bytes] | None = None, config: dict | None = None,
                   name: str | None = None) -> OmrCheckerTemplate:
    """Build an ``OmrCheckerTemplate`` from a parsed ``template.json`` dict (see
    ``load_omrchecker_template``)."""
    errors: list[str] = []
    notes: list[str] = []
    if not isinstance(source, dict):
        raise OmrCheckerTemplateError(["template.json: must be a JSON object"])
    if "QBlocks" in source or "Dimensions" in source:
        raise OmrCheckerTemplateError(["template.json: the pre-1.0 OMRChecker format (Dimensions, QBlocks, "
                                       "Concatenations) is not supported; use the current one (pageDimensions, "
                                       "fieldBlocks, customLabels)"])
    v2 = [k for k in ("templateDimensions", "customBubbleFieldTypes", "alignment", "conditionalSets") if k in source]
    v2 += sorted({k for b in (source.get("fieldBlocks") or {}).values() if isinstance(b, dict)
                  for k in ("bubbleFieldType", "fieldDetectionType") if k in b})
    if v2:
        raise OmrCheckerTemplateError([f"template.json: the OMRChecker 2 (development branch) format ({', '.join(v2)}) "
                                       "is not supported; use the released 1.x format (pageDimensions, fieldType)"])
    for key in sorted(set(source) - TOP_KEYS):
        errors.append(f"{key}: not supported (unknown to OMRChecker's template format 1.x)")
    for key in ("pageDimensions", "bubbleDimensions", "fieldBlocks"):
        if key not in source:
            errors.append(f"{key}: is required")
    page = _pair(source.get("pageDimensions"), "pageDimensions", errors) if "pageDimensions" in source else None
    bubble = _pair(source.get("bubbleDimensions"), "bubbleDimensions", errors) if "bubbleDimensions" in source else None
    empty_global = source.get("emptyValue", "")
    if not isinstance(empty_global, str):
        errors.append(f"emptyValue: must be a string, not {empty_global!r}")
        empty_global = ""

    fields: list[OmrField] = []
    blocks = source.get("fieldBlocks")
    if "fieldBlocks" in source and not isinstance(blocks, dict):
        errors.append("fieldBlocks: must be an object")
        blocks = {}
    seen: set[str] = set()
    for bname, block in (blocks or {}).items():
        path = f"fieldBlocks.{bname}"
        if not isinstance(block, dict):
            errors.append(f"{path}: must be an object")
            continue
        for key in sorted(set(block) - BLOCK_KEYS):
            # OMRChecker's schema lets a block carry keys it does not define, and
            # ignores them: so does this importer, and names each.
            why = IGNORED_BLOCK_KEYS.get(key, "a key OMRChecker's format does not define; OMRChecker ignores it too")
            notes.append(f"{path}.{key}: ignored ({why})")
        ftype = block.get("fieldType")
        if ftype is not None:
            if ftype not in FIELD_TYPES:
                errors.append(f"{path}.fieldType: {ftype!r} is not supported (known: {', '.join(FIELD_TYPES)})")
                continue
            typed = {**FIELD_TYPES[ftype], **block}
        else:
            missing = [k for k in ("bubbleValues", "direction") if k not in block]
            if missing:
                # OMRChecker's schema: a block has a fieldType, or both of these.
                errors.append(f"{path}: needs fieldType, or bubbleValues and direction (missing: {', '.join(missing)})")
                continue
            typed = block
        merged = {"direction": "vertical", "emptyValue": empty_global, "bubbleDimensions": source.get("bubbleDimensions"),
                  **typed}
        values = merged.get("bubbleValues")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            errors.append(f"{path}.bubbleValues: must be a non-empty list of strings")
            continue
        direction = merged.get("direction")
        if direction not in ("horizontal", "vertical"):
            errors.append(f"{path}.direction: must be 'horizontal' or 'vertical', not {direction!r}")
            continue
        for key in ("origin", "bubblesGap", "labelsGap", "fieldLabels"):
            if key not in block:
                errors.append(f"{path}.{key}: is required")
        if any(k not in block for k in ("origin", "bubblesGap", "labelsGap", "fieldLabels")):
            continue
        origin = _pair(block["origin"], f"{path}.origin", errors)
        bgap = _number(block["bubblesGap"], f"{path}.bubblesGap", errors)
        dims = _pair(merged["bubbleDimensions"], f"{path}.bubbleDimensions", errors)
        labels = parse_field_labels(block["fieldLabels"], f"{path}.fieldLabels", errors)
        lg = block["labelsGap"]
        if isinstance(lg, list):
            gaps = [_number(g, f"{path}.labelsGap", errors) for g in lg]
            if len(gaps) != max(0, len(labels) - 1):
                errors.append(f"{path}.labelsGap: {len(gaps)} gaps for {len(labels)} labels")
                continue
        else:
            g = _number(lg, f"{path}.labelsGap", errors)
            gaps = [g] * max(0, len(labels) - 1)
        empty = merged.get("emptyValue", "")
        if not isinstance(empty, str):
            errors.append(f"{path}.emptyValue: must be a string")
            empty = ""
        if origin is None or bgap is None or dims is None or any(g is None for g in gaps):
            continue
        dup = seen & set(labels)
        if dup:
            errors.append(f"{path}.fieldLabels: {sorted(dup)} already defined by another block")
        seen.update(labels)
        # OMRChecker: along _h the values step by bubblesGap, along _v the labels by labelsGap.
        h, v = (1, 0) if direction == "vertical" else (0, 1)
        lead = [origin[0], origin[1]]
        for i, label in enumerate(labels):
            pts = []
            p = list(lead)
            for _ in values:
                pts.append((float(round(p[0])), float(round(p[1]))))
                p[h] += bgap
            fields.append(OmrField(label, bname, tuple(values), tuple(pts), dims[0], dims[1], empty, direction))
            if i < len(gaps):
                lead[v] += gaps[i]
        if page is not None:
            xs = [x for f in fields if f.block == bname for x, _ in f.boxes]
            ys = [y for f in fields if f.block == bname for _, y in f.boxes]
            if xs and (max(xs) + dims[0] > page[0] + 0.5 or max(ys) + dims[1] > page[1] + 0.5):
                errors.append(f"{path}: overflows the {page[0]:g} x {page[1]:g} page")

    custom: dict[str, list[str]] = {}
    cl = source.get("customLabels", {}) or {}
    if not isinstance(cl, dict):
        errors.append("customLabels: must be an object")
        cl = {}
    used: set[str] = set()
    for label, strings in cl.items():
        parts = parse_field_labels(strings, f"customLabels.{label}", errors)
        missing = [p for p in parts if p not in seen]
        if missing:
            errors.append(f"customLabels.{label}: names fields no block defines: {missing}")
        if used & set(parts):
            errors.append(f"customLabels.{label}: overlaps another custom label")
        used.update(parts)
        custom[label] = parts
    non_custom = [f.label for f in fields if f.label not in used]
    out_cols = parse_field_labels(source.get("outputColumns", []) or [], "outputColumns", errors)
    if not out_cols:
        out_cols = sorted(non_custom + list(custom), key=_natural_key)
    else:
        unknown = [c for c in out_cols if c not in custom and c not in seen]
        if unknown:
            errors.append(f"outputColumns: names fields no block defines: {unknown}")

    steps: list[Step] = []
    imgs_bytes = dict(images or {})
    decoded: dict[str, np.ndarray] = {}
    pre = source.get("preProcessors", [])
    if not isinstance(pre, list):
        errors.append("preProcessors: must be a list")
        pre = []
    for i, step in enumerate(pre):
        path = f"preProcessors[{i}]"
        if not isinstance(step, dict) or "name" not in step:
            errors.append(f"{path}: must be an object with a name")
            continue
        sname = step["name"]
        opts = step.get("options", {}) or {}
        if sname not in PREPROCESSORS:
            errors.append(f"{path}.name: {sname!r} is not supported (supported: {', '.join(PREPROCESSORS)})")
            continue
        if not isinstance(opts, dict):
            errors.append(f"{path}.options: must be an object")
            continue
        known = PREPROCESSORS[sname]
        for key in opts:
            if key not in known:
                errors.append(f"{path}.options.{key}: not supported for {sname}")
            elif known[key] is not None:
                notes.append(f"{path} {sname}.{key}: accepted without effect ({known[key]})")
        if sname == "CropOnMarkers":
            rel = opts.get("relativePath", "omr_marker.jpg")
            if rel not in imgs_bytes:
                errors.append(f"{path}.options.relativePath: the marker image {rel!r} was not given")
            elif rel not in decoded:
                img = decode_grey(imgs_bytes[rel], f"{path}.options.relativePath ({rel})", errors)
                if img is not None:
                    decoded[rel] = img
            if "sheetToMarkerWidthRatio" in opts:
                _number(opts["sheetToMarkerWidthRatio"], f"{path}.options.sheetToMarkerWidthRatio", errors)
        elif sname == "FeatureBasedAlignment":
            ref = opts.get("reference")
            if not isinstance(ref, str):
                errors.append(f"{path}.options.reference: is required")
            elif ref not in imgs_bytes:
                errors.append(f"{path}.options.reference: the reference image {ref!r} was not given")
            elif ref not in decoded:
                img = decode_grey(imgs_bytes[ref], f"{path}.options.reference ({ref})", errors)
                if img is not None:
                    decoded[ref] = img
        elif sname in ("GaussianBlur", "MedianBlur"):
            k = opts.get("kSize", 5 if sname == "MedianBlur" else [3, 3])
            ks = k if isinstance(k, list) else [k]
            if not all(isinstance(v, int) and v > 0 and v % 2 == 1 for v in ks):
                errors.append(f"{path}.options.kSize: must be odd positive whole number(s), not {k!r}")
        elif sname == "Levels":
            for key in ("low", "high", "gamma"):
                if key in opts and not (isinstance(opts[key], (int, float)) and 0 <= opts[key] <= (10 if key == "gamma" else 1)):
                    errors.append(f"{path}.options.{key}: must be a number between 0 and 1")
            if opts.get("gamma", 1.0) == 0:
                errors.append(f"{path}.options.gamma: must not be 0")
        steps.append(Step(sname, dict(opts)))

    processing = DEFAULT_PROCESSING
    if config:
        if not isinstance(config, dict):
            errors.append("config.json: must be a JSON object")
        else:
            dims = config.get("dimensions", {}) or {}
            pw = dims.get("processing_width", DEFAULT_PROCESSING[0])
            ph = dims.get("processing_height", DEFAULT_PROCESSING[1])
            if isinstance(pw, (int, float)) and isinstance(ph, (int, float)) and pw > 0 and ph > 0:
                processing = (int(pw), int(ph))
            else:
                errors.append("config.json dimensions.processing_width/height: must be positive numbers")
            for key in dims:
                if key not in ("processing_width", "processing_height"):
                    notes.append(f"config.json dimensions.{key}: display size, does not apply")
            for key in config:
                if key == "dimensions":
                    continue
                notes.append(f"config.json {key}: " + CONFIG_NOTES.get(key, "not used by this engine"))
    if not fields and not errors:
        errors.append("fieldBlocks: defines no field")
    if errors:
        raise OmrCheckerTemplateError(errors)
    return OmrCheckerTemplate(
        name=name or "omrchecker", page_w=page[0], page_h=page[1], bubble_w=bubble[0], bubble_h=bubble[1],
        fields=tuple(fields), custom_labels=custom, output_columns=out_cols, steps=tuple(steps), images=decoded,
        processing=processing, notes=notes, source=source, config=config if isinstance(config, dict) else None,
        image_bytes={k: v for k, v in imgs_bytes.items() if k in decoded})
