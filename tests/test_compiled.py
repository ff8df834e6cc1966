"""The compiled core (mypyc) and the pure path: which one loads, and both serve.

``PULSAR_ARBITER_PURE=1`` must load every module from its ``.py`` source even when the
extension modules sit beside them; ``--version`` says which core is loaded; a consumer
written in plain Python subclasses the (possibly compiled) ``ProtocolConsumer``; and an
install on a machine without a C compiler still installs and serves (simulated with
``CC=/bin/false`` in a fresh venv, the one slow test here).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.machinery
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pulsar_arbiter import Connection, ProtocolConsumer, TcpServer, _core
from tests.runtime import REPO_ROOT

#: The modules setup.py compiles (its COMPILED list, as module names).
COMPILED_MODULES = (
    "pulsar_arbiter.events",
    "pulsar_arbiter.mixins",
    "pulsar_arbiter.protocols",
    "pulsar_arbiter.servers",
    "pulsar_arbiter.clients",
    "pulsar_arbiter.echo",
    "pulsar_arbiter.http.chunked",
    "pulsar_arbiter.http.connection",
    "pulsar_arbiter.http.consumer",
    "pulsar_arbiter.http.request",
    "pulsar_arbiter.http.state",
    "pulsar_arbiter.http.wire",
    "pulsar_arbiter.http.wsgi",
)
EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def module_files(**env: str) -> dict[str, str]:
    code = (
        "import importlib, json\n"
        f"names = {list(COMPILED_MODULES)!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))\n"
    )
    import json

    files: dict[str, str] = json.loads(python(code, **env))
    return files


def test_setup_compiles_the_modules_listed_here() -> None:
    text = (REPO_ROOT / "setup.py").read_text()
    for name in COMPILED_MODULES:
        assert f'"{name.replace(".", "/")}.py"' in text, name


def test_pure_env_loads_every_module_from_its_source() -> None:
    files = module_files(PULSAR_ARBITER_PURE="1")
    for name, path in files.items():
        assert path.endswith(".py"), (name, path)
    version = python(
        "from pulsar_arbiter.cli import version_text; print(version_text())",
        PULSAR_ARBITER_PURE="1",
    )
    assert "per-request core: pure Python (PULSAR_ARBITER_PURE set)" in version


def test_the_core_that_loads_is_the_one_version_names() -> None:
    """Compiled when the extension modules are installed (the editable install in CI
    builds them), else pure "(not built: why)"; never half and half."""
    files = module_files(PULSAR_ARBITER_PURE="")
    compiled = {name for name, path in files.items() if path.endswith(EXTENSIONS)}
    version = python(
        "from pulsar_arbiter.cli import version_text; print(version_text())", PULSAR_ARBITER_PURE=""
    )
    if compiled:
        assert compiled == set(COMPILED_MODULES)
        assert "per-request core: compiled (mypyc)" in version
    else:
        assert "per-request core: pure Python (not built: " in version


def test_pure_env_zero_or_empty_does_not_force_the_pure_path() -> None:
    assert not _core.pure_forced() or os.environ.get(_core.PURE_ENV) not in ("", "0")
    for value in ("", "0"):
        out = python(
            "from pulsar_arbiter import _core; print(_core.pure_forced())",
            PULSAR_ARBITER_PURE=value,
        )
        assert out.strip() == "False"


class PlainEcho(ProtocolConsumer):
    """A consumer in plain Python: its data_received overrides the compiled base's."""

    seen: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        PlainEcho.seen.append(data)
        self.write(data.upper())
        self.finished()


def test_a_plain_python_consumer_subclasses_the_core() -> None:
    async def main() -> None:
        server = TcpServer(functools.partial(Connection, PlainEcho), address=("127.0.0.1", 0))
        await server.start_serving()
        try:
            reader, writer = await asyncio.open_connection(*server.address[:2])
            for text in (b"one", b"two"):
                writer.write(text)
                assert await asyncio.wait_for(reader.readexactly(3), 5) == text.upper()
            writer.close()
            assert server.requests_processed == 2
        finally:
            await server.close(1)

    asyncio.run(main())
    assert PlainEcho.seen[-2:] == [b"one", b"two"]


# ------------------------------------------------------- a machine without a compiler
def copy_checkout(target: Path) -> Path:
    """The sources as a fresh clone would have them: no build products, no venvs."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "build",
        "dist",
        "*.so",
        "__pycache__",
        "*.egg-info",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".peers",
        "bin",
    )
    return Path(shutil.copytree(REPO_ROOT, target / "checkout", ignore=ignore))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(600)
def test_install_without_a_compiler_is_the_pure_core_and_serves(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "CC": "/bin/false", "PULSAR_ARBITER_PURE": ""}
    env.pop("PYTHONPATH", None)  # only what the fresh venv installed
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(checkout)],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        stdin=subprocess.DEVNULL,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    python_bin = str(venv / "bin" / "python")
    version = subprocess.run(
        [python_bin, "-m", "pulsar_arbiter", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The reason pip's quiet install hid: the compiler failed.
    assert "per-request core: pure Python (not built: the C build failed (" in version.stdout, (
        version
    )
    # Run inside the checkout, the checkout's own (unbuilt) package is the one imported.
    in_checkout = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pulsar_arbiter", "--version"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "(not built: imported from the source tree" in in_checkout.stdout, in_checkout
    site = subprocess.run(
        [python_bin, "-c", "import pulsar_arbiter.protocols as p; print(p.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    assert site.startswith(str(venv)) and site.endswith(".py"), site

    # The built-in default app (echo) answers once; the notice names the pure core.
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [python_bin, "-m", "pulsar_arbiter", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        answer = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not answer:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"ping")
                    answer = sock.recv(16)
            except OSError:
                time.sleep(0.1)
        assert answer == b"ping", log.read_text()
        notices = [line for line in log.read_text().splitlines() if "per-request core" in line]
        assert len(notices) == 1 and "pure Python (not built: " in notices[0], notices
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(5)
