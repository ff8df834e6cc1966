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
from setuptools.command.build_py import build_py

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


#: Left in the installed package when the compiled core was not built, with the reason:
#: pip hides a build's output unless asked, so ``--version`` reads the reason from here.
NOT_BUILT = "pulsar_arbiter/_core_not_built.txt"
#: Why this build installs the pure-Python core (empty while the compiled one is on).
fallback_reasons: list[str] = []


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


def fall_back(reason: str) -> None:
    """Report in one line why the compiled core is not built, and remember it."""
    notice(f"{reason}: installing the pure-Python core")
    fallback_reasons[:] = [reason]
    remove_stale_extensions()


def record_fallback(package_root: str | Path, *, inplace: bool) -> None:
    """Write the reason into the package being installed (or remove a stale one)."""
    roots = [Path(package_root)] + ([Path.cwd()] if inplace else [])
    for root in roots:
        path = root / NOT_BUILT
        if fallback_reasons and path.parent.is_dir():
            path.write_text(fallback_reasons[0] + "\n", encoding="utf-8")
        elif not fallback_reasons:
            path.unlink(missing_ok=True)


def mypyc_extensions() -> list[Any]:
    """The mypyc extensions, or none (with a one-line reason) when they cannot be made."""
    if os.environ.get("PULSAR_ARBITER_BUILD_PURE", "") not in ("", "0"):
        fall_back("PULSAR_ARBITER_BUILD_PURE is set")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        fall_back(f"mypyc is not available ({exc})")
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
        fall_back(f"mypyc could not translate the core ({exc!r})")
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
        record_fallback(self.build_lib, inplace=bool(self.inplace))

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
        fall_back(f"the C build failed ({first})")
        self.extensions = []


class RecordingBuildPy(build_py):
    """Copy the package, with the reason when the compiled core is known not to be built.

    build_ext does not run at all when there is nothing to compile (mypyc missing or
    failing, or ``PULSAR_ARBITER_BUILD_PURE``), so the reason is written here too.
    """

    def run(self) -> None:
        super().run()
        if fallback_reasons:
            record_fallback(self.build_lib, inplace=bool(getattr(self, "editable_mode", False)))


setup(
    ext_modules=mypyc_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": RecordingBuildPy},
)
