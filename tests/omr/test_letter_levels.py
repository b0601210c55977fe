"""The blank level of each printed letter comes from the sheet's own unmarked bubbles."""

import numpy as np

from batches.omr.letter_levels import blank_levels, level_known, medians_by


def test_each_value_gets_the_level_of_its_own_unmarked_bubbles():
    # Blank "B"s are darker than blank "I"s; one "B" and one "I" are marked.
    keys = np.array([0] * 6 + [1] * 6)
    values = np.array([0.30, 0.31, 0.29, 0.30, 0.32, 0.9, 0.10, 0.11, 0.09, 0.10, 0.12, 0.8])
    blankish = values < 0.5
    base = blank_levels(values, keys, blankish)
    assert np.allclose(base[:6], 0.30) and np.allclose(base[6:], 0.10)
    # A blank "B" is at its level; the marked ones stand well above theirs.
    assert abs(values[1] - base[1]) < 0.02 and values[5] - base[5] > 0.5 and values[11] - base[11] > 0.5


def test_a_value_with_too_few_unmarked_bubbles_takes_the_sheets_level():
    keys = np.array([0] * 6 + [1] * 4)
    values = np.array([0.10, 0.11, 0.09, 0.10, 0.12, 0.10, 0.9, 0.85, 0.95, 0.12])
    blankish = values < 0.5
    base = blank_levels(values, keys, blankish)
    # Only one of the four bubbles printing value 1 is unmarked: its level is not known.
    assert np.allclose(base[6:], np.median(values[blankish]))


def test_median_and_percentile_are_numpys_to_the_bit():
    # stats.py stands in for np.median and np.percentile on the reading path
    # (numpy's own import numpy.ma): the same values, types and signed zeros.
    from batches.omr.stats import median, percentile

    rng = np.random.default_rng(7)
    for trial in range(3000):
        n = int(rng.integers(1, 200))
        dtype = (np.uint8, np.float32, np.float64)[trial % 3]
        if dtype is np.uint8:
            a = rng.integers(0, 256, n).astype(dtype)
        else:
            a = rng.normal(0, 10.0 ** int(rng.integers(-3, 4)), n).astype(dtype)
            a = np.where(rng.random(n) < 0.2, -0.0, np.where(rng.random(n) < 0.2, 0.0, a)).astype(dtype)
            if trial % 7 == 0:
                a[rng.integers(0, n)] = np.nan
        if trial % 5 == 0 and n % 2 == 0:
            a = a.reshape(2, -1)
        q = (25, 60, 97, 99.5, 0, 100, float(rng.uniform(0, 100)))[trial % 7]
        with np.errstate(all="ignore"):
            for ours, numpys in ((median(a), np.median(a)), (percentile(a, q), np.percentile(a, q))):
                assert type(ours) is type(numpys), (a, q)
                assert (np.isnan(ours) and np.isnan(numpys)) or (ours == numpys and np.signbit(ours) == np.signbit(numpys)), (a, q)


def test_each_level_is_the_median_of_its_values_unmarked_bubbles_odd_or_even():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 7, 300)
    values = rng.random(300).astype(np.float32)
    blankish = rng.random(300) < 0.7
    base = blank_levels(values, keys, blankish)
    glob = np.median(values[blankish])
    for k in range(7):
        sel = (keys == k) & blankish
        want = np.median(values[sel]) if sel.sum() >= max(3, 0.3 * (keys == k).sum()) else glob
        assert np.all(base[keys == k] == want)


def test_a_values_level_is_known_only_with_enough_unmarked_bubbles_printing_it():
    # Value 0 is printed six times (five unmarked); value 1 once; value 2 four
    # times, three of them marked.
    keys = np.array([0] * 6 + [1] + [2] * 4)
    blankish = np.array([True] * 5 + [False] + [True] + [True, False, False, False])
    known = level_known(keys, blankish)
    assert known.tolist() == [True] * 6 + [False] * 5


def test_medians_by_group_as_numpy_takes_them():
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 9, 200)
    values = rng.random(200)
    med = medians_by(values, groups, 10)
    for g in range(9):
        assert med[g] == np.median(values[groups == g])
    assert med[9] == 0


def test_a_value_printed_once_may_be_darker_than_the_darkest_known_by_half_their_spread():
    from batches.omr.letter_levels import UNKNOWN_SPREAD, unknown_margin

    # Values 0 and 1 printed five times each (blank levels 0.10 and 0.30); value 2 once.
    keys = np.array([0] * 5 + [1] * 5 + [2])
    values = np.array([0.10] * 5 + [0.30] * 5 + [0.33])
    blankish = np.ones(len(keys), bool)
    margin = unknown_margin(values, keys, blankish)
    assert np.allclose(margin[:10], 0.0)
    assert np.isclose(margin[10], UNKNOWN_SPREAD * 0.20)
    # With a single value known nothing shows how letters differ: no margin.
    assert not unknown_margin(values[5:], keys[5:], blankish[5:]).any()


def test_percentile_along_an_axis_is_numpys_to_the_bit():
    # The page search takes a percentile of each edge profile (a row each).
    from batches.omr.stats import percentile

    rng = np.random.default_rng(11)
    for trial in range(1500):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 40)))
        dtype = (np.uint8, np.float32, np.float64)[trial % 3]
        if dtype is np.uint8:
            a = rng.integers(0, 256, shape).astype(dtype)
        else:
            a = rng.normal(0, 10.0 ** int(rng.integers(-3, 4)), shape).astype(dtype)
            a = np.where(rng.random(shape) < 0.2, -0.0, a).astype(dtype)
            if trial % 7 == 0:
                a[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = np.nan
        q = (25, 60, 90, 99.5, 0, 100, float(rng.uniform(0, 100)))[trial % 7]
        for axis in (0, 1, -1):
            with np.errstate(all="ignore"):
                ours, numpys = percentile(a, q, axis=axis), np.percentile(a, q, axis=axis)
            assert type(ours) is type(numpys) and ours.dtype == numpys.dtype and ours.shape == numpys.shape
            assert np.array_equal(ours, numpys, equal_nan=True), (a, q, axis)
            assert np.array_equal(np.signbit(ours), np.signbit(numpys)), (a, q, axis)
