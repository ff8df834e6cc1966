"""Access log lines in gunicorn's format language, or as one JSON object per line.

``--access-log-format`` takes gunicorn's atoms (``%(h)s %(l)s ... %(D)s``) with its
default. :class:`AccessFormatter` compiles the format once: a line builds only the atoms
the format names. Nothing here runs when the access log is off: the worker binds its
callbacks only when ``--access-log`` is set.

=========== ======================================================
atom        meaning
=========== ======================================================
h           remote address (the client's, behind a trusted proxy)
l           ``-``
u           user name (from HTTP Basic auth), or ``-``
t           date of the request, ``[10/Oct/2000:13:55:36 +0000]``
r           status line: ``GET /path?q HTTP/1.1``
m           request method
U           URL path without the query
q           query string
H           protocol: ``HTTP/1.1``
s           status
B           response length (``0`` when unknown)
b           response length or ``-``
f           referer
a           user agent
T           request time in seconds
D           request time in microseconds
M           request time in milliseconds
L           request time in decimal seconds
p           process id
{name}i     request header
{name}o     response header
{name}e     environment variable
=========== ======================================================
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_ACCESS_FORMAT", "AccessFormatter", "AccessRecord"]

#: gunicorn's default access_log_format.
DEFAULT_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

_ATOM_LETTERS = (
    "h",
    "l",
    "u",
    "t",
    "r",
    "m",
    "U",
    "q",
    "H",
    "s",
    "B",
    "b",
    "f",
    "a",
    "T",
    "D",
    "M",
    "L",
    "p",
)

SIMPLE_ATOMS = frozenset(_ATOM_LETTERS)
_ATOM = re.compile(r"%\(([^)]*)\)")
_HEADER_ATOM = re.compile(r"\{([^}]+)\}([ioe])")


@dataclass
class AccessRecord:
    """One answered request, as the worker saw it."""

    remote: str
    method: str
    target: str
    version: str
    status: int
    length: int | None
    duration: float  # seconds
    request_headers: Iterable[tuple[bytes, bytes]] = ()
    response_headers: Iterable[tuple[str, str]] = ()
    pid: int = field(default_factory=os.getpid)
    when: float = field(default_factory=time.time)


def check_format(fmt: str) -> str:
    """Validate ``fmt`` (ValueError naming the unknown atom); return it unchanged."""
    for match in _ATOM.finditer(fmt):
        atom = match.group(1)
        if atom not in SIMPLE_ATOMS and not _HEADER_ATOM.fullmatch(atom):
            raise ValueError(f"unknown access log atom %({atom})s")
    try:
        fmt % _Probe()
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid access log format {fmt!r}: {exc}") from None
    return fmt


class _Probe(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "-"


def _header(headers: Iterable[tuple[Any, Any]], name: str) -> str:
    for key, value in headers:
        text = key.decode("latin-1") if isinstance(key, bytes) else key
        if text.lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return "-"


def _user(headers: Iterable[tuple[bytes, bytes]]) -> str:
    auth = _header(headers, "authorization")
    if auth[:6].lower() != "basic ":
        return "-"
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    return user.partition(":")[0] or "-"


def _clf_time(when: float) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(when))


_SIMPLE: dict[str, Callable[[AccessRecord], Any]] = {
    "h": lambda r: r.remote,
    "l": lambda r: "-",
    "u": lambda r: _user(r.request_headers),
    "t": lambda r: _clf_time(r.when),
    "r": lambda r: f"{r.method} {r.target} {r.version}",
    "m": lambda r: r.method,
    "U": lambda r: r.target.partition("?")[0],
    "q": lambda r: r.target.partition("?")[2],
    "H": lambda r: r.version,
    "s": lambda r: r.status,
    "B": lambda r: r.length or 0,
    "b": lambda r: "-" if r.length is None else r.length,
    "f": lambda r: _header(r.request_headers, "referer"),
    "a": lambda r: _header(r.request_headers, "user-agent"),
    "T": lambda r: int(r.duration),
    "D": lambda r: int(r.duration * 1_000_000),
    "M": lambda r: int(r.duration * 1000),
    "L": lambda r: f"{r.duration:.6f}",
    "p": lambda r: f"<{r.pid}>",
}


def _atom_getter(atom: str) -> Callable[[AccessRecord], Any]:
    simple = _SIMPLE.get(atom)
    if simple is not None:
        return simple
    match = _HEADER_ATOM.fullmatch(atom)
    assert match is not None, atom
    name, where = match.group(1).lower(), match.group(2)
    if where == "i":
        return lambda r: _header(r.request_headers, name)
    if where == "o":
        return lambda r: _header(r.response_headers, name)
    variable = match.group(1)
    return lambda r: os.environ.get(variable, "-")


#: The keys of a JSON access line, and the atom each one holds.
JSON_FIELDS: Mapping[str, str] = {
    "remote_addr": "h",
    "user": "u",
    "method": "m",
    "path": "U",
    "query": "q",
    "protocol": "H",
    "status": "s",
    "bytes": "B",
    "referer": "f",
    "user_agent": "a",
    "duration_us": "D",
}


class AccessFormatter:
    """Formats :class:`AccessRecord` with gunicorn's ``fmt``, or as JSON (``json=True``)."""

    def __init__(self, fmt: str = DEFAULT_ACCESS_FORMAT, json: bool = False) -> None:
        self.fmt = check_format(fmt)
        self.json = json
        atoms = dict.fromkeys(m.group(1) for m in _ATOM.finditer(fmt))
        self._getters = [(atom, _atom_getter(atom)) for atom in atoms]
        self._json_getters = [(key, _SIMPLE[atom]) for key, atom in JSON_FIELDS.items()]

    def format(self, record: AccessRecord) -> str:
        if self.json:
            values: dict[str, Any] = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.when)),
                "pid": record.pid,
            }
            for key, getter in self._json_getters:
                values[key] = getter(record)
            if values["user"] == "-":
                values["user"] = None
            return json.dumps(values, separators=(",", ":"))
        return self.fmt % {atom: getter(record) for atom, getter in self._getters}
