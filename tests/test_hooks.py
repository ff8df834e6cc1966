"""Server hooks: the loader (pure) and, with real processes, gunicorn's call points."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsar_arbiter.runtime.hooks import HOOK_NAMES, HookError, load_hooks
from tests.runtime import HOST, Arbiter, become_subreaper, wait_until


@pytest.fixture
def hook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("hooks_"):
            del sys.modules[name]


def test_gunicorn_names() -> None:
    assert set(HOOK_NAMES) >= {"on_starting", "when_ready", "post_fork", "worker_exit"}


def test_loads_present_hooks_and_awaits_async(hook_dir: Path) -> None:
    (hook_dir / "hooks_ok.py").write_text(
        "calls = []\n"
        "def when_ready(arbiter): calls.append(('ready', arbiter))\n"
        "async def post_fork(arbiter, worker): calls.append(('fork', worker))\n"
    )
    hooks = load_hooks("hooks_ok")
    assert hooks.has("post_fork") and not hooks.has("on_exit")
    asyncio.run(hooks.acall("when_ready", "A"))
    asyncio.run(hooks.acall("post_fork", None, "W"))
    hooks.call_logged("on_exit", "A")  # absent: nothing
    assert sys.modules["hooks_ok"].calls == [("ready", "A"), ("fork", "W")]


def test_start_hook_error_and_logged_error(
    hook_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (hook_dir / "hooks_bad.py").write_text(
        "def on_starting(arbiter): raise RuntimeError('no db')\n"
        "def child_exit(arbiter, worker): raise RuntimeError('oops')\n"
    )
    hooks = load_hooks("hooks_bad")
    with pytest.raises(HookError, match="on_starting failed: RuntimeError: no db"):
        asyncio.run(hooks.acall_start("on_starting", None))
    asyncio.run(hooks.acall_logged("child_exit", None, None))
    assert "hook child_exit raised" in caplog.text


def test_loader_errors(hook_dir: Path) -> None:
    with pytest.raises(HookError, match="cannot import 'hooks_none'"):
        load_hooks("hooks_none")
    (hook_dir / "hooks_async_fork.py").write_text("async def pre_fork(arbiter, worker): pass\n")
    with pytest.raises(HookError, match="no loop"):
        load_hooks("hooks_async_fork")
    (hook_dir / "hooks_notcallable.py").write_text("on_exit = 3\n")
    with pytest.raises(HookError, match="not callable"):
        load_hooks("hooks_notcallable")


# -- worker_int and worker_abort, on real processes ----------------------------------------------

MARK_HOOKS = """
import os
HERE = os.path.dirname(os.path.abspath(__file__))

def _mark(name, worker):
    with open(os.path.join(HERE, name), "a") as file:
        file.write("%d\\n" % worker.pid)

def worker_int(worker):
    _mark("worker_int", worker)

def worker_abort(worker):
    _mark("worker_abort", worker)
"""


def _marks(home: Path, name: str) -> list[int]:
    path = home / name
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


@pytest.fixture
def marking(tmp_path: Path) -> Path:
    (tmp_path / "markhooks.py").write_text(MARK_HOOKS)
    become_subreaper()
    return tmp_path


def test_a_stuck_worker_gets_abrt_and_runs_worker_abort(marking: Path) -> None:
    """gunicorn's --timeout: ABRT, the worker's handler runs worker_abort and exits 1."""
    server = Arbiter(
        marking,
        "testapps.faulty:Faulty",
        "--timeout",
        "1",
        "--hooks",
        "markhooks",
        workers=1,
        cwd=marking,
    ).start()
    blocked: socket.socket | None = None
    try:
        (victim,) = server.wait_serving().worker_pids()
        blocked = socket.create_connection((HOST, server.port))
        blocked.sendall(b"block 30\n")
        wait_until(lambda: _marks(marking, "worker_abort") == [victim], 10.0, "worker_abort")
        wait_until(lambda: not server.running(victim), 5.0, "the stuck worker to exit")
        log = server.log()
        assert f"(pid {victim}) with SIGABRT" in log and "no heartbeat" in log
        assert "SIGKILL" not in log, "the handler exited before the KILL"
        assert _marks(marking, "worker_int") == []
    finally:
        if blocked is not None:
            blocked.close()
        server.close()


def test_a_fast_stop_runs_worker_int_and_a_graceful_one_does_not(marking: Path) -> None:
    server = Arbiter(
        marking, "testapps.faulty:Faulty", "--hooks", "markhooks", workers=2, cwd=marking
    ).start()
    try:
        pids = server.wait_serving().worker_pids()
        server.send(signal.SIGINT)  # reaches the workers as a fast stop over IPC
        assert server.wait_exit(10.0) == 0
        assert sorted(_marks(marking, "worker_int")) == sorted(pids)
        assert _marks(marking, "worker_abort") == []
    finally:
        server.close()
    (marking / "worker_int").unlink()
    graceful = Arbiter(
        marking, "testapps.faulty:Faulty", "--hooks", "markhooks", workers=1, cwd=marking
    ).start()
    try:
        graceful.wait_serving()
        graceful.send(signal.SIGTERM)
        assert graceful.wait_exit(10.0) == 0
        assert _marks(marking, "worker_int") == []
    finally:
        graceful.close()
