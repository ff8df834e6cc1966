"""Settings: one registry drives the CLI flags, the TOML config file, validation and --help.

Each field of :class:`Config` is declared once, with :func:`setting`, which records its
flags, converter (parser and validator in one), default, help text and whether a reload
(HUP) applies it. :data:`SETTINGS` is the resulting registry.

Precedence: defaults < the TOML file given with ``--config`` < command-line flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import grp
import math
import os
import pwd
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from ..ipc.commands import MAX_WORKERS
from .accesslog import DEFAULT_ACCESS_FORMAT
from .binds import BindSpec, parse_bind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "MAX_WORKERS",
    "PROG",
    "SETTINGS",
    "ActorSpec",
    "Config",
    "ConfigError",
    "Setting",
    "add_arguments",
    "build_parser",
    "convert_given",
    "default_control_socket",
    "load_config",
    "read_config_file",
    "unreloadable_changes",
]

PROG = "pulsar_arbiter"

#: The table of a pyproject.toml that holds the settings: [tool.pulsar_arbiter].
TOOL_TABLE = "pulsar_arbiter"

LoopName = Literal["uvloop", "asyncio"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Converter = Callable[[Any], Any]
SettingKind = Literal["value", "append", "flag", "positional"]


class ConfigError(Exception):
    """A bad flag, config file or value. ``str()`` is one line naming the flag or key."""

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", message.strip()))


# -- converters: str (from the CLI) or a TOML value -> the setting's value --------------
# Each raises ValueError("expected ..., got ...") and accepts its own output unchanged,
# so Config() can re-validate values from any source.


def _got(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: Upper bounds, so that no value reaches the kernel or a C API out of its range (a
#: listen() backlog is a C int) and none asks for the absurd (a billion workers).
MAX_INT = 2**31 - 1
MAX_COUNT = 2**63 - 1
#: Longest duration accepted, in seconds (about 31 years): event loops and thread waits
#: overflow far beyond it (uvloop counts milliseconds in 64 bits, threading waits ~292 years).
MAX_SECONDS = 1e9


def integer(minimum: int, maximum: int) -> Converter:
    def convert(value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and len(value) <= 40:  # int() of huge text is slow
            with contextlib.suppress(ValueError):
                number = int(value)
        if number is None or number < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {_got(value)}")
        if number > maximum:
            raise ValueError(f"expected an integer <= {maximum}, got {_got(value)}")
        return number

    return convert


def number(minimum: float, *, inclusive: bool, maximum: float = MAX_SECONDS) -> Converter:
    expected = f"a number {'>=' if inclusive else '>'} {minimum:g}"

    def convert(value: object) -> float:
        result: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # int too large for a float
                result = float(value)
        elif isinstance(value, str) and len(value) <= 40:
            with contextlib.suppress(ValueError):
                result = float(value)
        if (
            result is None
            or not math.isfinite(result)
            or result < minimum
            or (result == minimum and not inclusive)
        ):
            raise ValueError(f"expected {expected}, got {_got(value)}")
        if result > maximum:
            raise ValueError(f"expected a number <= {maximum:g}, got {_got(value)}")
        return result

    return convert


def choice(*options: str) -> Converter:
    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {_got(value)}")
        return value

    return convert


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_got(value)}")
    return value


_BOOLEANS = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False}


def boolean(value: object) -> bool:
    """A true/false value given as a flag's argument (``--ws-per-message-deflate false``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    raise ValueError(f"expected true or false, got {_got(value)}")


def path(value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"expected a path, got {_got(value)}")
    return value


def url_path(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise ValueError(f"expected a URL path such as /api, got {_got(value)}")
    return value.rstrip("/")


def existing_file(value: object) -> str:
    result = path(value)
    if not os.path.isfile(result):
        raise ValueError(f"no such file: {result!r}")
    return result


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def server_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"expected letters, digits, '.', '_' or '-' (a file name), got {_got(value)}"
        )
    return value


_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_APP = re.compile(rf"{_DOTTED}:{_DOTTED}")


def app_ref(value: object) -> str:
    if not isinstance(value, str) or not _APP.fullmatch(value):
        raise ValueError(f"expected MODULE:ATTRIBUTE, e.g. myapp:Consumer, got {_got(value)}")
    return value


_MODULE = re.compile(_DOTTED)


def module_name(value: object) -> str:
    if not isinstance(value, str) or not _MODULE.fullmatch(value):
        raise ValueError(f"expected a module name, e.g. myhooks, got {_got(value)}")
    return value


