"""Turn a run's results (run.py's results.json) into docs/benchmarks/README.md.

Kept apart from run.py so the report can be re-rendered from a stored
results.json (``python scripts/bench/report.py results.json > README.md``)
without measuring again, and so the target rules live in one place.

The rules the tables follow:

* the compared figure is in bold - CPU microseconds per request (per
  message for WebSocket), the server's, or the load process's in the client
  table: rps can be capped by the load generator, and is meaningless when
  load and server share cores;
* every row shows the median of its runs and their min-max;
* a ratio is never a ratio of medians: each round of the table measured
  every row once, a few seconds apart, so the ratio is taken within each
  round and the median of those ratios is shown (min-max beside it in the
  targets);
* any row whose runs saw errors, non-2xx answers, timeouts or lost
  datagrams says so in its notes, and a target that depends on such a row
  is reported as unreliable rather than met.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PURE_SUFFIX = " (pure)"


@dataclass(frozen=True)
class Target:
    """ours / reference in one table, judged on the median of per-round ratios."""

    issue: str
    text: str
    suite: str
    ours: str  # the compiled row's name; the pure row adds PURE_SUFFIX
    reference: str
    factor: float
    op: str  # "<", "<=" or ">="
    metric: str = "cpu_us_per_request"


TARGETS: list[Target] = [
    Target("14", "TCP echo within 1.2x of bare uvloop", "tcp", "pulsar_arbiter echo",
           "bare uvloop", 1.2, "<="),
    Target("14", "UDP echo within 1.3x of bare uvloop", "udp",
           "pulsar_arbiter DatagramServer", "bare uvloop", 1.3, "<="),
    Target("14", "raw HTTP handler within 1.3x of bare uvloop+httptools", "http1",
           "pulsar_arbiter raw", "bare uvloop+httptools", 1.3, "<="),
    Target("14", "WSGI at least matching granian WSGI (Rust)", "http1", "pulsar_arbiter WSGI",
           "granian WSGI", 1.0, "<="),
    Target("14", "client Pool within 1.5x of a bare protocol client (load CPU/request)",
           "pool", "pulsar_arbiter Pool", "bare protocol client", 1.5, "<=",
           "client_cpu_us_per_request"),
    Target("14", "2 workers serve at least 1.8x the requests/s of 1 worker (raw HTTP)",
           "http2", "pulsar_arbiter raw, 2 workers", "pulsar_arbiter raw, 1 worker", 1.8,
           ">=", "rps"),
    Target("13", "ASGI cheaper than granian ASGI", "http1", "pulsar_arbiter ASGI",
           "granian ASGI", 1.0, "<"),
    Target("13", "ASGI at most 0.7x uvicorn (httptools + uvloop)", "http1",
           "pulsar_arbiter ASGI", "uvicorn", 0.7, "<="),
    Target("13", "WebSocket echo cheaper per message than uvicorn (websockets)", "ws",
           "pulsar_arbiter ASGI WebSocket", "uvicorn (websockets)", 1.0, "<"),
    Target("13", "WebSocket echo cheaper per message than uvicorn (wsproto)", "ws",
           "pulsar_arbiter ASGI WebSocket", "uvicorn (wsproto)", 1.0, "<"),
    Target("earlier", "WSGI cheaper than uvicorn (ASGI)", "http1", "pulsar_arbiter WSGI",
           "uvicorn", 1.0, "<"),
    Target("earlier", "WSGI cheaper than granian ASGI", "http1", "pulsar_arbiter WSGI",
           "granian ASGI", 1.0, "<"),
]  # fmt: skip


# -------------------------------------------------------------------- lookups
def suite_of(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    for suite in results["suites"]:
        if suite["key"] == key:
            return dict(suite)
    return None


def row_of(suite: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if suite is None:
        return None
    for row in suite["rows"]:
        if row["name"] == name:
            return dict(row)
    return None


def figure(row: dict[str, Any] | None, metric: str) -> float | None:
    """The row's median of ``metric``, None if it has no result."""
    if row is None or not row.get("median") or metric not in row["median"]:
        return None
    return float(row["median"][metric])


def round_ratios(
    row: dict[str, Any] | None, ref: dict[str, Any] | None, metric: str
) -> list[float]:
    """row / ref for each round both have a run in: ratios within one round only."""
    if row is None or ref is None:
        return []
    theirs = {r["round"]: float(r[metric]) for r in ref.get("runs", []) if metric in r}
    return [
        float(r[metric]) / theirs[r["round"]]
        for r in row.get("runs", [])
        if metric in r and theirs.get(r["round"], 0.0) > 0
    ]


