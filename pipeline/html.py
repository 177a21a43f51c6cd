"""Small, dependency-free HTML report building: pages, tables, inline-SVG charts, thumbnails.

Every report of the pipeline (dedup, quality, training, evaluation) is one self-contained
HTML file: no scripts, no external CSS or fonts, charts as inline SVG, images as `data:`
URIs, so a report opens offline and can be attached to a ticket.

Escaping rule: helpers return `Html` (a `str` subclass marking trusted markup). Anything
else handed to a helper (plain `str`, numbers, None) is escaped, so text from the data
(documents, labels, ids) can never inject markup. Build pages only from these helpers, or
wrap hand-written markup in `Html(...)` deliberately.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.fail{color:#b00;font-weight:600}.pass{color:#070;font-weight:600}
.pair td{max-width:480px;word-wrap:break-word}svg{margin:.4em .8em .4em 0}
img.thumb{image-rendering:pixelated;border:1px solid #ccc}.muted{color:#777}
"""


class Html(str):
    """A string of trusted markup; helpers insert it as-is instead of escaping it."""


def esc(value: Any) -> Html:
    """Escape any value for HTML text or attribute context (None -> empty)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def fmt(value: Any, digits: int = 4) -> str:
    """Human-friendly number formatting: ints with separators, floats to `digits` sig. figs."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _cell(value: Any, tag: str = "td") -> str:
    if isinstance(value, Html):
        return f"<{tag}>{value}</{tag}>"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    cls = ' class="num"' if numeric and tag == "td" else ""
    return f"<{tag}{cls}>{esc(fmt(value))}</{tag}>"


def table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
          columns: Sequence[str] | None = None, caption: str | None = None,
          css_class: str | None = None) -> Html:
    """A table from dict rows (columns default to the first row's keys) or from sequences."""
    if rows and isinstance(rows[0], Mapping):
        cols = list(columns or rows[0].keys())
        body = [[r.get(c) for c in cols] for r in rows]  # type: ignore[union-attr]
    else:
        cols = list(columns or [])
        body = [list(r) for r in rows]  # type: ignore[arg-type]
    head = "".join(_cell(c, "th") for c in cols)
    lines = ["".join(_cell(v) for v in r) for r in body]
    cls = f' class="{esc(css_class)}"' if css_class else ""
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    inner = "".join(f"<tr>{line}</tr>" for line in lines)
    thead = f"<thead><tr>{head}</tr></thead>" if cols else ""
    return Html(f"<table{cls}>{cap}{thead}<tbody>{inner}</tbody></table>")


def key_values(mapping: Mapping[str, Any], caption: str | None = None) -> Html:
    """A two-column table of a flat mapping."""
    return table([[k, v] for k, v in mapping.items()], ["name", "value"], caption)


def paragraph(text: Any, css_class: str | None = None) -> Html:
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return Html(f"<p{cls}>{esc(text)}</p>")


def section(title: str, *parts: Any) -> Html:
    """An `<h2>` section; plain-text parts become escaped paragraphs."""
    body = "".join(p if isinstance(p, Html) else paragraph(p) for p in parts)
    return Html(f"<section><h2>{esc(title)}</h2>{body}</section>")


def page(title: str, *parts: Any, subtitle: str | None = None) -> Html:
    """A complete, self-contained HTML5 document."""
    body = "".join(p if isinstance(p, Html) else paragraph(p) for p in parts)
    sub = paragraph(subtitle, "muted") if subtitle else ""
    return Html(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{esc(title)}</h1>{sub}{body}</body></html>\n"
    )


# ---------------------------------------------------------------------------------------
# Charts


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, last + 1)]
    return ticks


