"""One scheduler among N HTTP workers: the README's "Actors and commands" example.

    cd examples/scheduler
    python -m pulsar_arbiter --http app:handler --workers 4 \
        --actor scheduler=app:scheduler

Every worker serves a cached value; the scheduler (one process, whatever the number of
workers) tells every worker to refresh it every few seconds. From a second terminal:

    python -m pulsar_arbiter ctl call cached --to workers     # each worker's answer
    python -m pulsar_arbiter ctl call refresh --to workers value=42
    python -m pulsar_arbiter ctl call ticks --to actor:scheduler
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from pulsar_arbiter import CommandError, command, get_actor, send
from pulsar_arbiter.http import HttpRequest, Response

#: Seconds between two refreshes.
EVERY = float(os.environ.get("SCHEDULER_EVERY", "5"))

# -- in the workers (the app's module: its commands run in every worker) ------------------

CACHE: dict[str, Any] = {"value": None, "refreshed_at": None}


@command
def refresh(actor: Any, *, value: Any = None) -> str:
    """Replace this worker's cached value (the scheduler calls it on every worker)."""
    CACHE["value"] = value if value is not None else time.time()
    CACHE["refreshed_at"] = time.time()
    return actor.name


@command
def cached(actor: Any) -> dict[str, Any]:
    """This worker's cached value."""
    return dict(CACHE)


def handler(request: HttpRequest) -> Response:
    body = json.dumps({"worker": get_actor().name, **CACHE}).encode()
    return Response(body, content_type="application/json")


# -- in the scheduler (an actor: one process, supervised like a worker) -------------------

TICKS = {"count": 0, "failed": 0}


@command
def ticks(actor: Any) -> dict[str, int]:
    """How many refreshes the scheduler sent, and how many workers failed one."""
    return dict(TICKS)


async def scheduler(actor: Any) -> None:
    """Tell every live worker to refresh, every EVERY seconds, until stopped."""
    while True:
        answers = await send("workers", "refresh", timeout=2.0)
        TICKS["count"] += 1
        TICKS["failed"] += sum(isinstance(a, CommandError) for a in answers.values())
        await asyncio.sleep(EVERY)