def glob(value: object) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"expected a glob pattern, e.g. *.html, got {_got(value)}")
    return value


def strings(convert: Converter) -> Converter:
    """A repeatable flag (or a TOML list) of ``convert``'s values, as a tuple."""

    def convert_all(value: object) -> tuple[Any, ...]:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(convert(item) for item in items)

    return convert_all


def allow_list(value: object) -> str:
    """Comma-separated IPs and CIDRs, or '*' (--forwarded-allow-ips)."""
    from ..forwarded import AllowList

    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    if not isinstance(value, str):
        raise ValueError(f"expected IPs or CIDRs separated by commas, got {_got(value)}")
    text = AllowList(value).text
    if not text:
        raise ValueError(f"expected IPs or CIDRs separated by commas, or '*', got {_got(value)}")
    return text


def access_format(value: object) -> str:
    from .accesslog import check_format

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an access log format, got {_got(value)}")
    return check_format(value)


@dataclass(frozen=True)
class ActorSpec:
    """A supervised actor: its name (the target ``actor:NAME``) and ``MODULE:CALLABLE``."""

    name: str
    target: str

    def __str__(self) -> str:
        return f"{self.name}={self.target}"


#: The most supervised actors: each is a process, and a typo must not fork hundreds.
MAX_ACTORS = 64
_ACTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _actor(item: object) -> ActorSpec:
    if isinstance(item, ActorSpec):
        return item
    if isinstance(item, dict):  # [[tool.pulsar_arbiter.actor]]: name = ..., target = ...
        if set(item) != {"name", "target"}:
            raise ValueError(f"expected a table with keys name and target, got {_got(item)}")
        name, target = item["name"], item["target"]
    elif isinstance(item, str):
        name, _, target = item.partition("=")
    else:
        raise ValueError(f"expected NAME=MODULE:CALLABLE, got {_got(item)}")
    if not isinstance(name, str) or not _ACTOR_NAME.fullmatch(name):
        raise ValueError(
            f"expected NAME=MODULE:CALLABLE with a NAME of letters, digits, '.', '_' or '-', "
            f"got {_got(item)}"
        )
    if not isinstance(target, str) or not _APP.fullmatch(target):
        raise ValueError(
            f"expected NAME=MODULE:CALLABLE, e.g. jobs=myapp:scheduler, got {_got(item)}"
        )
    return ActorSpec(name, target)


