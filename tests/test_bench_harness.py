"""The benchmark harness's rules (scripts/bench): interleaved rounds, redos of
runs with outside load (bounded), ratios within one round, the targets table.

These are the rules that make one committed run trustworthy, so they are
tested on their own with recorded measurements - no server is started here
(the bench itself is too long for the suite; `run.py --quick` exercises it
end to end).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def load(name: str) -> ModuleType:
    """A module of scripts/bench (not a package: its folder goes on sys.path, and
    run.py imports its siblings by these same names)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


report = load("report")
run = load("run")


def fake_run(
    cpu: float, round_no: int, outside: float = 0.0, rps: float = 1000.0
) -> dict[str, Any]:
    return {
        "round": round_no,
        "rps": rps,
        "p50_us": 100.0,
        "p99_us": 200.0,
        "cpu_us_per_request": cpu,
        "client_cpu_us_per_request": cpu / 2,
        "server_cpu_util": 0.95,
        "client_cpu_util": 0.7,
        "foreign_cpu_s": 0.0,
        "outside_share": outside,
        "requests": 5000,
        "errors": 0,
        "lost": 0,
        "noisy": outside > 0.05,
    }


def fake_row(name: str, role: str, cpus: list[float], variant: str = "") -> dict[str, Any]:
    runs = [fake_run(cpu, n + 1) for n, cpu in enumerate(cpus)]
    keys = ["rps", "p50_us", "p99_us", "cpu_us_per_request", "client_cpu_us_per_request",
            "server_cpu_util", "client_cpu_util", "outside_share"]  # fmt: skip
    return {
        "name": name,
        "role": role,
        "variant": variant,
        "command": "x",
        "runs": runs,
        "rejected_noisy": [],
        "failures": [],
        "skipped": None,
        "median": {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in keys},
        "min": {k: min(r[k] for r in runs) for k in keys},
        "max": {k: max(r[k] for r in runs) for k in keys},
        "errors_in_runs": 0,
    }


def results_with(rows: list[dict[str, Any]], key: str = "tcp") -> dict[str, Any]:
    return {
        "meta": {
            "command": "python scripts/bench/run.py",
            "date": "2026-12-02 00:00 UTC",
            "mode": "full",
            "runs": 3,
            "duration": 5,
            "warmup": 1,
            "connections": 64,
            "elapsed_s": 10.0,
            "max_outside": 0.05,
            "max_redo": 2,
            "budget_s": 1440.0,
            "cpu_model": "test",
            "nproc": 2,
            "usable_cores": [0, 1],
            "machine": "x86_64",
            "kernel": "6",
            "python": "3.11",
            "python_impl": "CPython",
        },
        "suites": [
            {
                "key": key,
                "title": "TCP echo",
                "short": "pinned",
                "group_title": "TCP echo",
                "kind": "echo",
                "pinned": True,
                "bare": "bare uvloop",
                "limit": None,
                "metric": "cpu_us_per_request",
                "unit": "request",
                "note": "",
                "load_command": "echo_client",
                "rows": rows,
            }
        ],
        "targets": [],
    }


def test_ratios_are_taken_within_each_round_not_between_medians() -> None:
    # Round 2 was slow for everyone: per-round ratios see through it.
    ours = fake_row("pulsar_arbiter echo", "ours", [11.0, 22.0, 12.0], "compiled")
    bare = fake_row("bare uvloop", "bare", [10.0, 20.0, 6.0])
    assert report.round_ratios(ours, bare, "cpu_us_per_request") == [1.1, 1.1, 2.0]
    results = results_with([ours, bare])
    judged = report.judge(results, report.TARGETS[0], "pulsar_arbiter echo")
    assert judged["ratio"] == pytest.approx(1.1)  # median of 1.1, 1.1, 2.0
    assert (judged["ratio_min"], judged["ratio_max"]) == (pytest.approx(1.1), 2.0)
    assert judged["status"] == "met"  # <= 1.2x; the ratio of medians (12/10) would say 1.2


def test_rounds_missing_on_one_side_are_left_out() -> None:
    ours = fake_row("a", "ours", [10.0, 10.0])
    ref = fake_row("b", "bare", [5.0, 5.0, 5.0])
    ref["runs"][1]["round"] = 3  # round 2 of the reference failed
    assert report.round_ratios(ours, ref, "cpu_us_per_request") == [2.0]


