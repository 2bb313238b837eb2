"""A PNG of the ratios: one bar per figure on a log scale, the baseline at 1×, each target marked.

Drawn with Pillow (already an extra of the project) so the benchmarks need no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from _harness import Figure
from PIL import Image, ImageDraw, ImageFont

__all__ = ["plot_ratios"]

_LOW, _HIGH = 1e-3, 1e2  # the log axis, in ×
_ROW, _LABEL_WIDTH, _BAR_WIDTH, _MARGIN = 26, 500, 560, 16
_MET, _MISSED, _OTHER = (46, 139, 87), (200, 50, 50), (150, 150, 160)


def _x(ratio: float) -> float:
    clamped = min(max(ratio, _LOW), _HIGH)
    share = (math.log10(clamped) - math.log10(_LOW)) / (math.log10(_HIGH) - math.log10(_LOW))
    return _MARGIN + _LABEL_WIDTH + share * _BAR_WIDTH


def _bound(target: str) -> float | None:
    """The ratio in a target such as "<= 1.15×"; None for an absolute one ("< 100 ms"), which has no
    place on a ratio axis and is judged in the table."""
    if not target.endswith("×"):
        return None
    digits = "".join(c for c in target if c.isdigit() or c == ".")
    return float(digits) if digits else None


def plot_ratios(figures: Sequence[Figure], path: Path, *, title: str) -> None:
    """Draw every figure that has a ratio; mjasync's bars are green where the target holds, red where not."""
    # "lines/s" repeats the MB/s ratio of the same run, so it is left to the table.
    rows = [f for f in figures if f.ratio is not None and f.unit != "lines/s"]
    height = _MARGIN * 2 + 60 + _ROW * (len(rows) + 1)
    width = _MARGIN * 2 + _LABEL_WIDTH + _BAR_WIDTH + 90
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=16)
    draw.text((_MARGIN, _MARGIN), title, fill="black", font=bold)
    top = _MARGIN + 40
    axis_bottom = top + _ROW * len(rows)
    for exponent in range(-3, 3):
        x = _x(10.0**exponent)
        draw.line(
            [(x, top - 6), (x, axis_bottom)], fill=(120, 120, 120) if exponent == 0 else (225, 225, 225)
        )
        draw.text((x - 14, axis_bottom + 4), f"{10.0**exponent:g}x", fill="black", font=font)
    bench = ""
    for i, figure in enumerate(rows):
        assert figure.ratio is not None
        y = top + i * _ROW
        if figure.bench != bench:
            bench = figure.bench
            draw.line([(_MARGIN, y), (width - _MARGIN, y)], fill=(200, 200, 200))
        label = f"{figure.bench} | {figure.contender} | {figure.metric}"
        draw.text((_MARGIN, y + 6), label[:80], fill="black", font=font)
        colour = _OTHER if figure.met is None else (_MET if figure.met else _MISSED)
        one = _x(1.0)
        end = _x(figure.ratio)
        draw.rectangle([(min(one, end), y + 5), (max(one, end), y + _ROW - 5)], fill=colour)
        bound = _bound(figure.target)
        if bound is not None:
            bx = _x(bound)
            draw.line([(bx, y + 1), (bx, y + _ROW - 1)], fill="black", width=3)
        draw.text((_x(_HIGH) + 8, y + 6), f"{figure.ratio:.3g}x", fill="black", font=font)
    legend = (
        "bars: ratio to the baseline (log scale); black tick: a ratio target (absolute ones are in the table);"
        " green met, red missed, grey for comparison"
    )
    draw.text((_MARGIN, axis_bottom + 24), legend, fill=(80, 80, 80), font=font)
    image.save(path)
