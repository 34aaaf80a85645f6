import json
import math
import time

import numpy as np
import pytest
from scipy import stats

from lmforge.serve.analytics import (
    AnalyticsError,
    format_report,
    ks,
    mean_test,
    proportion_test,
    psi,
    shadow_report,
    shadow_report_cli,
    wilson_interval,
)
from lmforge.serve.comparisons import ServingStore, compare_predictions

# --- psi / ks --------------------------------------------------------------------------------


def test_psi_identical_is_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    # same distribution, different draws: small
    assert psi(x, rng.normal(size=2000)) < 0.05


def test_psi_hand_computed():
    expected = list(range(1, 11))  # 2 quantile bins split at the median 5.5: 50 % / 50 %
    # actual: 2 values below 5.5, 8 above -> 20 % / 80 %
    # PSI = (0.2 - 0.5) ln(0.2/0.5) + (0.8 - 0.5) ln(0.8/0.5) = 0.274887 + 0.141001
    assert psi(expected, [1, 2, 6, 7, 8, 9, 10, 11, 12, 13], bins=2) == pytest.approx(
        0.4158883, abs=1e-6
    )
    # all actual values above the median: the empty bin counts as 1e-4
    # (1e-4 - 0.5) ln(1e-4/0.5) + (1 - 0.5) ln(1/0.5) = 4.257746 + 0.346574
    assert psi(expected, list(range(7, 17)), bins=2) == pytest.approx(4.6043185, abs=1e-6)


def test_psi_large_for_shift_and_constant_expected():
    rng = np.random.default_rng(1)
    base = rng.normal(size=3000)
    assert psi(base, base + 1.0) > 0.25
    # a constant reference still separates "same" from "different"
    assert psi([0.9] * 50, [0.9] * 50) == pytest.approx(0.0)
    assert psi([0.9] * 50, [0.5] * 50) > 1.0


def test_psi_errors():
    with pytest.raises(AnalyticsError, match="expected is empty"):
        psi([], [1.0])
    with pytest.raises(AnalyticsError, match="bins"):
        psi([1.0], [1.0], bins=1)
    with pytest.raises(AnalyticsError, match="NaN"):
        psi([1.0, float("nan")], [1.0])


def test_ks_matches_scipy():
    rng = np.random.default_rng(2)
    for n, m, shift in ((50, 70, 0.0), (300, 200, 0.3), (20, 20, 2.0)):
        a = rng.normal(size=n)
        b = rng.normal(loc=shift, size=m)
        ref = stats.ks_2samp(a, b)
        assert ks(list(a), list(b)) == pytest.approx((ref.statistic, ref.pvalue))
    stat, p = ks([1, 2, 3], [4, 5, 6])  # fully separated samples
    assert stat == 1.0 and p < 0.2


# --- proportion / mean tests -----------------------------------------------------------------


def test_proportion_test_hand_computed():
    r = proportion_test(50, 100, 65, 100)
    assert r["a"]["rate"] == 0.5 and r["b"]["rate"] == 0.65
    # Wilson: center (p + z²/2n)/(1 + z²/n), half z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    assert r["a"]["ci"] == pytest.approx([0.40383, 0.59617], abs=1e-5)
    assert r["b"]["ci"] == pytest.approx([0.55254, 0.73636], abs=1e-5)
    # difference 0.15, unpooled se sqrt(.25/100 + .2275/100) = 0.069101
    assert r["difference"] == pytest.approx(0.15)
    assert r["difference_ci"] == pytest.approx([0.01456, 0.28544], abs=1e-5)
    # pooled p 0.575, se sqrt(.575·.425·.02) = 0.069911, z = 2.14560
    assert r["z"] == pytest.approx(2.14560, abs=1e-5)
    assert r["p_value"] == pytest.approx(0.031905, abs=1e-5)
    assert r["significant"]
    lo, hi = r["difference_ci"]
    assert lo < r["difference"] < hi and lo > 0  # CI excludes 0, as p < 0.05 says
    for arm in ("a", "b"):
        lo, hi = r[arm]["ci"]
        assert lo < r[arm]["rate"] < hi
    # stricter confidence: no longer significant
    assert not proportion_test(50, 100, 65, 100, confidence=0.99)["significant"]


def test_proportion_test_symmetric():
    ab = proportion_test(50, 100, 65, 100)
    ba = proportion_test(65, 100, 50, 100)
    assert ba["p_value"] == pytest.approx(ab["p_value"])
    assert ba["difference"] == pytest.approx(-ab["difference"])
    assert ba["difference_ci"] == pytest.approx([-ab["difference_ci"][1], -ab["difference_ci"][0]])
    assert ba["z"] == pytest.approx(-ab["z"])
    same = proportion_test(40, 80, 40, 80)
    assert same["p_value"] == pytest.approx(1.0) and not same["significant"]


