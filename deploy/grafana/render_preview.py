#!/usr/bin/env python3
"""Renders a preview of the Grafana dashboard from real Prometheus data, without Grafana.

Every panel of `grain.json` is drawn where its `gridPos` puts it, from its own PromQL
(variables expanded as Grafana would, see dashboard.py), evaluated by a Prometheus through its
HTTP API: `query_range` for time series, an instant query over the whole range for stats and pie
charts. It is a faithful picture of what the dashboard's queries return, not a Grafana
screenshot: no Grafana styling, thresholds or overrides, and series that stay at zero over the
whole range (error kinds that never happened, say) are left out of the time series.

    pip install -r deploy/grafana/requirements-preview.txt
    python deploy/grafana/render_preview.py --prometheus http://127.0.0.1:9090 \\
        --start 1767000000 --end 1767000180 --out docs/images/dashboard.png

`tests/observability/dashboard_preview.py` runs Grain and Prometheus, drives traffic and calls
this; that is how docs/images/dashboard.png is made.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboard  # noqa: E402

# Grafana's dark theme, approximately.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c", "#8ab8ff", "#fade2a", "#37872d"]


def duration(seconds: float) -> str:
    """A Prometheus duration for a range or window, in whole seconds."""
    return f"{max(1, round(seconds))}s"


def rate_interval(step_s: float, scrape_s: float) -> float:
    """Grafana's `$__rate_interval`: max(4 x scrape interval, step + scrape interval)."""
    return max(4 * scrape_s, step_s + scrape_s)


class PromClient:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=60) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        data = self._get("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        return data["result"]

    def query(self, expr: str, at: float) -> list[dict]:
        return self._get("query", query=expr, time=f"{at:.3f}")["result"]


def fmt(value: float, unit: str) -> str:
    """A value the way the panel's unit shows it."""
    if value is None or math.isnan(value):
        return "n/a"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "reqps":
        return f"{value:.2f} req/s"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.3g}"


def _style(ax, title: str) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.tick_params(colors=MUTED, labelsize=7)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", pad=4)


def _values(series: dict) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for t, v in series["values"]:
        y = float(v)
        if math.isfinite(y):
            xs.append(float(t))
            ys.append(y)
    return xs, ys


def draw_timeseries(ax, panel, client: PromClient, args, rate_win: str, range_: str) -> None:
    from matplotlib.ticker import FuncFormatter

    _style(ax, panel.title)
    color = 0
    for target in panel.targets:
        expr = dashboard.expand(target.expr, rate_win, range_)
        for series in client.query_range(expr, args.start, args.end, args.step):
            xs, ys = _values(series)
            # Series that stay at zero (errors that never happened...) only crowd the legend.
            if not any(ys):
                continue
            scale = 100.0 if panel.unit == "percentunit" else 1.0
            ax.plot(
                [x - args.start for x in xs],
                [y * scale for y in ys],
                color=PALETTE[color % len(PALETTE)],
                linewidth=1.2,
                label=dashboard.legend(target.legend, series["metric"]),
            )
            color += 1
    ax.set_xlim(0, args.end - args.start)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x) // 60}:{int(x) % 60:02d}"))
    if panel.unit == "percentunit":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.0f}%"))
    elif panel.unit == "s":
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda y, _: f"{y * 1000:.0f} ms" if y < 1 else f"{y:.1f} s")
        )
    ax.grid(color=BORDER, linewidth=0.5)
    if color:
        legend = ax.legend(fontsize=6, loc="upper left", frameon=False, ncol=2 if color > 4 else 1)
        for text in legend.get_texts():
            text.set_color(TEXT)
    else:
        ax.text(0.5, 0.5, "no data", color=MUTED, ha="center", va="center", transform=ax.transAxes)


def draw_stat(ax, panel, client: PromClient, args, rate_win: str, range_: str) -> None:
    _style(ax, panel.title)
    ax.set_xticks([])
    ax.set_yticks([])
    result = client.query(dashboard.expand(panel.targets[0].expr, rate_win, range_), args.end)
    value = float(result[0]["value"][1]) if result else float("nan")
    ax.text(
        0.5,
        0.5,
        fmt(value, panel.unit),
        color=PALETTE[0],
        fontsize=28,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontweight="bold",
    )
    if panel.description:
        ax.text(
            0.5,
            0.12,
            panel.description,
            color=MUTED,
            fontsize=7,
            ha="center",
            wrap=True,
            transform=ax.transAxes,
        )


