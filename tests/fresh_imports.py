"""Which modules importing some others loads, seen in a fresh interpreter
(the test process has loaded everything already)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded(imports: list[str], watched: tuple[str, ...]) -> list[str]:
    """Import every module of ``imports`` in a new Python process and return,
    sorted, the modules it then holds that are one of ``watched`` or lie
    under one (``watched`` ``("django",)`` matches ``django.conf`` too)."""
    code = (
        "import importlib, sys\n"
        f"for n in {imports!r}:\n"
        "    importlib.import_module(n)\n"
        f"watched = {watched!r}\n"
        "print(','.join(sorted(m for m in sys.modules if any(m == w or m.startswith(w + '.') for w in watched))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]
