"""Bar charts of a benchmark run: ``chart.py RESULTS_JSON OUT_DIR``.

Run by the peers' venv interpreter (scripts/bench/.peers/bin/python), which
has matplotlib: the project's own environment must not need it.  It reads
only the results.json that run.py wrote, so a chart can be redrawn from a
stored run without measuring again.

Writes ``echo.png`` (TCP and UDP echo), ``http.png`` (HTTP hello: raw, WSGI
and ASGI with one worker pinned; 1 vs 2 workers unpinned), ``client.png``
(the client Pool as load generator) and ``ws.png`` (WebSocket echo).  Each
figure has two panels per table: the table's figure - CPU microseconds per
request (the server's, or the load's in the client table), lower is better -
with a whisker from the fastest to the slowest run, and requests per second.
Our rows are drawn in bold, and each comes twice: compiled (solid) and pure
(dotted, PULSAR_ARBITER_PURE=1) side by side.  Rows whose runs had errors are
hatched with slashes, so a bad number cannot pass for a good one.
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
    """Horizontal bars, one group per row name, one bar per suite (min-max whisker)."""
    names: list[str] = []
    rows_by_name: dict[str, dict[str, Any]] = {}
    for suite in suites:
        for row in suite["rows"]:
            if row["name"] not in names:
                names.append(row["name"])
                rows_by_name[row["name"]] = row
    height = 0.8 / max(1, len(suites))
    for index, suite in enumerate(suites):
        key = suite.get("metric", "cpu_us_per_request") if metric == "figure" else metric
        rows = {row["name"]: row for row in suite["rows"]}
        for position, name in enumerate(names):
            row = rows.get(name)
            if row is None or not row.get("median"):
                if row is not None and row.get("skipped"):
                    ax.text(0, position, " skipped", va="center", fontsize=7, color="grey")
                continue
            value = _value(row, key)
            y = position + (index - (len(suites) - 1) / 2) * height
            flagged = bool(row.get("errors_in_runs"))
            pure = row.get("variant") == "pure"
            lo = float((row.get("min") or {}).get(key, value))
            hi = float((row.get("max") or {}).get(key, value))
            ax.barh(
                y,
                value,
                height=height * 0.95,
                color=COLORS[index % len(COLORS)],
                alpha=0.55 if pure else 1.0,
                hatch="//" if flagged else ("..." if pure else None),
                edgecolor="black" if flagged or pure else None,
                xerr=[[value - lo], [hi - value]],
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
            )
            text = f"{value:,.0f}" if key == "rps" else f"{value:.1f}"
            ax.text(hi, y, " " + text, va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    for label in ax.get_yticklabels():
        if rows_by_name[label.get_text()]["role"] == "ours":
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
        first = suites[0]
        name = first["group_title"]
        who = "load" if first["kind"] == "client" else "server"
        unit = first.get("unit", "request")
        grouped_panel(
            axes[line][0],
            suites,
            "figure",
            f"{name}: {who} CPU µs per {unit} (lower is better)",
        )
        grouped_panel(axes[line][1], suites, "rps", f"{name}: {unit}s/s")
    widest: list[dict[str, Any]] = max(panels, key=len)
    if len(widest) > 1:  # several set-ups share a panel: say which colour is which
        legend = [
            Patch(color=COLORS[i % len(COLORS)], label=suite["short"])
            for i, suite in enumerate(widest)
        ]
    else:
        legend = [Patch(color=COLORS[0], label="default environment (compiled core when built)")]
    legend.append(
        Patch(
            facecolor=COLORS[0],
            alpha=0.55,
            edgecolor="black",
            hatch="...",
            label="pure (PULSAR_ARBITER_PURE=1)",
        )
    )
    if any(row.get("errors_in_runs") for p in panels for s in p for row in s["rows"]):
        legend.append(
            Patch(facecolor="white", edgecolor="black", hatch="//", label="runs had errors")
        )
    meta = results["meta"]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(
        f"{heading} - {meta['date']}, {meta['cpu_model']}, {meta['nproc']} cores, "
        f"median of {meta['runs']} interleaved run(s) x {meta['duration']} s, whisker min-max",
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
    figure(results, [["http1"], ["http2"]], out / "http.png", "HTTP/1.1 GET keep-alive, wrk -c64")
    figure(results, [["pool"]], out / "client.png", "Client Pool as load generator, 64 conns")
    figure(results, [["ws"]], out / "ws.png", "WebSocket echo, 64 connections, 100 B")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
