"""Build: the compiled core (mypyc) when this machine can build it, else the pure package.

``pip install .`` (and ``pip install -e .``) compiles the per-request modules listed in
``COMPILED`` with mypyc when mypy (a build requirement), a C compiler and the Python
headers are there. The ``.py`` modules stay the one source of truth and are installed
either way: when anything in the compiled build fails (no compiler, no headers, mypyc
missing or failing), the failure is reported in one line and the install goes on with the
pure-Python modules - an install never fails for want of a compiler.

``PULSAR_ARBITER_BUILD_PURE=1`` skips the compiled build on purpose; ``PULSAR_ARBITER_PURE=1``
at run time loads the pure modules even when the compiled ones are installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The per-request path (docs/design/compiled-core.md says why these and not more).
COMPILED = [
    "pulsar_arbiter/events.py",
    "pulsar_arbiter/mixins.py",
    "pulsar_arbiter/protocols.py",
    "pulsar_arbiter/servers.py",
    "pulsar_arbiter/clients.py",
    "pulsar_arbiter/echo.py",
    "pulsar_arbiter/http/chunked.py",
    "pulsar_arbiter/http/connection.py",
    "pulsar_arbiter/http/consumer.py",
    "pulsar_arbiter/http/request.py",
    "pulsar_arbiter/http/state.py",
    "pulsar_arbiter/http/wire.py",
    "pulsar_arbiter/http/wsgi.py",
    "pulsar_arbiter/http/asgi.py",
    "pulsar_arbiter/http/asgi_websocket.py",
    "pulsar_arbiter/http/websocket.py",
    "pulsar_arbiter/http/wsframes.py",
]
#: One shared library for the group, inside the package (not a top-level module).
GROUP = "pulsar_arbiter._core"


def notice(message: str) -> None:
    print(f"pulsar-arbiter: {message}", file=sys.stderr, flush=True)


def remove_stale_extensions() -> None:
    """Remove compiled modules an earlier build left beside the sources.

    An editable install builds them in place; when a later build falls back to pure
    Python, the old ones would keep loading (``--version`` saying compiled, with code
    older than the ``.py`` files).
    """
    stale = [Path(GROUP.replace(".", "/")).parent.glob("_core__mypyc.*.so")]
    stale += [Path(module).parent.glob(Path(module).stem + ".cpython-*.so") for module in COMPILED]
    for paths in stale:
        for path in paths:
            path.unlink(missing_ok=True)
            notice(f"removed {path}, left by an earlier compiled build")


def mypyc_extensions() -> list[Any]:
    """The mypyc extensions, or none (with a one-line reason) when they cannot be made."""
    if os.environ.get("PULSAR_ARBITER_BUILD_PURE", "") not in ("", "0"):
        notice("PULSAR_ARBITER_BUILD_PURE is set: installing the pure-Python core")
        remove_stale_extensions()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        notice(f"mypyc is not available ({exc}): installing the pure-Python core")
        return []
    try:
        # Paths relative to the project root, the current directory of every build (mypyc
        # names the modules from them). The build's isolated environment has none of the
        # runtime dependencies: their names are Any there, which must not fail the build
        # (hence the relaxed checks; `mypy --strict` with every dependency runs in CI), and
        # errors in the modules that are only followed for their types are not ours to
        # report here.
        relaxed = [
            "--ignore-missing-imports",
            "--follow-imports=silent",
            "--allow-subclassing-any",
            "--no-warn-unused-ignores",
            "--no-warn-return-any",
        ]
        return list(mypycify([*relaxed, *COMPILED], opt_level="3", group_name=GROUP))
    except BaseException as exc:  # mypyc exits with SystemExit on type errors
        notice(f"mypyc could not translate the core ({exc!r}): installing the pure-Python core")
        remove_stale_extensions()
        return []


class OptionalBuildExt(build_ext):
    """Build every compiled module or none: a failure removes what was built and goes on.

    All or nothing because the modules share one library: half a compiled core would not
    import. The notice names the first error (``CC=/bin/false``: the compiler failed).
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fall_back(exc)

    def build_extensions(self) -> None:
        built: list[str] = []
        try:
            for ext in self.extensions:
                self.build_extension(ext)
                built.append(self.get_ext_fullpath(ext.name))
        except Exception as exc:
            for path in built:
                Path(path).unlink(missing_ok=True)
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        notice(f"the compiled core was not built ({first}): installing the pure-Python core")
        self.extensions = []
        remove_stale_extensions()


setup(ext_modules=mypyc_extensions(), cmdclass={"build_ext": OptionalBuildExt})
