"""The real OMRChecker sample sheets (``tests/data/real-sheets/``) read again
after changes a second capture of them could bring, with what goes wrong.

    python bench/real_sheet_variants.py [--kinds skew,rotate,...] [--n 2] [--strength 1.0] [--seed 1] [-v]

Per kind of change, every real image is changed ``--n`` times at random (the
same for one ``--seed``), saved as a JPEG of random quality (50-95) and read
with its template. Per kind it prints: readings, refused, the share of answer
columns right (the truth of ``ground_truth.csv`` or an accepted alternative),
wrong columns read silently (neither the field nor the sheet flagged: the
figure that must stay 0), wrong columns flagged (of which in fields that
carry no flag of their own, on a sheet sent to review for others: a
reviewer led by the flagged fields may pass them; and of those, on sheets
with no field flagged misaligned, whose review page does not ask for every
answer to be checked), and sheets sent to review
that carry no doubtful mark. ``-v`` names each refused, silent or flagged
reading, each wrong column in a field with no flag of its own, and each
needless review with the flags that sent it there. The kinds:

- ``skew``: turned up to 3 degrees within the same frame (a scanner's feeder);
- ``rotate``: turned up to 4 degrees, the frame widened to hold it all;
- ``scale``: 0.6 to 1.4 times the resolution;
- ``persp``: each corner moved up to 4 % of the image (a photo at an angle);
- ``light``: gamma, contrast and a light gradient across the page;
- ``blur``, ``noise``: a Gaussian blur of 0.3-1.6 px, grain of 8 levels;
- ``pad``: a grey border up to 12 % of a side (framed more widely);
- ``crop``: up to 2 % of each side cut off;
- ``flip180``: upside down;
- ``mix``: several of the above at once.

Templates whose page is the whole image (no page-finding step) cannot be
placed by OMRChecker itself after ``crop``, ``pad`` or ``persp``; the figures
show what this reader makes of them: read, flagged, or refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHEETS = ROOT / "tests" / "data" / "real-sheets" / "omrchecker"
sys.path.insert(0, str(ROOT))

from batches.omr.flags import NOT_REVIEW  # noqa: E402
from batches.omr.omrchecker import load_omrchecker_template, read_omrchecker_image_bytes  # noqa: E402
from tests.omr.real_sheets import SETS, long_truth, norm, real_captures, set_id  # noqa: E402


def truth() -> list:
    """(set path, image, template, emptyValue, truth row) per real image."""
    items = []
    for set_path in SETS:
        tj = SHEETS / set_path / "template.json"
        t = load_omrchecker_template(tj)
        empty = json.loads(tj.read_text()).get("emptyValue", "")
        items += [(set_path, image, t, empty, row) for row, image in real_captures(set_path)]
    return items


def _turn(img, angle: float, widen: bool):
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    if widen:
        c, s = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
        W, H = int(w * c + h * s) + 1, int(h * c + w * s) + 1
        M[:, 2] += ((W - w) / 2, (H - h) / 2)
        w, h = W, H
    return cv2.warpAffine(img, M, (w, h), borderMode=cv2.BORDER_REPLICATE)


def skew(img, rng, s):
    a = rng.uniform(-3, 3) * s
    return _turn(img, a, False), f"skew {a:+.1f}"


def rotate(img, rng, s):
    a = rng.uniform(-4, 4) * s
    return _turn(img, a, True), f"rotate {a:+.1f}"


def scale(img, rng, s):
    f = float(np.exp(rng.uniform(-0.5, 0.35) * s))
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR), f"scale {f:.2f}"


def persp(img, rng, s):
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = src + np.float32([[rng.uniform(-1, 1) * 0.04 * s * w, rng.uniform(-1, 1) * 0.04 * s * h] for _ in range(4)])
    M = cv2.getPerspectiveTransform(src, moved)
    return cv2.warpPerspective(img, M, (w, h), borderMode=cv2.BORDER_REPLICATE), "persp"


def light(img, rng, s):
    g, c = float(np.exp(rng.uniform(-0.5, 0.5) * s)), 1 - rng.uniform(0, 0.3) * s
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    gradient = 1 - 0.35 * s * (np.cos(a) * (xx / w - 0.5) + np.sin(a) * (yy / h - 0.5) + 0.7) / 1.4
    x = ((img.astype(np.float32) / 255) ** g - 0.5) * c + 0.5
    return np.clip(x * gradient[..., None] * 255, 0, 255).astype(np.uint8), f"gamma {g:.2f} contrast {c:.2f}"


def blur(img, rng, s):
    sigma = rng.uniform(0.3, 1.6) * s
    return cv2.GaussianBlur(img, (0, 0), sigma), f"blur {sigma:.2f}"


def noise(img, rng, s):
    return np.clip(img + rng.normal(0, 8 * s, img.shape), 0, 255).astype(np.uint8), "noise"


def pad(img, rng, s):
    h, w = img.shape[:2]
    t, b, left, right = (int(rng.uniform(0, 0.12 * s) * d) for d in (h, h, w, w))
    grey = int(rng.integers(40, 200))
    return cv2.copyMakeBorder(img, t, b, left, right, cv2.BORDER_CONSTANT, value=(grey,) * 3), f"pad {t},{b},{left},{right}"


def crop(img, rng, s):
    h, w = img.shape[:2]
    t, b, left, right = (int(rng.uniform(0, 0.02 * s) * d) for d in (h, h, w, w))
    return img[t:h - b, left:w - right], f"crop {t},{b},{left},{right}"


def flip180(img, rng, s):
    return cv2.rotate(img, cv2.ROTATE_180), "180"


def mix(img, rng, s):
    done = []
    for change in rng.permutation([rotate, scale, persp, light, blur]):
        if rng.random() < 0.6:
            img, d = change(img, rng, s)
            done.append(d)
    return img, "; ".join(done)


def _flag_counts(r: dict) -> str:
    """What sent a reading to review: each flag with the number of fields
    carrying it, and the sheet's flags."""
    counts = Counter(f for flags in r["flags"].values() for f in flags if f not in NOT_REVIEW)
    parts = [f"{f} x{n}" for f, n in counts.most_common()] + [f"sheet {f}" for f in r["sheet_flags"]]
    return ", ".join(parts) or "no flag named"


