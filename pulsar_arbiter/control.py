"""The control socket and ``python -m pulsar_arbiter ctl ...``.

A Unix socket (mode 0600, and the peer's uid checked with SO_PEERCRED) that takes one
JSON request per line and answers one JSON line: ``{"command": "stats"}``,
``{"command": "reload"}``, ``{"command": "scale", "workers": N}``, ``{"command": "stop"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from .config import default_control_socket

__all__ = ["ControlServer", "ctl_main", "request"]

# One request line at most: commands are tiny; a peer sending more is not a client of ours.
MAX_REQUEST = 4096
# Seconds a ctl client waits for the arbiter's answer (stats asks every worker).
CLIENT_TIMEOUT = 10.0


class Controlled(Protocol):
    """What the control socket drives: the arbiter."""

    async def stats(self) -> dict[str, Any]: ...
    def reload(self) -> str: ...
    def scale(self, workers: int) -> int: ...
    def stop(self, graceful: bool = True) -> None: ...


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """The arbiter's side of the control socket."""

    def __init__(self, path: str, target: Controlled) -> None:
        self.path = path
        self.target = target
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    def filenos(self) -> list[int]:
        """The listening socket's fd and those of the clients being answered: what a
        forked worker must close, so that a client sees EOF when the arbiter is done."""
        socks = [self._sock, *(w.get_extra_info("socket") for w in self._clients)]
        return [s.fileno() for s in socks if s is not None and s.fileno() >= 0]

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        if _answers(self.path):
            raise OSError(f"{self.path} is the control socket of a running arbiter")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left behind by an arbiter that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._sock = sock
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            sock = writer.get_extra_info("socket")
            if peer_uid(sock) != os.geteuid():
                answer: dict[str, Any] = {"error": "permission denied: not the arbiter's user"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
                except ValueError:  # longer than the reader's limit
                    answer = {"error": "request too long"}
                else:
                    answer = await self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"error": "request too long"}
        try:
            request = json.loads(line)
            command = request["command"]
        except (ValueError, KeyError, TypeError):
            return {"error": "expected one JSON object with a 'command' key"}
        if command == "stats":
            return await self.target.stats()
        if command == "reload":
            return {"ok": True, "result": self.target.reload()}
        if command == "stop":
            self.target.stop(True)
            return {"ok": True, "result": "stopping"}
        if command == "scale":
            workers = request.get("workers")
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
                return {"error": "scale needs an integer number of workers >= 1"}
            return {"ok": True, "result": self.target.scale(workers)}
        return {"error": f"unknown command {command!r}"}


def _answers(path: str) -> bool:
    """Is something accepting connections on the Unix socket ``path``?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def request(path: str, payload: dict[str, Any], timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one request to the control socket at ``path`` and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def ctl_main(argv: Sequence[str]) -> int:
    """``python -m pulsar_arbiter ctl [--control-socket PATH] stats|reload|scale N|stop``."""
    parser = argparse.ArgumentParser(
        prog="pulsar_arbiter ctl", description="Talk to a running arbiter."
    )
    parser.add_argument("--control-socket", help="the arbiter's control socket")
    parser.add_argument("--name", default="pulsar_arbiter", help="the arbiter's --name")
    parser.add_argument("command", choices=["stats", "reload", "scale", "stop"])
    parser.add_argument("workers", nargs="?", type=int, help="for scale: the worker count")
    args = parser.parse_args(list(argv))
    payload: dict[str, Any] = {"command": args.command}
    if args.command == "scale":
        if args.workers is None or args.workers < 1:
            parser.error("scale needs the number of workers, an integer >= 1")
        payload["workers"] = args.workers
    path = args.control_socket or default_control_socket(args.name)
    try:
        answer = request(path, payload)
    except OSError as exc:
        print(f"pulsar_arbiter ctl: cannot reach the arbiter at {path}: {exc}", file=sys.stderr)
        return 1
    if isinstance(answer, dict) and "error" in answer:
        print(f"pulsar_arbiter ctl: {answer['error']}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0
