"""Charts for the HTML report: numbers in, SVG element trees out (pure; no plotting library).

Every chart is one `<svg>` element that scales to its container, with a legend where it has
series and a `<title>` tooltip on every mark. A chart is a tree of `Element`s holding plain
strings; the report's Jinja2 template turns it into markup with autoescape, so no text from the
data (model names, prompt ids) is ever pasted into markup here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .formatting import short as fmt

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
WIDTH = 760
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 20, 48, 46       # plot margins (px)
_LABEL_CHARS = 22                                     # row labels longer than this are cut


@dataclass(frozen=True, slots=True)
class Element:
    """One SVG element: its tag, attributes, text (before its children) and children."""

    tag: str
    attrs: tuple[tuple[str, str], ...] = ()
    text: str = ""
    children: tuple[Element, ...] = ()


def el(tag: str, text: str = "", *children: Element, **attrs: object) -> Element:
    """An element; attribute names use `_` for `-` (`text_anchor`), `class_` for `class`."""
    return Element(tag, tuple((name.rstrip("_").replace("_", "-"), str(value))
                              for name, value in attrs.items()), text, children)


def colors_for(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name (in the order given), cycling through the palette."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering lo..hi (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1 if math.isfinite(lo) else 1.0
        lo = lo if math.isfinite(lo) else 0.0
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))  # a float: an int tick of 1e300 breaks ".3g"
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, max(last, first + 1) + 1)]


def box_plot(groups: Mapping[str, Sequence[float]], *, title: str, x_label: str,
             colors: Mapping[str, str] | None = None) -> Element:
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
    out = [*_x_axis(ticks, x, _TOP, height - _BOTTOM, x_label)]
    for i, name in enumerate(names):
        values = sorted(groups[name])
        q1, med, q3 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
        reach = 1.5 * (q3 - q1)
        inside = [v for v in values if q1 - reach <= v <= q3 + reach]
        lo, hi = inside[0], inside[-1]
        mid = _TOP + row_h * i + row_h / 2
        color = colors.get(name, PALETTE[0])
        tip = (f"{name}: n={len(values)}, p50={fmt(med)}, p90={fmt(_quantile(values, 0.9))}, "
               f"min={fmt(values[0])}, max={fmt(values[-1])}")
        out.append(el("text", _cut(name), el("title", name), x=left - 8, y=f"{mid + 4:.1f}",
                      text_anchor="end"))
        out.append(el(
            "g", "", el("title", tip),
            el("line", x1=f"{x(lo):.1f}", x2=f"{x(hi):.1f}", y1=f"{mid:.1f}", y2=f"{mid:.1f}",
               stroke="#555"),
            el("rect", x=f"{x(q1):.1f}", y=f"{mid - 9:.1f}",
               width=f"{max(x(q3) - x(q1), 1):.1f}", height=18, fill=color,
               fill_opacity="0.6", stroke=color),
            el("line", x1=f"{x(med):.1f}", x2=f"{x(med):.1f}", y1=f"{mid - 9:.1f}",
               y2=f"{mid + 9:.1f}", stroke="#222", stroke_width=2)))
        out += [el("circle", "", el("title", f"{name}: {fmt(v)}"), cx=f"{x(v):.1f}",
                   cy=f"{mid:.1f}", r="2.5", fill=color)
                for v in values if v < lo or v > hi]
    return _svg(height, title, out)


def scatter(series: Mapping[str, Sequence[tuple[float, float, str]]], *, title: str,
            x_label: str, y_label: str, colors: Mapping[str, str] | None = None,
            radius: float = 3.5) -> Element:
    """Points (x, y, tooltip) per series, with a legend."""
    names = [name for name, points in series.items() if len(points)]
    if not names:
        return _empty(title)
    palette = colors or colors_for(names)
    xs = [p[0] for name in names for p in series[name]]
    ys = [p[1] for name in names for p in series[name]]
    return _xy_chart(
        names, palette, title, x_label, y_label, nice_ticks(min(0.0, *xs), max(xs)),
        nice_ticks(min(0.0, *ys), max(ys)),
        lambda x, y: [el("circle", "", el("title", tip), cx=f"{x(px):.1f}", cy=f"{y(py):.1f}",
                         r=radius, fill=palette[name], fill_opacity="0.7")
                      for name in names for px, py, tip in series[name]])


def line_chart(x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *,
               title: str, y_label: str, colors: Mapping[str, str] | None = None) -> Element:
    """One line per series over categorical x positions (e.g. runs); None leaves a gap."""
    names = [n for n, values in series.items() if any(v is not None for v in values)]
    if not names or not x_labels:
        return _empty(title)
    palette = colors or colors_for(names)
    ys = [v for n in names for v in series[n] if v is not None]
    y_ticks = nice_ticks(min(0.0, *ys), max(ys))

    def marks(x: _Scale, y: _Scale) -> list[Element]:
        out = []
        for name in names:
            color = palette[name]
            points = [(x(float(i)), y(v), v, x_labels[i])
                      for i, v in enumerate(series[name]) if v is not None]
            out.append(el("polyline", points=" ".join(f"{px:.1f},{py:.1f}"
                                                      for px, py, _, _ in points),
                          fill="none", stroke=color, stroke_width=2))
            out += [el("circle", "", el("title", f"{name} @ {label}: {fmt(v)}"),
                       cx=f"{px:.1f}", cy=f"{py:.1f}", r="3.5", fill=color)
                    for px, py, v, label in points]
        return out

    return _xy_chart(names, palette, title, "run", y_label,
                     [0.0, float(max(len(x_labels) - 1, 1))], y_ticks, marks, x_labels=x_labels)


def stacked_bars(rows: Sequence[str], segments: Mapping[str, Sequence[float]], *, title: str,
                 x_label: str) -> Element:
    """Horizontal bars, one per row, stacked by segment (e.g. error types per model)."""
    totals = [sum(values[i] for values in segments.values()) for i in range(len(rows))]
    if not rows or not segments or max(totals, default=0) <= 0:
        return _empty(title)
    colors = colors_for(list(segments))
    row_h, left = 30, 170
    height = _TOP + row_h * len(rows) + _BOTTOM
    ticks = nice_ticks(0.0, max(totals))
    x = _Scale(ticks[0], ticks[-1], left, WIDTH - _RIGHT)
    out = [*_legend(list(segments), colors), *_x_axis(ticks, x, _TOP, height - _BOTTOM, x_label)]
    for i, row in enumerate(rows):
        top = _TOP + row_h * i + 6
        out.append(el("text", _cut(row), el("title", row), x=left - 8, y=f"{top + 13:.1f}",
                      text_anchor="end"))
        start = 0.0
        for segment, values in segments.items():
            value = values[i]
            if value > 0:
                out.append(el("rect", "", el("title", f"{row}: {segment} {fmt(value)}"),
                              x=f"{x(start):.1f}", y=f"{top:.1f}",
                              width=f"{x(start + value) - x(start):.1f}", height=18,
                              fill=colors[segment]))
                start += value
    return _svg(height, title, out)


# --- building blocks -------------------------------------------------------------------------

class _Scale:
    __slots__ = ("_lo", "_span", "_a", "_b")

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        self._lo, self._span, self._a, self._b = lo, (hi - lo) or 1.0, a, b

    def __call__(self, value: float) -> float:
        return self._a + (value - self._lo) / self._span * (self._b - self._a)


_Marks = Callable[[_Scale, _Scale], list[Element]]


def _xy_chart(names: Sequence[str], colors: Mapping[str, str], title: str, x_label: str,
              y_label: str, x_ticks: Sequence[float], y_ticks: Sequence[float],
              marks: _Marks, x_labels: Sequence[str] | None = None) -> Element:
    height = 360
    x = _Scale(x_ticks[0], x_ticks[-1], _LEFT, WIDTH - _RIGHT)
    y = _Scale(y_ticks[0], y_ticks[-1], height - _BOTTOM, _TOP)
    out = [*_legend(names, colors)]
    for t in y_ticks:
        out.append(el("line", x1=_LEFT, x2=WIDTH - _RIGHT, y1=f"{y(t):.1f}", y2=f"{y(t):.1f}",
                      class_="grid"))
        out.append(el("text", fmt(t), x=_LEFT - 6, y=f"{y(t) + 4:.1f}", text_anchor="end"))
    if x_labels is None:
        out += _x_axis(x_ticks, x, _TOP, height - _BOTTOM, x_label)
    else:
        step = max(1, math.ceil(len(x_labels) / 8))      # at most ~8 labels fit
        for i, label in enumerate(x_labels):
            if i % step == 0 or i == len(x_labels) - 1:
                anchor = "start" if i == 0 else "end" if i == len(x_labels) - 1 else "middle"
                out.append(el("text", _cut(label, 16), x=f"{x(float(i)):.1f}",
                              y=height - _BOTTOM + 16, text_anchor=anchor))
        out.append(el("text", x_label, x=f"{(WIDTH + _LEFT) / 2:.0f}", y=height - 8,
                      text_anchor="middle", class_="label"))
    out.append(el("text", y_label, transform=f"translate(14 {(height - _BOTTOM + _TOP) / 2:.0f}) "
                  "rotate(-90)", text_anchor="middle", class_="label"))
    out += marks(x, y)
    return _svg(height, title, out)


def _svg(height: int, title: str, marks: Sequence[Element]) -> Element:
    return el("svg", "", el("text", title, x=f"{WIDTH / 2:.0f}", y=18, text_anchor="middle",
                            class_="title"), *marks,
              xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {WIDTH} {height}", width="100%",
              style=f"max-width:{WIDTH}px", role="img", aria_label=title)


def _legend(names: Sequence[str], colors: Mapping[str, str]) -> list[Element]:
    out, x = [], float(_LEFT)
    for name in names:
        label = _cut(name)
        out.append(el("rect", x=f"{x:.0f}", y=27, width=10, height=10, fill=colors[name]))
        out.append(el("text", label, el("title", name), x=f"{x + 14:.0f}", y=36))
        x += 28 + 7.5 * len(label)   # ~7px a character at 12px, wide ones more
    return out


def _x_axis(ticks: Sequence[float], x: _Scale, top: float, bottom: float,
            label: str) -> list[Element]:
    out = []
    for t in ticks:
        out.append(el("line", x1=f"{x(t):.1f}", x2=f"{x(t):.1f}", y1=top, y2=bottom,
                      class_="grid"))
        out.append(el("text", fmt(t), x=f"{x(t):.1f}", y=bottom + 16, text_anchor="middle"))
    mid = (x(ticks[0]) + x(ticks[-1])) / 2
    out.append(el("text", label, x=f"{mid:.0f}", y=bottom + 36, text_anchor="middle",
                  class_="label"))
    return out


def _empty(title: str) -> Element:
    return _svg(60, title, [el("text", "no data", x=f"{WIDTH / 2:.0f}", y=44,
                               text_anchor="middle")])


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


def xy_lines(series: Mapping[str, Sequence[tuple[float, float, str]]], *, title: str,
             x_label: str, y_label: str, colors: Mapping[str, str] | None = None,
             marked: tuple[float, str] | None = None) -> Element:
    """One line per series through its (x, y, tooltip) points, in x order, over a numeric x
    axis (e.g. latency against achieved rate); `marked` (x, label) draws a dashed vertical
    line there (e.g. a sweep's knee)."""
    names = [name for name, points in series.items() if len(points)]
    if not names:
        return _empty(title)
    palette = colors or colors_for(names)
    xs = [p[0] for name in names for p in series[name]]
    ys = [p[1] for name in names for p in series[name]]

    def marks(x: _Scale, y: _Scale) -> list[Element]:
        out = []
        if marked is not None:
            out.append(el("line", "", el("title", marked[1]), x1=f"{x(marked[0]):.1f}",
                          x2=f"{x(marked[0]):.1f}", y1=_TOP, y2=360 - _BOTTOM,
                          stroke="#555", stroke_dasharray="5 4", stroke_width=1.5))
        for name in names:
            points = sorted(series[name])
            out.append(el("polyline", points=" ".join(f"{x(px):.1f},{y(py):.1f}"
                                                      for px, py, _ in points),
                          fill="none", stroke=palette[name], stroke_width=2))
            out += [el("circle", "", el("title", tip), cx=f"{x(px):.1f}", cy=f"{y(py):.1f}",
                       r="3.5", fill=palette[name]) for px, py, tip in points]
        return out

    return _xy_chart(names, palette, title, x_label, y_label,
                     nice_ticks(min(0.0, *xs), max(xs)), nice_ticks(min(0.0, *ys), max(ys)),
                     marks)