def test_targets_have_a_compiled_and_a_pure_column_and_say_why_not_judged() -> None:
    ours = fake_row("pulsar_arbiter echo", "ours", [13.0, 13.0, 13.0], "compiled")
    pure = fake_row("pulsar_arbiter echo (pure)", "ours", [14.0, 14.0, 14.0], "pure")
    bare = fake_row("bare uvloop", "bare", [10.0, 10.0, 10.0])
    results = results_with([ours, pure, bare])
    results["targets"] = report.evaluate_targets(results)
    tcp = results["targets"][0]
    assert tcp["compiled"]["status"] == "NOT met" and tcp["compiled"]["ratio"] == 1.3
    assert tcp["pure"]["status"] == "NOT met" and tcp["pure"]["ratio"] == 1.4
    assert {entry["issue"] for entry in results["targets"]} >= {"13", "14"}
    udp = results["targets"][1]
    assert udp["compiled"]["status"] == "n/a (not measured)"
    page = report.render(results)
    assert "| compiled (default environment) | pure (PULSAR_ARBITER_PURE=1) |" in page
    assert "1.30x (1.30-1.30; 13.0 / 10.0 µs) **NOT met**" in page
    assert "## How it is measured" in page and "Interleaved rounds" in page
    assert "| tcp | pulsar_arbiter echo | 13.00 | 14.00 | 1.08x |" in page


def test_a_skipped_row_is_shown_and_its_targets_say_so() -> None:
    ours = fake_row("pulsar_arbiter echo", "ours", [1.0], "compiled")
    ours.update(
        runs=[], median=None, skipped="the WebSocket handshake on /ws was answered 'HTTP/1.1 404'"
    )
    results = results_with([ours, fake_row("bare uvloop", "bare", [10.0])])
    judged = report.judge(results, report.TARGETS[0], "pulsar_arbiter echo")
    assert judged["status"].startswith("n/a (pulsar_arbiter echo skipped: the WebSocket")
    table = report.suite_table(results["suites"][0], 0.05)
    assert "| **pulsar_arbiter echo** | skipped |" in table
    widths = {line.count("|") for line in table.splitlines()}
    assert len(widths) == 1, table  # the skipped row has as many cells as the others


def test_errors_in_a_row_make_its_targets_unreliable() -> None:
    ours = fake_row("pulsar_arbiter echo", "ours", [10.0], "compiled")
    ours["errors_in_runs"] = 1
    results = results_with([ours, fake_row("bare uvloop", "bare", [10.0])])
    judged = report.judge(results, report.TARGETS[0], "pulsar_arbiter echo")
    assert judged["status"] == "unreliable (errors in pulsar_arbiter echo)"


# ------------------------------------------------------------------- the rounds
def suite_of(names: list[str]) -> Any:
    cases = [run.Case(name, "peer", ("x",)) for name in names]
    return run.Suite(
        key="t", title="t", short="t", group_title="t", kind="echo", udp=False,
        server_cpu=0, client_cpu=1, bare=names[0], limit=None, cases=cases,
    )  # fmt: skip


def settings(runs: int, max_redo: int = 2, budget: float = 1e6) -> Any:
    return run.Settings(
        runs=runs, duration=5, warmup=1, max_outside=0.05, max_redo=max_redo, budget_s=budget
    )


def test_rows_are_interleaved_round_robin_and_every_round_has_one_run_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []
    rounds: dict[str, int] = {}

    def measure_once(suite: Any, case: Any, s: Any, extras: Any) -> dict[str, Any]:
        rounds[case.name] = rounds.get(case.name, 0) + 1
        calls.append((case.name, rounds[case.name]))
        s.run_seconds.append(0.01)
        return fake_run(10.0, 0)

    monkeypatch.setattr(run, "measure_once", measure_once)
    suite = suite_of(["a", "b", "c"])
    s = settings(runs=5)
    s.planned = 15
    rows = run.run_suite(suite, suite.cases, s, lambda _m: None)
    # Run n of every row before run n+1 of any; the first row rotates.
    assert [n for _, n in calls] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert [name for name, _ in calls[:6]] == ["a", "b", "c", "b", "c", "a"]
    for row in rows:
        assert [r["round"] for r in row["runs"]] == [1, 2, 3, 4, 5]
        assert set(row["median"]) >= {"cpu_us_per_request", "outside_share"}
        assert row["min"]["cpu_us_per_request"] == row["max"]["cpu_us_per_request"] == 10.0


