"""What gunicorn and uvicorn users reach for, on real processes: server hooks, the client
behind nginx (X-Forwarded-For) and behind HAProxy (PROXY protocol v2), the access log
format, and --reload."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime import HOST, REPO_ROOT, Arbiter, become_subreaper, free_port, wait_until

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from chaos import nginx  # scripts/ is not a package: on sys.path above

APP = """
def application(environ, start_response):
    body = "%s %s v1" % (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"""

HOOKS = """
import os
HERE = os.path.dirname(os.path.abspath(__file__))

def _mark(name):
    open(os.path.join(HERE, name), "a").write("%d\\n" % os.getpid())

def when_ready(arbiter):
    _mark("when_ready")

async def post_fork(arbiter, worker):
    _mark("post_fork")

def post_worker_init(worker):
    _mark("post_worker_init")
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "app"
    home.mkdir()
    (home / "webapp.py").write_text(APP)
    (home / "myhooks.py").write_text(textwrap.dedent(HOOKS))
    become_subreaper()
    yield home


def get(port: int, headers: dict[str, str] | None = None) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/x?y=1", headers=headers or {})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def arbiter(home: Path, *args: str, **kw: Any) -> Arbiter:
    return Arbiter(home, "webapp:application", "--wsgi", *args, cwd=home, workers=1, **kw)


def test_hooks_proxy_headers_and_access_log_behind_nginx(app_dir: Path) -> None:
    log = app_dir / "access.log"
    server = arbiter(
        app_dir,
        "--hooks",
        "myhooks",
        "--proxy-headers",
        "--access-log",
        str(log),
        "--access-log-format",
        '%(h)s "%(r)s" %(s)s %(b)s %({x-forwarded-proto}i)s',
    ).start()
    try:
        server.wait_serving()
        marks = {n: (app_dir / n).read_text().split() for n in ("when_ready", "post_fork")}
        assert marks["when_ready"] == [str(server.pid)]
        assert len(marks["post_fork"]) == 1 and marks["post_fork"] != marks["when_ready"]
        wait_until(lambda: (app_dir / "post_worker_init").exists(), 5.0, "post_worker_init")
        options = (
            "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "            proxy_set_header X-Forwarded-Proto https;"
        )
        with nginx(app_dir / "nginx", server.port, 10.0, location_options=options) as (port, _):
            # The client says where it comes from; nginx appends the peer it saw.
            answer = get(port, {"X-Forwarded-For": "198.51.100.7"})
        assert answer == "198.51.100.7 https v1"
        # Straight from a trusted peer without headers: the peer itself.
        assert get(server.port) == "127.0.0.1 http v1"
        wait_until(lambda: log.exists() and "198.51.100.7" in log.read_text(), 5.0, "log")
        line = next(t for t in log.read_text().splitlines() if "198.51.100.7" in t)
        assert line == '198.51.100.7 "GET /x?y=1 HTTP/1.1" 200 21 https'
    finally:
        server.close()


def test_a_failing_start_hook_exits_2(app_dir: Path) -> None:
    (app_dir / "badhooks.py").write_text("def on_starting(arbiter):\n    raise OSError('no db')\n")
    server = arbiter(app_dir, "--hooks", "badhooks").start()
    try:
        assert server.wait_exit(20.0) == 2
        assert "no db" in server.log()
    finally:
        server.close()


HAPROXY_CONF = """\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend front
    bind {host}:{port}
    default_backend app
backend app
    server app1 {host}:{upstream} send-proxy-v2
"""


def test_proxy_protocol_v2_behind_haproxy(app_dir: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.access(binary, os.X_OK), "haproxy is missing (.ci/run installs it)"
    upstream = free_port()
    server = arbiter(app_dir, bind=f"proxy+tcp://{HOST}:{upstream}").start()
    front = free_port()
    conf = app_dir / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(host=HOST, port=front, upstream=upstream))
    proxy: subprocess.Popen[bytes] | None = None
    try:
        server.wait_serving()
        proxy = subprocess.Popen(
            [binary, "-db", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def answers() -> str:
            return get(front)

        answer = wait_until(answers, 10.0, "haproxy to answer")
        assert answer == "127.0.0.1 http v1"
        # Straight to the bind without a header: closed, nothing served.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            get(upstream)
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(5.0)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(5.0)
        server.close()


def test_reload_rolls_new_code_and_survives_broken_code(app_dir: Path) -> None:
    server = arbiter(app_dir, "--reload", "--reload-dir", str(app_dir)).start()
    try:
        server.wait_serving()
        assert get(server.port) == "127.0.0.1 http v1"
        (app_dir / "webapp.py").write_text(APP.replace("v1", "v2"))
        wait_until(lambda: get(server.port).endswith("v2"), 20.0, "the new code to answer")
        (app_dir / "webapp.py").write_text(APP.replace("v1", "v3") + "\ndef broken(:\n")
        wait_until(lambda: "SyntaxError" in server.log(), 20.0, "the boot error logged")
        assert get(server.port).endswith("v2"), "the old workers still serve"
        (app_dir / "webapp.py").write_text(APP.replace("v1", "v4"))
        wait_until(lambda: get(server.port).endswith("v4"), 20.0, "the fix to answer")
    finally:
        server.close()


def test_log_format_json_error_and_access_logs(app_dir: Path) -> None:
    """--log-format json: the error log and the access log, one JSON object per line."""
    access = app_dir / "access.log"
    server = arbiter(app_dir, "--log-format", "json", "--access-log", str(access)).start()
    try:
        server.wait_serving()
        assert get(server.port) == "127.0.0.1 http v1"
        wait_until(lambda: access.exists() and access.read_text().strip(), 5.0, "an access line")
        server.send(signal.SIGTERM)
        assert server.wait_exit(15.0) == 0
    finally:
        server.close()
    errors = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert len(errors) >= 3
    assert all({"time", "level", "logger", "pid", "message"} <= set(e) for e in errors)
    assert any("ready" in e["message"] for e in errors)
    (request,) = [json.loads(line) for line in access.read_text().splitlines()]
    assert request["remote_addr"] == "127.0.0.1" and request["status"] == 200
    assert (request["method"], request["path"], request["query"]) == ("GET", "/x", "y=1")


def test_post_fork_raising_is_a_failed_boot(app_dir: Path) -> None:
    """For the first generation the arbiter exits 3 with the hook's error; later, a
    replacement whose post_fork raises is retried with backoff, not in a tight loop."""
    (app_dir / "forkhooks.py").write_text(
        "import os\n"
        "def post_fork(arbiter, worker):\n"
        "    if not os.path.exists('db_up'):\n"
        "        raise RuntimeError('no database for you')\n"
    )
    first = arbiter(app_dir, "--hooks", "forkhooks").start()
    try:
        assert first.wait_exit(30.0) == 3
    finally:
        first.close()
    assert "exiting with status 3" in first.log() and "no database for you" in first.log()

    (app_dir / "db_up").touch()
    later = Arbiter(
        app_dir / "later",
        "webapp:application",
        "--wsgi",
        "--hooks",
        "forkhooks",
        cwd=app_dir,
        workers=1,
    )
    (app_dir / "later").mkdir()
    later.start()
    try:
        (victim,) = later.wait_serving().worker_pids()
        (app_dir / "db_up").unlink()
        os.kill(victim, signal.SIGKILL)
        time.sleep(2.5)
        failed = later.log().count("exited with status 3 (failed to boot)")
        assert later.exited() is None, "a worker served: the arbiter carries on"
        # Backoff 0.5 s, 1 s, 2 s...: a few tries in 2.5 s, not a tight loop.
        assert 1 <= failed <= 4, later.log()[-3000:]
        assert "no database for you" in later.log()
    finally:
        later.close()


def _rolled(server: Arbiter, before: set[int]) -> bool:
    now = server.worker_pids()
    return bool(now) and not now & before


def test_reload_include_and_exclude(app_dir: Path) -> None:
    """An included non-.py file rolls the workers; an excluded .py file does not."""
    (app_dir / "page.html").write_text("<p>one</p>")
    (app_dir / "scratch_test.py").write_text("X = 1\n")
    server = arbiter(
        app_dir,
        "--reload",
        "--reload-dir",
        str(app_dir),
        "--reload-include",
        "*.html",
        "--reload-exclude",
        "*_test.py",
    ).start()
    try:
        first = server.wait_serving().worker_pids()
        (app_dir / "scratch_test.py").write_text("X = 2\n")
        time.sleep(1.5)  # the debounce (0.3 s) and a rollout would be well under way
        assert server.worker_pids() == first, "an excluded .py file rolls nothing"
        assert "file(s) changed" not in server.log()
        (app_dir / "page.html").write_text("<p>two</p>")
        wait_until(lambda: _rolled(server, first), 20.0, "the workers to roll")
    finally:
        server.close()


def test_a_broken_save_logs_the_error_once(app_dir: Path) -> None:
    """A burst of broken saves is debounced into one reload: the SyntaxError is logged once."""
    server = arbiter(app_dir, "--reload", "--reload-dir", str(app_dir)).start()
    try:
        server.wait_serving()
        broken = APP.replace("v1", "v2") + "\ndef broken(:\n"
        for _ in range(5):  # an editor writing the file several times in a row
            (app_dir / "webapp.py").write_text(broken)
            time.sleep(0.02)
        wait_until(lambda: "SyntaxError" in server.log(), 20.0, "the boot error logged")
        time.sleep(2.0)  # a restart loop, or a second report, would show by now
        assert get(server.port).endswith("v1"), "the old workers still serve"
    finally:
        server.close()
    log = server.log()
    assert log.count("SyntaxError") == 1, log[-3000:]
