"""Security as tests: who may own the control directory, who the ``ctl`` client talks to,
the socket's mode, privileges dropped in the workers, and no listening socket beyond the
configured binds.

Needs root (it creates files owned by ``nobody`` and switches uid in forked children).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pulsar_arbiter.ops.control import ControlServer, ForeignServer, check_directory, request
from tests.runtime import REPO_ROOT, Arbiter, wait_until, whoami

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NOBODY = pwd.getpwnam("nobody").pw_uid  # 65534
NOGROUP = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is root's, mode 0700)."""
    base = Path(
        subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()
    )
    base.chmod(0o755)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def in_child(
    body: Callable[[], object], *, uid: int | None = None, timeout: float = 10.0
) -> object:
    """Run ``body`` in a forked child (as ``uid`` if given) and return what it returned
    (JSON), or the text of the exception it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            try:
                result: object = {"value": body()}
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as stream:
            data = stream.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child failed"
    return json.loads(data)


class FakeServer:
    """A Unix socket server in a forked child running as ``uid``: it accepts connections,
    records how many bytes each sent (in ``received``, a file), answers ``{"ok": true}``."""

    def __init__(self, path: str, uid: int, record: Path) -> None:
        self.path = path
        ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            try:
                os.close(ready_r)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(path)
                os.chmod(path, 0o666)
                server.listen(8)
                os.write(ready_w, b"1")
                while True:
                    conn, _ = server.accept()
                    conn.settimeout(2)
                    received = b""
                    with contextlib.suppress(OSError):
                        conn.sendall(b'{"ok": true, "result": "fake"}\n')
                        while chunk := conn.recv(4096):
                            received += chunk
                    conn.close()
                    with open(record, "a") as file:
                        file.write(f"{len(received)}\n")
            finally:
                os._exit(0)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as stream:
            assert stream.read(1) == b"1", "the fake server did not start"

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulsar_arbiter", "ctl", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


# -- the control directory ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "mode", "refused"),
    [
        (NOBODY, 0o700, "owned by uid 65534"),
        (NOBODY, 0o777, "owned by uid 65534"),
        (NOBODY, 0o1777, "owned by uid 65534"),
        (0, 0o777, "writable by other users (mode 0777)"),
        (0, 0o770, "writable by other users (mode 0770)"),
        (0, 0o720, "writable by other users"),
        (0, 0o702, "writable by other users"),
        (0, 0o700, None),
        (0, 0o755, None),
        (0, 0o1777, None),  # like /tmp: others cannot remove or replace our socket
    ],
)
def test_control_directory_owner_and_mode(
    tmp_path: Path, owner: int, mode: int, refused: str | None
) -> None:
    directory = tmp_path / "ctl"
    directory.mkdir()
    os.chown(directory, owner, owner)
    directory.chmod(mode)
    if refused:
        with pytest.raises(PermissionError, match=re.escape(refused)) as exc:
            check_directory(str(directory))
        assert "\n" not in str(exc.value)
    else:
        check_directory(str(directory))


def test_control_directory_symlink_owned_by_another_user(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOGROUP)
    with pytest.raises(PermissionError, match="symlink owned by uid 65534"):
        check_directory(str(link))
    os.lchown(link, 0, 0)
    check_directory(str(link))


@pytest.mark.parametrize(("owner", "mode"), [(NOBODY, 0o777), (NOBODY, 0o700), (0, 0o777)])
def test_control_server_refuses_a_foreign_directory(tmp_path: Path, owner: int, mode: int) -> None:
    directory = tmp_path / "pulsar_arbiter-0"
    directory.mkdir()
    os.chown(directory, owner, owner)
    directory.chmod(mode)
    path = str(directory / "x.sock")
    server = ControlServer(path, None)  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match="control directory"):
        asyncio.run(server.start())
    assert not os.path.exists(path)


def test_arbiter_runs_without_control_socket_in_a_foreign_directory(tmp_path: Path) -> None:
    """The arbiter refuses the directory, says why in its log, and serves on."""
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chown(directory, NOBODY, NOGROUP)
    directory.chmod(0o777)
    control = str(directory / "ctl.sock")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with Arbiter(tmp_path, workers=1, bind=f"127.0.0.1:{port}", control_socket=control) as arb:
        pid = wait_until(lambda: whoami(port), 15, "the arbiter to serve")
        assert pid != arb.pid
        assert "control socket disabled: control directory" in arb.log()
        assert "owned by uid 65534" in arb.log()
        assert not os.path.exists(control)


def test_control_socket_mode_is_0600(tmp_path: Path) -> None:
    arbiter = Arbiter(tmp_path, workers=1)
    old = os.umask(0)  # the arbiter inherits it: the socket must be 0600 regardless
    try:
        arbiter.start()
    finally:
        os.umask(old)
    try:
        arbiter.wait_serving()
        info = os.stat(arbiter.control_socket)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
    finally:
        arbiter.close()


# -- the client checks who answers ----------------------------------------------------------


def test_ctl_refuses_an_impostor_at_the_default_path(shared_tmp: Path) -> None:
    """Found in the field: another user pre-created root's default control directory in a
    shared runtime directory and listened there; ``ctl stop`` run by root sent its
    request and took the answer. Now it refuses before sending a byte."""
    directory = shared_tmp / "pulsar_arbiter"
    directory.mkdir()
    os.chown(directory, NOBODY, NOGROUP)
    directory.chmod(0o777)
    record = shared_tmp / "received"
    record.touch()
    os.chown(record, NOBODY, NOGROUP)
    fake = FakeServer(str(directory / "victim.sock"), NOBODY, record)
    try:
        result = ctl("--name", "victim", "stop", env={"XDG_RUNTIME_DIR": str(shared_tmp)})
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "uid 65534" in lines[0] and "refusing" in lines[0]
        assert result.stdout == ""
        wait_until(lambda: record.read_text(), 5, "the fake server to log the connection")
        assert record.read_text().split() == ["0"], "ctl sent bytes to the impostor"
    finally:
        fake.close()


def test_ctl_refuses_a_foreign_server_at_an_explicit_path_for_non_root(shared_tmp: Path) -> None:
    """Only root trusts another user's socket, and only one it names: an ordinary user's
    ctl refuses a server of anyone else (here root) even at an explicit path."""
    directory = shared_tmp / "open"
    directory.mkdir()
    directory.chmod(0o777)
    path = str(directory / "root.sock")
    record = shared_tmp / "received"
    record.touch()
    os.chown(record, NOBODY, NOGROUP)
    fake = FakeServer(path, 0, record)
    try:
        answer = in_child(lambda: request(path, {"command": "stats"}), uid=NOBODY)
        assert answer == {
            "error": f"ForeignServer: refusing to talk to the server at {path}: "
            "it runs as uid 0, not as uid 65534"
        }
    finally:
        fake.close()


def test_root_talks_to_another_users_arbiter_only_at_an_explicit_path(shared_tmp: Path) -> None:
    """``sudo pulsar_arbiter ctl --control-socket /run/app/ctl.sock stats`` for an arbiter
    run by ``app``: the server answers root, root trusts the socket's owner it named."""
    directory = shared_tmp / "app"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOGROUP)
    path = str(directory / "ctl.sock")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: a real ControlServer run by nobody

        class Stub:
            """Answers ``stats`` as an arbiter does, raw and routed (``ctl stats`` is a
            call of the built-in now)."""

            async def stats(self) -> dict[str, object]:
                return {"uid": os.geteuid()}

            async def route(
                self, target: str, name: str, args: dict[str, object], timeout: float
            ) -> dict[str, dict[str, object]]:
                assert (target, name) == ("arbiter", "stats")
                return {"arbiter": {"result": await self.stats()}}

        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOGROUP)
            os.setuid(NOBODY)

            async def serve() -> None:
                server = ControlServer(path, Stub())  # type: ignore[arg-type]
                await server.start()
                os.write(write_end, b"1")
                await asyncio.sleep(30)

            asyncio.run(serve())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as stream:
            assert stream.read(1) == b"1", "the nobody arbiter did not start"
        assert os.stat(path).st_uid == NOBODY
        assert request(path, {"command": "stats"}) == {"uid": NOBODY}
        with pytest.raises(ForeignServer, match="runs as uid 65534, not as uid 0"):
            request(path, {"command": "stats"}, explicit=False)
        result = ctl("--control-socket", path, "stats")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"uid": NOBODY}
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


