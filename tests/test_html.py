"""The HTML/SVG helpers: well-formed markup, escaping, charts, thumbnails."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from typing import ClassVar

import pytest
from PIL import Image

from pipeline import html as H

pytestmark = pytest.mark.unit
EVIL = '<script>alert("x")</script> & \'quotes\''


class Collector(HTMLParser):
    """Records start tags with attributes, text, and checks tags nest properly."""

    VOID: ClassVar[set[str]] = {"meta", "br", "img", "line", "rect", "polyline", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Collector:
    c = Collector()
    c.feed(markup)
    c.close()
    assert not c.stack, f"unclosed tags {c.stack}"
    return c


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (300, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_text_is_escaped_everywhere() -> None:
    page = H.page(EVIL, H.section(EVIL, EVIL, H.table([{"col": EVIL}], caption=EVIL)),
                  H.bar_chart([EVIL], [1.0], title=EVIL), subtitle=EVIL)
    assert "<script>" not in page
    c = parse(page)
    assert "script" not in {t for t, _ in c.tags}
    assert any(EVIL in t for t in c.text)  # the text survives, as text


def test_html_marker_is_inserted_verbatim() -> None:
    cell = H.Html("<b>bold</b>")
    out = H.table([["x", cell]], ["a", "b"])
    assert "<td><b>bold</b></td>" in out
    assert H.esc(cell) is cell


def test_line_chart_svg_with_marker() -> None:
    xs = [i / 10 for i in range(11)]
    svg = H.line_chart({"curve": (xs, [x * x for x in xs]), "line": (xs, xs)},
                       title="T", x_label="x", y_label="y", vlines=[(0.8, "threshold")])
    c = parse(svg)
    names = [t for t, _ in c.tags]
    assert names[0] == "svg" and names.count("polyline") == 2
    assert "threshold" in "".join(c.text)
    poly = next(a for t, a in c.tags if t == "polyline")
    assert len((poly["points"] or "").split()) == 11


def test_bar_chart_and_histogram() -> None:
    svg = H.bar_chart(["a", "b", "c"], [3, 0, 5], title="bars")
    assert [t for t, _ in parse(svg).tags].count("rect") == 3
    hist = H.histogram([1, 2, 2, 3, 3, 3, 9], bins=4, title="h")
    rects = [a for t, a in parse(hist).tags if t == "rect"]
    assert len(rects) == 4
    pre = H.histogram(edges=[0, 1, 2], counts=[5, 7], title="pre")
    assert [t for t, _ in parse(pre).tags].count("rect") == 2
    with pytest.raises(AssertionError):
        H.histogram(edges=[0, 1], counts=[1, 2], title="bad")


def test_nice_ticks_are_round_and_cover() -> None:
    ticks = H.nice_ticks(0.0, 0.93)
    assert ticks[0] <= 0.0 and ticks[-1] >= 0.93 and len(ticks) <= 8
    assert H.nice_ticks(5.0, 5.0)[-1] > 5.0


def test_thumbnail_is_a_small_png_data_uri() -> None:
    tag = H.thumbnail(_png(), alt=EVIL, max_side=64)
    attrs = next(a for t, a in parse(tag).tags if t == "img")
    src = attrs["src"] or ""
    assert src.startswith("data:image/png;base64,") and attrs["alt"] == EVIL
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
        assert max(im.size) == 64


def test_broken_image_renders_placeholder() -> None:
    out = H.thumbnail(b"nope", alt="x")
    assert "img" not in out and "undecodable" in out
    assert H.image_data_uri(b"nope") == ""


def test_fmt_numbers() -> None:
    assert H.fmt(1234567) == "1,234,567"
    assert H.fmt(0.123456) == "0.1235"
    assert H.fmt(True) == "True"
