"""Shared fixtures: every protocol test runs on the stock asyncio loop and on uvloop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

# Upper bound for one protocol test's coroutine: a hang fails fast instead of waiting
# for pytest-timeout.
COROUTINE_DEADLINE = 20.0

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_name: str) -> Iterator[Runner]:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    loop = LOOPS[loop_name]()
    asyncio.set_event_loop(loop)

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, COROUTINE_DEADLINE))

    try:
        yield runner
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
        gc.collect()
