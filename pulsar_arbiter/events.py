"""One-time and many-times events: the hooks of every protocol, consumer and server.

Events are created lazily, on first bind or fire, because most objects that declare them
(one consumer per request) never have a callback bound: firing an event nobody listens to
must cost a dictionary lookup and nothing more.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Generator, Iterable
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

__all__ = ["AbstractEvent", "Event", "EventHandler", "OneTime"]

LOGGER = logging.getLogger("pulsar_arbiter.events")

Callback = Callable[..., Any]
# Awaiters of one one-time event from which cancelled ones are dropped: an event awaited
# with a deadline again and again (a connection's ``connection_lost``) keeps at most about
# twice as many futures as it has live awaiters.
_PRUNE_AWAITERS = 16

# Tasks started by coroutine callbacks: asyncio keeps only weak references to tasks, so a
# callback's task would otherwise be garbage collected mid-flight.
_background_tasks: set[asyncio.Task[Any]] = set()


def _call(name: str, callback: Callback, arg: Any, kw: dict[str, Any]) -> None:
    """Call one callback; its failure is logged and never reaches the other callbacks."""
    try:
        # Without keywords (or with only ``exc``), a vectorcall: no dict to copy for ``**kw``.
        if not kw:
            result = callback(arg)
        elif len(kw) == 1 and "exc" in kw:  # post_request and connection_lost: no dict copy
            result = callback(arg, exc=kw["exc"])
        else:
            result = callback(arg, **kw)
    except Exception:
        LOGGER.exception("callback %r of event %r failed", callback, name)
        return
    if result is not None and asyncio.iscoroutine(result):
        task = asyncio.ensure_future(result)
        _background_tasks.add(task)
        task.add_done_callback(_task_done(name, callback))


def _task_done(name: str, callback: Callback) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        _background_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOGGER.error(
                "coroutine callback %r of event %r failed",
                callback,
                name,
                exc_info=task.exception(),
            )

    return done


@mypyc_attr(allow_interpreted_subclasses=True)
class AbstractEvent:
    """What one-time and many-times events share: a name and an ordered list of callbacks.

    Every event can be awaited: a one-time event for its (only) firing, at once if it has
    fired; a many-times event for its next firing.
    """

    __slots__ = ("_handlers", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._handlers: list[Callback] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def handlers(self) -> tuple[Callback, ...]:
        return tuple(self._handlers)

    def bind(self, callback: Callback) -> None:
        self._handlers.append(callback)

    def unbind(self, callback: Callback) -> bool:
        """Remove every binding of ``callback``; True when there was one."""
        before = len(self._handlers)
        self._handlers = [h for h in self._handlers if h != callback]
        return len(self._handlers) != before

    def fire(self, arg: Any, **kw: Any) -> bool:
        raise NotImplementedError

    def fired(self) -> bool:
        raise NotImplementedError

    def waiter(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, Any]:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class Event(AbstractEvent):
    """A many-times event: every fire calls every callback, in binding order.

    Awaiting it waits for its next firing and returns the argument it fires with.
    """

    __slots__ = ("_waiters",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._waiters: list[asyncio.Future[Any]] | None = None

    def fire(self, arg: Any, **kw: Any) -> bool:
        handlers = self._handlers
        if len(handlers) == 1:  # the usual case: no copy (the callback is taken first)
            _call(self.name, handlers[0], arg, kw)
        elif handlers:
            for callback in tuple(handlers):  # a copy: callbacks may (un)bind
                _call(self.name, callback, arg, kw)
        waiters = self._waiters
        if waiters:
            self._waiters = None
            exc = kw.get("exc")
            for waiter in waiters:
                if waiter.done():  # its awaiter was cancelled
                    continue
                if isinstance(exc, BaseException):
                    waiter.set_exception(exc)
                else:
                    waiter.set_result(arg)
        return True

    def fired(self) -> bool:
        return False

    def waiter(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        """A future resolved by the next firing (one per call: cancelling it is local)."""
        waiter = (loop or asyncio.get_running_loop()).create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def __await__(self) -> Generator[Any, None, Any]:
        return self.waiter().__await__()


@mypyc_attr(allow_interpreted_subclasses=True)
class OneTime(AbstractEvent):
    """An event that fires at most once and can be awaited.

    Awaiting it returns the argument it fired with, or raises the ``exc`` keyword it fired
    with. A callback bound after it fired runs at once with that same argument. A second
    fire is ignored: callbacks never run twice.
    """

    __slots__ = ("_arg", "_awaiters", "_fired", "_kw", "_waiter")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._fired = False
        self._arg: Any = None
        self._kw: dict[str, Any] = {}
        self._waiter: asyncio.Future[Any] | None = None
        # One future per ``await`` still pending (see __await__).
        self._awaiters: list[asyncio.Future[Any]] | None = None

    def fired(self) -> bool:
        return self._fired

    @property
    def result(self) -> Any:
        """The argument the event fired with (None before it fired)."""
        return self._arg

    @property
    def exception(self) -> BaseException | None:
        exc = self._kw.get("exc")
        return exc if isinstance(exc, BaseException) else None

    def bind(self, callback: Callback) -> None:
        if self._fired:
            _call(self.name, callback, self._arg, self._kw)
        else:
            self._handlers.append(callback)

    def fire(self, arg: Any, **kw: Any) -> bool:
        if self._fired:
            return False
        self._fired = True
        self._arg = arg
        self._kw = kw
        handlers, self._handlers = self._handlers, []
        for callback in handlers:
            _call(self.name, callback, arg, kw)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._resolve(waiter)
        awaiters = self._awaiters
        if awaiters is not None:
            self._awaiters = None
            for future in awaiters:
                if not future.done():  # not cancelled by its awaiter
                    self._resolve(future)
        return True

    def _resolve(self, waiter: asyncio.Future[Any]) -> None:
        exc = self.exception
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(self._arg)

    def waiter(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        """A future resolved when the event fires (already resolved if it has)."""
        if self._waiter is None:
            self._waiter = (loop or asyncio.get_running_loop()).create_future()
            if self._fired:
                self._resolve(self._waiter)
        return self._waiter

    def __await__(self) -> Generator[Any, None, Any]:
        # A future of its own per ``await``, never the shared ``waiter()``: one awaiter
        # cancelled (a wait_for timing out) cancels its own future only, so every other
        # awaiter, now or later, still sees the firing. It is what asyncio.shield gave,
        # without shield's second future and its extra loop turn: a client awaits
        # ``on_finished`` on every request.
        future = asyncio.get_running_loop().create_future()
        if self._fired:
            self._resolve(future)
            return future.__await__()
        awaiters = self._awaiters
        if awaiters is None:
            self._awaiters = [future]
        else:
            count = len(awaiters)
            if count >= _PRUNE_AWAITERS and count & (count - 1) == 0:
                # Drop the cancelled ones at each power of two: bounded, amortised O(1).
                awaiters[:] = [f for f in awaiters if not f.done()]
            awaiters.append(future)
        return future.__await__()


@mypyc_attr(allow_interpreted_subclasses=True)
class EventHandler:
    """Declares events by name and fires them.

    Subclasses list their events in ``ONE_TIME_EVENTS`` and ``MANY_TIMES_EVENTS``;
    instances may add more with the constructor arguments. Callbacks receive
    ``(arg, **kw)`` where ``arg`` defaults to the object that fired the event.
    """

    ONE_TIME_EVENTS: ClassVar[tuple[str, ...]] = ()
    MANY_TIMES_EVENTS: ClassVar[tuple[str, ...]] = ()

    # The class's names (set per class by __init_subclass__), then the instance's own when
    # its constructor added some: class-level state is a ClassVar and per-instance state an
    # instance attribute, so the compiled core (mypyc) keeps the same behaviour.
    _one_time_names: ClassVar[frozenset[str]] = frozenset()
    _many_times_names: ClassVar[frozenset[str]] = frozenset()
    _own_one_time_names: frozenset[str] | None = None
    _own_many_times_names: frozenset[str] | None = None
    _events: dict[str, AbstractEvent] | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._one_time_names = frozenset(cls.ONE_TIME_EVENTS)
        cls._many_times_names = frozenset(cls.MANY_TIMES_EVENTS)
        # A producer's ``protocol_factory`` declared as a plain function in a class body
        # stays a plain function when read from an instance (pulsar's style). Made explicit
        # for the compiled core, where Python code reads that class attribute rather than
        # the instance's. Here, not in Producer: mypyc does not chain __init_subclass__.
        factory = vars(cls).get("protocol_factory")
        if inspect.isfunction(factory):
            setattr(cls, "protocol_factory", staticmethod(factory))  # noqa: B010

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        one_time_events: Iterable[str] | None = None,
        many_times_events: Iterable[str] | None = None,
    ) -> None:
        self._loop = loop
        if one_time_events:
            self._own_one_time_names = self._one_time_set() | frozenset(one_time_events)
        if many_times_events:
            self._own_many_times_names = self._many_times_set() | frozenset(many_times_events)

    def _one_time_set(self) -> frozenset[str]:
        """The names of this object's one-time events (its class's and its own)."""
        own = self._own_one_time_names
        return self._one_time_names if own is None else own

    def _many_times_set(self) -> frozenset[str]:
        """The names of this object's many-times events (its class's and its own)."""
        own = self._own_many_times_names
        return self._many_times_names if own is None else own

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop: the one given, else the running loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def events(self) -> dict[str, AbstractEvent]:
        """Every declared event, created on demand."""
        names = self._one_time_set() | self._many_times_set()
        return {name: self.event(name) for name in sorted(names)}

    def event(self, name: str) -> AbstractEvent:
        """The event called ``name``; one-time events are awaitable."""
        events = self._events
        if events is None:
            events = self._events = {}
        ev = events.get(name)
        if ev is None:
            # The name sets read here, not through _one_time_set(): one method lookup
            # less per event for an object of a class subclassed in Python.
            own = self._own_one_time_names
            if name in (self._one_time_names if own is None else own):
                ev = OneTime(name)
            elif name in self._many_times_set():
                ev = Event(name)
            else:
                raise KeyError(f"{type(self).__name__} has no event {name!r}")
            events[name] = ev
        return ev

    def bind_event(self, name: str, callback: Callback) -> None:
        """Bind ``callback`` to event ``name``; it is called as ``callback(arg, **kw)``."""
        if not callable(callback):
            raise TypeError(f"callback for event {name!r} is not callable: {callback!r}")
        self.event(name).bind(callback)

    def remove_callback(self, name: str, callback: Callback) -> bool:
        """Unbind ``callback`` from event ``name``; True when it was bound."""
        events = self._events
        ev = events.get(name) if events is not None else None
        return ev.unbind(callback) if ev is not None else False

    def fire_event(self, name: str, arg: Any = None, **kw: Any) -> bool:
        """Fire event ``name``; False when a one-time event had already fired.

        With no callbacks bound on a many-times event this returns at once.
        """
        events = self._events
        if events is not None:
            ev = events.get(name)
            if ev is not None:
                return ev.fire(self if arg is None else arg, **kw)
        own = self._own_many_times_names
        if name in (self._many_times_names if own is None else own):
            return True
        return self.event(name).fire(self if arg is None else arg, **kw)

    def has_fired(self, name: str) -> bool:
        """True once the one-time event ``name`` has fired."""
        events = self._events
        ev = events.get(name) if events is not None else None
        return ev is not None and ev.fired()

    def copy_many_times_events(self, other: EventHandler) -> None:
        """Bind here the many-times callbacks of ``other``, for events both declare."""
        for name, ev in (other._events or {}).items():
            if name in other._many_times_set() and ev._handlers and self._declares(name):
                target = self.event(name)
                for callback in ev._handlers:
                    target.bind(callback)

    def _declares(self, name: str) -> bool:
        return name in self._one_time_set() or name in self._many_times_set()
