"""The whoami app with commands, for the messaging tests and the benchmark.

    python -m pulsar_arbiter testapps.commands:WhoAmI --actor clock=testapps.commands:clock

Workers and the ``clock`` actor answer ``whoami``, ``fail``, ``hang``, ``spin``; ``relay``
makes the process that runs it ``send()`` a command itself (how a worker talks to others).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pulsar_arbiter import CommandError, command, get_actor, send
from testapps.whoami import WhoAmI

__all__ = ["WhoAmI", "clock", "crash_at_boot", "not_async"]


@command
def whoami(actor: Any) -> dict[str, Any]:
    """Who runs this: name, kind, id, pid."""
    assert actor is get_actor()
    return {"name": actor.name, "kind": actor.kind, "id": actor.id, "pid": actor.pid}


@command
def fail(actor: Any, *, message: str = "boom") -> None:
    raise ValueError(message)


@command(timeout=60.0)
async def hang(actor: Any) -> None:
    await asyncio.Event().wait()


@command
async def spin(actor: Any, *, ms: float = 2.0) -> float:
    """Hold the loop for ``ms`` milliseconds (a busy command), then yield."""
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass
    await asyncio.sleep(0)
    return ms


@command(timeout=60.0)
async def relay(
    actor: Any,
    *,
    target: str,
    name: str,
    args: dict[str, Any] | None = None,
    timeout: float | None = None,
    times: int = 1,
    concurrency: int = 1,
) -> Any:
    """``send(target, name, **args)`` from here, ``times`` times, ``concurrency`` at once;
    the last answer (errors as ``{"error", "type"}``), and the seconds each call took."""
    durations: list[float] = []
    last: Any = None

    async def one() -> None:
        nonlocal last
        start = time.perf_counter()
        try:
            result = await send(target, name, timeout=timeout, **(args or {}))
        except CommandError as exc:
            result = {"error": str(exc), "type": exc.type}
        durations.append(time.perf_counter() - start)
        if isinstance(result, dict):
            result = {
                k: ({"error": str(v), "type": v.type} if isinstance(v, CommandError) else v)
                for k, v in result.items()
            }
        last = result

    async def lane(count: int) -> None:
        for _ in range(count):
            await one()

    share = [
        times // concurrency + (1 if i < times % concurrency else 0) for i in range(concurrency)
    ]
    started = time.perf_counter()
    await asyncio.gather(*(lane(n) for n in share if n))
    return {
        "last": last,
        "elapsed": time.perf_counter() - started,
        "durations": sorted(durations)[:: max(1, len(durations) // 1000)],
        "calls": len(durations),
    }


@command
async def bad_argument(actor: Any) -> str:
    try:
        await send("arbiter", "echo", value={1, 2})
    except TypeError as exc:
        return str(exc)
    return "sent"


@command
def pid_file(actor: Any, *, path: str) -> int:
    """Write this process's pid to ``path``."""
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    return os.getpid()


async def clock(actor: Any) -> None:
    """An actor that ticks; writes a line to $ACTOR_STOP_FILE when cancelled."""
    try:
        while True:
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        path = os.environ.get("ACTOR_STOP_FILE")
        if path:
            with open(path, "a") as file:
                file.write(f"{actor.name} {os.getpid()} stopped\n")
        raise


async def crash_at_boot(actor: Any) -> None:
    raise RuntimeError("cannot start")


def not_async(actor: Any) -> None:
    return None


@command
async def oversize(actor: Any, *, size: int = 0, depth: int = 0) -> Any:
    """``send()`` a value of ``size`` characters nested ``depth`` deep: the error, if any."""
    value: Any = "x" * size
    for _ in range(depth):
        value = [value]
    try:
        return await send("arbiter", "echo", value=value)
    except (TypeError, ValueError, CommandError) as exc:
        return f"{type(exc).__name__}: {exc}"
