"""Exam scoring is a library like the engine: importing any of it must not load Django."""

import pkgutil
from pathlib import Path

import batches.scoring
from tests.fresh_imports import modules_loaded


def test_exam_modules_import_without_django():
    names = [m.name for m in pkgutil.iter_modules(batches.scoring.__path__, "batches.scoring.")]
    assert {"batches.scoring.rules", "batches.scoring.scoring", "batches.scoring.items", "batches.scoring.evaluation"} <= set(names)
    loaded = modules_loaded(names, ("django",))
    assert loaded == [], f"exam modules loaded Django: {loaded}"


def test_exam_source_never_mentions_django():
    for path in Path(batches.scoring.__file__).parent.rglob("*.py"):
        assert "django" not in path.read_text().lower(), path
