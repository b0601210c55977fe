"""An exam's change log in plain words: what a change of name, template, key
or rules did (``ExamChange.old`` and ``.new``), one line per thing changed."""

from __future__ import annotations

from typing import Any

SHOWN = 12  # questions listed per line before "and N more"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _listing(items: list[str]) -> str:
    if len(items) <= SHOWN:
        return ", ".join(items)
    return ", ".join(items[:SHOWN]) + f" and {len(items) - SHOWN} more"


def _mapping_changes(label: str, old: dict, new: dict, show=str) -> list[str]:
    changed = []
    for q in list(dict.fromkeys([*old, *new])):
        before, after = old.get(q), new.get(q)
        if before == after:
            continue
        if before is None:
            changed.append(f"{q} added ({show(after)})")
        elif after is None:
            changed.append(f"{q} removed (was {show(before)})")
        else:
            changed.append(f"{q} {show(before)} → {show(after)}")
    return [f"{label}: {_listing(changed)}"] if changed else []


def describe(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines such as ``Key of version A: q5 C → D`` for one change."""
    lines = []
    if old.get("name") != new.get("name"):
        lines.append(f"Name: “{old.get('name')}” → “{new.get('name')}”")
    if old.get("template") != new.get("template"):
        lines.append(f"Template: {old.get('template')} → {new.get('template')}")
    before, after = old.get("rules") or {}, new.get("rules") or {}
    old_keys, new_keys = before.get("keys") or {}, after.get("keys") or {}
    for version in dict.fromkeys([*old_keys, *new_keys]):
        if version not in new_keys:
            lines.append(f"Key of version {version} removed")
        elif version not in old_keys:
            lines.append(f"Key of version {version} added ({len(new_keys[version])} questions)")
        else:
            lines += _mapping_changes(f"Key of version {version}", old_keys[version], new_keys[version])
    lines += _mapping_changes("Points", before.get("points") or {}, after.get("points") or {}, _number)
    for amount, label in (("wrong", "A wrong answer"), ("blank", "A blank"), ("multiple", "A multiple mark")):
        if before.get(amount, 0) != after.get(amount, 0):
            lines.append(f"{label} earns {_number(after.get(amount, 0))} (was {_number(before.get(amount, 0))})")
    lines += _mapping_changes("Also accepted", before.get("accepted") or {}, after.get("accepted") or {},
                              lambda a: "/".join(a))
    dropped_before, dropped_after = set(before.get("dropped") or []), set(after.get("dropped") or [])
    if dropped_after - dropped_before:
        lines.append(f"Dropped: {_listing(sorted(dropped_after - dropped_before))}")
    if dropped_before - dropped_after:
        lines.append(f"No longer dropped: {_listing(sorted(dropped_before - dropped_after))}")
    for extra, label in (("marking", "Per-question marking"), ("credit", "Partial credit")):
        if (before.get(extra) or {}) != (after.get(extra) or {}):
            lines.append(f"{label} changed")
    return lines or ["No change to the key or rules"]
