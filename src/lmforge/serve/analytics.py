"""Statistics behind the shadow / A-B report: drift (PSI, KS), proportion and mean tests.

`shadow_report` reads the ServingStore and answers three questions about one model:
does the shadow version agree with the live one, do their score distributions differ, and
(from client feedback) does one routing variant do better than another.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from lmforge.errors import LmforgeError
from lmforge.serve.comparisons import STORE_FILE, Comparison, ServingStore

PSI_EPSILON = 1e-4  # stands in for an empty bin's share, so log(0) never happens


class AnalyticsError(LmforgeError):
    """Statistics were asked of data that cannot support them (empty, out of range, ...)."""


def _sample(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise AnalyticsError(f"{name} is empty; it needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise AnalyticsError(f"{name} contains NaN or infinite values; drop them first")
    return arr


def _check_confidence(confidence: float) -> None:
    if not (0.0 < confidence < 1.0):
        raise AnalyticsError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


# --- drift -----------------------------------------------------------------------------------


def psi(expected: Sequence[float], actual: Sequence[float], bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`.

    Bins are quantiles of `expected` (ties merge bins); a bin with no values in either sample
    counts as PSI_EPSILON of it. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 large.
    """
    if bins < 2:
        raise AnalyticsError(f"psi needs at least 2 bins, got bins={bins}")
    e = _sample(expected, "expected")
    a = _sample(actual, "actual")
    # Interior edges only: values beyond the expected range fall into the end bins.
    edges = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    e_share = np.bincount(np.searchsorted(edges, e, side="right"), minlength=edges.size + 1)
    a_share = np.bincount(np.searchsorted(edges, a, side="right"), minlength=edges.size + 1)
    e_p = np.maximum(e_share / e.size, PSI_EPSILON)
    a_p = np.maximum(a_share / a.size, PSI_EPSILON)
    return float(np.sum((a_p - e_p) * np.log(a_p / e_p)))


