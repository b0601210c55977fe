"""Reading speed on the real OMRChecker sample sheets (``tests/data/real-sheets/``:
phone photos and scans, read with their own templates), in one process.

    python bench/real_sheet_speed.py [--rounds 5] [--threads N] [--startups 5]

Every real image is read once to warm up, then ``--rounds`` more times; per
image the median wall and CPU time of a read (decode included) is printed,
then the median and the largest over the images. Last, what a process costs
before it reads anything: a fresh ``python -m batches.omr read
--omrchecker-template`` of one small sheet against a bare ``python -c "import
numpy, cv2"``, each the median of ``--startups`` runs. OpenCV keeps its own
thread count unless ``--threads`` is given (the command line does not set
it). The machine's load is printed with the figures: on a shared machine, the
CPU times are the figures to compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHEETS = ROOT / "tests" / "data" / "real-sheets" / "omrchecker"
sys.path.insert(0, str(ROOT))


def real_images() -> list[tuple[Path, Path]]:
    """(image, its template.json) for every real capture with hand-checked truth."""
    from tests.omr.real_sheets import SETS, real_captures

    return [(image, SHEETS / set_path / "template.json") for set_path in SETS for _row, image in real_captures(set_path)]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def in_process(rounds: int) -> None:
    import cv2

    from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes

    images = real_images()
    templates = {tj: load_omrchecker_template(tj) for tj in sorted({tj for _, tj in images})}
    files = [(image, image.read_bytes(), templates[tj]) for image, tj in images]
    print(f"{len(files)} real images, one process, {rounds} rounds after a warm-up, "
          f"OpenCV threads {cv2.getNumThreads()}; {load()}")
    wall: dict[Path, list[float]] = {image: [] for image, _, _ in files}
    cpu: dict[Path, list[float]] = {image: [] for image, _, _ in files}
    flagged = failed = 0
    for k in range(rounds + 1):
        for image, data, t in files:
            c0, w0 = time.process_time(), time.perf_counter()
            reading = read_omrchecker_image_bytes(data, t, source=image.name)[0]
            w, c = time.perf_counter() - w0, time.process_time() - c0
            if k:
                wall[image].append(w * 1000)
                cpu[image].append(c * 1000)
            elif reading.error:
                failed += 1
            else:
                flagged += reading.needs_review
    print(f"  {'image':48} {'wall ms':>8} {'CPU ms':>8}")
    med_wall = {image: statistics.median(v) for image, v in wall.items()}
    med_cpu = {image: statistics.median(v) for image, v in cpu.items()}
    for image, _, _ in files:
        print(f"  {image.relative_to(SHEETS).as_posix():48} {med_wall[image]:8.1f} {med_cpu[image]:8.1f}")
    w, c = list(med_wall.values()), list(med_cpu.values())
    print(f"per image: median {statistics.median(w):.1f} ms wall ({statistics.median(c):.1f} ms CPU), "
          f"max {max(w):.1f} ms wall ({max(c):.1f} ms CPU); all {len(files)} images: {sum(w):.0f} ms wall, "
          f"{sum(c):.0f} ms CPU per round; {failed} refused, {flagged} sent to review")


def _timed(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Median wall and CPU seconds (the child's user + system) of ``runs`` runs of ``cmd``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, **(env or {})})
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def startup(runs: int) -> None:
    image, tj = min(real_images(), key=lambda it: it[0].stat().st_size)
    # With one BLAS thread, as the command line runs (``batches/omr/__main__.py``).
    bare = _timed([sys.executable, "-c", "import numpy, cv2"], runs, {"OPENBLAS_NUM_THREADS": "1"})
    read = _timed([sys.executable, "-m", "batches.omr", "read", "--omrchecker-template", str(tj), "--json",
                   str(image)], runs)
    print(f"a fresh process, median of {runs}; {load()}:")
    for what, (w, c) in (('python -c "import numpy, cv2"', bare), ("python -m batches.omr read ... " + image.name, read)):
        print(f"  {what:52} {w * 1000:6.0f} ms wall {c * 1000:6.0f} ms CPU")
    print(f"  the read's own start-up and one sheet: {(read[0] - bare[0]) * 1000:.0f} ms wall, "
          f"{(read[1] - bare[1]) * 1000:.0f} ms CPU beyond numpy and OpenCV")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="OpenCV threads (default: OpenCV's own choice)")
    parser.add_argument("--startups", type=int, default=5, help="fresh processes timed (0: none)")
    args = parser.parse_args()
    if args.threads is not None:
        import cv2

        cv2.setNumThreads(args.threads)
    in_process(args.rounds)
    if args.startups > 0:
        startup(args.startups)


if __name__ == "__main__":
    main()
