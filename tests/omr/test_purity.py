"""The engine is a library: importing any of it must not load Django."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import batches.omr

ROOT = Path(__file__).resolve().parents[2]


def test_engine_modules_import_without_django():
    # __main__ runs the command line when imported, so it is checked by the CLI tests instead.
    names = [m.name for m in pkgutil.iter_modules(batches.omr.__path__, "batches.omr.") if not m.name.endswith("__main__")]
    assert "batches.omr.template" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine imports loaded Django: {out.stdout}"


def test_engine_source_never_mentions_django():
    for path in Path(batches.omr.__file__).parent.rglob("*.py"):
        assert "django" not in path.read_text().lower(), path