# -- privileges and listening sockets -------------------------------------------------------


def privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


def listening(pid: int) -> tuple[set[tuple[str, int, str]], set[str]]:
    """The inet sockets ``pid`` listens on (TCP LISTEN, or any bound UDP socket) and the
    paths of its listening Unix sockets."""
    proc = psutil.Process(pid)
    inet = {
        (c.laddr.ip, c.laddr.port, "tcp" if c.type == socket.SOCK_STREAM else "udp")
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM
    }
    unix = {
        str(c.laddr)
        for c in proc.net_connections(kind="unix")
        if c.status == psutil.CONN_LISTEN
        or (c.type == socket.SOCK_STREAM and c.laddr and not c.raddr)
    }
    return inet, unix


def check_listening(arbiter: Arbiter, port: int, workers: set[int]) -> None:
    expected = {("127.0.0.1", port, "tcp")}
    inet, unix = listening(arbiter.pid)
    assert inet == expected
    assert unix == {arbiter.control_socket}
    for pid in workers:
        inet, unix = listening(pid)
        assert inet == expected, pid
        assert unix == set(), pid


def test_no_listening_socket_beyond_the_binds(tmp_path: Path) -> None:
    with Arbiter(tmp_path, "testapps.hello:raw", "--http", workers=2) as arbiter:
        arbiter.wait_serving()
        check_listening(arbiter, arbiter.port, arbiter.worker_pids())


