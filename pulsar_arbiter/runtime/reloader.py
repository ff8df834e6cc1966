"""``--reload``: watch the app's source with watchfiles and roll the workers on a change.

A change does what HUP does (the arbiter's ``reload()``): a rolling restart, one worker
at a time; a replacement that fails to boot (a syntax error just saved) halts the roll and
the old workers keep serving. watchfiles groups a burst of saves into one change set
(``DEBOUNCE_MS``), and the arbiter rolls at most once per set, so an editor that writes a
file three times restarts once; a roll never triggers another (only source files count).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DEBOUNCE_MS", "ReloadFilter", "watch_dirs", "watch_source"]

LOGGER = logging.getLogger("pulsar_arbiter.reload")

#: Milliseconds watchfiles waits for a burst of changes to settle before yielding them.
DEBOUNCE_MS = 300
#: Directories never watched (caches, virtualenvs, VCS).
IGNORED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".tox"}
)


class ReloadFilter:
    """Which changed paths count: ``*.py`` and the ``--reload-include`` globs, minus the
    ``--reload-exclude`` globs and the ignored directories."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = ("*.py", *include)
        self.exclude = tuple(exclude)

    def __call__(self, change: object, path: str) -> bool:
        parts = Path(path).parts
        if any(part in IGNORED_DIRS for part in parts):
            return False
        name = os.path.basename(path)
        if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(path, g) for g in self.exclude):
            return False
        return any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(path, g) for g in self.include)


def watch_dirs(app: str | None, dirs: Sequence[str], cwd: str | None = None) -> list[str]:
    """The directories to watch: ``--reload-dir`` ones, else the current directory and
    the directory of the app's package (when it lies elsewhere)."""
    if dirs:
        return [os.path.abspath(d) for d in dirs]
    here = os.path.abspath(cwd or os.getcwd())
    found = [here]
    if app:
        import importlib.util

        top = app.partition(":")[0].split(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if origin and origin not in ("built-in", "frozen"):
            where = os.path.dirname(os.path.abspath(origin))
            if not where.startswith(here + os.sep) and where != here:
                found.append(where)
    return found


async def watch_source(
    paths: Sequence[str],
    on_change: Callable[[set[str]], None],
    stop: asyncio.Event,
    watch_filter: ReloadFilter,
    debounce_ms: int = DEBOUNCE_MS,
) -> None:
    """Call ``on_change(changed paths)`` once per debounced set of changes, until ``stop``."""
    from watchfiles import awatch

    async for changes in awatch(
        *paths,
        watch_filter=watch_filter,
        debounce=debounce_ms,
        stop_event=stop,
        step=50,
        yield_on_timeout=False,
    ):
        changed = {path for _, path in changes}
        if changed:
            on_change(changed)
