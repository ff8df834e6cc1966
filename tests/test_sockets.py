"""Bind specs (pure) and real loopback sockets: TCP v4/v6, UDP, Unix, systemd fds."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsar_arbiter.ops.binds import (
    BindSpec,
    bind_socket,
    describe,
    listen_fds_from_env,
    parse_bind,
    tcp_migrate_req_enabled,
)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    """Sockets to close at teardown (warnings are errors: nothing may leak)."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


# -- parse_bind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8060", BindSpec("tcp", host="127.0.0.1", port=8060)),
        (":8060", BindSpec("tcp", host="0.0.0.0", port=8060)),
        ("0.0.0.0:0", BindSpec("tcp", host="0.0.0.0", port=0)),
        ("localhost:65535", BindSpec("tcp", host="localhost", port=65535)),
        ("tcp://example.com:80", BindSpec("tcp", host="example.com", port=80)),
        ("[::1]:8060", BindSpec("tcp", host="::1", port=8060)),
        ("tcp://[::]:1", BindSpec("tcp", host="::", port=1)),
        ("udp://127.0.0.1:53", BindSpec("udp", host="127.0.0.1", port=53)),
        ("udp://[::1]:0", BindSpec("udp", host="::1", port=0)),
        ("udp://:9", BindSpec("udp", host="0.0.0.0", port=9)),
        ("unix:/run/app.sock", BindSpec("unix", path="/run/app.sock")),
        ("unix:///run/app.sock", BindSpec("unix", path="/run/app.sock")),
        ("unix:relative.sock", BindSpec("unix", path="relative.sock")),
    ],
)
def test_parse_bind_accepts(text: str, expected: BindSpec) -> None:
    spec = parse_bind(text)
    assert spec == expected
    assert parse_bind(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "missing port"),
        ("localhost", "missing port"),
        ("127.0.0.1:", "missing port"),
        ("127.0.0.1:65536", "port must be an integer in 0..65535, got '65536'"),
        ("127.0.0.1:-1", "port must be an integer in 0..65535"),
        ("127.0.0.1:http", "port must be an integer in 0..65535, got 'http'"),
        ("127.0.0.1:٣", "port must be an integer"),
        ("::1:80", "IPv6 address needs brackets"),
        ("[::1]", "missing port"),
        ("[::1]80", "missing port"),
        ("[::1:80", "missing ']'"),
        ("[nothex]:80", "invalid IPv6 address 'nothex'"),
        ("[127.0.0.1]:80", "invalid IPv6 address"),
        ("999.1.1.1:80", "invalid IPv4 address '999.1.1.1'"),
        ("bad_host:80", "invalid host 'bad_host'"),
        ("-bad.example:80", "invalid host"),
        ("http://localhost:80", "unknown scheme 'http://'"),
        ("unix:", "missing path"),
        ("unix://", "missing path"),
        ("unix:/tmp/a\0b", "NUL byte"),
        ("unix:/" + "x" * 200, "unix socket path too long (201 bytes, at most 107)"),
    ],
)
def test_parse_bind_rejects_with_one_line_message(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_bind(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


@given(st.text(max_size=40))
def test_parse_bind_total(text: str) -> None:
    """Any text parses to a spec that round-trips, or raises ValueError, nothing else."""
    try:
        spec = parse_bind(text)
    except ValueError:
        return
    assert parse_bind(str(spec)) == spec


def test_bind_spec_str() -> None:
    assert str(parse_bind("127.0.0.1:1")) == "tcp://127.0.0.1:1"
    assert str(parse_bind("udp://[::1]:2")) == "udp://[::1]:2"
    assert str(parse_bind("unix:/a")) == "unix:/a"


# -- bind_socket ----------------------------------------------------------------------------


def _opt(sock: socket.socket, level: int, name: int) -> int:
    return sock.getsockopt(level, name)


def test_bind_tcp_ipv4(opened: list[socket.socket]) -> None:
    sock = bind_socket(parse_bind("127.0.0.1:0"), backlog=16)
    opened.append(sock)
    assert sock.family == socket.AF_INET
    assert sock.type == socket.SOCK_STREAM
    assert not sock.getblocking()
    assert sock.get_inheritable()
    assert _opt(sock, socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert _opt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert not _opt(sock, socket.SOL_SOCKET, socket.SO_REUSEPORT)
    assert _opt(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    port = sock.getsockname()[1]
    assert describe(sock) == f"tcp://127.0.0.1:{port}"

    client = socket.create_connection(("127.0.0.1", port), timeout=1)
    opened.append(client)
    sock.setblocking(True)
    sock.settimeout(1)
    conn, _ = sock.accept()
    opened.append(conn)
    client.sendall(b"ping")
    assert conn.recv(4) == b"ping"


@needs_ipv6
def test_bind_tcp_ipv6_is_v6_only(opened: list[socket.socket]) -> None:
    sock = bind_socket(parse_bind("[::1]:0"), backlog=16)
    opened.append(sock)
    assert sock.family == socket.AF_INET6
    assert _opt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    assert describe(sock) == f"tcp://[::1]:{sock.getsockname()[1]}"


def test_bind_reuse_port(opened: list[socket.socket]) -> None:
    first = bind_socket(parse_bind("127.0.0.1:0"), backlog=16, reuse_port=True)
    opened.append(first)
    assert _opt(first, socket.SOL_SOCKET, socket.SO_REUSEPORT)
    port = first.getsockname()[1]
    second = bind_socket(parse_bind(f"127.0.0.1:{port}"), backlog=16, reuse_port=True)
    opened.append(second)
    assert second.getsockname()[1] == port


def test_bind_in_use_names_the_address(opened: list[socket.socket]) -> None:
    first = bind_socket(parse_bind("127.0.0.1:0"), backlog=16)
    opened.append(first)
    port = first.getsockname()[1]
    with pytest.raises(OSError) as info:
        bind_socket(parse_bind(f"127.0.0.1:{port}"), backlog=16)
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind tcp://127.0.0.1:{port}" in str(info.value)


def test_bind_udp(opened: list[socket.socket]) -> None:
    sock = bind_socket(parse_bind("udp://127.0.0.1:0"), backlog=16)
    opened.append(sock)
    assert sock.type == socket.SOCK_DGRAM
    assert not sock.getblocking()
    assert sock.get_inheritable()
    port = sock.getsockname()[1]
    assert describe(sock) == f"udp://127.0.0.1:{port}"
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    opened.append(client)
    client.sendto(b"hello", ("127.0.0.1", port))
    sock.settimeout(1)
    data, _ = sock.recvfrom(100)
    assert data == b"hello"


@needs_ipv6
def test_bind_udp_ipv6(opened: list[socket.socket]) -> None:
    sock = bind_socket(parse_bind("udp://[::1]:0"), backlog=16)
    opened.append(sock)
    assert sock.family == socket.AF_INET6
    assert describe(sock).startswith("udp://[::1]:")


def test_bind_unix(tmp_path: Path, opened: list[socket.socket]) -> None:
    path = str(tmp_path / "a.sock")
    sock = bind_socket(parse_bind(f"unix:{path}"), backlog=16)
    opened.append(sock)
    assert sock.family == socket.AF_UNIX
    assert not sock.getblocking()
    assert sock.get_inheritable()
    assert describe(sock) == f"unix:{path}"
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    opened.append(client)
    client.connect(path)


def test_bind_unix_replaces_stale_socket(tmp_path: Path, opened: list[socket.socket]) -> None:
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # never listens: what a crashed server leaves behind
    assert os.path.exists(path)
    sock = bind_socket(parse_bind(f"unix:{path}"), backlog=16)
    opened.append(sock)
    assert describe(sock) == f"unix:{path}"


def test_bind_unix_refuses_live_socket(tmp_path: Path, opened: list[socket.socket]) -> None:
    path = str(tmp_path / "live.sock")
    live = bind_socket(parse_bind(f"unix:{path}"), backlog=16)
    opened.append(live)
    with pytest.raises(OSError) as info:
        bind_socket(parse_bind(f"unix:{path}"), backlog=16)
    assert info.value.errno == errno.EADDRINUSE
    assert "another process is listening" in str(info.value)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    opened.append(client)
    client.connect(path)  # the live listener was left alone


def test_bind_unix_refuses_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "file.sock"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        bind_socket(parse_bind(f"unix:{path}"), backlog=16)
    assert path.read_text() == "data"


def test_describe_closed_and_unnamed() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    assert describe(sock) == "<closed socket>"
    left, right = socket.socketpair()
    with left, right:
        assert describe(left) == "unix:<unnamed>"


def test_describe_abstract_unix() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(f"\0pulsar-arbiter-test-{os.getpid()}")
        assert describe(sock) == f"unix:@pulsar-arbiter-test-{os.getpid()}"


# -- systemd socket activation -----------------------------------------------------------------


def test_listen_fds_absent() -> None:
    assert listen_fds_from_env({}) == []


def test_listen_fds_for_another_process_are_ignored_and_unset() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds_from_env(env) == []
    assert env == {}


def test_listen_fds_keep_environment_when_asked() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_fds_from_env(env, unset=False) == []
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}


def test_listen_fds_malformed_count() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}
    with pytest.raises(ValueError, match="LISTEN_FDS: expected a number"):
        listen_fds_from_env(env)


_CHILD = textwrap.dedent(
    """
    import fcntl, os, sys
    fds = [int(fd) for fd in sys.argv[1:]]
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4...
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(moved, start=3):
        os.dup2(fd, target)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    from pulsar_arbiter.ops.binds import describe, listen_fds_from_env
    try:
        socks = listen_fds_from_env()
    except ValueError as exc:
        print("error:", exc)
    else:
        print(" ".join(describe(sock) for sock in socks), "LISTEN_PID" in os.environ)
    """
)


def _run_child(*fds: int) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, fds)],
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip()


def test_listen_fds_adopts_inherited_sockets(opened: list[socket.socket], tmp_path: Path) -> None:
    tcp = bind_socket(parse_bind("127.0.0.1:0"), backlog=16)
    unix = bind_socket(parse_bind(f"unix:{tmp_path / 'sd.sock'}"), backlog=16)
    opened += [tcp, unix]
    output = _run_child(tcp.fileno(), unix.fileno())
    assert output == f"{describe(tcp)} {describe(unix)} False"


def test_listen_fds_rejects_non_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        assert _run_child(read_end).startswith("error: LISTEN_FDS: fd 3 is not a socket")
    finally:
        os.close(read_end)
        os.close(write_end)


# -- tcp_migrate_req --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"), [("1\n", True), ("0\n", False), ("2\n", None), ("", None)]
)
def test_tcp_migrate_req(tmp_path: Path, content: str, expected: bool | None) -> None:
    file = tmp_path / "tcp_migrate_req"
    file.write_text(content)
    assert tcp_migrate_req_enabled(str(file)) is expected


def test_tcp_migrate_req_unknown(tmp_path: Path) -> None:
    assert tcp_migrate_req_enabled(str(tmp_path / "missing")) is None
    assert tcp_migrate_req_enabled() in (True, False, None)
