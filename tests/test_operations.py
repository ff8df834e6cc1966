"""Operating the runtime for real (issue 9): IPC notifications, the settings registry's
HTTP limits and cross-checks, the access log on stdout, and --preload across a reload.

Every test runs ``python -m pulsar_arbiter`` through :class:`tests.runtime.Arbiter`, talks
to it over loopback sockets and signals, and stops every process it started by pid.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime import (
    HOST,
    REPO_ROOT,
    Arbiter,
    become_subreaper,
    exchange,
    live_children,
    wait_until,
    whoami,
)

pytestmark = pytest.mark.timeout(60)

Start = Callable[..., Arbiter]

#: The upload of the issue: 10 MiB, ten times the default --limit-request-body.
UPLOAD = 10 * 1024 * 1024


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start arbiters; all stopped by pid after the test, which fails if a child is left."""
    become_subreaper()
    before = {p.pid for p in live_children()}
    started: list[Arbiter] = []

    def start(app: str | None = "testapps.whoami:WhoAmI", *args: str, **kw: Any) -> Arbiter:
        home = tmp_path / f"arbiter{len(started)}"
        home.mkdir()
        arbiter = Arbiter(home, app, *args, **kw)
        started.append(arbiter)
        return arbiter

    try:
        yield start
    finally:
        for arbiter in started:
            arbiter.close()
        for arbiter in started:
            print(f"--- {' '.join(arbiter.argv[1:])} ---")
            print(arbiter.log())
        wait_until(
            lambda: not [p for p in live_children() if p.pid not in before],
            10.0,
            "every child process to exit",
        )


# -- IPC: a notification gets no reply ------------------------------------------------------


def test_usr1_leaves_no_orphan_reply(start: Start, tmp_path: Path) -> None:
    """Found in the field: the arbiter sent reopen_logs as a command with id 0 and each
    worker answered it, so every USR1 logged "reply to unknown or expired request 0". It
    is a notification now: the workers reopen their logs and answer nothing."""
    log = tmp_path / "error.log"
    arbiter = start(None, "--error-log", str(log), "--log-level", "debug", workers=2)
    arbiter.start().wait_serving()
    workers = arbiter.worker_pids()
    for round in range(2):
        log.rename(tmp_path / f"error.log.{round}")  # what logrotate does
        arbiter.send(signal.SIGUSR1)
        # Reopened by the arbiter, which then sent every worker its notification.
        wait_until(log.exists, 5.0, "the log file to be reopened")
    # A request to every worker over the same channels: a reply to the notifications,
    # had there been one, would have arrived before these.
    assert {w["pid"] for w in arbiter.stats()["workers"]} == workers
    arbiter.send(signal.SIGTERM)
    assert arbiter.wait_exit(10.0) == 0
    text = "".join(path.read_text() for path in tmp_path.glob("error.log*"))
    assert "unknown or expired request" not in text
    assert "IPC" not in text, "no IPC complaint of any kind"
    for pid in workers:
        assert f"worker {pid} exiting" in log.read_text(), "the workers reopened their log"


# -- HTTP limits as settings ------------------------------------------------------------------


def post(port: int, size: int) -> tuple[int, bytes]:
    """POST ``size`` bytes to ``/``; the status and body of the answer. The body is sent
    only after the head was not refused (a refused upload is answered from its head)."""
    head = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % size
    with socket.create_connection((HOST, port), timeout=20.0) as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        early = b""
        with contextlib.suppress(socket.timeout):
            early = sock.recv(65536)
        sock.settimeout(20.0)
        if not early:
            sock.sendall(b"x" * size)
        data = early
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed before an answer: {data!r}"
            data += chunk
        status_head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in status_head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed in the body of the answer"
            body += chunk
    return int(status_head.split()[1]), body[:length]