# Workers import their event loop after dropping privileges: where the Python install is
# readable by root only (pyenv under /root, as on the test machine), uvloop's import of
# concurrent.futures.thread fails as nobody. This preloaded app imports both as root first.
PRIVILEGED_APP = """
import concurrent.futures.thread
import uvloop
from testapps.whoami import WhoAmI
"""


def test_workers_drop_privileges_after_a_privileged_bind(tmp_path: Path) -> None:
    port = privileged_port()
    (tmp_path / "privapp.py").write_text(PRIVILEGED_APP)
    with Arbiter(
        tmp_path,
        "privapp:WhoAmI",
        "--user",
        "nobody",
        "--group",
        "nogroup",
        "--preload",
        cwd=tmp_path,
        workers=2,
        bind=f"127.0.0.1:{port}",
    ) as arbiter:
        arbiter.wait_serving()
        workers = arbiter.worker_pids()
        assert len(workers) == 2
        arbiter_proc = psutil.Process(arbiter.pid)
        assert arbiter_proc.uids().effective == 0
        for pid in workers:
            proc = psutil.Process(pid)
            assert tuple(proc.uids()) == (NOBODY, NOBODY, NOBODY), pid
            assert tuple(proc.gids()) == (NOGROUP, NOGROUP, NOGROUP), pid
        answered = {whoami(port, f"r{i}") for i in range(20)}
        assert answered and answered <= workers
        check_listening(arbiter, port, workers)


def supplementary_groups(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:]}
    raise AssertionError("no Groups line")


def test_workers_drop_supplementary_groups(tmp_path: Path) -> None:
    """A worker switched to nobody must not keep root's supplementary groups (group 0
    can read files root made group-readable)."""
    old = os.getgroups()
    os.setgroups([0, 4])  # root's usual groups; the arbiter inherits them
    (tmp_path / "privapp.py").write_text(PRIVILEGED_APP)
    arbiter = Arbiter(
        tmp_path,
        "privapp:WhoAmI",
        "--user",
        "nobody",
        "--group",
        "nogroup",
        "--preload",
        cwd=tmp_path,
        workers=1,
    )
    try:
        arbiter.start()
    finally:
        os.setgroups(old)
    with contextlib.closing(arbiter):
        arbiter.wait_serving()
        assert supplementary_groups(arbiter.pid) == {0, 4}
        for pid in arbiter.worker_pids():
            assert supplementary_groups(pid) <= {NOGROUP}, pid