def actors(value: object) -> tuple[ActorSpec, ...]:
    """``--actor NAME=MODULE:CALLABLE`` (repeatable), or a TOML list of such strings or of
    ``{name, target}`` tables (``[[tool.pulsar_arbiter.actor]]``)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    specs = tuple(_actor(item) for item in items)
    names = [spec.name for spec in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"duplicate actor name {duplicate!r}")
    if len(specs) > MAX_ACTORS:
        raise ValueError(f"expected at most {MAX_ACTORS} actors, got {len(specs)}")
    return specs


def binds(value: object) -> tuple[BindSpec, ...]:
    items: Sequence[object]
    if isinstance(value, (str, BindSpec)):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"expected an address or a list of addresses, got {_got(value)}")
    if not items:
        raise ValueError("expected at least one address")
    specs: list[BindSpec] = []
    for item in items:
        if isinstance(item, str):
            item = parse_bind(item)
        elif not isinstance(item, BindSpec):
            raise ValueError(f"expected an address, got {_got(item)}")
        if item in specs:
            raise ValueError(f"duplicate address {str(item)!r}")
        specs.append(item)
    return tuple(specs)


def metrics_address(value: object) -> BindSpec:
    """A TCP address for the health and metrics endpoint (HOST:PORT)."""
    if isinstance(value, BindSpec):
        spec = value
    elif isinstance(value, str):
        spec = parse_bind(value)
    else:
        raise ValueError(f"expected HOST:PORT, got {_got(value)}")
    if spec.kind != "tcp":
        raise ValueError(f"expected a TCP address HOST:PORT, got {str(spec)!r}")
    return spec


def _account_id(
    value: object, what: str, by_id: Callable[[int], object], by_name: Callable[[str], Any]
) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            by_id(value)
        except (KeyError, OverflowError):
            raise ValueError(f"no such {what} id {value}") from None
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a {what} name or id, got {_got(value)}")
    try:
        return int(by_name(value)[2])
    except KeyError:
        raise ValueError(f"no such {what} {value!r}") from None


def user_id(value: object) -> int:
    return _account_id(value, "user", pwd.getpwuid, pwd.getpwnam)


def group_id(value: object) -> int:
    return _account_id(value, "group", grp.getgrgid, grp.getgrnam)


def optional(convert: Converter) -> Converter:
    def convert_optional(value: object) -> Any:
        return None if value is None else convert(value)

    return convert_optional


# -- computed defaults --------------------------------------------------------------------


def usable_cpus() -> int:
    """CPUs this process may run on (honours taskset/cpusets), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_control_socket(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Where the control socket of server ``name`` lives when --control-socket is not given:
    ``$XDG_RUNTIME_DIR/pulsar_arbiter/NAME.sock``, else ``/tmp/pulsar_arbiter-UID/NAME.sock``.
    """
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, PROG, f"{name}.sock")
    return os.path.join("/tmp", f"{PROG}-{os.getuid()}", f"{name}.sock")


# -- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its attribute/TOML key, flags, converter, default and help."""

    name: str
    flags: tuple[str, ...]
    convert: Converter
    help: str
    section: str
    default: Any = None
    default_factory: Callable[[], Any] | None = None
    #: How --help shows a computed default (``default_factory``, or None meaning computed).
    default_help: str | None = None
    #: Whether a reload (HUP) applies a change; if not, a restart is needed.
    reloadable: bool = True
    kind: SettingKind = "value"
    metavar: str | None = None

    @property
    def option(self) -> str:
        """How errors name it: the long flag, or the metavar of the positional."""
        longs = [f for f in self.flags if f.startswith("--")]
        return longs[0] if longs else (self.metavar or self.name.upper())

    def get_default(self) -> Any:
        return self.default_factory() if self.default_factory else self.default

    def help_text(self, *, restart_note: bool = True) -> str:
        text = self.help
        if self.default_help is not None:
            shown: str | None = self.default_help
        elif self.default_factory is not None:
            shown = str(self.default_factory())
        elif self.kind == "flag" or self.default is None:
            shown = None
        elif isinstance(self.default, tuple):
            shown = " ".join(str(item) for item in self.default)
        elif isinstance(self.default, float):
            shown = f"{self.default:g}"
        else:
            shown = str(self.default)
        if shown is not None:
            text += f" (default: {shown})"
        if not self.reloadable and restart_note:
            text += " [restart]"
        return text.replace("%", "%%")  # argparse %-formats help strings


_META = "pulsar_arbiter.setting"


def setting(
    *flags: str,
    convert: Converter,
    help: str,
    section: str,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
    default_help: str | None = None,
    reloadable: bool = True,
    kind: SettingKind = "value",
    metavar: str | None = None,
) -> Any:
    """Declare a Config field and its Setting in one place."""
    spec = Setting(
        name="",  # filled in from the field name
        flags=flags,
        convert=convert,
        help=help,
        section=section,
        default=default,
        default_factory=default_factory,
        default_help=default_help,
        reloadable=reloadable,
        kind=kind,
        metavar=metavar,
    )
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={_META: spec})
    return field(default=default, metadata={_META: spec})


_APP_SECTION = "application"
_HTTP = "http (with --wsgi, --http or --asgi)"

#: The HTTP settings, which apply only with --wsgi, --http or --asgi.
HTTP_SETTINGS = (
    "threads",
    "lifespan",
    "root_path",
    "asgi_timeout",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "limit_request_body",
)
#: The ASGI settings, which apply only with --asgi.
ASGI_SETTINGS = ("lifespan", "root_path", "asgi_timeout")
#: The WebSocket settings, which apply only with --http or --asgi (WSGI has no WebSocket).
WS_SETTINGS = ("ws_ping_interval", "ws_ping_timeout", "ws_max_size", "ws_per_message_deflate")
#: Longest request line or header field that may be allowed: a request's whole head
#: must fit in what one connection may hold before its request is dispatched (1 MiB).
MAX_HEAD = 1024 * 1024


def _http_limit(name: str) -> int:
    """The HTTP layer's own default for a limit: its number, and why, is defined there."""
    from ..http import Limits

    value: int = getattr(Limits(), name)
    return value


_SERVER = "server"
_PROXY = "behind a proxy"
_DEVELOPMENT = "development"
_WORKERS = "workers"
_PROCESS = "process"
_LOGGING = "logging"