def median_ratio(row: dict[str, Any] | None, ref: dict[str, Any] | None, metric: str) -> str:
    ratios = round_ratios(row, ref, metric)
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


# -------------------------------------------------------------------- targets
def _met(ratio: float, op: str, factor: float) -> bool:
    if op == "<":
        return ratio < factor
    if op == ">=":
        return ratio >= factor
    return ratio <= factor


def judge(results: dict[str, Any], target: Target, ours: str) -> dict[str, Any]:
    """One target for one of our rows: median of the per-round ratios, and its spread."""
    suite = suite_of(results, target.suite)
    mine, theirs = row_of(suite, ours), row_of(suite, target.reference)
    entry: dict[str, Any] = {"suite": target.suite, "ours": ours, "ratio": None}
    for row in (mine, theirs):
        if row is not None and row.get("skipped"):
            entry["status"] = f"n/a ({row['name']} skipped: {row['skipped']})"
            return entry
    ratios = round_ratios(mine, theirs, target.metric)
    if not ratios:
        missing = mine is None or theirs is None
        entry["status"] = "n/a (not measured)" if missing else "n/a (a row failed)"
        return entry
    ratio = statistics.median(ratios)
    met = _met(ratio, target.op, target.factor)
    flagged = [r["name"] for r in (mine, theirs) if r and r.get("errors_in_runs")]
    status = (
        f"unreliable (errors in {', '.join(flagged)})" if flagged else ("met" if met else "NOT met")
    )
    entry.update(
        ratio=ratio,
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        rounds=len(ratios),
        ours_value=figure(mine, target.metric),
        ref_value=figure(theirs, target.metric),
        ours_cpu_us=figure(mine, "cpu_us_per_request"),
        ref_cpu_us=figure(theirs, "cpu_us_per_request"),
        met=met,
        status=status,
    )
    return entry


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target judged for the compiled and the pure row, on the same run's rounds."""
    judged = []
    for target in TARGETS:
        judged.append(
            {
                "issue": target.issue,
                "target": target.text,
                "ours": target.ours,
                "reference": target.reference,
                "metric": target.metric,
                "threshold": f"{target.op} {target.factor:.2f}x",
                "compiled": judge(results, target, target.ours),
                "pure": judge(results, target, target.ours + PURE_SUFFIX),
            }
        )
    return judged


def _ratio_cell(judged: dict[str, Any] | None, metric: str) -> str:
    if judged is None:
        return "-"
    if judged["ratio"] is None:
        return str(judged["status"])
    if metric == "rps":
        detail = (
            f"{judged['ours_value']:,.0f} / {judged['ref_value']:,.0f} req/s; server CPU "
            f"{judged['ours_cpu_us']:.1f} / {judged['ref_cpu_us']:.1f} µs/req"
        )
    else:
        detail = f"{judged['ours_value']:.1f} / {judged['ref_value']:.1f} µs"
    return (
        f"{judged['ratio']:.2f}x ({judged['ratio_min']:.2f}-{judged['ratio_max']:.2f}; "
        f"{detail}) **{judged['status']}**"
    )


