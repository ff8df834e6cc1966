"""Bind specs and listening sockets.

The arbiter parses every ``--bind`` with :func:`parse_bind` (at config time, so a typo is
an exit-2 error and never a half-started server), creates the sockets with
:func:`bind_socket` before forking, and the workers serve the inherited sockets.
:func:`listen_fds_from_env` adopts sockets handed over by systemd socket activation.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "SD_LISTEN_FDS_START",
    "TCP_MIGRATE_REQ_PATH",
    "BindKind",
    "BindSpec",
    "bind_socket",
    "describe",
    "listen_fds_from_env",
    "parse_bind",
    "tcp_migrate_req_enabled",
]

BindKind = Literal["tcp", "udp", "unix"]

#: The first file descriptor passed by systemd socket activation (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3

#: Linux sysctl: when 1, connections queued on a SO_REUSEPORT listener that closes are
#: migrated to another listener of the group instead of being reset.
TCP_MIGRATE_REQ_PATH = "/proc/sys/net/ipv4/tcp_migrate_req"

#: sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_UNIX_PATH = 107

_FORMS = "expected HOST:PORT, :PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT or unix:PATH"
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


@dataclass(frozen=True)
class BindSpec:
    """One address to listen on: ``tcp``/``udp`` use host and port, ``unix`` uses path."""

    kind: BindKind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    #: Connections first send a PROXY protocol header (``proxy+tcp://``, ``proxy+unix:``).
    proxy_protocol: bool = False

    def __str__(self) -> str:
        prefix = "proxy+" if self.proxy_protocol else ""
        if self.kind == "unix":
            return f"{prefix}unix:{self.path}"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{prefix}{self.kind}://{host}:{self.port}"


PROXY_PREFIX = "proxy+"


def parse_bind(text: str) -> BindSpec:
    """Parse one ``--bind`` value; raise ValueError with a one-line message if invalid.

    ``proxy+`` before a stream bind (``proxy+tcp://HOST:PORT``, ``proxy+unix:PATH``)
    requires a PROXY protocol header on its connections."""
    if text.startswith(PROXY_PREFIX):
        spec = parse_bind(text[len(PROXY_PREFIX) :])
        if spec.kind == "udp" or spec.proxy_protocol:
            raise ValueError(f"the PROXY protocol is for stream binds only, got {text!r}")
        return dataclasses.replace(spec, proxy_protocol=True)
    if text.startswith("unix:"):
        return _parse_unix(text)
    kind: BindKind = "tcp"
    rest = text
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :]
    elif text.startswith("udp://"):
        kind, rest = "udp", text[len("udp://") :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"unknown scheme {scheme + '://'!r} in {text!r}; {_FORMS}")
    host, port = _split_host_port(rest, text)
    return BindSpec(kind, host=host, port=port)


def _parse_unix(text: str) -> BindSpec:
    path = text[len("unix://") :] if text.startswith("unix://") else text[len("unix:") :]
    if not path:
        raise ValueError(f"missing path in {text!r}; expected unix:PATH")
    if "\0" in path:
        raise ValueError(f"NUL byte in unix socket path {text!r}")
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH:
        raise ValueError(f"unix socket path too long ({size} bytes, at most {MAX_UNIX_PATH})")
    return BindSpec("unix", path=path)


def _split_host_port(rest: str, text: str) -> tuple[str, int]:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}; {_FORMS}")
        host, tail = rest[1:end], rest[end + 1 :]
        if not tail.startswith(":"):
            raise ValueError(f"missing port in {text!r}; {_FORMS}")
        _check_ipv6(host, text)
        return host, _parse_port(tail[1:], text)
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise ValueError(f"missing port in {text!r}; {_FORMS}")
    if ":" in host:
        raise ValueError(f"IPv6 address needs brackets in {text!r}, e.g. [::1]:8060")
    if not host:
        host = "0.0.0.0"
    else:
        _check_host(host, text)
    return host, _parse_port(port_text, text)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"invalid IPv6 address {host!r} in {text!r}") from None


def _check_host(host: str, text: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r} in {text!r}") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid host {host!r} in {text!r}")


def _parse_port(port_text: str, text: str) -> int:
    if not port_text:
        raise ValueError(f"missing port in {text!r}; {_FORMS}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port_text!r} in {text!r}")
    return int(port_text)


def bind_socket(spec: BindSpec, backlog: int, reuse_port: bool = False) -> socket.socket:
    """Create, bind (and for streams, listen on) a non-blocking, inheritable socket.

    Raises OSError naming the address when the bind fails.
    """
    if spec.kind == "unix":
        return _bind_unix(spec, backlog)
    sock_type = socket.SOCK_DGRAM if spec.kind == "udp" else socket.SOCK_STREAM
    family, address = _resolve(spec, sock_type)
    sock = socket.socket(family, sock_type)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if sock_type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _bind(sock, address, spec)
        if sock_type == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve(spec: BindSpec, sock_type: int) -> tuple[int, tuple[Any, ...]]:
    """The family and address of the first getaddrinfo answer (literals need no DNS)."""
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, socket.AF_UNSPEC, sock_type, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot resolve {spec}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind(sock: socket.socket, address: tuple[Any, ...] | str, spec: BindSpec) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind {spec}: {exc.strerror}") from None


def _bind_unix(spec: BindSpec, backlog: int) -> socket.socket:
    assert spec.path is not None
    _remove_stale_unix_socket(spec.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind(sock, spec.path, spec)
        sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket that nobody listens on; refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"cannot bind unix:{path}: file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a listener with a full backlog answers EAGAIN: still alive
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"cannot bind unix:{path}: another process is listening")


def describe(sock: socket.socket) -> str:
    """A printable address: ``tcp://127.0.0.1:8060``, ``udp://[::1]:53``, ``unix:/path``."""
    try:
        name = sock.getsockname()
    except OSError:
        return "<closed socket>"
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not name:
            return "unix:<unnamed>"
        return f"unix:@{name[1:]}" if name.startswith("\0") else f"unix:{name}"
    scheme = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
    host, port = name[0], name[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def listen_fds_from_env(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[socket.socket]:
    """Adopt the sockets passed by systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``).

    Returns ``[]`` when the variables are absent or meant for another process. With
    ``unset`` (the default) the variables are removed so that children and a re-exec'd
    arbiter do not adopt the same descriptors again. Raises ValueError on malformed values
    or a descriptor that is not a socket.
    """
    env = os.environ if environ is None else environ
    pid_text, count_text = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if pid_text is None or count_text is None:
        return []
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not pid_text.isdigit() or int(pid_text) != os.getpid():
        return []
    if not count_text.isdigit():
        raise ValueError(f"LISTEN_FDS: expected a number of descriptors, got {count_text!r}")
    sockets: list[socket.socket] = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count_text)):
            sockets.append(_adopt_fd(fd))
    except BaseException:
        for sock in sockets:
            sock.detach()  # the descriptors are not ours to close
        raise
    return sockets


def _adopt_fd(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"LISTEN_FDS: fd {fd} is not a socket ({exc.strerror})") from None
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def tcp_migrate_req_enabled(path: str = TCP_MIGRATE_REQ_PATH) -> bool | None:
    """Whether Linux migrates queued connections off a closing SO_REUSEPORT listener.

    ``None`` when unknown (not Linux, an older kernel, or /proc not readable).
    """
    try:
        with open(path, encoding="ascii") as file:
            value = file.read().strip()
    except (OSError, ValueError):
        return None
    if value in ("0", "1"):
        return value == "1"
    return None
