import math
import random

import numpy as np
import pytest

from lmforge.bench.stats import latency_summary, percentile


def test_percentile_interpolates_between_ranks():
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 90) == pytest.approx(37.0)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_percentile_matches_numpy_on_unsorted_data():
    rng = random.Random(0)
    values = [rng.expovariate(0.1) for _ in range(1001)]
    for q in (1, 50, 95, 99, 99.9):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_out_of_range_q():
    with pytest.raises(ValueError, match="q must be in"):
        percentile([1.0], 101)


def test_summary_is_ordered_and_zero_when_empty():
    s = latency_summary([float(i) for i in range(1, 101)])
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"] == 100.0
    assert s["mean_ms"] == 50.5
    assert latency_summary([]) == dict.fromkeys(
        ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms"), 0.0
    )
