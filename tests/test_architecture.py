"""The import rules of ``docs/architecture.md``: each part of the app imports
only the parts below it, and no module takes another's private helpers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "batches"

CORE = {"batches", "batches.models", "batches.lifecycle", "batches.progress", "batches.streams", "batches.storage",
        "batches.sheet_templates", "batches.csvexport", "batches.display", "batches.roles", "batches.stream_limits",
        # The exams' tables are part of the data model (``models.py`` imports them).
        "batches.exams.models", "batches.printing.models"}

#: Each part and the parts it may import (itself included).
MAY_IMPORT = {
    "engine": {"engine"},
    "scoring": {"scoring"},
    "core": {"engine", "core"},
    "exams": {"engine", "scoring", "core", "exams"},
    "printing": {"engine", "scoring", "core", "exams", "printing"},
    "pipeline": {"engine", "scoring", "core", "exams", "pipeline"},
    "uploads": {"engine", "scoring", "core", "exams", "pipeline", "uploads"},
    "review": {"engine", "scoring", "core", "exams", "pipeline", "review"},
    "web": {"engine", "scoring", "core", "exams", "pipeline", "uploads", "review", "printing", "web"},
    "admin": {"engine", "scoring", "core", "exams", "pipeline", "uploads", "review", "printing", "web", "admin"},
    "commands": {"engine", "scoring", "core", "exams", "pipeline", "uploads", "review", "printing", "web", "commands"},
    # The app's configuration connects the signals of every part.
    "app": {"engine", "scoring", "core", "exams", "pipeline", "uploads", "review", "printing", "web", "admin", "app"},
    "migrations": {"core", "migrations"},
}


def part_of(module: str) -> str:
    if module == "batches.apps":
        return "app"
    if module in CORE:
        return "core"
    for prefix, part in [("batches.omr", "engine"), ("batches.scoring", "scoring"),
                         # The exams' HTTP and admin modules belong with the web's and the admin's.
                         ("batches.exams.api", "web"), ("batches.exams.urls", "web"), ("batches.exams.views", "web"),
                         ("batches.exams.page_urls", "web"), ("batches.exams.forms", "web"),
                         ("batches.exams.admin", "admin"), ("batches.exams", "exams"),
                         ("batches.printing.views", "web"), ("batches.printing.urls", "web"),
                         ("batches.printing.forms", "web"), ("batches.printing", "printing"),
                         ("batches.pipeline", "pipeline"),
                         ("batches.uploads", "uploads"), ("batches.review", "review"), ("batches.web", "web"),
                         ("batches.templatetags", "web"), ("batches.admin", "admin"),
                         ("batches.management", "commands"), ("batches.migrations", "migrations")]:
        if module == prefix or module.startswith(prefix + "."):
            return part
    raise AssertionError(f"{module} belongs to no part: add it to docs/architecture.md and this test")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, source: str | None = None) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in ``path``,
    relative ones resolved, ``from package import module`` as the module."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            modules = [n for n in names if is_module(f"{target}.{n}")]
            found += [(f"{target}.{n}", []) for n in modules]
            if len(modules) < len(names):
                found.append((target, [n for n in names if n not in modules]))
    return [(module, names) for module, names in found if module == "batches" or module.startswith("batches.")]


def app_modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def test_every_module_of_the_app_is_in_a_part():
    parts = {module_name(p): part_of(module_name(p)) for p in app_modules()}
    assert parts["batches.pipeline.stages"] == "pipeline" and parts["batches.lifecycle"] == "core"
    assert set(parts.values()) == set(MAY_IMPORT)


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    me = module_name(path)
    mine = part_of(me)
    return [f"{me} ({mine}) imports {module} ({part_of(module)})" for module, _names in imports_of(path, source)
            if part_of(module) not in MAY_IMPORT[mine]]


def test_each_part_imports_only_the_parts_below_it():
    wrong = [line for path in app_modules() for line in upward_imports(path)]
    assert wrong == []


def test_models_import_nothing_of_the_app_but_the_exams_and_prints_tables():
    assert [m for m, _ in imports_of(APP / "models.py")] == ["batches.exams.models", "batches.printing.models"]


def test_no_module_takes_another_modules_private_helpers():
    # (The engine is a library of its own, with its own rules: docs/engine.md.)
    wrong = []
    for path in app_modules():
        if part_of(module_name(path)) == "engine":
            continue
        me = module_name(path)
        tree = ast.parse(path.read_text())
        aliases = {}
        for module, names in imports_of(path):
            wrong += [f"{me} imports {module}.{n}" for n in names if n.startswith("_") and module != me]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        imported_modules = {name for name in aliases if any(m.endswith("." + aliases[name]) or m == aliases[name]
                                                           for m, _ in imports_of(path))}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{me} uses {node.value.id}.{node.attr}")
    assert wrong == []


def test_the_check_sees_upward_imports_inside_functions_too():
    fake = APP / "pipeline" / "fake.py"
    source = "def f():\n    from ..web import views\n    from ..uploads.accept import create_batch\n"
    assert upward_imports(fake, source) == [
        "batches.pipeline.fake (pipeline) imports batches.web.views (web)",
        "batches.pipeline.fake (pipeline) imports batches.uploads.accept (uploads)",
    ]
    assert upward_imports(APP / "web" / "fake.py", "from ..pipeline import stages\n") == []


def test_only_the_lifecycle_moves_a_batch():
    # A batch's stage, start, finish and error are written by lifecycle.py alone.
    owned = {"stage", "started_at", "finished_at", "error"}
    wrong = []
    for path in app_modules():
        me = module_name(path)
        if part_of(me) in {"engine", "migrations"} or me == "batches.lifecycle":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                    and "Batch.objects" in ast.unparse(node.func.value)):
                wrong += [f"{me}: {ast.unparse(node)}" for k in node.keywords if k.arg in owned]
            elif isinstance(node, ast.Assign):
                wrong += [f"{me}: {ast.unparse(node)}" for t in node.targets
                          if isinstance(t, ast.Attribute) and t.attr == "stage"]
    assert wrong == []
