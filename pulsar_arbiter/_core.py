"""Which core is loaded: the compiled one (mypyc) or the pure-Python modules.

The modules of the per-request path (setup.py's ``COMPILED``) are compiled with mypyc when
the install could build them; the extension modules sit beside the ``.py`` files and win
the import. ``PULSAR_ARBITER_PURE=1`` forces the pure path anyway: :func:`install` puts a
finder first on ``sys.meta_path`` that loads every ``pulsar_arbiter.*`` module from its
``.py`` source. It runs when this module is imported, which the package's ``__init__``
does first, before any other of its modules; this module itself is never compiled.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["PURE_ENV", "core_description", "install", "is_compiled", "pure_forced"]

#: The environment variable that forces the pure-Python modules.
PURE_ENV = "PULSAR_ARBITER_PURE"
PACKAGE = __name__.rpartition(".")[0]
#: A module that is always compiled when the core is (the witness of which core loaded).
WITNESS = f"{PACKAGE}.protocols"
#: The shared library of the compiled modules (setup.py's GROUP).
SHARED_LIBRARY = "_core__mypyc"
#: Left by setup.py when it installed the pure core, with the reason (setup.py's NOT_BUILT).
NOT_BUILT = "_core_not_built.txt"


def pure_forced() -> bool:
    """True when ``PULSAR_ARBITER_PURE`` is set to anything but empty or ``0``."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class PureSourceFinder:
    """Finds ``pulsar_arbiter.*`` modules as ``.py`` sources only (never an extension)."""

    @classmethod
    def find_spec(
        cls,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PACKAGE + ".") or not path:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            base = Path(entry) / name
            package, module = base / "__init__.py", base.with_suffix(".py")
            for candidate, is_package in ((package, True), (module, False)):
                if candidate.is_file():
                    return importlib.util.spec_from_file_location(
                        fullname,
                        candidate,
                        loader=importlib.machinery.SourceFileLoader(fullname, str(candidate)),
                        submodule_search_locations=[str(base)] if is_package else None,
                    )
        return None


def install() -> None:
    """With ``PULSAR_ARBITER_PURE`` set, load the package's modules from source."""
    if pure_forced() and PureSourceFinder not in sys.meta_path:
        sys.meta_path.insert(0, PureSourceFinder)


def is_compiled(module: ModuleType | None = None) -> bool:
    """True when ``module`` (default: the witness, imported) is a compiled extension."""
    if module is None:
        module = importlib.import_module(WITNESS)
    origin = getattr(module, "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _built() -> bool:
    """True when the compiled modules are installed beside the sources."""
    here = Path(__file__).resolve().parent
    return any(
        (here / f"{SHARED_LIBRARY}{suffix}").is_file()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def core_description() -> str:
    """``compiled (mypyc)``, or ``pure Python`` and why: what ``--version`` reports."""
    if is_compiled():
        return "compiled (mypyc)"
    if pure_forced():
        return f"pure Python ({PURE_ENV} set)"
    if _built():
        return "pure Python (the compiled modules did not load)"
    return f"pure Python (not built: {_why_not_built()})"


def _why_not_built() -> str:
    """The reason setup.py recorded, or what an install from a plain copy means."""
    here = Path(__file__).resolve().parent
    try:
        reason = (here / NOT_BUILT).read_text(encoding="utf-8")
    except OSError:
        if (here.parent / "pyproject.toml").is_file():
            # Imported from a checkout (the current directory comes first on sys.path):
            # a regular install compiled its own copy in site-packages, not this one.
            return f"imported from the source tree {here.parent}; pip install -e . compiles it"
        return "installed without a build step"
    return reason.strip().splitlines()[0] if reason.strip() else "no reason recorded"


install()
