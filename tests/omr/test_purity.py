"""The engine is a library: importing any of it must not load Django."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import batches.omr
from tests.fresh_imports import modules_loaded

ROOT = Path(__file__).resolve().parents[2]


def test_engine_modules_import_without_django():
    # __main__ runs the command line when imported, so it is checked by the CLI tests instead.
    names = [m.name for m in pkgutil.iter_modules(batches.omr.__path__, "batches.omr.") if not m.name.endswith("__main__")]
    assert "batches.omr.template" in names
    loaded = modules_loaded(names, ("django",))
    assert loaded == [], f"engine imports loaded Django: {loaded}"


def test_engine_source_never_mentions_django():
    for path in Path(batches.omr.__file__).parent.rglob("*.py"):
        assert "django" not in path.read_text().lower(), path


def test_the_reading_path_never_loads_the_simulator():
    # The simulator and the accuracy tools (batches/omr/synthetic/) serve the
    # command line, the tests and the benchmarks; reading a sheet needs none of it.
    names = [m.name for m in pkgutil.walk_packages(batches.omr.__path__, "batches.omr.")
             if not m.name.startswith("batches.omr.synthetic") and m.name not in {"batches.omr.__main__",
                                                                                  "batches.omr.cli"}]
    assert "batches.omr.reader" in names and "batches.omr.omrchecker.reader" in names
    loaded = modules_loaded(names, ("batches.omr.synthetic",))
    assert loaded == [], f"the reading path loaded the simulator: {loaded}"


SANDEEP = "tests/data/real-sheets/omrchecker/community/Sandeep-1507/"


@pytest.mark.parametrize("template,sheets", [
    ("tests/data/real-sheets/omrchecker/community/dxuian/template.json",
     ["tests/data/real-sheets/omrchecker/community/dxuian/omrcollegesheet.jpg"]),
    # Faint 72-dpi scans on a whole-image template: the wider page search
    # (its sides by RANSAC, its edges' percentiles), the fit of the whole
    # layout and the digit grid's printed order all run.
    (SANDEEP + "template.json", [SANDEEP + f"omr-{i}.png" for i in (1, 2, 3)]),
])
def test_reading_an_omrchecker_sheet_loads_neither_the_builtin_reader_nor_the_qr_decoder(template, sheets):
    # Every process that reads sheets pays for what it imports: an OMRChecker
    # sheet (a plain JPEG or PNG) needs neither the built-in templates' page
    # locator and template format, nor the QR decoder, nor numpy's masked
    # arrays (batches/omr/stats.py) or its random generators, nor Pillow (its
    # header is read by batches/omr/headers.py).
    code = (
        "import sys\n"
        "from batches.omr import cli\n"
        f"status = cli.main(['read', '--omrchecker-template', {template!r}, '--json', '--jobs', '1', *{sheets!r}])\n"
        "mods = ('batches.omr.align', 'batches.omr.bubbles', 'batches.omr.qr', 'batches.omr.reader',\n"
        "        'batches.omr.template', 'pyzbar', 'numpy.ma', 'numpy.random', 'PIL')\n"
        "print(status, ','.join(sorted(m for m in mods if m in sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.count('"answers": {') == len(sheets)
    assert out.stderr.strip().splitlines()[-1] == "0", out.stderr