def test_noisy_runs_are_redone_at_most_max_redo_times_then_kept_and_flagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shares = {"a": [0.30, 0.20, 0.01], "b": [0.40, 0.40, 0.40, 0.40], "c": [0.3, 0.1, 0.2]}

    def measure_once(suite: Any, case: Any, s: Any, extras: Any) -> dict[str, Any]:
        s.run_seconds.append(0.01)
        return fake_run(10.0, 0, outside=shares[case.name].pop(0))

    monkeypatch.setattr(run, "measure_once", measure_once)
    suite = suite_of(["a", "b", "c"])
    s = settings(runs=1, max_redo=2)
    s.planned = 3
    a, b, c = run.run_suite(suite, suite.cases, s, lambda _m: None)
    # All three attempts noisy: the least disturbed one is kept.
    assert [r["outside_share"] for r in c["runs"]] == [0.1] and c["runs"][0]["attempt"] == 2
    assert sorted(r["outside_share"] for r in c["rejected_noisy"]) == [0.2, 0.3]
    assert [r["outside_share"] for r in a["runs"]] == [0.01]
    assert [r["outside_share"] for r in a["rejected_noisy"]] == [0.30, 0.20]
    assert a["noisy_kept"] == 0
    assert len(b["rejected_noisy"]) == 2 and b["runs"][0]["noisy"] and b["noisy_kept"] == 1
    assert shares["b"] == [0.40]  # 1 + 2 redos, never a fourth attempt
    assert "1 run(s) above 5% outside load kept" in "; ".join(
        report.row_notes({"kind": "echo", "pinned": False}, b, 0.05)
    )


def test_no_redo_once_the_time_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def measure_once(suite: Any, case: Any, s: Any, extras: Any) -> dict[str, Any]:
        attempts.append(case.name)
        s.run_seconds.append(1.0)
        return fake_run(10.0, 0, outside=0.5)

    monkeypatch.setattr(run, "measure_once", measure_once)
    suite = suite_of(["a", "b"])
    s = settings(runs=2, budget=0.0)
    s.planned = 4
    s.started = time.monotonic()
    rows = run.run_suite(suite, suite.cases, s, lambda _m: None)
    assert len(attempts) == 4 and all(len(row["runs"]) == 2 for row in rows)


def test_a_failed_redo_keeps_the_noisy_run_it_was_redoing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes: list[float | None] = [0.5, None]

    def measure_once(suite: Any, case: Any, s: Any, extras: Any) -> dict[str, Any]:
        share = outcomes.pop(0)
        if share is None:
            raise run.harness.BenchError("wrk exited 1")
        return fake_run(10.0, 0, outside=share)

    monkeypatch.setattr(run, "measure_once", measure_once)
    suite = suite_of(["a"])
    s = settings(runs=1)
    s.planned = 1
    (row,) = run.run_suite(suite, suite.cases, s, lambda _m: None)
    assert [r["outside_share"] for r in row["runs"]] == [0.5]
    assert row["failures"] == ["wrk exited 1"] and row["median"] is not None


def test_a_row_that_fails_twice_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def measure_once(suite: Any, case: Any, s: Any, extras: Any) -> dict[str, Any]:
        attempts.append(case.name)
        if case.name == "broken":
            raise run.harness.BenchError("server exited with 1 before it was ready")
        return fake_run(10.0, 0)

    monkeypatch.setattr(run, "measure_once", measure_once)
    suite = suite_of(["ok", "broken"])
    s = settings(runs=4)
    s.planned = 8
    _ok, broken = run.run_suite(suite, suite.cases, s, lambda _m: None)
    assert attempts.count("broken") == 2 and attempts.count("ok") == 4
    assert broken["median"] is None and broken["error"].startswith("server exited")


def test_command_line_flags() -> None:
    full = run.parse_args([])
    assert (full.runs, full.duration, full.budget) == (5, 5, 1440.0)
    quick = run.parse_args(["--quick", "--only", "tcp:"])
    assert (quick.runs, quick.duration, quick.budget) == (1, 2, 0.0)
    assert quick.out == run.QUICK_OUT
    assert run.parse_args(["--runs", "7"]).runs == 7
    for bad in (["--runs", "0"], ["--only", "("], ["--max-outside", "0"]):
        with pytest.raises(SystemExit) as exc:
            run.parse_args(bad)
        assert exc.value.code == 2


def test_pure_rows_run_the_same_command_with_the_pure_environment() -> None:
    compiled, pure = run.ours("pulsar_arbiter raw", ("python", "-m", "pulsar_arbiter"))
    assert pure.argv == compiled.argv and pure.name == "pulsar_arbiter raw (pure)"
    assert dict(pure.env) == {"PULSAR_ARBITER_PURE": "1"} and compiled.env == ()
    s = settings(runs=1)
    suite = suite_of(["x"])
    assert run.command_line(suite, pure, s).startswith("PULSAR_ARBITER_PURE=1 taskset -c 0 ")