KINDS = {f.__name__: f for f in (skew, rotate, scale, persp, light, blur, noise, pad, crop, flip180, mix)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--n", type=int, default=2, help="changed copies of each image per kind")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--save", type=Path, help="keep each changed image here, as KIND-N-K.jpg")
    a = ap.parse_args()
    items = truth()
    alternatives, doubtful = long_truth()
    for kind in a.kinds.split(","):
        n = refused = cols = right = silent = flagged_wrong = unflagged_field = unnoticed = needless = 0
        for i, (set_path, image, t, empty, row) in enumerate(items):
            img = cv2.imread(str(image), cv2.IMREAD_COLOR)
            for k in range(a.n):
                rng = np.random.default_rng([a.seed, i, k, zlib.crc32(kind.encode())])
                changed, what = KINDS[kind](img, rng, a.strength)
                quality = int(rng.integers(50, 95))
                data = cv2.imencode(".jpg", changed, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
                if a.save:
                    a.save.mkdir(parents=True, exist_ok=True)
                    (a.save / f"{kind}-{i}-{k}.jpg").write_bytes(data)
                r = read_omrchecker_image_bytes(data, t, source=image.name)[0].to_dict()
                label = f"{kind}-{i}-{k} {set_path}/{image.name} [{what}; JPEG {quality}]"
                n += 1
                if r.get("error") or not r.get("answers"):
                    refused += 1
                    if a.verbose:
                        print(f"  refused  {label}: {r.get('error')}")
                    continue
                key = (set_id(set_path), image.name)
                if r["needs_review"] and key not in doubtful:
                    needless += 1
                    if a.verbose:
                        print(f"  needless {label}: {_flag_counts(r)} ({r['alignment']})")
                wrong = 0
                # The review page asks for every answer to be checked on a
                # sheet with a field flagged misaligned (a block placed apart).
                placed_apart = any("misaligned" in fl for fl in r["flags"].values())
                for col, expected in row.items():
                    if col == "file":
                        continue
                    got = norm(r["answers"].get(col), empty)
                    cols += 1
                    field_flagged = bool(set(r["flags"].get(col, [])) - NOT_REVIEW)
                    if got == expected.upper() or got in alternatives.get(key + (col,), set()):
                        right += 1
                    elif r["needs_review"] or field_flagged:
                        flagged_wrong += 1
                        wrong += 1
                        # On a sheet sent to review for other fields: a reviewer
                        # led by the flagged fields may pass this one.
                        unflagged_field += not field_flagged
                        unnoticed += not field_flagged and not placed_apart
                        if a.verbose and not field_flagged:
                            print(f"  unflagged field {label} {col}: read {got!r}, truth {expected!r}"
                                  f"{'' if placed_apart else ' (no field misaligned)'}")
                    else:
                        silent += 1
                        print(f"  SILENT   {label} {col}: read {got!r}, truth {expected!r}")
                if a.verbose and wrong:
                    print(f"  flagged  {label}: {wrong} columns wrong ({r['alignment']})")
        print(f"{kind:8} readings={n} refused={refused} right={100 * right / max(cols, 1):.2f}% "
              f"silent={silent} wrong_flagged={flagged_wrong} (in unflagged fields {unflagged_field}, "
              f"on sheets with no field misaligned {unnoticed}) "
              f"needless_review={needless}", flush=True)


if __name__ == "__main__":
    main()