def test_a_10mb_upload_is_refused_by_default(start: Start) -> None:
    arbiter = start("testapps.upload:size", "--http", workers=1).start().wait_serving()
    status, _ = post(arbiter.port, UPLOAD)
    assert status == 413
    assert post(arbiter.port, 1000) == (200, b"1000")


def test_a_10mb_upload_with_limit_request_body(start: Start) -> None:
    arbiter = start(
        "testapps.upload:size", "--http", "--limit-request-body", str(UPLOAD), workers=1
    )
    arbiter.start().wait_serving()
    assert post(arbiter.port, UPLOAD) == (200, b"%d" % UPLOAD)
    status, _ = post(arbiter.port, UPLOAD + 1)
    assert status == 413


def test_limits_from_a_toml_file(start: Start, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f"http = true\nlimit_request_body = {UPLOAD}\n")
    arbiter = start("testapps.upload:size", "--config", str(config), workers=1)
    arbiter.start().wait_serving()
    assert post(arbiter.port, UPLOAD) == (200, b"%d" % UPLOAD)


# -- settings checked together at start ---------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsar_arbiter",
            *args,
            "--bind",
            f"{HOST}:0",
            "--control-socket",
            str(tmp_path / "ctl.sock"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["testapps.hello:raw", "--http", "--threads", "4"], "--threads"),
        (["testapps.whoami:WhoAmI", "--threads", "4"], "--threads"),
        (["testapps.whoami:WhoAmI", "--limit-request-body", "100"], "--limit-request-body"),
        (["testapps.hello:raw", "--http", "--limit-request-fields", "0"], "--limit-request"),
    ],
)
def test_settings_that_do_not_go_together_exit_2(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    """``--http --threads 4`` passed validation and failed at worker boot (exit 3);
    ``--threads`` without ``--wsgi`` was silently ignored. One line, exit 2, no worker."""
    done = run_cli(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], done.stderr


# -- logs -------------------------------------------------------------------------------------


def test_access_log_dash_is_stdout(start: Start, tmp_path: Path) -> None:
    """``--access-log -`` is documented as stdout; it wrote to stderr."""
    arbiter = start("testapps.whoami:WhoAmI", "--access-log", "-", workers=1)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        arbiter.proc = subprocess.Popen(
            arbiter.argv,
            cwd=arbiter.cwd,
            env=arbiter.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    arbiter.remember([arbiter.proc.pid])
    arbiter.wait_serving()
    pid = whoami(arbiter.port)
    wait_until(lambda: f"[{pid}] " in out.read_text(), 5.0, "the access line on stdout")
    line = next(t for t in out.read_text().splitlines() if f"[{pid}] " in t)
    assert "WhoAmI" in line
    assert line.endswith(" WhoAmI")
    errors = err.read_text().splitlines()
    assert not [t for t in errors if t.endswith(" WhoAmI")], "no access line on stderr"
    assert "ready" in err.read_text(), "the error log stays on stderr"


# -- --preload across a reload ------------------------------------------------------------------


def test_preload_of_the_builtin_echo_survives_a_reload(start: Start) -> None:
    """A HUP with --preload imports the app anew. For ``pulsar_arbiter.echo:Echo`` it
    purged pulsar_arbiter itself from sys.modules: the new Echo subclassed a new
    ProtocolConsumer, no longer the one the workers check, and the rollout stopped."""
    arbiter = start("pulsar_arbiter.echo:Echo", "--preload", workers=1).start()
    arbiter.wait_serving()
    assert exchange(arbiter.port, b"before") == b"before"
    (first,) = arbiter.worker_pids()
    arbiter.send(signal.SIGHUP)
    arbiter.wait_workers(
        lambda ws: len(ws) == 1 and ws[0]["generation"] == 2, "generation 2", timeout=15.0
    )
    assert arbiter.worker_pids() != {first}
    assert exchange(arbiter.port, b"after") == b"after"
    assert arbiter.stats()["arbiter"]["rollout_stopped"] is False
    assert "failed to boot" not in arbiter.log()
