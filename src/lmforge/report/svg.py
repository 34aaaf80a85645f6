"""Small inline-SVG charts for the HTML report: no plotting library, no JavaScript, no network."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 560, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 40
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1-2-5 steps)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick is at or above hi
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="t">{escape(title)}</text>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" text-anchor="middle" class="l">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(12 {HEIGHT / 2}) rotate(-90)" text-anchor="middle" '
        f'class="l">{escape(y_label)}</text>'
    )
    return head + "".join(body) + "</svg>"


def _axes(
    x_ticks: Sequence[float], y_ticks: Sequence[float], sx, sy, x_labels: Sequence[str] | None
) -> list[str]:
    out = []
    for i, t in enumerate(y_ticks):
        y = sy(t)
        out.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'class="g"/><text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'class="k">{_fmt(t) if i < len(y_ticks) else ""}</text>'
        )
    for i, t in enumerate(x_ticks):
        x = sx(t)
        label = x_labels[i] if x_labels else _fmt(t)
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle" '
            f'class="k">{escape(label)}</text>'
        )
    return out


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
) -> str:
    """One or more (x, y) series on shared axes, with a legend."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return f"<p class='empty'>{escape(title)}: no data</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks, y_ticks = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(v: float) -> float:
        return MARGIN_LEFT + (v - x0) / ((x1 - x0) or 1) * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)

    def sy(v: float) -> float:
        span = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
        return HEIGHT - MARGIN_BOTTOM - (v - y0) / ((y1 - y0) or 1) * span

    body = _axes(x_ticks, y_ticks, sx, sy, None)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if math.isfinite(y))
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(pts) <= 30:
            body.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in pts
            )
        lx = WIDTH - MARGIN_RIGHT - 150
        ly = MARGIN_TOP + 6 + 14 * i
        body.append(
            f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly + 1}" class="k">{escape(name)}</text>'
        )
    return _frame(title, x_label, y_label, body)


def histogram(values: Sequence[float], title: str, x_label: str, bins: int = 30) -> str:
    """Counts of `values` in equal-width bins between their 0.5th and 99.5th percentiles
    (the tail beyond is folded into the last bin, so one outlier does not flatten the plot)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return f"<p class='empty'>{escape(title)}: no data</p>"
    lo = finite[int(0.005 * (len(finite) - 1))]
    hi = finite[int(0.995 * (len(finite) - 1))]
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in finite:
        counts[min(max(int((v - lo) / width), 0), bins - 1)] += 1
    y_ticks = _nice_ticks(0, max(counts))
    x_ticks = _nice_ticks(lo, hi)
    x_ticks = [t for t in x_ticks if lo <= t <= hi] or [lo, hi]
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(v: float) -> float:
        return MARGIN_LEFT + (v - lo) / (hi - lo) * plot_w

    def sy(v: float) -> float:
        return HEIGHT - MARGIN_BOTTOM - v / (y_ticks[-1] or 1) * plot_h

    body = _axes(x_ticks, y_ticks, sx, sy, None)
    for i, c in enumerate(counts):
        x = sx(lo + i * width)
        body.append(
            f'<rect x="{x:.1f}" y="{sy(c):.1f}" width="{max(plot_w / bins - 1, 1):.1f}" '
            f'height="{HEIGHT - MARGIN_BOTTOM - sy(c):.1f}" fill="{PALETTE[0]}"/>'
        )
    return _frame(title, x_label, "requests", body)


def bar_chart(items: Sequence[tuple[str, float]], title: str, value_label: str) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    if not items:
        return f"<p class='empty'>{escape(title)}: no data</p>"
    row = 18
    height = MARGIN_TOP + row * len(items) + 30
    label_w = 210
    top = max(v for _, v in items) or 1
    plot_w = WIDTH - label_w - 70
    body = []
    for i, (label, value) in enumerate(items):
        y = MARGIN_TOP + i * row
        w = value / top * plot_w
        body.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" class="k">'
            f"{escape(label)}</text>"
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" class="k">{_fmt(value)}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="t">{escape(title)}</text>'
        + "".join(body)
        + f'<text x="{WIDTH / 2}" y="{height - 6}" text-anchor="middle" class="l">'
        f"{escape(value_label)}</text></svg>"
    )
