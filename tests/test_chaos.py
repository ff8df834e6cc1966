"""The chaos suite of issue 8, short variants: scenarios of ``scripts/chaos.py`` as tests.

Each test runs one scenario (a few seconds of load, reloads, recycles or faults against
a real ``python -m pulsar_arbiter``) and asserts what the issue promises: 0 failed
requests, counted by a client that never retries, and the scenario's own checks. The
long variants run with ``python scripts/chaos.py all --long``, which writes
docs/reliability.md.

The scenarios use the harness of tests/runtime.py (``Arbiter`` stops every process it
started by pid; nginx is stopped by pid too), and the leak check of the runtime tests
fails a test that leaves a process or a file descriptor behind. nginx is not optional:
a test that needs it fails when it is missing (.ci/run installs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import uvloop

from tests.runtime import REPO_ROOT
from tests.test_runtime import no_leaks

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import chaos  # scripts/ is not a package: on sys.path above

__all__ = ["no_leaks"]  # the autouse fixture of the runtime tests: no leaked process or fd


@pytest.fixture(scope="module", autouse=True)
def libuv_signal_pipe() -> None:
    """libuv opens one signal pipe per process, the first time a uvloop loop is made, and
    keeps it: made here, before the per-test fd snapshot, it is not taken for a leak."""
    uvloop.new_event_loop().close()


def run(name: str, tmp_path: Path) -> chaos.Outcome:
    """Run scenario ``name`` (short), print its report (pytest shows it on failure)."""
    outcome = chaos.SCENARIOS[name].run(tmp_path, False)
    print(outcome.report())
    if not outcome.passed and outcome.log:
        print("--- arbiter log (tail) ---")
        print(outcome.log_tail())
    return outcome


def assert_zero_failed(outcome: chaos.Outcome) -> None:
    assert outcome.tally.sent > 0, "no request was sent"
    assert outcome.tally.failures == 0, outcome.tally.line()


def assert_checks(outcome: chaos.Outcome) -> None:
    failed = [f"{what}: {detail}" for what, ok, detail in outcome.checks if not ok]
    assert not failed, failed


# -- the table of issue 8: each row reads 0 failed ---------------------------------------


@pytest.mark.timeout(45)
def test_http_keepalive_clients_through_hups(tmp_path: Path) -> None:
    outcome = run("http-hup-keepalive", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_http_keepalive_clients_through_max_requests_recycles(tmp_path: Path) -> None:
    outcome = run("http-recycle-keepalive", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_wsgi_inline_keepalive_clients_through_hups(tmp_path: Path) -> None:
    outcome = run("wsgi-hup-keepalive", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_wsgi_threaded_keepalive_clients_through_hups(tmp_path: Path) -> None:
    outcome = run("wsgi-threads-hup-keepalive", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_wsgi_fresh_connections_through_recycles(tmp_path: Path) -> None:
    outcome = run("wsgi-recycle-fresh", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_wsgi_fresh_connections_through_hups(tmp_path: Path) -> None:
    outcome = run("wsgi-hup-fresh", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_raw_tcp_persistent_connections_handed_off_through_hups(tmp_path: Path) -> None:
    outcome = run("tcp-hup-persistent-handoff", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(60)
def test_http_fresh_connections_through_many_quick_hups(tmp_path: Path) -> None:
    outcome = run("http-many-hups-fresh", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_udp_sequence_numbers_through_hups(tmp_path: Path) -> None:
    outcome = run("udp-hup", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_nginx_upstream_keepalive_posts_through_hups(tmp_path: Path) -> None:
    outcome = run("nginx-post", tmp_path)
    assert_zero_failed(outcome)
    assert outcome.figures["nginx_upstream_error_lines"] == 0, outcome.figures
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_nginx_upstream_keepalive_gets_through_hups(tmp_path: Path) -> None:
    outcome = run("nginx-get", tmp_path)
    assert_zero_failed(outcome)
    assert outcome.figures["nginx_upstream_error_lines"] == 0, outcome.figures
    assert_checks(outcome)


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.timeout(45)
def test_kill_9_of_a_worker_fails_only_what_it_held(tmp_path: Path) -> None:
    outcome = run("kill-worker", tmp_path)
    assert outcome.tally.sent > 0
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_kill_9_of_the_arbiter_leaves_nothing_and_frees_the_port(tmp_path: Path) -> None:
    outcome = run("kill-arbiter", tmp_path)
    assert outcome.figures["seconds_from_last_exit_to_rebindable"] <= 1.0, outcome.figures
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_stuck_worker_is_killed_and_a_busy_one_is_not(tmp_path: Path) -> None:
    outcome = run("stuck-worker", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(60)
def test_crash_at_boot_backs_off_then_exits_3(tmp_path: Path) -> None:
    outcome = run("boot-crash", tmp_path)
    assert outcome.figures["exit_status"] == 3, outcome.figures
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_term_finishes_slow_requests_and_refuses_new_connections(tmp_path: Path) -> None:
    outcome = run("term-slow", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(60)
def test_100_quick_hups_keep_the_arbiter_flat(tmp_path: Path) -> None:
    outcome = run("quick-hups-flat", tmp_path)
    assert_zero_failed(outcome)
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_pid_1_reaps_orphans(tmp_path: Path) -> None:
    outcome = run("pid1-orphans", tmp_path)
    assert_zero_failed(outcome)
    assert outcome.figures["zombies_left"] == 0, outcome.figures
    assert_checks(outcome)


@pytest.mark.timeout(45)
def test_double_ctrl_c_prints_no_traceback(tmp_path: Path) -> None:
    outcome = run("double-ctrl-c", tmp_path)
    assert_checks(outcome)


def test_every_scenario_has_a_test() -> None:
    tested = {
        "http-hup-keepalive",
        "http-recycle-keepalive",
        "wsgi-hup-keepalive",
        "wsgi-threads-hup-keepalive",
        "wsgi-recycle-fresh",
        "wsgi-hup-fresh",
        "tcp-hup-persistent-handoff",
        "http-many-hups-fresh",
        "udp-hup",
        "nginx-post",
        "nginx-get",
        "kill-worker",
        "kill-arbiter",
        "stuck-worker",
        "boot-crash",
        "term-slow",
        "quick-hups-flat",
        "pid1-orphans",
        "double-ctrl-c",
    }
    assert tested == set(chaos.SCENARIOS)
