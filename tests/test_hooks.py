"""Server hooks: the loader (pure) and, with real processes, gunicorn's call points."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsar_arbiter.runtime.hooks import HOOK_NAMES, HookError, load_hooks


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
