"""The control socket and ``python -m pulsar_arbiter ctl ...``.

A Unix socket (mode 0600, and the peer's uid checked with SO_PEERCRED) that takes one
JSON request per line and answers one JSON line: ``{"command": NAME, ARG: VALUE...}`` runs
the arbiter's command NAME of the one registry (:data:`pulsar_arbiter.ipc.COMMANDS`):
``{"command": "stats"}``, ``{"command": "reload"}``, ``{"command": "scale", "workers": N}``,
``{"command": "stop"}``. The answer is ``{"ok": true, "result": ...}`` (``stats`` answers its
object itself). ``{"call": NAME, "to": TARGET, "args": {...}, "timeout": S}`` runs command
NAME in TARGET (``arbiter``, ``worker:N``, ``workers``, ``actor:NAME``, ``actors``: routed
as a ``send()`` is) and answers ``{"answers": {MEMBER: {"result": ...} or {"error": ...}}}``.
Every request gets an answer, an ``{"error": ...}`` one for anything malformed, an unknown
command or target or an unknown, missing or bad argument.

Who trusts whom:

* The arbiter keeps its socket only in a directory that no other user can write to: the
  directory must be owned by the arbiter's user (or root) and not writable by group or
  others, unless it is a sticky directory owned by root, like ``/tmp`` itself, where others
  cannot remove or replace our files. Otherwise the control socket is disabled (the
  arbiter logs why and serves on).
* The arbiter answers clients of its own user and root; others get an error.
* ``ctl`` checks who answers before sending anything (SO_PEERCRED). It talks to an arbiter
  running as its own user. Root also talks to an arbiter of another user when told where
  with ``--control-socket`` and that user owns the socket file (``sudo pulsar_arbiter ctl
  --control-socket /run/app/ctl.sock stats`` for an arbiter run by ``app``), never at the
  default path, which is per user: a socket there answered by anyone else is an impostor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Sequence
from typing import Any

from ..ipc import COMMANDS, DEFAULT_TIMEOUT, MAX_DEPTH, CommandError, nesting_exceeds
from ..ipc.actor import parse_target
from ..ipc.commands import ArbiterActor
from .config import PROG, ConfigError, add_arguments, convert_given, default_control_socket

__all__ = ["ControlServer", "ForeignServer", "check_directory", "ctl_main", "request"]

logger = logging.getLogger("pulsar_arbiter.control")

# One request line at most: commands are tiny (a call's arguments come from a command
# line); a peer sending more is not a client of ours.
MAX_REQUEST = 4096
# Seconds a ctl client waits for the arbiter's answer (stats asks every worker); a
# ``ctl call`` waits its own timeout plus this margin.
CLIENT_TIMEOUT = 10.0
# The longest ``ctl call --timeout``: an operator waiting longer has a stuck command.
CALL_TIMEOUT_MAX = 3600.0


#: What the control socket drives: the arbiter (its commands are the registry's).
Controlled = ArbiterActor


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ForeignServer(PermissionError):
    """The control socket is answered by a process of a user ``ctl`` does not trust."""


def check_directory(directory: str, uid: int | None = None) -> None:
    """Raise PermissionError (one line) unless no user other than ``uid`` (default: our
    effective uid) or root can put a socket of theirs in ``directory``: it is owned by
    ``uid`` or root, and not writable by group or others (a sticky directory owned by root,
    such as /tmp, is accepted: others cannot remove or replace our files there). A symlink
    to it counts only if the link, too, is owned by ``uid`` or root."""
    uid = os.geteuid() if uid is None else uid
    trusted = {uid, 0}
    link = os.lstat(directory)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        raise PermissionError(
            f"control directory {directory} is a symlink owned by uid {link.st_uid}, "
            f"not by uid {uid}: refusing it"
        )
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"control directory {directory} is not a directory")
    if info.st_uid not in trusted:
        raise PermissionError(
            f"control directory {directory} is owned by uid {info.st_uid}, not by uid {uid}: "
            "refusing it (remove it, or choose another --control-socket)"
        )
    sticky_root = info.st_uid == 0 and info.st_mode & stat.S_ISVTX
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_root:
        raise PermissionError(
            f"control directory {directory} is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing it (chmod go-w, or remove it)"
        )


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
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_directory(directory)
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
            if peer_uid(sock) not in (os.geteuid(), 0):
                answer: dict[str, Any] = {"error": "permission denied: not the arbiter's user"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
                except ValueError:  # longer than the reader's limit
                    answer = {"error": "request too long"}
                else:
                    answer = await self._safe_answer(line)
            writer.write(_dump(answer))
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _safe_answer(self, line: bytes) -> dict[str, Any]:
        """The answer to ``line``; an error answer, never an exception, whatever it is."""
        try:
            return await self._answer(line)
        except Exception as exc:  # a bug of ours or of the target: answer, serve on
            logger.exception("control request %.80r failed", line)
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"error": "request too long"}
        if not line.strip():
            return {"error": "empty request: expected one JSON object with a 'command' key"}
        try:
            request = json.loads(line)
        except RecursionError:
            return {"error": f"request nested deeper than {MAX_DEPTH} levels"}
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            return {"error": "expected one JSON object with a 'command' key"}
        if nesting_exceeds(request, MAX_DEPTH):
            return {"error": f"request nested deeper than {MAX_DEPTH} levels"}
        if isinstance(request, dict) and "call" in request:
            return await self._call(request)
        if not isinstance(request, dict) or "command" not in request:
            return {"error": "expected one JSON object with a 'command' key"}
        args = dict(request)
        name = args.pop("command")
        try:
            command = COMMANDS.lookup("arbiter", name)
            result = await COMMANDS.call(self.target, "arbiter", name, args)
        except CommandError as exc:
            return {"error": str(exc)}
        if command.bare_answer and isinstance(result, dict):
            return result
        return {"ok": True, "result": result}

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        """``ctl call``: a command in any target, answered per member."""
        name, target = request.get("call"), request.get("to", "arbiter")
        args, timeout = request.get("args", {}), request.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(name, str) or not isinstance(args, dict):
            return {"error": "call: expected a command name and an object of arguments"}
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            return {"error": f"call: timeout must be a number, got {timeout!r:.80}"}
        if not 0 < timeout <= CALL_TIMEOUT_MAX:
            return {"error": f"call: timeout must be in (0, {CALL_TIMEOUT_MAX:g}]"}
        try:
            parse_target(target)
            answers = await self.target.route(target, name, args, float(timeout))
        except CommandError as exc:
            return {"error": str(exc)}
        return {"answers": answers}


def _dump(answer: Any) -> bytes:
    try:
        return json.dumps(answer).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        logger.error("control answer cannot be encoded: %s", exc)
        return json.dumps({"error": f"internal error: answer not JSON: {exc}"}).encode() + b"\n"


def _answers(path: str) -> bool:
    """Is something accepting connections on the Unix socket ``path``?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def check_server(sock: socket.socket, path: str, *, explicit: bool) -> None:
    """Raise ForeignServer unless the arbiter at the other end of ``sock`` is trusted:
    it runs as our effective uid, or we are root, ``path`` was given explicitly
    (``explicit``) and the arbiter's uid owns the socket file."""
    me = os.geteuid()
    uid = peer_uid(sock)
    if uid == me:
        return
    if me == 0 and explicit:
        with contextlib.suppress(OSError):
            if os.stat(path).st_uid == uid:
                return
    raise ForeignServer(
        f"refusing to talk to the server at {path}: it runs as uid {uid}, not as uid {me}"
        + ("" if me != 0 or explicit else " (name it with --control-socket to trust its owner)")
    )


