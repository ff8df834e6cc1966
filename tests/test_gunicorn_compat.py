"""What gunicorn and uvicorn users reach for, on real processes: server hooks, the client
behind nginx (X-Forwarded-For) and behind HAProxy (PROXY protocol v2), the access log
format, and --reload."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import textwrap
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
