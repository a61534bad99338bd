"""Charts for the HTML report: numbers in, inline SVG strings out (pure; no plotting library).

Every chart is one `<svg>` element that scales to its container, with a legend where it has
series and a `<title>` tooltip on every mark. Every piece of text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
WIDTH = 760
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 20, 48, 46       # plot margins (px)
_LABEL_CHARS = 22                                     # row labels longer than this are cut


def colors_for(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name (in the order given), cycling through the palette."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering lo..hi (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1 if math.isfinite(lo) else 1.0
        lo = lo if math.isfinite(lo) else 0.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, max(last, first + 1) + 1)]


def fmt(value: float) -> str:
    """A short number for an axis or a tooltip: 0.00012, 1.5, 2400."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.4g}"


def box_plot(groups: Mapping[str, Sequence[float]], *, title: str, x_label: str,
             colors: Mapping[str, str] | None = None) -> str:
    """Horizontal box plots, one row per group: box q1..q3, median line, whiskers to 1.5 IQR,
    points beyond them."""
    names = [name for name, values in groups.items() if len(values)]
    if not names:
        return _empty(title)
    colors = colors or colors_for(names)
    row_h = 30
    height = _TOP + row_h * len(names) + _BOTTOM
    left = 170
    ticks = nice_ticks(min(0.0, *_all(groups)), max(_all(groups)))
    x = _Scale(ticks[0], ticks[-1], left, WIDTH - _RIGHT)
    out = [_open(height, title), _x_axis(ticks, x, _TOP, height - _BOTTOM, x_label)]
    for i, name in enumerate(names):
        values = sorted(groups[name])
        q1, med, q3 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
        reach = 1.5 * (q3 - q1)
        inside = [v for v in values if q1 - reach <= v <= q3 + reach]
        lo, hi = inside[0], inside[-1]
        mid = _TOP + row_h * i + row_h / 2
        color = escape(colors.get(name, PALETTE[0]))
        tip = escape(f"{name}: n={len(values)}, p50={fmt(med)}, p90="
                     f"{fmt(_quantile(values, 0.9))}, min={fmt(values[0])}, "
                     f"max={fmt(values[-1])}")
        out.append(f'<text x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">'
                   f"{escape(_cut(name))}<title>{escape(name)}</title></text>")
        out.append(f'<g><title>{tip}</title>'
                   f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{mid:.1f}" y2="{mid:.1f}" '
                   f'stroke="#555"/>'
                   f'<rect x="{x(q1):.1f}" y="{mid - 9:.1f}" width="{max(x(q3) - x(q1), 1):.1f}" '
                   f'height="18" fill="{color}" fill-opacity="0.6" stroke="{color}"/>'
                   f'<line x1="{x(med):.1f}" x2="{x(med):.1f}" y1="{mid - 9:.1f}" '
                   f'y2="{mid + 9:.1f}" stroke="#222" stroke-width="2"/></g>')
        for v in values:
            if v < lo or v > hi:
                out.append(f'<circle cx="{x(v):.1f}" cy="{mid:.1f}" r="2.5" fill="{color}">'
                           f"<title>{escape(name)}: {fmt(v)}</title></circle>")
    return "".join(out) + "</svg>"


def scatter(series: Mapping[str, Sequence[tuple[float, float, str]]], *, title: str,
            x_label: str, y_label: str, colors: Mapping[str, str] | None = None,
            radius: float = 3.5) -> str:
    """Points (x, y, tooltip) per series, with a legend."""
    names = [name for name, points in series.items() if len(points)]
    if not names:
        return _empty(title)
    colors = colors or colors_for(names)
    xs = [p[0] for name in names for p in series[name]]
    ys = [p[1] for name in names for p in series[name]]
    return _xy_chart(
        names, colors, title, x_label, y_label, nice_ticks(min(0.0, *xs), max(xs)),
        nice_ticks(min(0.0, *ys), max(ys)),
        lambda x, y: [f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="{radius}" '
                      f'fill="{escape(colors[name])}" fill-opacity="0.7">'
                      f"<title>{escape(tip)}</title></circle>"
                      for name in names for px, py, tip in series[name]])


def line_chart(x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *,
               title: str, y_label: str, colors: Mapping[str, str] | None = None) -> str:
    """One line per series over categorical x positions (e.g. runs); None leaves a gap."""
    names = [n for n, values in series.items() if any(v is not None for v in values)]
    if not names or not x_labels:
        return _empty(title)
    colors = colors or colors_for(names)
    ys = [v for n in names for v in series[n] if v is not None]
    y_ticks = nice_ticks(min(0.0, *ys), max(ys))

    def marks(x: _Scale, y: _Scale) -> list[str]:
        out = []
        for name in names:
            color = escape(colors[name])
            points = [(x(float(i)), y(v), v, x_labels[i])
                      for i, v in enumerate(series[name]) if v is not None]
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       'stroke-width="2"/>')
            out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"><title>'
                    f"{escape(f'{name} @ {label}: {fmt(v)}')}</title></circle>"
                    for px, py, v, label in points]
        return out

    return _xy_chart(names, colors, title, "run", y_label, [0.0, float(max(len(x_labels) - 1, 1))],
                     y_ticks, marks, x_labels=x_labels)


