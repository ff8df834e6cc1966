"""Turn a run's results (run.py's results.json) into docs/benchmarks/README.md.

Kept apart from run.py so the report can be re-rendered from a stored
results.json (``python scripts/bench/report.py results.json > README.md``)
without measuring again, and so the target rules live in one place.

The rules the tables follow:

* server CPU microseconds per request is in bold: it is the figure that
  compares implementations (rps can be capped by the load generator, and is
  meaningless when load and server share cores);
* ratios divide by the suite's bare row (what the event loop alone costs)
  and by its limit row (C epoll for echo, nginx for HTTP);
* any row whose runs saw errors, non-2xx answers, timeouts or lost
  datagrams says so in its notes, and a target that depends on such a row
  is reported as unreliable rather than met.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (key, suite, ours, reference, factor, strict): ours_cpu / ref_cpu must be
# < factor (strict) or <= factor; the HTTP ones are also shown for 2 workers.
TARGETS: list[tuple[str, str, str, str, float, bool]] = [
    (
        "raw HTTP handler within 1.3x of bare uvloop+httptools",
        "http1",
        "pulsar_arbiter raw",
        "bare uvloop+httptools",
        1.3,
        False,
    ),
    ("WSGI adapter cheaper than uvicorn", "http1", "pulsar_arbiter WSGI", "uvicorn", 1.0, True),
    (
        "WSGI adapter cheaper than granian ASGI",
        "http1",
        "pulsar_arbiter WSGI",
        "granian ASGI",
        1.0,
        True,
    ),
    (
        "WSGI adapter at least matching granian WSGI",
        "http1",
        "pulsar_arbiter WSGI",
        "granian WSGI",
        1.0,
        False,
    ),
    (
        "TCP echo within 1.2x of bare uvloop",
        "tcp",
        "pulsar_arbiter echo",
        "bare uvloop",
        1.2,
        False,
    ),
    (
        "UDP echo within 1.3x of bare uvloop",
        "udp",
        "pulsar_arbiter DatagramServer",
        "bare uvloop",
        1.3,
        False,
    ),
]
SECOND_SUITE = {"http1": "http2"}


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


def cpu(row: dict[str, Any] | None) -> float | None:
    if row is None or not row.get("median"):
        return None
    return float(row["median"]["cpu_us_per_request"])


# -------------------------------------------------------------------- targets
def _judge(
    results: dict[str, Any], suite_key: str, ours: str, ref: str, factor: float, strict: bool
) -> dict[str, Any]:
    suite = suite_of(results, suite_key)
    mine, theirs = row_of(suite, ours), row_of(suite, ref)
    a, b = cpu(mine), cpu(theirs)
    if a is None or b is None or b <= 0:
        missing = mine is None or theirs is None
        status = "n/a (not measured)" if missing else "n/a (a row failed)"
        return {"suite": suite_key, "ratio": None, "status": status}
    ratio = a / b
    met = ratio < factor if strict else ratio <= factor
    flagged = [r["name"] for r in (mine, theirs) if r and r.get("errors_in_runs")]
    if flagged:
        status = f"unreliable (errors in {', '.join(flagged)})"
    else:
        status = "met" if met else "NOT met"
    return {
        "suite": suite_key,
        "ours_cpu_us": a,
        "ref_cpu_us": b,
        "ratio": ratio,
        "met": met,
        "status": status,
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target judged on the same run's server CPU per request."""
    judged = []
    for text, suite_key, ours, ref, factor, strict in TARGETS:
        entry: dict[str, Any] = {
            "target": text,
            "ours": ours,
            "reference": ref,
            "threshold": f"{'<' if strict else '<='} {factor:.2f}x",
            "primary": _judge(results, suite_key, ours, ref, factor, strict),
        }
        second = SECOND_SUITE.get(suite_key)
        if second is not None:
            entry["secondary"] = _judge(results, second, ours, ref, factor, strict)
        judged.append(entry)
    return judged


def _ratio_cell(judged: dict[str, Any] | None) -> str:
    if judged is None:
        return "-"
    if judged["ratio"] is None:
        return str(judged["status"])
    return (
        f"{judged['ratio']:.2f}x ({judged['ours_cpu_us']:.1f} / {judged['ref_cpu_us']:.1f} µs) "
        f"**{judged['status']}**"
    )


