"""Compile the benchmark's C helpers on demand.

The load generator and the reference server are C so that the benchmark
measures the server under test rather than a Python client.  They are built
lazily from source instead of being committed as binaries, so a checkout on
any Linux box with gcc works, and a stale binary is never benchmarked after
the source changed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

C_DIR = pathlib.Path(__file__).resolve().parent / "c"
BIN_DIR = C_DIR / "bin"
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra")
BUILD_TIMEOUT = 120.0


class BuildError(RuntimeError):
    """The C toolchain is missing or the compile failed."""


def build(name: str) -> pathlib.Path:
    """Return the path of ``c/bin/<name>``, compiling ``c/<name>.c`` if needed.

    The binary is rebuilt when it is missing or older than its source or a
    header beside it (``loadgen.h`` is shared by the load generators).  The
    compiler writes to a temporary name that is then renamed into place, so a
    concurrent build or an interrupted one never leaves a half-written binary
    that a later run would execute.
    """
    source = C_DIR / f"{name}.c"
    if not source.is_file():
        raise BuildError(f"no C source {source}")
    binary = BIN_DIR / name
    newest = max(path.stat().st_mtime for path in (source, *C_DIR.glob("*.h")))
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError(
            f"gcc not found on PATH; it is needed to build {source.name} "
            "(install it, e.g. `apt-get install gcc`)"
        )
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = BIN_DIR / f".{name}.{os.getpid()}.tmp"
    cmd = [gcc, *CFLAGS, "-o", str(tmp), str(source)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


if __name__ == "__main__":
    for _name in ("echo_client", "echo_server"):
        print(build(_name))