@dataclass(frozen=True, kw_only=True)
class Config:
    """All settings, validated. Build with :func:`load_config`, ``Config(**values)`` or
    :meth:`replace`; every way runs the same converters and raises ConfigError."""

    app: str | None = setting(
        kind="positional",
        metavar="APP",
        convert=optional(app_ref),
        help="the consumer to serve, MODULE:ATTRIBUTE",
        default_help="the built-in echo consumer",
        section=_APP_SECTION,
    )
    wsgi: bool = setting(
        "--wsgi",
        kind="flag",
        convert=flag,
        default=False,
        help="APP is a WSGI callable, served by the HTTP consumer",
        section=_APP_SECTION,
    )
    http: bool = setting(
        "--http",
        kind="flag",
        convert=flag,
        default=False,
        help="APP is a raw HTTP request handler",
        section=_APP_SECTION,
    )
    asgi: bool = setting(
        "--asgi",
        kind="flag",
        convert=flag,
        default=False,
        help="APP is an ASGI 3 application (HTTP and lifespan), served by the HTTP consumer",
        section=_APP_SECTION,
    )
    lifespan: str = setting(
        "--lifespan",
        convert=choice("auto", "on", "off"),
        default="auto",
        help="ASGI only: run the app's lifespan scope (startup before a worker is ready, "
        "shutdown when it stops); auto serves an app that fails it without it",
        section=_HTTP,
    )
    root_path: str | None = setting(
        "--root-path",
        convert=optional(url_path),
        metavar="PATH",
        help="ASGI only: the path prefix the app is mounted at behind a proxy (scope root_path)",
        section=_HTTP,
    )
    asgi_timeout: float = setting(
        "--asgi-timeout",
        convert=number(0, inclusive=True),
        default=60.0,
        metavar="SECONDS",
        help="ASGI only: an app silent this long (no response started, or nothing sent "
        "while streaming one) is cancelled: answered 500, or its connection aborted once "
        "the response started; 0 waits forever",
        section=_HTTP,
    )
    ws_ping_interval: float = setting(
        "--ws-ping-interval",
        convert=number(0, inclusive=True),
        default=20.0,
        metavar="SECONDS",
        help="WebSocket: seconds between the keep-alive pings sent to each client; 0 sends none",
        section=_HTTP,
    )
    ws_ping_timeout: float = setting(
        "--ws-ping-timeout",
        convert=number(0, inclusive=True),
        default=20.0,
        metavar="SECONDS",
        help="WebSocket: a client that has not answered a ping this long is closed (1011); "
        "0 waits forever",
        section=_HTTP,
    )
    ws_max_size: int = setting(
        "--ws-max-size",
        convert=integer(1, MAX_COUNT),
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="WebSocket: largest message, counted over its fragments; a larger one closes "
        "the connection (1009)",
        section=_HTTP,
    )
    ws_per_message_deflate: bool = setting(
        "--ws-per-message-deflate",
        convert=boolean,
        default=True,
        metavar="true|false",
        help="WebSocket: accept per-message compression (RFC 7692) when a client offers it",
        section=_HTTP,
    )
    threads: int = setting(
        "--threads",
        convert=integer(0, 1024),
        default=0,
        metavar="N",
        help="WSGI only: thread pool size for blocking WSGI apps; 0 runs them inline",
        section=_HTTP,
    )
    limit_request_line: int = setting(
        "--limit-request-line",
        convert=integer(1, MAX_HEAD),
        default_factory=lambda: _http_limit("max_request_line"),
        metavar="BYTES",
        help="longest request-target; a longer one is answered 414",
        section=_HTTP,
    )
    limit_request_fields: int = setting(
        "--limit-request-fields",
        convert=integer(1, 32768),
        default_factory=lambda: _http_limit("max_headers"),
        metavar="N",
        help="most header fields in a request; more are answered 431",
        section=_HTTP,
    )
    limit_request_field_size: int = setting(
        "--limit-request-field-size",
        convert=integer(1, MAX_HEAD),
        default_factory=lambda: _http_limit("max_header_size"),
        metavar="BYTES",
        help="longest header field, name and value; a longer one is answered 431",
        section=_HTTP,
    )
    limit_request_body: int = setting(
        "--limit-request-body",
        convert=integer(1, MAX_COUNT),
        default_factory=lambda: _http_limit("max_body"),
        metavar="BYTES",
        help="largest request body, announced or chunked; a larger one is answered 413 "
        "(raise it for uploads: 10485760 for 10 MiB)",
        section=_HTTP,
    )
    preload: bool = setting(
        "--preload",
        kind="flag",
        convert=flag,
        default=False,
        reloadable=False,
        help="import APP in the arbiter before forking",
        section=_APP_SECTION,
    )
    bind: tuple[BindSpec, ...] = setting(
        "-b",
        "--bind",
        kind="append",
        convert=binds,
        default=(BindSpec("tcp", host="127.0.0.1", port=8060),),
        default_help="127.0.0.1:8060",
        reloadable=False,
        metavar="ADDRESS",
        help="where to listen, repeatable: HOST:PORT, :PORT, [IPV6]:PORT, "
        "tcp://HOST:PORT, udp://HOST:PORT or unix:PATH",
        section=_SERVER,
    )
    backlog: int = setting(
        "--backlog",
        convert=integer(1, MAX_INT),
        default=2048,
        reloadable=False,
        metavar="N",
        help="listen queue length of each TCP and Unix socket",
        section=_SERVER,
    )
    reuse_port: bool = setting(
        "--reuse-port",
        kind="flag",
        convert=flag,
        default=False,
        reloadable=False,
        help="one SO_REUSEPORT socket per worker, balanced by the kernel",
        section=_SERVER,
    )
    handoff: bool = setting(
        "--handoff",
        kind="flag",
        convert=flag,
        default=False,
        help=(
            "on a recycle, reload or scale-down, hand the idle connections of a raw "
            "consumer to a serving worker instead of closing them (HTTP connections "
            "always are); only for consumers that keep no state between requests"
        ),
        section=_SERVER,
    )
    keep_alive: float = setting(
        "--keep-alive",
        convert=number(0, inclusive=True),
        default=5.0,
        metavar="SECONDS",
        help="close connections idle for this long; 0 never closes them",
        section=_SERVER,
    )
    metrics_bind: BindSpec | None = setting(  # noqa: RUF009 - a dataclasses.field()
        "--metrics-bind",
        convert=optional(metrics_address),
        reloadable=False,
        metavar="HOST:PORT",
        help="serve GET /health and GET /metrics (Prometheus) here, from the arbiter; off "
        "by default",
        section=_SERVER,
    )
    certfile: str | None = setting(
        "--certfile",
        convert=optional(existing_file),
        metavar="FILE",
        help="TLS certificate chain (PEM); needs --keyfile",
        section=_SERVER,
    )
    keyfile: str | None = setting(
        "--keyfile",
        convert=optional(existing_file),
        metavar="FILE",
        help="TLS private key (PEM); needs --certfile",
        section=_SERVER,
    )
    workers: int = setting(
        "-w",
        "--workers",
        convert=integer(1, MAX_WORKERS),
        default_factory=usable_cpus,
        default_help="the number of usable CPUs",
        metavar="N",
        help="number of worker processes",
        section=_WORKERS,
    )
    loop: LoopName = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        "--loop",
        convert=choice("uvloop", "asyncio"),
        default="uvloop",
        metavar="{uvloop,asyncio}",
        help="event loop of the workers",
        section=_WORKERS,
    )
    max_requests: int = setting(
        "--max-requests",
        convert=integer(0, MAX_COUNT),
        default=0,
        metavar="N",
        help="recycle a worker after this many requests; 0 never",
        section=_WORKERS,
    )
    max_requests_jitter: int = setting(
        "--max-requests-jitter",
        convert=integer(0, MAX_COUNT),
        default=0,
        metavar="N",
        help="add a random 0..N to --max-requests per worker, so they do not recycle together",
        section=_WORKERS,
    )
    max_commands: int = setting(
        "--max-commands",
        convert=integer(1, 4096),
        default=16,
        metavar="N",
        help="commands (send, ctl call) running at once in a worker or actor; more are "
        "refused as busy, so a flood of commands cannot starve request serving",
        section=_WORKERS,
    )
    actor: tuple[ActorSpec, ...] = setting(
        "--actor",
        kind="append",
        convert=actors,
        default=(),
        metavar="NAME=MODULE:CALLABLE",
        help="run `async def CALLABLE(actor)` in a supervised process of its own, which "
        "serves no sockets and answers the commands of its module as actor:NAME; "
        "repeatable ([[tool.pulsar_arbiter.actor]] name/target tables in TOML)",
        section=_WORKERS,
    )
    timeout: float = setting(
        "--timeout",
        convert=number(0, inclusive=False),
        default=30.0,
        metavar="SECONDS",
        help="kill a worker whose loop sent no heartbeat for this long",
        section=_WORKERS,
    )
    boot_timeout: float = setting(
        "--boot-timeout",
        convert=number(0, inclusive=False),
        default=60.0,
        metavar="SECONDS",
        help="kill a new worker that is not ready (app imported, serving) after this long",
        section=_WORKERS,
    )
    graceful_timeout: float = setting(
        "--graceful-timeout",
        convert=number(0, inclusive=True),
        default=30.0,
        metavar="SECONDS",
        help="on a graceful stop, time to finish in-flight requests before a kill",
        section=_WORKERS,
    )
    drain_delay: float = setting(
        "--drain-delay",
        convert=number(0, inclusive=True),
        default=0.0,
        metavar="SECONDS",
        help="on TERM, answer /health with 503 at once but keep serving this long before "
        "the graceful stop, so a balancer stops sending first",
        section=_WORKERS,
    )
    name: str = setting(
        "--name",
        convert=server_name,
        default=PROG,
        reloadable=False,
        help="server name, in process titles and the default control socket path",
        section=_PROCESS,
    )
    control_socket: str | None = setting(
        "--control-socket",
        convert=optional(path),
        default_help="$XDG_RUNTIME_DIR/pulsar_arbiter/NAME.sock, "
        "else /tmp/pulsar_arbiter-UID/NAME.sock",
        reloadable=False,
        metavar="PATH",
        help="Unix socket of `pulsar_arbiter ctl`",
        section=_PROCESS,
    )
    pid: str | None = setting(
        "--pid",
        convert=optional(path),
        reloadable=False,
        metavar="FILE",
        help="write the arbiter's pid to this file",
        section=_PROCESS,
    )
    user: int | None = setting(
        "--user",
        convert=optional(user_id),
        reloadable=False,
        metavar="USER",
        help="run workers as this user (name or uid)",
        section=_PROCESS,
    )
    group: int | None = setting(
        "--group",
        convert=optional(group_id),
        reloadable=False,
        metavar="GROUP",
        help="run workers as this group (name or gid)",
        section=_PROCESS,
    )
    config: str | None = setting(
        "-c",
        "--config",
        convert=optional(path),
        reloadable=False,
        metavar="FILE",
        help="read settings from this TOML file (or the [tool.pulsar_arbiter] table of a "
        "pyproject.toml); flags override it",
        section=_PROCESS,
    )
    log_level: LogLevel = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        "--log-level",
        convert=choice("debug", "info", "warning", "error", "critical"),
        default="info",
        metavar="LEVEL",
        help="debug, info, warning, error or critical",
        section=_LOGGING,
    )
    access_log: str | None = setting(
        "--access-log",
        "--access-logfile",  # gunicorn's name
        convert=optional(path),
        metavar="FILE",
        help="access log file, '-' for stdout; off by default",
        section=_LOGGING,
    )
    error_log: str | None = setting(
        "--error-log",
        "--error-logfile",  # gunicorn's name
        convert=optional(path),
        default="-",
        metavar="FILE",
        help="error log file, '-' for stderr",
        section=_LOGGING,
    )
    access_log_format: str = setting(
        "--access-log-format",
        "--access-logformat",  # gunicorn's name
        convert=access_format,
        default=DEFAULT_ACCESS_FORMAT,
        metavar="FORMAT",
        help="access log line in gunicorn's atoms: %(h)s remote address, %(t)s time, "
        '"%(r)s" request line, %(s)s status, %(b)s length, %(D)s microseconds, '
        "%({header}i)s ... (README)",
        section=_LOGGING,
    )
    log_format: Literal["text", "json"] = setting(
        "--log-format",
        convert=choice("text", "json"),
        default="text",
        metavar="FORMAT",
        help="text, or json: one JSON object per line (access and error logs)",
        section=_LOGGING,
    )
    hooks: str | None = setting(
        "--hooks",
        convert=optional(module_name),
        metavar="MODULE",
        reloadable=False,
        help="module of server hooks with gunicorn's names (on_starting, when_ready, "
        "post_fork, worker_exit, ...), run at gunicorn's points",
        section=_PROCESS,
    )
    reload: bool = setting(
        "--reload",
        kind="flag",
        convert=flag,
        default=False,
        reloadable=False,
        help="development: roll the workers (as HUP does) when a source file changes",
        section=_DEVELOPMENT,
    )
    reload_dir: tuple[str, ...] = setting(
        "--reload-dir",
        kind="append",
        convert=strings(path),
        default=(),
        metavar="DIR",
        reloadable=False,
        help="with --reload, watch DIR instead of the current directory and the app's "
        "package; repeatable",
        section=_DEVELOPMENT,
    )
    reload_include: tuple[str, ...] = setting(
        "--reload-include",
        kind="append",
        convert=strings(glob),
        default=(),
        metavar="GLOB",
        reloadable=False,
        help="with --reload, also watch files matching GLOB (*.py always); repeatable",
        section=_DEVELOPMENT,
    )
    reload_exclude: tuple[str, ...] = setting(
        "--reload-exclude",
        kind="append",
        convert=strings(glob),
        default=(),
        metavar="GLOB",
        reloadable=False,
        help="with --reload, ignore files matching GLOB; repeatable",
        section=_DEVELOPMENT,
    )
    proxy_headers: bool = setting(
        "--proxy-headers",
        kind="flag",
        convert=flag,
        default=False,
        help="take the client's address and scheme from X-Forwarded-For, "
        "X-Forwarded-Proto and Forwarded sent by the peers of --forwarded-allow-ips",
        section=_PROXY,
    )
    forwarded_allow_ips: str = setting(
        "--forwarded-allow-ips",
        convert=allow_list,
        default="127.0.0.1",
        metavar="IPS",
        help="comma-separated IPs and CIDRs of the proxies trusted with --proxy-headers, or '*'",
        section=_PROXY,
    )
    proxy_protocol: bool = setting(
        "--proxy-protocol",
        kind="flag",
        convert=flag,
        default=False,
        reloadable=False,
        help="every stream bind requires a PROXY protocol (v1 or v2) header, as HAProxy "
        "send-proxy and cloud balancers send; one bind only: proxy+tcp://HOST:PORT",
        section=_PROXY,
    )

    def __post_init__(self) -> None:
        for spec in SETTINGS:
            value = _convert(spec, getattr(self, spec.name), spec.option)
            object.__setattr__(self, spec.name, value)
        _check_combinations(self)

    @property
    def control_socket_path(self) -> str:
        """--control-socket, or its computed default for --name."""
        return self.control_socket or default_control_socket(self.name)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated (ConfigError if invalid)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON-ready values (bind addresses as strings)."""
        result: dict[str, Any] = {}
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.name == "bind":
                value = [str(item) for item in value]
            elif isinstance(value, BindSpec):
                value = str(value)
            elif spec.name == "actor":
                value = [str(item) for item in value]
            elif isinstance(value, tuple):  # --reload-dir and the other repeatable strings
                value = list(value)
            result[spec.name] = value
        return result


def _setting_of(config_field: dataclasses.Field[Any]) -> Setting:
    spec: Setting = config_field.metadata[_META]
    return dataclasses.replace(spec, name=config_field.name)


#: The registry: every setting, in --help order.
SETTINGS: tuple[Setting, ...] = tuple(_setting_of(f) for f in dataclasses.fields(Config))
_BY_NAME: dict[str, Setting] = {spec.name: spec for spec in SETTINGS}


def _convert(spec: Setting, value: Any, label: str) -> Any:
    try:
        return spec.convert(value)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _check_combinations(config: Config) -> None:
    if (config.certfile is None) != (config.keyfile is None):
        given = "--certfile" if config.certfile else "--keyfile"
        raise ConfigError(f"--certfile/--keyfile: TLS needs both, only {given} given")
    kinds = [f"--{name}" for name in ("wsgi", "http", "asgi") if getattr(config, name)]
    if len(kinds) > 1:
        raise ConfigError(f"{'/'.join(kinds)}: choose one")
    for name in ("wsgi", "http", "asgi"):
        if getattr(config, name) and config.app is None:
            raise ConfigError(f"--{name}: needs an APP (MODULE:ATTRIBUTE)")
    if config.proxy_headers and not (config.wsgi or config.http or config.asgi):
        raise ConfigError("--proxy-headers: only with --wsgi or --http or --asgi")
    if config.threads and not config.wsgi:
        raise ConfigError("--threads: only with --wsgi (a thread pool runs WSGI apps)")
    if not config.asgi:
        for name in ASGI_SETTINGS:
            spec = _BY_NAME[name]
            if getattr(config, name) != spec.get_default():
                raise ConfigError(f"{spec.option}: only with --asgi")
    if not (config.http or config.asgi):
        for name in WS_SETTINGS:
            spec = _BY_NAME[name]
            if getattr(config, name) != spec.get_default():
                raise ConfigError(f"{spec.option}: only with --http or --asgi")
    if not (config.wsgi or config.http or config.asgi):
        for name in HTTP_SETTINGS:
            spec = _BY_NAME[name]
            if getattr(config, name) != spec.get_default():
                raise ConfigError(f"{spec.option}: only with --wsgi or --http or --asgi")


def unreloadable_changes(old: Config, new: Config) -> list[str]:
    """Names of the settings that differ between ``old`` and ``new`` but that a reload
    (HUP) cannot apply; the arbiter keeps the old values and warns."""
    return [
        spec.name
        for spec in SETTINGS
        if not spec.reloadable and getattr(old, spec.name) != getattr(new, spec.name)
    ]


# -- command line -------------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    """Raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        # "argument -w/--workers: expected one argument" -> "--workers: expected ..."
        message = re.sub(r"^argument (?:-\w/)?", "", message)
        raise ConfigError(message)