def ks(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (statistic, two-sided p-value)."""
    result = stats.ks_2samp(_sample(a, "a"), _sample(b, "b"))
    return float(result.statistic), float(result.pvalue)


# --- A/B tests -------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sane at 0 %, 100 % and small n)."""
    _check_confidence(confidence)
    if n <= 0:
        raise AnalyticsError(f"a proportion needs n >= 1 trials, got n={n}")
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _check_counts(successes: int, n: int, arm: str) -> None:
    if n <= 0:
        raise AnalyticsError(
            f"variant {arm} has n={n} trials; a proportion test needs feedback for both "
            "variants (collect outcomes through /v1/feedback first)"
        )
    if not (0 <= successes <= n):
        raise AnalyticsError(
            f"variant {arm} has {successes} successes out of n={n}; successes must be 0..n"
        )


def proportion_test(
    success_a: int, n_a: int, success_b: int, n_b: int, confidence: float = 0.95
) -> dict[str, Any]:
    """Compare success rates of A and B.

    Rates carry Wilson intervals; the difference (b - a) an unpooled normal interval; the
    p-value is the two-sided pooled two-proportion z-test. `significant`: p < 1 - confidence.
    """
    _check_confidence(confidence)
    _check_counts(success_a, n_a, "a")
    _check_counts(success_b, n_b, "b")
    p_a, p_b = success_a / n_a, success_b / n_b
    diff = p_b - p_a
    z = _z(confidence)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    pooled = (success_a + success_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se_pooled == 0.0:  # both arms all-success or all-failure: no evidence of a difference
        z_stat, p_value = 0.0, 1.0
    else:
        z_stat = diff / se_pooled
        p_value = float(2.0 * stats.norm.sf(abs(z_stat)))
    return {
        "test": "two-proportion z-test",
        "confidence": confidence,
        "a": {
            "successes": success_a,
            "n": n_a,
            "rate": p_a,
            "ci": list(wilson_interval(success_a, n_a, confidence)),
        },
        "b": {
            "successes": success_b,
            "n": n_b,
            "rate": p_b,
            "ci": list(wilson_interval(success_b, n_b, confidence)),
        },
        "difference": diff,
        "difference_ci": [diff - z * se, diff + z * se],
        "z": z_stat,
        "p_value": p_value,
        "significant": p_value < 1.0 - confidence,
    }


def _mean_ci(x: np.ndarray, confidence: float) -> list[float]:
    mean = float(x.mean())
    if x.size < 2:
        return [mean, mean]
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * float(
        x.std(ddof=1) / math.sqrt(x.size)
    )
    return [mean - half, mean + half]


def mean_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Welch's t-test of mean(b) - mean(a), with its confidence interval (scores in [0, 1])."""
    _check_confidence(confidence)
    xa, xb = _sample(a, "a"), _sample(b, "b")
    for name, x in (("a", xa), ("b", xb)):
        if x.size < 2:
            raise AnalyticsError(
                f"variant {name} has {x.size} outcome(s); a mean test needs at least 2 per "
                "variant (collect more feedback through /v1/feedback)"
            )
    ma, mb = float(xa.mean()), float(xb.mean())
    va, vb = float(xa.var(ddof=1)) / xa.size, float(xb.var(ddof=1)) / xb.size
    diff = mb - ma
    se = math.sqrt(va + vb)
    if se < 1e-12:  # both arms constant (up to float rounding): the difference is exact
        t_stat = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p_value = 1.0 if diff == 0 else 0.0
        df = float(xa.size + xb.size - 2)
        ci = [diff, diff]
    else:
        # Welch-Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
        t_stat = diff / se
        p_value = float(2.0 * stats.t.sf(abs(t_stat), df))
        half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * se
        ci = [diff - half, diff + half]
    return {
        "test": "Welch t-test",
        "confidence": confidence,
        "a": {"n": int(xa.size), "mean": ma, "ci": _mean_ci(xa, confidence)},
        "b": {"n": int(xb.size), "mean": mb, "ci": _mean_ci(xb, confidence)},
        "difference": diff,
        "difference_ci": ci,
        "t": t_stat,
        "df": df,
        "p_value": p_value,
        "significant": p_value < 1.0 - confidence,
    }


# --- the report ------------------------------------------------------------------------------


def _is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def _drift(comps: list[Comparison]) -> dict[str, Any]:
    primary: dict[str, list[float]] = {}
    shadow: dict[str, list[float]] = {}
    p_max: list[float] = []
    s_max: list[float] = []
    deltas: list[float] = []
    for c in comps:
        for p_row, s_row in zip(c.primary_probs, c.shadow_probs, strict=True):
            for label, p, s in zip(c.labels, p_row, s_row, strict=True):
                primary.setdefault(label, []).append(p)
                shadow.setdefault(label, []).append(s)
            if p_row:
                p_max.append(max(p_row))
                s_max.append(max(s_row))
                # per text: the largest move of any label's probability
                deltas.append(max(abs(p - s) for p, s in zip(p_row, s_row, strict=True)))
    if not p_max:
        return {"drift": None, "score_delta": None}
    stat, p_value = ks(p_max, s_max)
    per_label = {}
    for label in primary:
        lstat, lp = ks(primary[label], shadow[label])
        per_label[label] = {
            "psi": psi(primary[label], shadow[label]),
            "ks": lstat,
            "p_value": lp,
        }
    d = np.asarray(deltas)
    return {
        "drift": {
            "psi_max_prob": psi(p_max, s_max),
            "ks_max_prob": {"statistic": stat, "p_value": p_value},
            "per_label": per_label,
        },
        "score_delta": {
            "mean_abs": float(d.mean()),
            "p95_abs": float(np.percentile(d, 95)),
        },
    }


def _feedback(outcomes: dict[str, list[float]], confidence: float) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for variant, values in sorted(outcomes.items()):
        x = np.asarray(values, dtype=float)
        if _is_binary(values):
            ci = list(wilson_interval(int(x.sum()), x.size, confidence))
        else:
            ci = _mean_ci(x, confidence)
        variants[variant] = {"n": int(x.size), "mean": float(x.mean()), "ci": ci}
    out: dict[str, Any] = {"variants": variants, "ab_test": None, "ab_reason": None}
    if len(variants) < 2:
        out["ab_reason"] = (
            f"feedback for {len(variants)} variant(s) {sorted(variants)}; an A/B test needs "
            "feedback for 2 (route with an A/B policy and POST outcomes to /v1/feedback)"
        )
        return out
    top = sorted(variants, key=lambda v: (-variants[v]["n"], v))[:2]
    # production, when it is one of the two, is the baseline A
    a, b = sorted(top, key=lambda v: (v != "production", v))
    va, vb = outcomes[a], outcomes[b]
    try:
        if _is_binary(va) and _is_binary(vb):
            test = proportion_test(int(sum(va)), len(va), int(sum(vb)), len(vb), confidence)
        else:
            test = mean_test(va, vb, confidence)
    except AnalyticsError as e:
        out["ab_reason"] = str(e)
        return out
    out["ab_test"] = {"variant_a": a, "variant_b": b, **test}
    return out


def shadow_report(
    store: ServingStore, model: str, since: float | None = None, confidence: float = 0.95
) -> dict[str, Any]:
    """Agreement, drift, score deltas and latency of shadow vs live, and the A/B feedback test.

    The result is JSON-ready: non-finite numbers (a t statistic of constant arms) become None.
    """
    _check_confidence(confidence)
    comps = store.comparisons(model, since)
    texts = sum(c.texts for c in comps)
    agree = sum(c.agree_count for c in comps)
    pairs: dict[tuple[int, int], list[Comparison]] = {}
    for c in comps:
        pairs.setdefault((c.primary_version, c.shadow_version), []).append(c)
    by_pair = []
    for (pv, sv), group in sorted(pairs.items()):
        g_texts = sum(c.texts for c in group)
        by_pair.append(
            {
                "primary_version": pv,
                "shadow_version": sv,
                "comparisons": len(group),
                "texts": g_texts,
                "agreement_rate": sum(c.agree_count for c in group) / g_texts if g_texts else None,
            }
        )
    latency = None
    if comps:
        p_ms = 1000.0 * float(np.mean([c.primary_latency_s for c in comps]))
        s_ms = 1000.0 * float(np.mean([c.shadow_latency_s for c in comps]))
        latency = {"primary_mean_ms": p_ms, "shadow_mean_ms": s_ms, "delta_mean_ms": s_ms - p_ms}
    report: dict[str, Any] = {
        "model": model,
        "window": {
            "since": since,
            "first": comps[0].at if comps else None,
            "last": comps[-1].at if comps else None,
        },
        "confidence": confidence,
        "comparisons": len(comps),
        "texts": texts,
        "agreement_rate": agree / texts if texts else None,
        "agreement_ci": list(wilson_interval(agree, texts, confidence)) if texts else None,
        "by_version_pair": by_pair,
        **_drift(comps),
        "latency": latency,
        "traffic": store.assignment_counts(model, since),
        "feedback": _feedback(store.feedback_by_variant(model, since), confidence),
    }
    return _json_safe(report)


# --- text output -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}%"


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def format_report(report: dict[str, Any]) -> str:
    """A readable multi-line rendering of `shadow_report`'s result (for the CLI)."""
    w = report["window"]
    lines = [
        f"Shadow / A-B report for {report['model']!r}",
        f"  window: {_when(w['first'])} .. {_when(w['last'])}",
        "",
        "Shadow comparisons",
    ]
    if not report["comparisons"]:
        lines.append("  none (give the model a `shadow` alias and send traffic)")
    else:
        lo, hi = report["agreement_ci"]
        lines.append(
            f"  {report['comparisons']} requests, {report['texts']} texts; agreement "
            f"{_pct(report['agreement_rate'])} (CI {_pct(lo)} .. {_pct(hi)})"
        )
        for pair in report["by_version_pair"]:
            lines.append(
                f"    v{pair['primary_version']} (live) vs v{pair['shadow_version']} (shadow): "
                f"{pair['texts']} texts, agreement {_pct(pair['agreement_rate'])}"
            )
        drift = report["drift"]
        ks_max = drift["ks_max_prob"]
        lines += [
            "",
            "Score drift (live -> shadow)",
            f"  confidence (max prob): PSI {drift['psi_max_prob']:.3f}, "
            f"KS {ks_max['statistic']:.3f} (p={ks_max['p_value']:.3g})",
        ]
        for label, d in drift["per_label"].items():
            lines.append(f"  {label}: PSI {d['psi']:.3f}, KS {d['ks']:.3f} (p={d['p_value']:.3g})")
        delta = report["score_delta"]
        lat = report["latency"]
        lines += [
            f"  largest per-text prob change: mean {delta['mean_abs']:.3f}, "
            f"p95 {delta['p95_abs']:.3f}",
            "",
            "Latency",
            f"  live {lat['primary_mean_ms']:.1f} ms, shadow {lat['shadow_mean_ms']:.1f} ms "
            f"(shadow {lat['delta_mean_ms']:+.1f} ms)",
        ]
    if report.get("traffic"):
        shown = ", ".join(f"{v}: {n}" for v, n in report["traffic"].items())
        lines += ["", f"Traffic by variant: {shown}"]
    fb = report["feedback"]
    lines += ["", "Feedback"]
    if not fb["variants"]:
        lines.append("  none (POST outcomes to /v1/feedback with the request_id of a prediction)")
    for variant, v in fb["variants"].items():
        lo, hi = v["ci"]
        lines.append(f"  {variant}: n={v['n']}, mean {v['mean']:.3f} (CI {lo:.3f} .. {hi:.3f})")
    test = fb["ab_test"]
    if test is None:
        lines.append(f"  A/B test: not run: {fb['ab_reason']}")
    else:
        lo, hi = test["difference_ci"]
        verdict = "significant" if test["significant"] else "not significant"
        lines.append(
            f"  A/B ({test['test']}): {test['variant_b']} - {test['variant_a']} = "
            f"{test['difference']:+.3f} "
            f"(CI {lo:+.3f} .. {hi:+.3f}), p={test['p_value']:.3g}: {verdict} at "
            f"{100 * test['confidence']:g}%"
        )
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def shadow_report_cli(
    registry_dir: Path, model: str | None, since_s: float | None, as_json: bool
) -> str:
    """The `lmforge` CLI's shadow report: text (or JSON) for `model` over the last `since_s` s."""
    if since_s is not None and not since_s > 0:
        raise AnalyticsError(
            f"since must be a positive number of seconds, got {since_s} (omit it for all data)"
        )
    how = (
        "serve a model from this registry with a `shadow` alias "
        "(lmforge registry promote NAME VERSION --alias shadow) or an A/B policy, and send traffic"
    )
    if not (Path(registry_dir) / STORE_FILE).exists():
        raise AnalyticsError(f"no serving data at {Path(registry_dir) / STORE_FILE}: {how}")
    store = ServingStore(registry_dir, create=False)
    try:
        models = store.models()
        if not models:
            raise AnalyticsError(f"the serving store {store.path} is empty: {how}")
        if model is None:
            if len(models) > 1:
                raise AnalyticsError(
                    f"the serving store has data for several models {models}; name one "
                    "(lmforge registry shadow-report MODEL)"
                )
            model = models[0]
        elif model not in models:
            raise AnalyticsError(f"no serving data for model {model!r}; the store has {models}")
        since = None if since_s is None else time.time() - since_s
        report = shadow_report(store, model, since)
    finally:
        store.close()
    if as_json:
        return json.dumps(report, indent=2, ensure_ascii=False)
    return format_report(report)
