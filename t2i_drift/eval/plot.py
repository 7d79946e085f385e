"""A small line/point plot drawn with PIL (matplotlib is not a dependency): axes with ticks and
labels, a log2 or linear x axis, lines with markers, lone marked points, dashed reference lines and
a legend to the right of the axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Series:
    """Points (xs[i], ys[i]) joined by a line (``line``) and marked with ``marker`` (one of MARKERS);
    a None y is left out."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    colour: Colour
    marker: str = "circle"
    line: bool = True
    dx: float = 0.0
    """Horizontal shift of the drawn points in pixels (keeps lone points at one x apart)."""


@dataclass(frozen=True)
class Reference:
    """A dashed horizontal line at ``y`` (e.g. a real-vs-real floor)."""

    label: str
    y: float
    colour: Colour = (130, 130, 130)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 8) -> list[float]:
    """About ``target`` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"need finite lo < hi, got {lo}, {hi}")
    raw = (hi - lo) / max(target - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(count)]


def _format(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.2e}"


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str = "la") -> None:
    """Text aligned by ``anchor`` (horizontal l/m/r, vertical t/m/b), computed from the text's box so
    that bitmap fonts (which take no anchor) align too."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - left - {"l": 0.0, "m": 0.5, "r": 1.0}[anchor[0]] * (right - left)
    y = xy[1] - top - {"a": 0.0, "t": 0.0, "m": 0.5, "b": 1.0}[anchor[1]] * (bottom - top)
    draw.text((x, y), text, fill="black", font=font)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, kind: str, colour: Colour, r: int = 6) -> None:
    outline = tuple(int(c * 0.5) for c in colour)
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=outline, width=2)
    elif kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour, outline=outline, width=2)
    elif kind == "triangle":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour, outline=outline)
    elif kind == "diamond":
        draw.polygon(
            [(x, y - r - 2), (x + r + 2, y), (x, y + r + 2), (x - r - 2, y)], fill=colour, outline=outline
        )
    else:
        raise ValueError(f"marker must be one of {MARKERS}, got {kind!r}")


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, colour: Colour, dash: int = 8) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + dash, x1), y)], fill=colour, width=2)
        x += 2 * dash


def line_plot(
    series: Sequence[Series],
    path: str | Path,
    x_label: str,
    y_label: str,
    title: str | None = None,
    log2_x: bool = True,
    x_ticks: Sequence[float] | None = None,
    references: Sequence[Reference] = (),
    size: tuple[int, int] = (900, 540),
) -> Image.Image:
    """Draw ``series`` (and dashed ``references``) on one pair of axes and save a PNG to ``path``.

    Args:
        log2_x: place x at log2(x) (x must be > 0); ticks at ``x_ticks`` (default: every x used).
    Returns:
        The RGB image that was saved.
    """
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if y is not None]
    if not points:
        raise ValueError("nothing to plot")
    if log2_x and any(x <= 0 for x, _ in points):
        raise ValueError("a log2 x axis needs x > 0")
    width, height = size
    font, small = _font(16), _font(14)
    left, right, top, bottom = 95, 260, 50 if title else 25, 70
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # the axes box in pixels

    def fx(x: float) -> float:
        return math.log2(x) if log2_x else x

    xs = sorted({x for x, _ in points} | set(x_ticks or []))
    lo_x, hi_x = fx(xs[0]), fx(xs[-1])
    pad_x = 0.4 if log2_x else 0.05 * max(hi_x - lo_x, 1.0)
    lo_x, hi_x = lo_x - pad_x, hi_x + pad_x
    ys = [y for _, y in points] + [r.y for r in references]
    lo_y, hi_y = min(ys), max(ys)
    span = hi_y - lo_y or max(abs(hi_y) * 0.1, 1e-3)
    lo_y, hi_y = lo_y - 0.1 * span, hi_y + 0.1 * span
    ticks_y = nice_ticks(lo_y, hi_y)
    lo_y, hi_y = min(lo_y, ticks_y[0]), max(hi_y, ticks_y[-1])

    def px(x: float) -> float:
        return x0 + (fx(x) - lo_x) / (hi_x - lo_x) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if title:
        _text(draw, ((x0 + x1) / 2, 14), title, font, "mt")
    # grid and y ticks
    for t in ticks_y:
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=(232, 232, 232), width=1)
        draw.line([(x0 - 6, y), (x0, y)], fill="black", width=2)
        _text(draw, (x0 - 10, y), _format(t), small, "rm")
    # x ticks
    for t in x_ticks or xs:
        x = px(t)
        draw.line([(x, y0), (x, y1)], fill=(232, 232, 232), width=1)
        draw.line([(x, y1), (x, y1 + 6)], fill="black", width=2)
        _text(draw, (x, y1 + 10), _format(t), small, "mt")
    draw.rectangle([x0, y0, x1, y1], outline="black", width=2)
    # axis labels (the y label rotated)
    _text(draw, ((x0 + x1) / 2, height - 22), x_label, font, "mm")
    label = Image.new("RGBA", (int(draw.textlength(y_label, font=font)) + 8, 24), (255, 255, 255, 0))
    _text(ImageDraw.Draw(label), (4, 12), y_label, font, "lm")
    label = label.rotate(90, expand=True)
    image.paste(label, (12, int((y0 + y1) / 2 - label.height / 2)), label)
    # references, lines, markers
    for ref in references:
        _dashed(draw, x0 + 2, x1 - 2, py(ref.y), ref.colour)
    for s in series:
        pts = [(px(x) + s.dx, py(y)) for x, y in zip(s.xs, s.ys, strict=True) if y is not None]
        if s.line and len(pts) > 1:
            draw.line(pts, fill=s.colour, width=3, joint="curve")
        for x, y in pts:
            _marker(draw, x, y, s.marker, s.colour)
    # legend, right of the axes
    lx, ly = x1 + 20, y0 + 4
    for s in series:
        if s.line:
            draw.line([(lx, ly + 9), (lx + 36, ly + 9)], fill=s.colour, width=3)
        _marker(draw, lx + 18, ly + 9, s.marker, s.colour)
        _text(draw, (lx + 46, ly + 9), s.label, small, "lm")
        ly += 28
    for ref in references:
        _dashed(draw, lx, lx + 36, ly + 9, ref.colour, dash=6)
        _text(draw, (lx + 46, ly + 9), ref.label, small, "lm")
        ly += 28
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image