def targets_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| Issue | Target (ours / reference, median of the per-round ratios) | threshold "
        "| compiled (default environment) | pure (PULSAR_ARBITER_PURE=1) |",
        "|---|---|---|---|---|",
    ]
    for entry in results["targets"]:
        lines.append(
            f"| {entry['issue']} | {entry['target']} | {entry['threshold']} "
            f"| {_ratio_cell(entry.get('compiled'), entry['metric'])} "
            f"| {_ratio_cell(entry.get('pure'), entry['metric'])} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- tables
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def row_notes(suite: dict[str, Any], row: dict[str, Any], max_outside: float) -> list[str]:
    """Why a row's number may not mean what it seems to."""
    notes = []
    m = row["median"]
    runs = len(row["runs"])
    if row.get("errors_in_runs"):
        parts = []
        if row.get("errors_total"):
            kind = "socket errors/non-2xx" if suite["kind"] == "http" else "errors"
            parts.append(f"{row['errors_total']} {kind}")
        if row.get("lost_total"):
            kind = "timeouts" if suite["kind"] == "http" else "lost"
            parts.append(f"{row['lost_total']} {kind}")
        notes.append(f"⚠ {' + '.join(parts)} in {row['errors_in_runs']}/{runs} runs")
    if (row.get("headers") or {}).get("connection") == "close":
        notes.append("no keep-alive (`connection: close`): one TCP connection per request")
    if suite["pinned"] and suite["kind"] != "client":
        if m["client_cpu_util"] >= 0.9:
            notes.append("load-bound (the load generator's core was full)")
        if m["server_cpu_util"] < 0.8:
            notes.append(f"server core not saturated ({m['server_cpu_util']:.0%})")
    if row.get("noisy_kept"):
        notes.append(f"{row['noisy_kept']} run(s) above {max_outside:.0%} outside load kept")
    if row.get("rejected_noisy"):
        notes.append(f"{len(row['rejected_noisy'])} noisy run(s) redone")
    if row.get("failures"):
        notes.append(f"{len(row['failures'])} failed run(s)")
    return notes


def suite_table(suite: dict[str, Any], max_outside: float) -> str:
    metric = suite.get("metric", "cpu_us_per_request")
    unit = suite.get("unit", "request")
    short = "req" if unit == "request" else "msg"
    bare_row = row_of(suite, suite["bare"])
    limit_row = row_of(suite, suite["limit"]) if suite.get("limit") else None
    client = suite["kind"] == "client"
    load = "wrk" if suite["kind"] == "http" else "load"
    what = "load CPU" if client else "server CPU"
    refs = [("bare", suite["bare"], bare_row)]
    if limit_row is not None or suite.get("limit"):
        refs.append(("limit", suite["limit"], limit_row))
    ratio_heads = "".join(f" | {what}/{short} vs {name}" for _, name, _ in refs)
    ratio_heads += "".join(f" | {short}/s vs {name}" for _, name, _ in refs)
    lines = [
        f"| {'Load generator' if client else 'Server'} | runs | {short}/s | p50 µs | p99 µs "
        f"| **{what} µs/{short}** (median) "
        f"| min-max{ratio_heads} | {'server' if not client else 'C server'} CPU "
        f"| {load} CPU | outside load (median, max) | notes |",
        "|---|--:|--:|--:|--:|--:|--:|" + "--:|" * (2 * len(refs)) + "--:|--:|--:|---|",
    ]
    for row in suite["rows"]:
        name = f"**{row['name']}**" if row["role"] == "ours" else row["name"]
        blanks = " |" * (2 * len(refs) + 8)
        if row.get("skipped"):
            lines.append(f"| {name} | skipped |{blanks} {row['skipped']} |")
            continue
        if not row.get("median"):
            reason = (row.get("error") or "no result").splitlines()[0][:160]
            lines.append(f"| {name} | failed |{blanks} {reason} (see Details) |")
            continue
        m, lo, hi = row["median"], row["min"], row["max"]
        latency = "| - | -" if client else f"| {m['p50_us']:,.0f} | {m['p99_us']:,.0f}"
        ratios = "".join(f" | {median_ratio(row, ref, metric)}" for _, _, ref in refs)
        ratios += "".join(f" | {median_ratio(row, ref, 'rps')}" for _, _, ref in refs)
        lines.append(
            f"| {name} | {len(row['runs'])} | {m['rps']:,.0f} {latency} "
            f"| **{m[metric]:.2f}** | {lo[metric]:.2f}-{hi[metric]:.2f}{ratios} "
            f"| {m['server_cpu_util']:.0%} | {m['client_cpu_util']:.0%} "
            f"| {m['outside_share']:.1%}, {hi['outside_share']:.1%} "
            f"| {'; '.join(row_notes(suite, row, max_outside))} |"
        )
    return "\n".join(lines)


def variants_table(results: dict[str, Any]) -> list[str]:
    """Each of our rows, compiled next to pure: the medians and the per-round ratio."""
    lines = [
        "| Table | Row | compiled µs (median) | pure µs (median) | pure / compiled |",
        "|---|---|--:|--:|--:|",
    ]
    for suite in results["suites"]:
        metric = suite.get("metric", "cpu_us_per_request")
        for row in suite["rows"]:
            if row.get("variant") != "compiled":
                continue
            pure = row_of(suite, row["name"] + PURE_SUFFIX)
            a, b = figure(row, metric), figure(pure, metric)
            lines.append(
                f"| {suite['key']} | {row['name']} | {_num(a, '.2f')} | {_num(b, '.2f')} "
                f"| {median_ratio(pure, row, metric)} |"
            )
    return lines if len(lines) > 2 else []


# --------------------------------------------------------------------- render
def _facts(meta: dict[str, Any]) -> list[str]:
    ours = ", ".join(f"{k} {v}" for k, v in meta.get("ours", {}).items())
    theirs = ", ".join(f"{k} {v}" for k, v in meta.get("peers", {}).items())
    core = meta.get("core", {})
    return [
        f"- Date: {meta['date']}",
        f"- CPU: {meta['cpu_model']}; nproc {meta['nproc']} (usable cores "
        f"{', '.join(map(str, meta['usable_cores']))}); {meta['machine']}; a shared machine",
        f"- Kernel: Linux {meta['kernel']}",
        f"- Python: {meta['python_impl']} {meta['python']} (ours and the peers' venv alike)",
        f"- Our side: {ours}",
        f"- `python -m pulsar_arbiter --version`: `{core.get('compiled', '?')}`; with "
        f"PULSAR_ARBITER_PURE=1: `{core.get('pure', '?')}`",
        f"- Peers' venv (scripts/bench/.peers): {theirs}",
        f"- {meta.get('nginx', '')}; {meta.get('wrk', '')}; {meta.get('gcc', '')}",
    ]


def method(meta: dict[str, Any]) -> list[str]:
    """The "How it is measured" section."""
    max_outside = float(meta["max_outside"])
    return [
        "## How it is measured",
        "",
        f"- **Interleaved rounds.** Each table is measured in {meta['runs']} rounds: run 1 "
        "of every row, then run 2 of every row, and so on (the first row rotates each "
        "round). A neighbour's burst or a drift of the machine then touches every row "
        "alike rather than one row's whole series.",
        "- **Fresh processes.** Every run starts its server afresh on a free port, warms it "
        f"up for {meta['warmup']} s with the same load, then measures for "
        f"{meta['duration']} s.",
        "- **The figure: CPU per request.** The server's CPU (user + system of its whole "
        "process tree, arbiter and workers together) is sampled right before and after the "
        "measured load and divided by the requests (WebSocket: echoed messages) the load "
        "generator counted. In the client table the figure is the load process's own CPU "
        "over its measured window, per request.",
        "- **min / median / max.** Each row shows the median of its runs and their range.",
        "- **Ratios within one run.** Every ratio (the `vs` columns and the targets) is "
        "taken within one round - the two rows ran seconds apart under the same "
        "conditions - and the median of the rounds' ratios is shown; the targets also give "
        "the min-max of those ratios. A ratio of two medians is never used.",
        "- **Pinning.** One-worker tables: server pinned to core 0, load generator to core 1. "
        "The 1-vs-2-worker table leaves both unpinned (two pinned workers and a pinned load "
        "do not fit on two cores), so wrk competes with the workers there.",
        "- **Outside load.** Over every measured window, the busy time of the benchmark's "
        "cores (from /proc/stat: user, nice, system, irq, softirq, steal) minus the CPU "
        "of our server's process tree and of the load process is the time other processes "
        "took: `outside load` is that as a share of the cores' capacity (both cores when "
        f"unpinned). A run above {max_outside:.0%} is measured again, at most "
        f"{meta['max_redo']} times per run and only while the whole run stays within its "
        f"time budget ({meta['budget_s']:.0f} s); every rejected run is kept in "
        "results.json. Before each run the harness also waits (bounded) for a short lull. "
        f"This run redid {meta.get('redone', 0)} run(s) and waited "
        f"{meta.get('quiet_waited_s', 0):.0f} s for lulls.",
        "- **Compiled and pure.** Each of our rows is measured twice: with the default "
        "environment (the compiled core when it is built; `--version` above says which is "
        "loaded) and with `PULSAR_ARBITER_PURE=1`, which forces the pure-Python path.",
        "- `server CPU` and the load's CPU are in % of one core over the run; near 100 % for "
        "the load means the load generator set the pace (`load-bound`). A server that is "
        "not saturated serves fewer requests per loop wake-up and spends somewhat more CPU "
        "per request: compare rows whose `server CPU` is similar.",
        "- Latency: p50/p99 from the load generator at 64 requests in flight - a saturation "
        "latency, not an idle one.",
        "- A run with socket errors, non-2xx answers, timeouts or lost datagrams is kept and "
        "flagged ⚠ in its row's notes; targets relying on such a row say `unreliable`. A "
        "row whose server does not serve the protocol yet (our WebSocket before `--asgi` "
        "speaks it, found by trying a handshake) is skipped with the answer it got.",
        "",
    ]


def outside_summary(results: dict[str, Any]) -> str:
    """One line on how busy the machine was with other work while we measured."""
    meta = results["meta"]
    shares = [
        float(run["outside_share"])
        for suite in results["suites"]
        for row in suite["rows"]
        for run in row.get("runs") or []
        if "outside_share" in run
    ]
    if not shares:
        return "No run completed."
    noisy = sum(1 for share in shares if share > float(meta["max_outside"]))
    return (
        f"Outside load (other processes' share of the benchmark's cores) over the "
        f"{len(shares)} kept runs: median {statistics.median(shares):.0%}, max "
        f"{max(shares):.0%}; {noisy} kept run(s) above the {float(meta['max_outside']):.0%} "
        f"threshold, {meta.get('redone', 0)} run(s) redone."
    )


CHARTS = {"tcp": "echo.png", "http1": "http.png", "pool": "client.png", "ws": "ws.png"}


def render(results: dict[str, Any]) -> str:
    """The whole README.md."""
    meta = results["meta"]
    max_outside = float(meta["max_outside"])
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['mode']} mode: "
        f"{meta['runs']} interleaved run(s) of {meta['duration']} s per row after a "
        f"{meta['warmup']} s warm-up, {meta['connections']} connections; the whole run took "
        f"{meta['elapsed_s']:.0f} s). Generated file: rerun the command rather than editing "
        "it. Every run is in [results.json](results.json).",
        "",
        outside_summary(results),
        "",
        "## Targets",
        "",
        "Issues 13 (ASGI and WebSocket) and 14 (compiled core), and the earlier WSGI "
        "targets; each judged on the median of the per-round ratios of one run.",
        "",
        targets_markdown(results),
        "",
    ]
    variants = variants_table(results)
    if variants:
        out += ["## Compiled and pure side by side", "", *variants, ""]
    out += ["## Machine", "", *_facts(meta), "", *method(meta)]
    for suite in results["suites"]:
        out += [f"## {suite['title']}", "", suite["note"], "", suite_table(suite, max_outside), ""]
        chart = CHARTS.get(suite["key"])
        if chart:
            out += [f"![{suite['group_title']}]({chart})", ""]
    out += [
        "## Commands",
        "",
        "Run from the repository root; `$PORT` is a free port picked "
        "per run, `$TMP` a fresh temp dir per run. `taskset -c N` shows the pinning "
        "(done with sched_setaffinity before exec).",
        "",
    ]
    for suite in results["suites"]:
        label = "server" if suite["kind"] == "client" else "load"
        out += [f"### {suite['title']}", "", "```", f"# {label}: {suite['load_command']}"]
        out += [f"# {row['name']}\n{row['command']}" for row in suite["rows"]]
        out += ["```", ""]
    out += notes_section(results)
    return "\n".join(out).rstrip() + "\n"


