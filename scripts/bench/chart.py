"""Bar charts of a benchmark run: ``chart.py RESULTS_JSON OUT_DIR``.

Run by the peers' venv interpreter (scripts/bench/.peers/bin/python), which
has matplotlib: the project's own environment must not need it.  It reads
only the results.json that run.py wrote, so a chart can be redrawn from a
stored run without measuring again.

Writes ``echo.png`` (TCP and UDP echo) and ``http.png`` (HTTP plaintext, one
worker pinned next to two workers unpinned).  Each figure has two panels:
server CPU microseconds per request - the fair figure, lower is better - and
requests per second.  Our rows are drawn in bold; rows whose runs had errors
are hatched, so a bad number cannot pass for a good one in the picture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found]  # the peers venv has it

matplotlib.use("Agg")  # no display on a benchmark box
import matplotlib.pyplot as plt  # type: ignore[import-not-found]
from matplotlib.patches import Patch  # type: ignore[import-not-found]
from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found]

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def _suite(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    for suite in results["suites"]:
        if suite["key"] == key:
            return dict(suite)
    return None


def _value(row: dict[str, Any], metric: str) -> float:
    median = row.get("median") or {}
    return float(median.get(metric, 0.0))


def grouped_panel(ax: Any, suites: list[dict[str, Any]], metric: str, title: str) -> None:
    """Horizontal bars, one group per server name, one bar per suite."""
    names: list[str] = []
    roles: dict[str, str] = {}
    for suite in suites:
        for row in suite["rows"]:
            if row["name"] not in names:
                names.append(row["name"])
                roles[row["name"]] = row["role"]
    height = 0.8 / max(1, len(suites))
    for index, suite in enumerate(suites):
        rows = {row["name"]: row for row in suite["rows"]}
        for position, name in enumerate(names):
            row = rows.get(name)
            if row is None or not row.get("median"):
                continue
            value = _value(row, metric)
            y = position + (index - (len(suites) - 1) / 2) * height
            flagged = bool(row.get("errors_in_runs"))
            ax.barh(
                y,
                value,
                height=height * 0.95,
                color=COLORS[index % len(COLORS)],
                hatch="//" if flagged else None,
                edgecolor="black" if flagged else None,
            )
            text = f"{value:,.0f}" if metric == "rps" else f"{value:.1f}"
            ax.text(value, y, " " + text, va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    for label in ax.get_yticklabels():
        if roles.get(label.get_text()) == "ours":
            label.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.2)
    if metric == "rps":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / 1000:.0f}k"))


def figure(results: dict[str, Any], layout: list[list[str]], path: Path, heading: str) -> None:
    """One PNG: a row of (CPU/request, rps) panels per list of suite keys."""
    panels = [[s for key in keys if (s := _suite(results, key)) is not None] for keys in layout]
    panels = [p for p in panels if p]
    if not panels:
        return
    tallest = max(len({row["name"] for s in p for row in s["rows"]}) for p in panels)
    fig, axes = plt.subplots(
        len(panels),
        2,
        figsize=(13, 1.2 + len(panels) * (0.9 + 0.42 * tallest)),
        squeeze=False,
    )
    for line, suites in enumerate(panels):
        name = suites[0]["group_title"]
        grouped_panel(
            axes[line][0],
            suites,
            "cpu_us_per_request",
            f"{name}: server CPU µs per request (lower is better)",
        )
        grouped_panel(axes[line][1], suites, "rps", f"{name}: requests/s")
    widest: list[dict[str, Any]] = max(panels, key=len)
    legend = [
        Patch(color=COLORS[i % len(COLORS)], label=suite["short"]) for i, suite in enumerate(widest)
    ]
    if any(row.get("errors_in_runs") for p in panels for s in p for row in s["rows"]):
        legend.append(
            Patch(facecolor="white", edgecolor="black", hatch="//", label="runs had errors")
        )
    meta = results["meta"]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(
        f"{heading} - {meta['date']}, {meta['cpu_model']}, {meta['nproc']} cores, "
        f"median of {meta['runs']} run(s) x {meta['duration']} s",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    figure(results, [["tcp"], ["udp"]], out / "echo.png", "Echo, 64 connections, 100 B")
    figure(results, [["http1", "http2"]], out / "http.png", "HTTP/1.1 plaintext, wrk -c64")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
