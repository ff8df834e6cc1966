"""``python -m pulsar_arbiter [APP] [options]`` and ``python -m pulsar_arbiter ctl ...``."""

from __future__ import annotations

import logging
import platform
import resource
import signal
import sys
from collections.abc import Sequence

from .ops.config import PROG, ConfigError, load_config
from .runtime.exits import EXIT_USAGE
from .runtime.signals import CLI_STOP_SIGNALS

__all__ = ["main", "raise_nofile_limit"]


LOGGER = logging.getLogger("pulsar_arbiter.arbiter")

#: Where fs.nr_open, the ceiling of any process's open-file limit, is read.
NR_OPEN = "/proc/sys/fs/nr_open"


def raise_nofile_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard limit; return (old, new) if changed.

    Every connection is a file descriptor, and the usual soft limit (1024) is a leftover of
    select(); the hard limit is what the administrator grants. Go and nginx
    (``worker_rlimit_nofile``) do the same. Done before the arbiter forks, so that the
    workers inherit it; an unlimited hard limit is capped at fs.nr_open, the kernel's
    ceiling. Best effort: on any error the limit stays as it was.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard
        if target == resource.RLIM_INFINITY:
            with open(NR_OPEN, encoding="ascii") as file:
                target = int(file.read())
        if soft != resource.RLIM_INFINITY and soft >= target:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return soft, target


def version_text() -> str:
    """``--version``: ours, Python's, the event loop's, the libraries', and which
    per-request core is loaded (compiled with mypyc, or pure Python and why)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    from ._core import core_description

    python = f"{platform.python_implementation()} {platform.python_version()}"
    return (
        f"{PROG} {of('pulsar-arbiter')} (Python {python}; uvloop {of('uvloop')}; "
        f"core: httptools {of('httptools')}, watchfiles {of('watchfiles')}; "
        f"per-request core: {core_description()})"
    )


def core_notice() -> str | None:
    """The one line logged at start when the compiled core is not the one loaded."""
    from ._core import core_description, is_compiled, pure_forced

    if is_compiled():
        return None
    if pure_forced():
        return f"per-request core: {core_description()}"
    return (
        f"per-request core: {core_description()}; reinstall with a C compiler and the "
        "Python headers for the compiled one"
    )


def check_config(args: Sequence[str]) -> int:
    """``--check-config``: validate the settings, import the app and the hooks; exit 0
    when all is well, else 2 with the error on one line (as gunicorn users run in CI)."""
    from .runtime.apps import AppError, build_factories
    from .runtime.hooks import HookError, load_hooks

    try:
        cfg = load_config(args)
        load_hooks(cfg.hooks)
        build_factories(cfg)
    except (ConfigError, AppError, HookError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{PROG}: the configuration is valid")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ctl"]:
        from .ops.control import ctl_main

        return ctl_main(args[1:])
    if "--version" in args:
        print(version_text())
        return 0
    if "--check-config" in args:
        return check_config([a for a in args if a != "--check-config"])
    # From here until the arbiter's handlers take over, a stop signal is recorded and
    # handed to the arbiter (a Ctrl-C while starting stops it, without a traceback).
    pending: list[int] = []
    for signum in CLI_STOP_SIGNALS:
        signal.signal(signum, lambda received, frame: pending.append(received))
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .ops.logs import setup_logging
    from .runtime.arbiter import Arbiter

    try:
        setup_logging(cfg)  # the arbiter sets it up again in run(): idempotent
    except OSError as exc:
        print(f"{PROG}: error: --error-log/--access-log: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notice = core_notice()
    if notice is not None:
        LOGGER.info(notice)
    raised = raise_nofile_limit()
    if raised is not None:
        LOGGER.info("raised the open files limit (RLIMIT_NOFILE) from %d to %d", *raised)
    return Arbiter(cfg, args).run(pending)
