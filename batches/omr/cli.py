"""Command line of the recognition engine: ``python -m batches.omr COMMAND``.

Commands:
  templates                      list the built-in templates
  render TEMPLATE --out F.pdf    print-ready PDF (or --png --dpi N: one PNG per page)
  layout TEMPLATE --dpi N --json resolved geometry of every bubble, mark and the QR box
  read IMAGE... [--template T]   read sheets; JSON lines, one object per page
       [--omrchecker-template F]  ... laid out by an OMRChecker template.json (or a folder of them) instead
  simulate TEMPLATE --out F.jpg  a filled sheet as a scanner or phone would deliver it

This is the only part of the engine that reads or writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .forked import idle_cores, ordered_map

# Each command imports what it uses: ``read`` with an OMRChecker template needs
# none of the built-in templates' machinery, and every process pays for what it imports.


def _template(value: str):
    from .template import TemplateError, load_template

    try:
        return load_template(value)
    except (FileNotFoundError, TemplateError) as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_templates(args: argparse.Namespace) -> int:
    from .template import builtin_names, load_template

    for name in builtin_names():
        t = load_template(name)
        if args.json:
            print(json.dumps({"name": name, "title": t.title, "pages": t.pages, "questions": t.question_count,
                              "fields": t.field_names()}))
        else:
            print(f"{name:16} {t.pages} page(s)  {t.title}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from . import render

    template = _template(args.template)
    out = Path(args.out)
    if args.png:
        import cv2

        written = []
        for page in range(1, template.pages + 1):
            image = render.render_page_image(template, page, args.dpi, exam=args.exam, student=args.student)
            path = out if template.pages == 1 else out.with_name(f"{out.stem}-p{page}{out.suffix or '.png'}")
            if not cv2.imwrite(str(path), image):
                raise SystemExit(f"error: cannot write {path}")
            written.append(str(path))
        print("\n".join(written))
    else:
        render.render_pdf(template, out, exam=args.exam, student=args.student)
        print(out)
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    from .layout import page_layout

    template = _template(args.template)
    pages = [args.page] if args.page else range(1, template.pages + 1)
    for page in pages:
        layout = page_layout(template, page, args.dpi)
        if args.json:
            print(json.dumps(layout.to_dict()))
        else:
            print(f"{template.name} page {page} at {args.dpi:g} dpi: {layout.width} x {layout.height} px, "
                  f"{len(layout.groups)} fields/columns, {len(layout.bubbles)} bubbles")
            for i, m in enumerate(layout.marks):
                print(f"  mark {i}: centre ({m.x:.1f}, {m.y:.1f}) size {m.size:.1f}")
            q = layout.qr
            print(f"  qr box: ({q.x:.1f}, {q.y:.1f}) {q.w:.1f} x {q.h:.1f}")
    return 0


def _omrchecker_template(path: Path, config: str | None, root: Path | None = None):
    from .omrchecker import OmrCheckerTemplateError, load_omrchecker_template

    try:
        t = load_omrchecker_template(path, config=Path(config) if config else None, root=root)
    except OmrCheckerTemplateError as exc:
        raise SystemExit(f"error: {path}: " + "\n  ".join([str(exc).split(":")[0] + ":"] + exc.errors)) from None
    except OSError as exc:
        raise SystemExit(f"error: {exc}") from None
    for note in t.notes:
        print(f"note: {note}", file=sys.stderr)
    return t


def _omrchecker_templates(args: argparse.Namespace):
    """image path -> the OMRChecker template to read it with.

    Given a template.json, every image uses it. Given a folder, as OMRChecker
    is run on one, each image uses the nearest template.json in its own folder
    or a folder above it, no higher than the folder given.
    """
    from .omrchecker.importer import find_in_folders

    given = Path(args.omrchecker_template)
    if not given.is_dir():
        template = _omrchecker_template(given, args.omrchecker_config)
        return lambda image: template
    loaded: dict[Path, object] = {}

    def pick(image: Path):
        found = find_in_folders(image.parent, "template.json", root=given)
        if found is None:
            raise SystemExit(f"error: {image}: no template.json in its folder or above it within {given}")
        if found not in loaded:
            loaded[found] = _omrchecker_template(found, args.omrchecker_config, root=given)
        return loaded[found]

    return pick


def cmd_read(args: argparse.Namespace) -> int:
    missing = None  # (index, SystemExit): the first image for which no template is found
    if args.omrchecker_template:
        if args.template:
            raise SystemExit("error: give --template or --omrchecker-template, not both")
        from .omrchecker import read_omrchecker_image_bytes

        template_for = _omrchecker_templates(args)
        # Each image's template is found here, before any image is read (in
        # the images' order, as the reading would): the workers then share
        # the loaded templates. An image without one ends the command when its
        # turn comes, after the images before it are printed, as it always did.
        templates: list = []
        for name in args.images:
            try:
                templates.append(template_for(Path(name)))
            except SystemExit as exc:
                if not os.access(name, os.R_OK) or not Path(name).is_file():
                    templates.append(None)  # the file cannot be read: that is what is said of it
                    continue
                missing = (len(templates), exc)
                break
        images = args.images[:len(templates) + 1]

        def read(i: int, data: bytes, source: str):
            return read_omrchecker_image_bytes(data, templates[i], source=source)
    else:
        from . import reader

        template = _template(args.template) if args.template else None
        images = args.images

        def read(i: int, data: bytes, source: str):
            return reader.read_image_bytes(data, template, source=source)

    def read_file(i: int) -> tuple[str | None, list[dict]]:
        """(why the file cannot be opened, or None; its readings as dicts)."""
        path = Path(images[i])
        try:
            data = path.read_bytes()
        except OSError as exc:
            return exc.strerror, []
        if missing and i == missing[0]:
            return None, []
        return None, [reading.to_dict() for reading in read(i, data, str(path))]

    jobs = args.jobs if args.jobs > 0 else idle_cores()
    if jobs > 1 and len(images) > 1:
        # What every worker would otherwise derive for its first sheet is
        # derived once here and shared by the forked workers. (Pillow is not
        # loaded ahead: plain JPEG and PNG files are read without it.)
        if args.omrchecker_template:
            from .omrchecker.reader import prepare

            for t in {id(t): t for t in templates if t is not None}.values():
                prepare(t)
    status = 0
    for i, (unopened, outs) in enumerate(ordered_map(read_file, range(len(images)), jobs, _one_thread_each)):
        if unopened is not None:
            print(f"error: {images[i]}: {unopened}", file=sys.stderr)
            status = max(status, 1)  # not lower than a sheet's error before it
        elif missing and i == missing[0]:
            raise missing[1]
        for out in outs:
            if args.json:
                print(json.dumps(out), flush=True)
            else:
                _print_reading(out)
            if out.get("error"):
                status = max(status, 2)
    return status


def _one_thread_each() -> None:
    """In a worker reading images beside others: OpenCV's own threads would
    only compete with the other workers for the cores."""
    import cv2

    cv2.setNumThreads(1)


def _print_reading(out: dict) -> None:
    head = f"{out['file']}"
    if out.get("page"):
        head += f" page {out['page']}"
    print(f"{head}: template {out.get('template') or '?'}, "
          f"{'NEEDS REVIEW' if out.get('needs_review') else 'ok'}"
          + (f", sheet flags {','.join(out['sheet_flags'])}" if out.get("sheet_flags") else ""))
    if out.get("error"):
        print(f"  error: {out['error']}")
    for field, value in (out.get("answers") or {}).items():
        flags = (out.get("flags") or {}).get(field) or []
        print(f"  {field:16} {value or '-':10} {','.join(flags)}")


def cmd_simulate(args: argparse.Namespace) -> int:
    import random

    from .synthetic import simulate

    template = _template(args.template)
    if args.answers:
        answers = json.loads(Path(args.answers).read_text(encoding="utf-8"))
    else:
        answers = simulate.random_answers(template, args.page, random.Random(args.seed))
    options = simulate.PRESETS.get(args.preset)
    if options is None:
        raise SystemExit(f"error: unknown preset {args.preset!r}; choose from {', '.join(simulate.PRESETS)}")
    overrides = {k: v for k, v in (("style", args.style), ("dpi", args.dpi), ("rotation_deg", args.rotate)) if v is not None}
    if overrides:
        import dataclasses

        known = {f.name for f in dataclasses.fields(options)}
        options = dataclasses.replace(options, **{k: v for k, v in overrides.items() if k in known})
    sim = simulate.simulate_sheet(template, answers, page=args.page, seed=args.seed, preset=options,
                                  exam=args.exam, student=args.student)
    sim.save(args.out)
    print(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batches.omr", description="OMR recognition engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("templates", help="list the built-in templates")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_templates)

    p = sub.add_parser("render", help="write a printable sheet")
    p.add_argument("template", help="built-in name or path to a template JSON file")
    p.add_argument("--out", required=True)
    p.add_argument("--png", action="store_true", help="raster PNG instead of the vector PDF")
    p.add_argument("--dpi", type=float, default=300.0)
    p.add_argument("--exam", default="", help="exam id to put in the QR code")
    p.add_argument("--student", default="", help="student id to put in the QR code")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("layout", help="print the resolved geometry")
    p.add_argument("template")
    p.add_argument("--dpi", type=float, default=300.0)
    p.add_argument("--page", type=int, default=0, help="one page only (default: every page)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layout)

    p = sub.add_parser("read", help="read scanned sheets")
    p.add_argument("images", nargs="+")
    p.add_argument("--template", help="template to read with (default: the one the QR code names)")
    p.add_argument("--omrchecker-template", metavar="TEMPLATE_JSON_OR_FOLDER",
                   help="read sheets laid out by an OMRChecker template.json (its marker or reference images are "
                        "taken from beside it, its config.json from beside it or a folder above); given a folder, "
                        "each image is read with the nearest template.json in its folder or above, as OMRChecker does")
    p.add_argument("--omrchecker-config", metavar="CONFIG_JSON", help="OMRChecker config.json, if not beside the template")
    p.add_argument("--json", action="store_true", help="JSON lines, one object per page")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="read up to N images at once, in worker processes (default: one per idle core, that is the "
                        "cores less the load average; 1: one after another in this process); the output is the same, "
                        "in the images' order")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("simulate", help="make a filled, scanned-looking sheet")
    p.add_argument("template")
    p.add_argument("--out", required=True, help="image to write; the truth goes to OUT.truth.json")
    p.add_argument("--answers", help="JSON file {field: value}; random answers when absent")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="clean")
    p.add_argument("--style", help="mark style: filled, pencil, light, half, tick, cross, circled, pen, scribble, "
                                   "across, mixed, paper")
    p.add_argument("--dpi", type=float)
    p.add_argument("--rotate", type=float, help="rotation in degrees")
    p.add_argument("--exam", default="")
    p.add_argument("--student", default="")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
