"""OMRChecker templates: import them and read the sheets printed for them.

``load_omrchecker_template(json_text_or_path, marker_image_bytes=None, config=None)``
gives an ``OmrCheckerTemplate`` (``to_dict()``/``from_dict()`` for storage);
``read_omrchecker_image_bytes(data, template)`` / ``read_omrchecker_sheet(image,
template)`` read sheets with it. See ``docs/omrchecker.md``.
"""

from .importer import OmrCheckerTemplate, OmrCheckerTemplateError, load_omrchecker_template
from .reader import OmrCheckerReading, read_omrchecker_image_bytes, read_omrchecker_sheet

__all__ = [
    "OmrCheckerReading",
    "OmrCheckerTemplate",
    "OmrCheckerTemplateError",
    "load_omrchecker_template",
    "read_omrchecker_image_bytes",
    "read_omrchecker_sheet",
]