def draw_pie(ax, panel, client: PromClient, args, rate_win: str, range_: str) -> None:
    _style(ax, panel.title)
    target = panel.targets[0]
    result = client.query(dashboard.expand(target.expr, rate_win, range_), args.end)
    slices = [(dashboard.legend(target.legend, s["metric"]), float(s["value"][1])) for s in result]
    slices = [(label, v) for label, v in slices if math.isfinite(v) and v > 0]
    if not slices:
        ax.text(0.5, 0.5, "no data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    labels, values = zip(*slices, strict=True)
    wedges, _ = ax.pie(
        values, colors=PALETTE[: len(values)], startangle=90, wedgeprops={"edgecolor": PANEL, "linewidth": 1}
    )
    total = sum(values)
    legend = ax.legend(
        wedges,
        [f"{lb}  {v / total:.0%}" for lb, v in zip(labels, values, strict=True)],
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
    )
    for text in legend.get_texts():
        text.set_color(TEXT)
    ax.set_aspect("equal")
    ax.set_anchor("W")


# Layout, in inches: one Grafana grid row, the figure's width, and the room axes leave inside a
# panel's cell for its title and tick labels.
GRID_ROW_IN = 0.42
WIDTH_IN = 20.0
HEADER_IN = 0.7
PAD_IN = {"left": 0.55, "right": 0.15, "top": 0.32, "bottom": 0.3}


def _cell(panel, height_in: float, usable: tuple[float, float]) -> list[float]:
    """The axes rectangle (figure fractions) inside the panel's grid cell, padded."""
    left_in = usable[0] + panel.x / 24 * (usable[1] - usable[0])
    width_in = panel.w / 24 * (usable[1] - usable[0])
    top_in = HEADER_IN + panel.y * GRID_ROW_IN
    height_cell = panel.h * GRID_ROW_IN
    return [
        (left_in + PAD_IN["left"]) / WIDTH_IN,
        1 - (top_in + height_cell - PAD_IN["bottom"]) / height_in,
        (width_in - PAD_IN["left"] - PAD_IN["right"]) / WIDTH_IN,
        (height_cell - PAD_IN["top"] - PAD_IN["bottom"]) / height_in,
    ]


def render(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard.load(args.dashboard)
    client = PromClient(args.prometheus)
    rate_win = duration(args.rate_interval or rate_interval(args.step, args.scrape_interval))
    range_ = duration(args.end - args.start)
    rows = max(p.y + p.h for p in panels)
    height_in = HEADER_IN + rows * GRID_ROW_IN + 0.1
    fig = plt.figure(figsize=(WIDTH_IN, height_in), facecolor=BACKGROUND)
    title = json.loads(Path(args.dashboard).read_text())["title"]
    fig.text(
        0.2 / WIDTH_IN,
        1 - 0.35 / height_in,
        f"{title}: preview rendered from {Path(args.dashboard).name}'s queries on real Prometheus data "
        f"({args.subtitle}). Not a Grafana screenshot.",
        color=TEXT,
        fontsize=12,
        va="center",
    )
    drawers = {"timeseries": draw_timeseries, "stat": draw_stat, "piechart": draw_pie}
    usable = (0.0, WIDTH_IN - 0.1)
    for panel in panels:
        rect = _cell(panel, height_in, usable)
        if panel.type == "row":
            fig.text(
                rect[0] - PAD_IN["left"] / WIDTH_IN + 0.1 / WIDTH_IN,
                rect[1] + rect[3] / 2,
                panel.title,
                color=TEXT,
                fontsize=11,
                fontweight="bold",
                va="center",
            )
            continue
        draw = drawers.get(panel.type)
        if draw is None:
            raise SystemExit(f"panel {panel.id} ({panel.title}): no preview for type {panel.type}")
        draw(fig.add_axes(rect), panel, client, args, rate_win, range_)
    fig.savefig(args.out, dpi=args.dpi, facecolor=BACKGROUND)
    plt.close(fig)
    # A 256-colour palette keeps the picture sharp and the file (committed to git) small.
    from PIL import Image  # matplotlib depends on Pillow

    with Image.open(args.out) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(args.out, optimize=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--start", type=float, required=True, help="range start, unix seconds")
    parser.add_argument("--end", type=float, required=True, help="range end, unix seconds")
    parser.add_argument("--step", type=float, default=2.0, help="query_range step, seconds")
    parser.add_argument(
        "--scrape-interval", type=float, default=15.0, help="Prometheus' scrape interval, seconds"
    )
    parser.add_argument(
        "--rate-interval",
        type=float,
        default=None,
        help="window for [$__rate_interval], seconds (default: Grafana's rule)",
    )
    parser.add_argument("--dashboard", type=Path, default=dashboard.DASHBOARD)
    parser.add_argument("--subtitle", default="job=All, instance=All")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dpi", type=int, default=110)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    render(args)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