class _Frame:
    """Maps data coordinates into an SVG plot area with margins for axes and labels."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float],
                 y_range: tuple[float, float]) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = 58, 14, 30, 44
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (v - self.x0) / span * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.h - self.bottom - (v - self.y0) / span * (self.h - self.top - self.bottom)


def _axes(f: _Frame, xticks: Iterable[float], yticks: Iterable[float], title: str,
          x_label: str, y_label: str, x_labels: Sequence[str] | None = None) -> list[str]:
    out = [f'<text x="{f.w / 2:.1f}" y="18" text-anchor="middle" font-size="14" '
           f'font-weight="600">{esc(title)}</text>']
    for t in yticks:
        y = f.y(t)
        out.append(f'<line x1="{f.left - 4}" y1="{y:.1f}" x2="{f.w - f.right}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{f.left - 6}" y="{y + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{esc(fmt(t, 3))}</text>')
    if x_labels is None:
        for t in xticks:
            x = f.x(t)
            out.append(f'<text x="{x:.1f}" y="{f.h - f.bottom + 15}" font-size="11" '
                       f'text-anchor="middle">{esc(fmt(t, 3))}</text>')
    out.append(f'<text x="{(f.left + f.w - f.right) / 2:.1f}" y="{f.h - 6}" font-size="12" '
               f'text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(14,{(f.top + f.h - f.bottom) / 2:.1f}) '
               f'rotate(-90)" font-size="12" text-anchor="middle">{esc(y_label)}</text>')
    # Axis lines last, so the light grid lines never paint over them.
    out.append(f'<line x1="{f.left}" y1="{f.y(f.y0):.1f}" x2="{f.w - f.right}" '
               f'y2="{f.y(f.y0):.1f}" stroke="#444"/><line x1="{f.left}" y1="{f.top}" '
               f'x2="{f.left}" y2="{f.h - f.bottom}" stroke="#444"/>')
    return out


def _svg(f: _Frame, title: str, body: list[str]) -> Html:
    return Html(f'<svg xmlns="http://www.w3.org/2000/svg" width="{f.w}" height="{f.h}" '
                f'viewBox="0 0 {f.w} {f.h}" role="img" aria-label="{esc(title)}">'
                f"<title>{esc(title)}</title>{''.join(body)}</svg>")


#: series with at most this many points get a marker on each point
MARKER_MAX_POINTS = 30


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
               x_label: str = "", y_label: str = "", width: int = 560, height: int = 320,
               vlines: Sequence[tuple[float, str]] = (),
               y_range: tuple[float, float] | None = None) -> Html:
    """Lines for each named (xs, ys) series, with optional labelled vertical markers."""
    xs = [float(x) for s in series.values() for x in s[0]]
    ys = [float(y) for s in series.values() for y in s[1] if math.isfinite(float(y))]
    xs += [float(v) for v, _ in vlines]
    xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    yticks = nice_ticks(*(y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))))
    f = _Frame(width, height, (xlo, xhi if xhi > xlo else xlo + 1), (yticks[0], yticks[-1]))
    body = _axes(f, nice_ticks(f.x0, f.x1), yticks, title, x_label, y_label)
    for i, (name, (sx, sy)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{f.x(float(a)):.1f},{f.y(float(b)):.1f}"
                       for a, b in zip(sx, sy, strict=True) if math.isfinite(float(b)))
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}">'
                    f"<title>{esc(name)}</title></polyline>")
        finite = [(a, b) for a, b in zip(sx, sy, strict=True) if math.isfinite(float(b))]
        if len(finite) <= MARKER_MAX_POINTS:  # few points (one epoch): a line alone may be
            body.extend(  # invisible, so mark each point
                f'<circle cx="{f.x(float(a)):.1f}" cy="{f.y(float(b)):.1f}" r="3" '
                f'fill="{color}"/>' for a, b in finite)
        if len(series) > 1 or name:
            ly = f.top + 4 + 14 * i
            body.append(f'<rect x="{f.w - f.right - 130}" y="{ly}" width="10" height="10" '
                        f'fill="{color}"/><text x="{f.w - f.right - 116}" y="{ly + 9}" '
                        f'font-size="11">{esc(name)}</text>')
    for value, label in vlines:
        x = f.x(float(value))
        body.append(f'<line x1="{x:.1f}" y1="{f.top}" x2="{x:.1f}" y2="{f.h - f.bottom}" '
                    f'stroke="#d62728" stroke-dasharray="4 3"/><text x="{x + 4:.1f}" '
                    f'y="{f.h - f.bottom - 6}" font-size="11" fill="#d62728">{esc(label)}</text>')
    return _svg(f, title, body)


def bar_chart(labels: Sequence[Any], values: Sequence[float], *, title: str,
              x_label: str = "", y_label: str = "", width: int = 560,
              height: int = 320) -> Html:
    """Vertical bars, one per label (labels are escaped, long ones shortened)."""
    vals = [float(v) for v in values]
    yticks = nice_ticks(0.0, max(vals) if vals else 1.0)
    f = _Frame(width, height, (0.0, float(max(1, len(vals)))), (0.0, yticks[-1]))
    body = _axes(f, [], yticks, title, x_label, y_label, x_labels=[str(s) for s in labels])
    slot = (f.w - f.left - f.right) / max(1, len(vals))
    every = max(1, math.ceil(len(vals) / 20))  # keep at most ~20 readable x labels
    for i, (label, v) in enumerate(zip(labels, vals, strict=True)):
        x, y = f.x(float(i)) + slot * 0.1, f.y(v)
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                    f'height="{max(0.0, f.y(0.0) - y):.1f}" fill="{PALETTE[0]}">'
                    f"<title>{esc(label)}: {esc(fmt(v))}</title></rect>")
        if i % every == 0:
            text = str(label) if len(str(label)) <= 12 else str(label)[:11] + "…"
            body.append(f'<text x="{x + slot * 0.4:.1f}" y="{f.h - f.bottom + 15}" '
                        f'font-size="11" text-anchor="middle">{esc(text)}</text>')
    return _svg(f, title, body)


def histogram(values: Sequence[float] | None = None, *, bins: int = 20,
              edges: Sequence[float] | None = None, counts: Sequence[float] | None = None,
              title: str, x_label: str = "", y_label: str = "count", width: int = 560,
              height: int = 320) -> Html:
    """A histogram from raw `values` (binned here) or from precomputed `edges` + `counts`
    (what a Spark aggregation returns, so no raw column needs collecting)."""
    if counts is None:
        data = [float(v) for v in (values or [])]
        lo, hi = (min(data), max(data)) if data else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        step = (hi - lo) / bins
        edges = [lo + step * i for i in range(bins + 1)]
        tally = [0] * bins
        for v in data:
            tally[min(bins - 1, int((v - lo) / step))] += 1
        counts = tally
    assert edges is not None and len(edges) == len(counts) + 1, "edges must be one longer"
    labels = [f"{fmt(edges[i], 3)}–{fmt(edges[i + 1], 3)}" for i in range(len(counts))]
    return bar_chart(labels, counts, title=title, x_label=x_label, y_label=y_label,
                     width=width, height=height)


# ---------------------------------------------------------------------------------------
# Images


def image_data_uri(data: bytes, max_side: int = 128) -> str:
    """A PNG `data:` URI of a thumbnail (at most `max_side` px a side) of encoded image bytes;
    undecodable bytes give an empty string."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            thumb = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
        thumb.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        thumb.save(buf, format="PNG")
    except Exception:  # a report must render even when one sample is broken
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(data: bytes, alt: str = "", max_side: int = 128) -> Html:
    """An `<img>` tag holding a thumbnail of `data` inline (or the alt text if broken)."""
    uri = image_data_uri(data, max_side)
    if not uri:
        return Html(f'<span class="muted">[undecodable image {esc(alt)}]</span>')
    return Html(f'<img class="thumb" src="{uri}" alt="{esc(alt)}" title="{esc(alt)}">')