_EPILOG = (
    "Every flag can also be set in a TOML file given with --config, with underscores in "
    "keys (max_requests = 1000, bind = ['127.0.0.1:8060']), at its root or in the "
    "[tool.pulsar_arbiter] table of a pyproject.toml. Precedence: defaults < config file < "
    "flags. Settings marked [restart] are not changed by a reload (HUP)."
)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every setting. Values are left as strings (flags given only;
    the others are absent from the namespace); :func:`load_config` converts them."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Serve APP with a pre-forked pool of worker processes.",
        epilog=_EPILOG,
        allow_abbrev=False,
    )
    # Handled by the CLI before this parser runs (cli.main): declared so --help lists them.
    parser.add_argument(
        "--version",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print our version, Python's, the event loop's and the core's, then exit",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="validate the settings, import the app and the --hooks module, then exit: 0 "
        "when all is well, 2 with the error on one line",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in SETTINGS:
        group = groups.get(spec.section)
        if group is None:
            group = groups[spec.section] = parser.add_argument_group(spec.section)
        _add_argument(group, spec, spec.help_text())
    return parser


def _add_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, spec: Setting, help_text: str
) -> None:
    if spec.kind == "positional":
        parser.add_argument(
            spec.name, nargs="?", default=None, metavar=spec.metavar, help=help_text
        )
    elif spec.kind == "flag":
        parser.add_argument(
            *spec.flags,
            dest=spec.name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        parser.add_argument(
            *spec.flags,
            dest=spec.name,
            action="append" if spec.kind == "append" else "store",
            default=argparse.SUPPRESS,
            metavar=spec.metavar,
            help=help_text,
        )


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add the flags of the settings ``names`` to ``parser``, for a tool that shares them
    with the server (``ctl``: --control-socket, --name). Given flags only, as strings:
    :func:`convert_given` converts them."""
    for name in names:
        _add_argument(parser, _BY_NAME[name], _BY_NAME[name].help_text(restart_note=False))


def convert_given(given: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The settings ``names`` found in ``given`` (an argparse namespace's vars), converted
    and validated by the registry; ConfigError (one line) for a bad value."""
    values: dict[str, Any] = {}
    for name in names:
        if name in given:
            spec = _BY_NAME[name]
            values[name] = _convert(spec, given[name], spec.option)
    return values


# -- config file ----------------------------------------------------------------------------


def read_config_file(file: str) -> dict[str, Any]:
    """The settings table of a TOML file: its root, or [tool.pulsar_arbiter] of a
    pyproject.toml. Raises ConfigError if unreadable, not TOML, or the table is missing."""
    try:
        with open(file, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {file!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    tool = document.get("tool")
    is_pyproject = os.path.basename(file) == "pyproject.toml"
    if is_pyproject or (isinstance(tool, dict) and TOOL_TABLE in tool):
        table = tool.get(TOOL_TABLE) if isinstance(tool, dict) else None
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: no [tool.{TOOL_TABLE}] table")
        return table
    return document


def _convert_file(file: str, table: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = _BY_NAME.get(key)
        if spec is None:
            close = difflib.get_close_matches(key.replace("-", "_"), _BY_NAME, n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{file}: unknown setting {key!r}{hint}")
        if key == "config":
            raise ConfigError(f"{file}: 'config' cannot be set in a config file")
        values[key] = _convert(spec, value, f"{file}: {key}")
    return values


def load_config(argv: Sequence[str]) -> Config:
    """Parse ``argv`` (without the program name), read --config, validate; the resulting
    Config has every setting. Raises ConfigError; ``--help`` prints and exits 0."""
    given = vars(build_parser().parse_args(list(argv)))
    for name in ("version", "check_config"):  # the CLI's (cli.main), not settings
        given.pop(name, None)
    if given.get("app") is None:
        given.pop("app", None)
    values: dict[str, Any] = {}
    if "config" in given:
        file = _convert(_BY_NAME["config"], given["config"], "--config")
        values.update(_convert_file(file, read_config_file(file)))
    for name, raw in given.items():
        spec = _BY_NAME[name]
        values[name] = _convert(spec, raw, spec.option)
    return Config(**values)