def notes_section(results: dict[str, Any]) -> list[str]:
    """Failures in full, and what each HTTP server actually answered."""
    out = ["## Details", ""]
    for suite in results["suites"]:
        for row in suite["rows"]:
            for text in dict.fromkeys(row.get("failures") or []):
                out += [
                    f"**{suite['key']} / {row['name']} failed:**",
                    "",
                    "```",
                    text[-2000:],
                    "```",
                    "",
                ]
    seen: dict[str, dict[str, Any]] = {}
    for suite in results["suites"]:
        for row in suite["rows"] if suite["kind"] == "http" else []:
            if row.get("headers") and row["name"] not in seen:
                seen[row["name"]] = row
    if seen:
        out += [
            "What each HTTP server answered to `GET /` (header names, the `connection` "
            "header's value when sent, and bytes per response as counted by wrk, headers "
            "included):",
            "",
            "| Server | headers | connection | bytes/response |",
            "|---|---|---|--:|",
        ]
        for name, row in seen.items():
            size = row["median"].get("bytes_per_response") if row.get("median") else None
            headers = row["headers"]
            out.append(
                f"| {name} | {', '.join(headers)} | {headers.get('connection', '')} "
                f"| {_num(size, '.0f')} |"
            )
        out.append("")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py results.json")
    data = json.loads(Path(sys.argv[1]).read_text())
    data["targets"] = evaluate_targets(data)
    sys.stdout.write(render(data))
