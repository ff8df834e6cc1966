"""Write back-pressure and idle timeouts, mixed into protocols.

Both are written so that a request that needs neither pays nothing for them: flow control
only acts when the transport calls ``pause_writing``, and the idle timer is one timer per
connection that is checked when it fires rather than re-armed on every chunk of data.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mypy_extensions import mypyc_attr, trait

__all__ = ["FlowControl", "Timeout"]


def _retrieved(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``future`` without asyncio logging "exception never retrieved" if nobody waits."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class FlowControl:
    """High/low water marks on the transport's write buffer.

    While the transport has paused writing, ``write`` returns a Future that resolves when
    writing resumes and fails if the connection is lost. Reading is paused meanwhile so
    that a peer that does not read cannot make us buffer its next requests' answers.
    """

    _transport: Any
    _low_limit: int | None
    _high_limit: int | None
    # Any, not bool: mypyc (2.4) cannot yet set a trait's bool/float attributes (they
    # live in a bitmap); Any costs nothing to the pure path.
    _writing_paused: Any
    _write_waiter: asyncio.Future[None] | None

    def __init__(self, low_limit: int | None = None, high_limit: int | None = None, **kw: Any):
        self._init_flow_control(low_limit, high_limit)
        super().__init__(**kw)

    def _init_flow_control(self, low_limit: int | None, high_limit: int | None) -> None:
        self._low_limit = low_limit
        self._high_limit = high_limit
        self._writing_paused = False
        self._write_waiter = None

    @property
    def writing_paused(self) -> bool:
        return bool(self._writing_paused)

    def _set_write_limits(self, transport: asyncio.BaseTransport) -> None:
        if self._low_limit is not None or self._high_limit is not None:
            set_limits = getattr(transport, "set_write_buffer_limits", None)
            if set_limits is not None:
                set_limits(high=self._high_limit, low=self._low_limit)

    def pause_writing(self) -> None:
        self._writing_paused = True
        transport = self._transport
        # Duck typing: uvloop's transports are not asyncio.ReadTransport subclasses.
        if transport is not None and hasattr(transport, "pause_reading") and transport.is_reading():
            transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        transport = self._transport
        if (
            transport is not None
            and hasattr(transport, "resume_reading")
            and not transport.is_closing()
            and self._may_resume_reading()
        ):
            transport.resume_reading()

    def _may_resume_reading(self) -> bool:
        return True

    def _writing_waiter(self) -> asyncio.Future[None]:
        waiter = self._write_waiter
        if waiter is None:
            waiter = self._write_waiter = asyncio.get_running_loop().create_future()
        return waiter

    def _fail_write_waiter(self, exc: BaseException | None) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        self._writing_paused = False
        if waiter is not None:
            _retrieved(waiter, exc or ConnectionResetError("connection lost while writing"))


@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class Timeout:
    """Close a connection idle for more than ``timeout`` seconds.

    A connection is busy, and never idle, while ``_busy()`` says so (a request in progress,
    bytes waiting to be written); activity is stamped with ``_touch()`` when a request ends.
    """

    _transport: Any
    _loop: asyncio.AbstractEventLoop | None
    _timeout: float | None
    _timer: asyncio.TimerHandle | None
    _last_activity: Any  # see FlowControl._writing_paused

    def __init__(self, timeout: float | None = None, **kw: Any):
        self._init_timeout(timeout)
        super().__init__(**kw)

    def _init_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout if timeout and timeout > 0 else None
        self._timer = None
        self._last_activity = 0.0

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value if value and value > 0 else None
        self._cancel_timeout()
        if self._transport is not None and not self._transport.is_closing():
            self._arm_timeout()

    def _touch(self) -> None:
        if self._timeout is not None and self._loop is not None:
            self._last_activity = self._loop.time()

    def _arm_timeout(self, delay: float | None = None) -> None:
        if self._timeout is None or self._loop is None:
            return
        if delay is None:
            self._last_activity = self._loop.time()
            delay = self._timeout
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _cancel_timeout(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _busy(self) -> bool:
        return False

    def _check_idle(self) -> None:
        self._timer = None
        transport, timeout, loop = self._transport, self._timeout, self._loop
        if transport is None or transport.is_closing() or timeout is None or loop is None:
            return
        if self._busy():
            self._arm_timeout()
            return
        remaining = self._last_activity + timeout - loop.time()
        if remaining > 0:
            self._arm_timeout(remaining)
        else:
            self._idle_timeout()

    def _idle_timeout(self) -> None:
        if self._transport is not None:
            self._transport.close()
