"""The console's plots as SVG documents (served as images: an SVG in an <img> runs no script), drawn here
so the page needs no charting library. Every label is XML-escaped."""

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 40
COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#64748b")
BUCKET_COLOURS = {"harmful": "#dc2626", "refusal": "#16a34a", "other": "#2563eb", "degenerate": "#94a3b8"}


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


def _frame(title: str, body: list[str], height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>'
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _empty(title: str, message: str) -> str:
    return _frame(title, [f'<text x="{LEFT}" y="{HEIGHT // 2}" fill="#64748b">{escape(message)}</text>'])


def line_chart(title: str, series: Sequence[Series], x_label: str, y_label: str) -> str:
    """Lines over a shared x axis (a job's train and validation loss per step)."""
    points = [p for s in series for p in s.points]
    if not points:
        return _empty(title, "nothing recorded yet")
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0  # a loss curve lives far from 0: zoom to it
    y_min, y_max = low - pad, high + pad
    x_span, y_span = (x_max - x_min) or 1.0, y_max - y_min
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x_min) / x_span * plot_w, TOP + plot_h - (y - y_min) / y_span * plot_h

    body = _axes(plot_w, plot_h, f"{y_max:.3g}", f"{y_min:.3g}", f"{x_min:g}", f"{x_max:g}")
    body.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    body.append(
        f'<text x="14" y="{TOP + plot_h / 2}" transform="rotate(-90 14 {TOP + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for index, line in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in (xy(x, y) for x, y in line.points))
        if len(line.points) == 1:
            px, py = xy(*line.points[0])
            body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
        else:
            body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body.append(
            f'<text x="{WIDTH - RIGHT - 150}" y="{TOP + 14 + 16 * index}" fill="{colour}">'
            f"{escape(line.name)}</text>"
        )
    return _frame(title, body)


def _axes(plot_w: float, plot_h: float, y_top: str, y_bottom: str, x_left: str, x_right: str) -> list[str]:
    return [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#334155"/>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#334155"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{escape(y_top)}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">{escape(y_bottom)}</text>',
        f'<text x="{LEFT}" y="{TOP + plot_h + 16}" text-anchor="middle">{escape(x_left)}</text>',
        f'<text x="{LEFT + plot_w}" y="{TOP + plot_h + 16}" text-anchor="middle">{escape(x_right)}</text>',
    ]


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float | None]],
    maximum: float = 100.0,
    threshold: float | None = None,
) -> str:
    """Horizontal bars in percent, with the policy's threshold as a dashed line where one applies."""
    if not bars:
        return _empty(title, "not measured")
    plot_w = WIDTH - 200 - RIGHT - 60  # room for the value after a full bar
    row = 28
    body = []
    for index, (label, value) in enumerate(bars):
        y = TOP + 8 + index * row
        body.append(f'<text x="192" y="{y + row * 0.6:.1f}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            body.append(f'<text x="200" y="{y + row * 0.6:.1f}" fill="#64748b">not measured</text>')
            continue
        width = max(0.0, min(value, maximum)) / maximum * plot_w
        colour = COLOURS[index % len(COLOURS)]
        body.append(f'<rect x="200" y="{y}" width="{width:.1f}" height="{row - 8}" fill="{colour}"/>')
        body.append(f'<text x="{204 + width:.1f}" y="{y + row * 0.6:.1f}">{value:.1f} %</text>')
    bottom = TOP + 8 + len(bars) * row
    if threshold is not None:
        x = 200 + max(0.0, min(threshold, maximum)) / maximum * plot_w
        body.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#dc2626" '
            f'stroke-dasharray="5,4" stroke-width="2"/>'
        )
        body.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" fill="#dc2626" text-anchor="middle">'
            f"threshold {threshold:.1f} %</text>"
        )
    return _frame(title, body, height=bottom + 24)


def stacked_chart(title: str, rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """One bar per row split into the protocol's buckets (degenerate, harmful, refusal, other; percent)."""
    if not rows:
        return _empty(title, "not measured")
    plot_w = WIDTH - 200 - RIGHT
    row = 28
    body = []
    for index, (label, buckets) in enumerate(rows):
        y, x = TOP + 8 + index * row, 200.0
        body.append(f'<text x="192" y="{y + row * 0.6:.1f}" text-anchor="end">{escape(label)}</text>')
        for bucket, colour in BUCKET_COLOURS.items():
            width = buckets.get(bucket, 0.0) / 100 * plot_w
            if width > 0:
                tip = f"<title>{escape(bucket)} {buckets[bucket]:.1f} %</title>"
                body.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{row - 8}" fill="{colour}">'
                    f"{tip}</rect>"
                )
            x += width
    legend_y = TOP + 8 + len(rows) * row + 16
    for index, (bucket, colour) in enumerate(BUCKET_COLOURS.items()):
        x = 200 + index * 110
        body.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{x + 16}" y="{legend_y}">{escape(bucket)}</text>')
    return _frame(title, body, height=legend_y + 12)