def targets_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| Target (server CPU µs per request, ours / reference) | threshold "
        "| 1 worker, pinned (the target) | 2 workers, unpinned (for information) |",
        "|---|---|---|---|",
    ]
    for entry in results["targets"]:
        lines.append(
            f"| {entry['target']} | {entry['threshold']} | {_ratio_cell(entry['primary'])} "
            f"| {_ratio_cell(entry.get('secondary'))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- tables
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref <= 0:
        return "-"
    return f"{value / ref:.2f}x"


def row_notes(suite: dict[str, Any], row: dict[str, Any], max_foreign: float) -> list[str]:
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
    if suite["pinned"]:
        if m["client_cpu_util"] >= 0.9:
            notes.append("load-bound (the load generator's core was full)")
        if m["server_cpu_util"] < 0.8:
            notes.append(f"server core not saturated ({m['server_cpu_util']:.0%})")
    if m["foreign_cpu_s"] > max_foreign:
        notes.append("noisy: other processes used our cores")
    if row.get("discarded_noisy"):
        notes.append(f"{row['discarded_noisy']} noisy run(s) redone")
    return notes


def suite_table(suite: dict[str, Any], max_foreign: float) -> str:
    bare = cpu(row_of(suite, suite["bare"]))
    limit = cpu(row_of(suite, suite["limit"]))
    bare_row, limit_row = row_of(suite, suite["bare"]), row_of(suite, suite["limit"])
    bare_rps = bare_row["median"]["rps"] if bare_row and bare_row.get("median") else None
    limit_rps = limit_row["median"]["rps"] if limit_row and limit_row.get("median") else None
    load = "wrk" if suite["kind"] == "http" else "load"
    lines = [
        f"| Server | req/s | p50 µs | p99 µs | **server CPU µs/req** | CPU/req vs {suite['bare']} "
        f"| CPU/req vs {suite['limit']} | req/s vs {suite['bare']} | req/s vs {suite['limit']} "
        f"| server CPU | {load} CPU | foreign CPU s | notes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in suite["rows"]:
        name = f"**{row['name']}**" if row["role"] == "ours" else row["name"]
        if not row.get("median"):
            reason = (row.get("error") or "no result").splitlines()[0][:160]
            lines.append(f"| {name} | failed | | | | | | | | | | | {reason} (see below) |")
            continue
        m = row["median"]
        c = m["cpu_us_per_request"]
        lines.append(
            f"| {name} | {m['rps']:,.0f} | {m['p50_us']:,.0f} | {m['p99_us']:,.0f} "
            f"| **{c:.2f}** | {_ratio(c, bare)} | {_ratio(c, limit)} "
            f"| {_ratio(m['rps'], bare_rps)} | {_ratio(m['rps'], limit_rps)} "
            f"| {m['server_cpu_util']:.0%} | {m['client_cpu_util']:.0%} "
            f"| {m['foreign_cpu_s']:.2f} | {'; '.join(row_notes(suite, row, max_foreign))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- render
def _facts(meta: dict[str, Any]) -> list[str]:
    ours = ", ".join(f"{k} {v}" for k, v in meta.get("ours", {}).items())
    theirs = ", ".join(f"{k} {v}" for k, v in meta.get("peers", {}).items())
    return [
        f"- Date: {meta['date']}",
        f"- CPU: {meta['cpu_model']}; nproc {meta['nproc']} (usable cores "
        f"{', '.join(map(str, meta['usable_cores']))}); {meta['machine']}; a shared machine",
        f"- Kernel: Linux {meta['kernel']}",
        f"- Python: {meta['python_impl']} {meta['python']} (ours and the peers' venv alike)",
        f"- Our side: {ours}",
        f"- Peers' venv (scripts/bench/.peers): {theirs}; gunicorn worker class "
        f"`{meta.get('uvicorn_worker_class', '?')}`",
        f"- {meta.get('nginx', '')}; {meta.get('wrk', '')}; {meta.get('gcc', '')}",
    ]


def render(results: dict[str, Any]) -> str:
    """The whole README.md."""
    meta = results["meta"]
    max_foreign = float(meta["max_foreign_s"])
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['mode']} mode: median of "
        f"{meta['runs']} run(s) of {meta['duration']} s after a {meta['warmup']} s warm-up, "
        f"{meta['connections']} connections; the whole run took {meta['elapsed_s']:.0f} s, "
        f"{meta.get('quiet_waited_s', 0):.0f} s of it waiting for neighbours' bursts to pass). "
        "Generated file: rerun the command rather than editing it. Every run is in "
        "[results.json](results.json).",
        "",
        "## Targets",
        "",
        targets_markdown(results),
        "",
        "## Machine",
        "",
        *_facts(meta),
        "",
        "## How it is measured",
        "",
        "- Every server runs in its own process tree, started afresh for each run; its CPU "
        "(user + system, arbiter/master and workers together) is sampled right before and "
        "after the measured load and divided by the requests the load generator counted: "
        "**server CPU µs per request**, the figure to compare.",
        "- One-worker tables: server pinned to core 0, load generator pinned to core 1. "
        "Two-worker table: the server may use both cores and wrk is unpinned, so wrk competes "
        "with the workers and requests/s mostly shows how much CPU a server leaves to wrk.",
        "- `server CPU` and the load's CPU are in % of one core over the run; near 100 % for "
        "the load means the load generator, not the server, set the pace (`load-bound`).",
        f"- `foreign CPU s`: CPU other processes used on the benchmark's cores during the run "
        f"(all cores when unpinned). Runs above {max_foreign:.2f} s were redone while the time "
        "budget allowed.",
        "- A server that is not saturated (the load generator was the limit, or neighbours "
        "took its core) serves fewer requests per event-loop wake-up and so spends somewhat "
        "more CPU per request than at saturation: compare rows whose `server CPU` is similar.",
        "- Latency: p50/p99 per request from the load generator (`wrk --latency`, or the C "
        "echo client), at 64 requests in flight - a saturation latency, not an idle one.",
        "- A run with socket errors, non-2xx answers, timeouts or lost datagrams is kept and "
        "flagged ⚠ in its row's notes; targets relying on such a row say `unreliable`.",
        "",
    ]
    charts = {"tcp": "echo.png", "http1": "http.png"}
    for suite in results["suites"]:
        out += [f"## {suite['title']}", "", suite["note"], "", suite_table(suite, max_foreign), ""]
        chart = charts.get(suite["key"])
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
        out += [f"### {suite['title']}", "", "```", f"# load: {suite['load_command']}"]
        out += [f"# {row['name']}\n{row['command']}" for row in suite["rows"]]
        out += ["```", ""]
    out += notes_section(results)
    return "\n".join(out).rstrip() + "\n"


def notes_section(results: dict[str, Any]) -> list[str]:
    """Failures in full, and what each HTTP server actually answered."""
    out = ["## Details", ""]
    failed = [(s, r) for s in results["suites"] for r in s["rows"] if r.get("error")]
    for suite, row in failed:
        out += [
            f"**{suite['key']} / {row['name']} failed:**",
            "",
            "```",
            row["error"][-2000:],
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