def test_proportion_test_edges_and_errors():
    all_ok = proportion_test(10, 10, 20, 20)  # no variance at all: no evidence
    assert all_ok["p_value"] == 1.0 and not all_ok["significant"]
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(AnalyticsError, match=r"variant a has n=0"):
        proportion_test(0, 0, 5, 10)
    with pytest.raises(AnalyticsError, match=r"variant b has 11 successes out of n=10"):
        proportion_test(1, 10, 11, 10)
    with pytest.raises(AnalyticsError, match="confidence"):
        proportion_test(1, 10, 1, 10, confidence=95)


def test_mean_test_matches_welch():
    rng = np.random.default_rng(3)
    a = rng.beta(2, 5, size=80)
    b = rng.beta(3, 4, size=60)
    r = mean_test(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert r["t"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert r["difference"] == pytest.approx(b.mean() - a.mean())
    lo, hi = r["difference_ci"]
    assert lo < r["difference"] < hi
    assert r["significant"] == (r["p_value"] < 0.05)
    # the CI excludes 0 exactly when the test is significant
    assert (lo > 0 or hi < 0) == r["significant"]
    same = mean_test([0.2, 0.4, 0.6], [0.2, 0.4, 0.6])
    assert same["difference"] == 0 and same["p_value"] == pytest.approx(1.0)
    constant = mean_test([0.5, 0.5], [0.7, 0.7])
    assert constant["p_value"] == 0.0 and constant["difference_ci"] == pytest.approx([0.2, 0.2])
    with pytest.raises(AnalyticsError, match="at least 2"):
        mean_test([0.5], [0.1, 0.2])


# --- the report ------------------------------------------------------------------------------


def _pred(label: str, p: float) -> dict:
    other = {"x": "y", "y": "x"}[label]
    return {"label": label, "probs": {label: p, other: 1 - p}}


def _fill(store: ServingStore, rng: np.random.Generator, rate_a: float, rate_b: float) -> float:
    """40 compared requests (2 texts each; the shadow disagrees on 1 text of every 4th) and
    400 requests per A/B arm with success outcomes at the given rates."""
    now = time.time()
    for i in range(40):
        primary = [_pred("x", 0.8), _pred("y", 0.7)]
        shadow = [_pred("x", 0.6), _pred("x" if i % 4 == 0 else "y", 0.9 if i % 4 else 0.55)]
        c = compare_predictions(
            "clf", f"s{i}", primary, shadow, 1, 2 if i < 20 else 3, 0.004, 0.010, at=now - 100 + i
        )
        store.record_comparison(c)
    for variant, rate in (("production", rate_a), ("challenger", rate_b)):
        outcomes = rng.random(400) < rate
        for j, ok in enumerate(outcomes):
            rid = f"{variant}-{j}"
            store.record_assignment(rid, "clf", 1 if variant == "production" else 2, variant, None)
            if j < 399:  # one request without feedback
                store.record_feedback(rid, float(ok))
    store.flush()
    return now


def test_shadow_report_agreement_drift_and_significant_ab(tmp_path):
    store = ServingStore(tmp_path)
    _fill(store, np.random.default_rng(4), rate_a=0.30, rate_b=0.60)
    r = shadow_report(store, "clf")
    store.close()
    assert r["comparisons"] == 40 and r["texts"] == 80
    assert r["agreement_rate"] == pytest.approx(70 / 80)
    lo, hi = r["agreement_ci"]
    assert lo < 70 / 80 < hi
    pairs = {(p["primary_version"], p["shadow_version"]): p for p in r["by_version_pair"]}
    assert pairs[(1, 2)]["agreement_rate"] == pytest.approx(35 / 40)
    assert pairs[(1, 3)]["comparisons"] == 20
    # the shadow's scores differ systematically: visible drift
    assert r["drift"]["psi_max_prob"] > 0.25
    assert r["drift"]["ks_max_prob"]["p_value"] < 0.01
    assert set(r["drift"]["per_label"]) == {"x", "y"}
    # per text the largest prob move: 0.8 -> 0.6 on text 0; on text 1 0.7 -> 0.9 (agree) or
    # y: 0.7 -> 0.45 (disagree)
    assert r["score_delta"]["mean_abs"] == pytest.approx((40 * 0.2 + 30 * 0.2 + 10 * 0.25) / 80)
    assert r["score_delta"]["p95_abs"] == pytest.approx(0.25)
    assert r["latency"]["delta_mean_ms"] == pytest.approx(6.0)
    assert r["traffic"] == {"challenger": 400, "production": 400}
    fb = r["feedback"]
    assert fb["variants"]["production"]["n"] == 399
    test = fb["ab_test"]
    assert (test["variant_a"], test["variant_b"]) == ("production", "challenger")
    assert test["test"] == "two-proportion z-test"
    assert test["significant"] and test["difference"] > 0.2
    text = format_report(r)
    assert "agreement 87.5%" in text and "significant" in text and "challenger" in text
    json.dumps(r, allow_nan=False)  # what the HTTP endpoint needs


def test_shadow_report_not_significant_for_equal_rates(tmp_path):
    store = ServingStore(tmp_path)
    _fill(store, np.random.default_rng(5), rate_a=0.5, rate_b=0.5)
    test = shadow_report(store, "clf")["feedback"]["ab_test"]
    store.close()
    assert not test["significant"] and test["p_value"] > 0.05


def test_shadow_report_scores_use_mean_test_and_reason_without_two_variants(tmp_path):
    store = ServingStore(tmp_path)
    rng = np.random.default_rng(6)
    for variant, loc in (("a", 0.4), ("b", 0.6), ("c", 0.5)):
        n = {"a": 50, "b": 60, "c": 5}[variant]
        for j in range(n):
            store.record_assignment(f"{variant}{j}", "clf", 1, variant, None)
            store.record_feedback(f"{variant}{j}", float(np.clip(rng.normal(loc, 0.1), 0, 1)))
    r = shadow_report(store, "clf")
    test = r["feedback"]["ab_test"]
    assert test["test"] == "Welch t-test"
    assert (test["variant_a"], test["variant_b"]) == ("a", "b")  # the two with most feedback
    assert test["significant"]
    assert r["comparisons"] == 0 and r["agreement_rate"] is None and r["drift"] is None
    json.dumps(r, allow_nan=False)
    assert "none" in format_report(r)

    lone = ServingStore(tmp_path / "lone")
    lone.record_assignment("r", "clf", 1, "production", None)
    lone.record_feedback("r", 1.0)
    fb = shadow_report(lone, "clf")["feedback"]
    assert fb["ab_test"] is None and "needs feedback for 2" in fb["ab_reason"]
    lone.close()
    store.close()


def test_shadow_report_since_window(tmp_path):
    store = ServingStore(tmp_path)
    now = _fill(store, np.random.default_rng(7), 0.5, 0.5)
    r = shadow_report(store, "clf", since=now - 100 + 30)  # comparisons 30..39
    assert r["comparisons"] == 10
    store.close()


def test_shadow_report_cli(tmp_path):
    with pytest.raises(AnalyticsError, match=r"shadow.*traffic"):
        shadow_report_cli(tmp_path, None, None, as_json=False)
    assert not (tmp_path / "serving.sqlite").exists()  # reading does not create the store
    ServingStore(tmp_path).close()
    with pytest.raises(AnalyticsError, match="empty"):
        shadow_report_cli(tmp_path, None, None, as_json=False)
    store = ServingStore(tmp_path)
    _fill(store, np.random.default_rng(8), 0.3, 0.6)
    store.close()
    text = shadow_report_cli(tmp_path, None, None, as_json=False)
    assert "Shadow / A-B report for 'clf'" in text
    data = json.loads(shadow_report_cli(tmp_path, "clf", 3600, as_json=True))
    assert data["comparisons"] == 40
    assert not math.isnan(data["agreement_rate"])
    with pytest.raises(AnalyticsError, match=r"no serving data for model 'nope'.*\['clf'\]"):
        shadow_report_cli(tmp_path, "nope", None, as_json=False)
    with pytest.raises(AnalyticsError, match="since"):
        shadow_report_cli(tmp_path, "clf", -5, as_json=False)
    other = ServingStore(tmp_path)
    other.record_assignment("q", "other", 1, "production", None)
    other.close()
    with pytest.raises(AnalyticsError, match=r"several models \['clf', 'other'\]; name one"):
        shadow_report_cli(tmp_path, None, None, as_json=False)


def test_shadow_report_is_json_safe_for_constant_scores(tmp_path):
    store = ServingStore(tmp_path)
    for variant, score in (("production", 0.5), ("challenger", 0.7)):
        for j in range(3):
            store.record_assignment(f"{variant}{j}", "clf", 1, variant, None)
            store.record_feedback(f"{variant}{j}", score)
    r = shadow_report(store, "clf")
    store.close()
    test = r["feedback"]["ab_test"]
    assert test["t"] is None  # infinite for constant arms; None keeps the JSON valid
    assert test["significant"] and test["difference"] == pytest.approx(0.2)
    json.dumps(r, allow_nan=False)
    assert "significant" in format_report(r)