def request(
    path: str,
    payload: dict[str, Any],
    timeout: float = CLIENT_TIMEOUT,
    *,
    explicit: bool = True,
) -> Any:
    """Send one request to the control socket at ``path`` and return its answer.

    Raises ForeignServer (a PermissionError), before sending anything, if the server is
    not trusted (see :func:`check_server`; ``explicit`` says ``path`` was named by the
    user rather than computed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        check_server(sock, path, explicit=explicit)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def ctl_main(argv: Sequence[str]) -> int:
    """``python -m pulsar_arbiter ctl [--control-socket PATH] [--name NAME] COMMAND [ARG...]``:
    the arbiter's commands of the one registry (stats, reload, scale N, stop), or
    ``call NAME [--to TARGET] [KEY=VALUE ...] [--timeout S]``: any command in any target.
    Exit status: 0 when every member answered without error, 1 otherwise, 2 on bad usage."""
    commands = {c.name: c for c in COMMANDS.commands("arbiter") if c.name in CTL_COMMANDS}
    usage = [
        f"{c.name}{''.join(f' {p.name.upper()}' for p in c.params)}" for c in commands.values()
    ]
    call_usage = "call NAME [--to TARGET] [KEY=VALUE ...] [--timeout S]"
    width = max(map(len, [*usage, call_usage]))
    parser = argparse.ArgumentParser(
        prog=f"{PROG} ctl",
        description="Talk to a running arbiter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(
            f"  {u:<{width}}  {c.help}" for u, c in zip(usage, commands.values(), strict=True)
        )
        + f"\n  {call_usage:<{width}}  run command NAME in TARGET (arbiter, worker:N, workers,"
        + f"\n  {'':<{width}}  actor:NAME, actors); prints one JSON object, per member",
    )
    add_arguments(parser, ("control_socket", "name"))
    parser.add_argument("command", choices=[*commands, "call"], help="what to ask the arbiter")
    parser.add_argument(
        "values", nargs="*", metavar="ARG", help="the command's arguments, in order (scale N)"
    )
    parser.add_argument("--to", default="arbiter", metavar="TARGET", help="call: the target")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="call: seconds to wait"
    )
    args = parser.parse_intermixed_args(list(argv))
    try:
        settings = convert_given(vars(args), ("control_socket", "name"))
    except ConfigError as exc:
        parser.error(str(exc))
    if args.command == "call":
        name, payload = _call_payload(parser, args)
    else:
        name, payload = _builtin_payload(parser, args, commands[args.command])
    explicit = settings.get("control_socket")
    path = explicit or default_control_socket(settings.get("name", PROG))
    wait = CLIENT_TIMEOUT + float(payload.get("timeout", 0))
    try:
        answer = request(path, payload, wait, explicit=explicit is not None)
    except ForeignServer as exc:
        print(f"pulsar_arbiter ctl: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pulsar_arbiter ctl: cannot reach the arbiter at {path}: {exc}", file=sys.stderr)
        return 1
    except ValueError:  # closed without a whole JSON answer
        print(f"pulsar_arbiter ctl: no valid answer from the arbiter at {path}", file=sys.stderr)
        return 1
    if not isinstance(answer, dict) or "error" in answer or "answers" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else None
        print(f"pulsar_arbiter ctl: {error or 'malformed answer'}", file=sys.stderr)
        return 1
    answers = answer["answers"]
    failed = [m for m, a in answers.items() if not isinstance(a, dict) or "error" in a]
    if args.command == "call":
        for entry in answers.values():
            if isinstance(entry, dict):
                entry.pop("type", None)
        print(json.dumps(answers, indent=2, sort_keys=True))
        return 1 if failed or not answers else 0
    (entry,) = answers.values()
    if failed:
        print(f"pulsar_arbiter ctl: {entry.get('error')}", file=sys.stderr)
        return 1
    result = entry["result"]
    bare = commands[name].bare_answer and isinstance(result, dict)
    print(json.dumps(result if bare else {"ok": True, "result": result}, indent=2, sort_keys=True))
    return 0


#: The arbiter's commands that ``ctl`` offers by name (any other through ``ctl call``).
CTL_COMMANDS = ("stats", "reload", "scale", "stop")


def _builtin_payload(
    parser: argparse.ArgumentParser, args: argparse.Namespace, command: Any
) -> tuple[str, dict[str, Any]]:
    """``ctl scale 4``: a call of the arbiter's built-in command, arguments in order."""
    if args.to != "arbiter" or args.timeout is not None:
        parser.error(f"{command.name}: --to and --timeout are for call")
    if len(args.values) > len(command.params):
        parser.error(f"{command.name}: too many arguments")
    values = {p.name: _json_or_text(v) for p, v in zip(command.params, args.values, strict=False)}
    try:
        command.bind(values)  # checked here too: a usage error is ours to report
    except CommandError as exc:
        parser.error(str(exc))
    payload = {"call": command.name, "to": "arbiter", "args": values, "timeout": DEFAULT_TIMEOUT}
    return command.name, payload


def _call_payload(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[str, dict[str, Any]]:
    """``ctl call NAME [KEY=VALUE ...]``: VALUE is JSON when it is valid JSON, else text."""
    if not args.values:
        parser.error("call: which command? (call NAME [--to TARGET] [KEY=VALUE ...])")
    name, *pairs = args.values
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"call: expected KEY=VALUE, got {pair!r}")
        kwargs[key] = _json_or_text(value)
    try:
        parse_target(args.to)
    except CommandError as exc:
        parser.error(f"--to: {exc}")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    if not 0 < timeout <= CALL_TIMEOUT_MAX:
        parser.error(f"--timeout: expected a number of seconds in (0, {CALL_TIMEOUT_MAX:g}]")
    return name, {"call": name, "to": args.to, "args": kwargs, "timeout": timeout}


def _json_or_text(value: str) -> Any:
    """A command-line argument: its JSON value when it is valid JSON ("3"), else the text."""
    try:
        return json.loads(value)
    except ValueError:
        return value