def heatmap(matrix: Sequence[Sequence[float]], row_labels: Sequence[Any],
            col_labels: Sequence[Any], *, title: str, x_label: str = "", y_label: str = "",
            cell: int = 36) -> Html:
    """A matrix as coloured cells with their values (e.g. a confusion matrix: rows = true
    class, columns = predicted). Shade is linear in the value, white at 0."""
    rows = [[float(v) for v in r] for r in matrix]
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    top = max((v for r in rows for v in r if math.isfinite(v)), default=0.0) or 1.0
    left, head = 110, 48
    w, h = left + cell * n_cols + 14, head + cell * n_rows + 40
    body = [f'<text x="{w / 2:.1f}" y="18" text-anchor="middle" font-size="14" '
            f'font-weight="600">{esc(title)}</text>']
    for j, lab in enumerate(col_labels):
        text = str(lab) if len(str(lab)) <= 6 else str(lab)[:5] + "…"
        body.append(f'<text x="{left + cell * (j + 0.5):.1f}" y="{head - 6}" font-size="11" '
                    f'text-anchor="middle">{esc(text)}<title>{esc(lab)}</title></text>')
    for i, (lab, r) in enumerate(zip(row_labels, rows, strict=True)):
        y = head + cell * i
        text = str(lab) if len(str(lab)) <= 14 else str(lab)[:13] + "…"
        body.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" font-size="11" '
                    f'text-anchor="end">{esc(text)}<title>{esc(lab)}</title></text>')
        for j, v in enumerate(r):
            share = v / top if math.isfinite(v) else 0.0
            shade = round(255 - 200 * max(0.0, min(1.0, share)))
            ink = "#fff" if share > 0.6 else "#222"
            body.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" '
                        f'fill="rgb({shade},{shade},255)" stroke="#ccc"><title>'
                        f'{esc(lab)} → {esc(col_labels[j])}: {esc(fmt(v))}</title></rect>'
                        f'<text x="{left + cell * (j + 0.5):.1f}" y="{y + cell / 2 + 4:.1f}" '
                        f'font-size="11" text-anchor="middle" fill="{ink}">{esc(fmt(v, 3))}'
                        f'</text>')
    body.append(f'<text x="{left + cell * n_cols / 2:.1f}" y="{h - 10}" font-size="12" '
                f'text-anchor="middle">{esc(x_label)}</text>')
    body.append(f'<text transform="translate(14,{head + cell * n_rows / 2:.1f}) rotate(-90)" '
                f'font-size="12" text-anchor="middle">{esc(y_label)}</text>')
    return Html(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                f'viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}">'
                f"<title>{esc(title)}</title>{''.join(body)}</svg>")
