"""Exam scoring is a library like the engine: importing any of it must not load Django."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import batches.scoring

ROOT = Path(__file__).resolve().parents[2]


def test_exam_modules_import_without_django():
    names = [m.name for m in pkgutil.iter_modules(batches.scoring.__path__, "batches.scoring.")]
    assert {"batches.scoring.rules", "batches.scoring.scoring", "batches.scoring.items", "batches.scoring.evaluation"} <= set(names)
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"exam modules loaded Django: {out.stdout}"


def test_exam_source_never_mentions_django():
    for path in Path(batches.scoring.__file__).parent.rglob("*.py"):
        assert "django" not in path.read_text().lower(), path
