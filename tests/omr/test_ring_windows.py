"""The bubble-grid fit's search for the best ring match around each bubble
(``steps._best_rings``), all windows at once, gives what a window-by-window
``cv2.minMaxLoc`` search gives, to the bit: first maximum on ties, windows cut
by the edge, sub-pixel parabolas in float32."""

import cv2
import numpy as np

from batches.omr.omrchecker.steps import _best_rings


def _one_window_at_a_time(res, pred, kh, win):
    n = len(pred)
    rh, rw = res.shape
    vals, pts = np.full(n, -1.0), np.zeros((n, 2))
    for i, (px, py) in enumerate(pred):
        x0, y0 = int(round(px)) - kh - win, int(round(py)) - kh - win
        xa, ya = max(0, x0), max(0, y0)
        xb, yb = min(rw, x0 + 2 * win + 1), min(rh, y0 + 2 * win + 1)
        if xb - xa < 3 or yb - ya < 3:
            continue
        _, mv, _, ml = cv2.minMaxLoc(res[ya:yb, xa:xb])
        lx, ly = ml[0] + xa, ml[1] + ya
        dx = dy = 0.0
        if 0 < lx < rw - 1:
            a, b, c = res[ly, lx - 1], res[ly, lx], res[ly, lx + 1]
            den = a - 2 * b + c
            dx = 0.5 * (a - c) / den if den < 0 else 0.0
        if 0 < ly < rh - 1:
            a, b, c = res[ly - 1, lx], res[ly, lx], res[ly + 1, lx]
            den = a - 2 * b + c
            dy = 0.5 * (a - c) / den if den < 0 else 0.0
        vals[i] = mv
        pts[i] = (lx + kh + dx, ly + kh + dy)
    return vals, pts


def test_all_windows_at_once_equal_one_window_at_a_time():
    rng = np.random.default_rng(3)
    cut_off = 0
    for trial in range(120):
        rh, rw = (int(v) for v in rng.integers(5, 70, 2))
        res = rng.normal(size=(rh, rw)).astype(np.float32)
        if trial % 3 == 0:
            res = np.round(res, 1)  # ties
        if trial % 10 == 0:
            res[:] = 0.5  # flat: no parabola
        kh, win = int(rng.integers(1, 8)), int(rng.integers(2, 10))
        pred = rng.uniform(-25, max(rw, rh) + 25, size=(40, 2))  # some windows cut by the edge or outside
        pred[::5] = np.round(pred[::5]) + 0.5  # halves round to even
        want, got = _one_window_at_a_time(res, pred, kh, win), _best_rings(res, pred, kh, win)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), trial
        cut_off += int((want[0] == -1).sum())
    assert cut_off > 0  # windows too far outside were met


def test_ring_matches_on_two_threads_are_each_kernels_own_in_order():
    from batches.omr.omrchecker.steps import _ring_matches, ring_template

    rng = np.random.default_rng(4)
    cut = cv2.GaussianBlur((rng.random((160, 120)) * 255).astype(np.float32), (0, 0), 1.5)
    kernels = [ring_template(r) for r in (3.3, 4.2, 5.1, 6.0, 6.9, 7.8)]
    got = _ring_matches(cut, kernels)
    assert len(got) == len(kernels)
    for ker, res in zip(kernels, got, strict=True):
        assert np.array_equal(res, cv2.matchTemplate(cut, ker, cv2.TM_CCOEFF_NORMED))
    assert [r.shape for r in _ring_matches(cut, kernels[:1])] == [got[0].shape]