def stacked_bars(rows: Sequence[str], segments: Mapping[str, Sequence[float]], *, title: str,
                 x_label: str) -> str:
    """Horizontal bars, one per row, stacked by segment (e.g. error types per model)."""
    totals = [sum(values[i] for values in segments.values()) for i in range(len(rows))]
    if not rows or not segments or max(totals, default=0) <= 0:
        return _empty(title)
    colors = colors_for(list(segments))
    row_h, left = 30, 170
    height = _TOP + row_h * len(rows) + _BOTTOM
    ticks = nice_ticks(0.0, max(totals))
    x = _Scale(ticks[0], ticks[-1], left, WIDTH - _RIGHT)
    out = [_open(height, title), _legend(list(segments), colors),
           _x_axis(ticks, x, _TOP, height - _BOTTOM, x_label)]
    for i, row in enumerate(rows):
        top = _TOP + row_h * i + 6
        out.append(f'<text x="{left - 8}" y="{top + 13:.1f}" text-anchor="end">'
                   f"{escape(_cut(row))}<title>{escape(row)}</title></text>")
        start = 0.0
        for segment, values in segments.items():
            value = values[i]
            if value > 0:
                out.append(f'<rect x="{x(start):.1f}" y="{top:.1f}" '
                           f'width="{x(start + value) - x(start):.1f}" height="18" '
                           f'fill="{escape(colors[segment])}"><title>'
                           f"{escape(f'{row}: {segment} {fmt(value)}')}</title></rect>")
                start += value
    return "".join(out) + "</svg>"


# --- building blocks -------------------------------------------------------------------------

class _Scale:
    __slots__ = ("_lo", "_span", "_a", "_b")

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        self._lo, self._span, self._a, self._b = lo, (hi - lo) or 1.0, a, b

    def __call__(self, value: float) -> float:
        return self._a + (value - self._lo) / self._span * (self._b - self._a)


_Marks = Callable[[_Scale, _Scale], list[str]]


def _xy_chart(names: Sequence[str], colors: Mapping[str, str], title: str, x_label: str,
              y_label: str, x_ticks: Sequence[float], y_ticks: Sequence[float],
              marks: _Marks, x_labels: Sequence[str] | None = None) -> str:
    height = 360
    x = _Scale(x_ticks[0], x_ticks[-1], _LEFT, WIDTH - _RIGHT)
    y = _Scale(y_ticks[0], y_ticks[-1], height - _BOTTOM, _TOP)
    out = [_open(height, title), _legend(names, colors)]
    for t in y_ticks:
        out.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'class="grid"/><text x="{_LEFT - 6}" y="{y(t) + 4:.1f}" '
                   f'text-anchor="end">{fmt(t)}</text>')
    if x_labels is None:
        out.append(_x_axis(x_ticks, x, _TOP, height - _BOTTOM, x_label))
    else:
        step = max(1, math.ceil(len(x_labels) / 8))      # at most ~8 labels fit
        for i, label in enumerate(x_labels):
            if i % step == 0 or i == len(x_labels) - 1:
                anchor = "start" if i == 0 else "end" if i == len(x_labels) - 1 else "middle"
                out.append(f'<text x="{x(float(i)):.1f}" y="{height - _BOTTOM + 16}" '
                           f'text-anchor="{anchor}">{escape(_cut(label, 16))}</text>')
        out.append(f'<text x="{(WIDTH + _LEFT) / 2:.0f}" y="{height - 8}" '
                   f'text-anchor="middle" class="label">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(14 {(height - _BOTTOM + _TOP) / 2:.0f}) '
               f'rotate(-90)" text-anchor="middle" class="label">{escape(y_label)}</text>')
    out += marks(x, y)
    return "".join(out) + "</svg>"


def _open(height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="100%" style="max-width:{WIDTH}px" role="img" aria-label="{escape(title)}">'
            f'<text x="{WIDTH / 2:.0f}" y="18" text-anchor="middle" class="title">'
            f"{escape(title)}</text>")


def _legend(names: Sequence[str], colors: Mapping[str, str]) -> str:
    out, x = [], float(_LEFT)
    for name in names:
        label = _cut(name)
        out.append(f'<rect x="{x:.0f}" y="27" width="10" height="10" '
                   f'fill="{escape(colors[name])}"/><text x="{x + 14:.0f}" y="36">'
                   f"{escape(label)}<title>{escape(name)}</title></text>")
        x += 28 + 7.5 * len(label)   # ~7px a character at 12px, wide ones more
    return "".join(out)


def _x_axis(ticks: Sequence[float], x: _Scale, top: float, bottom: float, label: str) -> str:
    out = [f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}" class="grid"/>'
           f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{fmt(t)}</text>'
           for t in ticks]
    mid = (x(ticks[0]) + x(ticks[-1])) / 2
    out.append(f'<text x="{mid:.0f}" y="{bottom + 36}" text-anchor="middle" class="label">'
               f"{escape(label)}</text>")
    return "".join(out)


def _empty(title: str) -> str:
    return (_open(60, title) + f'<text x="{WIDTH / 2:.0f}" y="44" text-anchor="middle">'
            "no data</text></svg>")


def _all(groups: Mapping[str, Sequence[float]]) -> list[float]:
    return [v for values in groups.values() for v in values]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), of sorted values."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _cut(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
