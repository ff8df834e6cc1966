"""The arbiter: binds the sockets, forks the workers, carries out the supervisor's decisions.

All decisions live in :mod:`pulsar_arbiter.supervision`; this module does the syscalls.
Signal handlers only record the signal and wake the loop; the loop acts. The arbiter runs
the stock asyncio loop (never uvloop: a uvloop loop must not exist before a fork) and
never serves a client itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import multiprocess
import psutil

from .. import ipc
from ..ipc.actor import answer_here, member_answer, members, set_actor
from ..ipc.commands import ActorKind
from ..ops.binds import BindSpec, bind_socket, describe, tcp_migrate_req_enabled
from ..ops.config import Config, ConfigError, load_config, unreloadable_changes
from ..ops.control import ControlServer
from ..ops.logs import reopen_log_files, setup_logging
from ..ops.metrics import Folded, MetricsServer, Snapshot, WorkerSample
from ..ops.systemd import (
    METRICS_FD_NAME,
    Notifier,
    inherited_sockets,
    monotonic_usec,
    spec_of,
    watchdog_interval,
)
from .actor import ActorProcessSpec, run_actor
from .apps import AppError, import_app
from .exits import EXIT_BOOT_FAILURE, EXIT_ERROR, EXIT_USAGE
from .handoff import handoff_socketpair
from .hooks import HookError, Hooks, load_hooks
from .reloader import DEBOUNCE_MS, ReloadFilter, watch_dirs, watch_source
from .signals import ARBITER_SIGNALS
from .spawn import loop_fds, start_process
from .supervisor import (
    SERVING,
    Exit,
    Exited,
    Kill,
    Phase,
    Settings,
    Spawn,
    Stop,
    Supervisor,
    WorkerRecord,
)
from .upgrade import Upgrade, oldbin, take_ready_pipe, tell_ready
from .worker import WorkerSpec, run_worker

__all__ = ["Arbiter"]

LOGGER = logging.getLogger("pulsar_arbiter.arbiter")

# How often the arbiter looks at its workers when nothing wakes it: timeouts are checked
# at this resolution.
TICK = 0.25
# Seconds to wait for a worker's answer to a stats request before using its last beat.
STATS_TIMEOUT = 1.0
# The longest a routed call may wait for its members, whatever its caller asked: a day
# is beyond any sane command; the bound keeps every timer the arbiter arms finite.
MAX_CALL_TIMEOUT = 86400.0
# Seconds a stopping arbiter waits for every worker to say it stopped accepting before it
# shuts the listening sockets down anyway (a worker that does not answer is stuck).
LISTENERS_SHUTDOWN_WAIT = 1.0


class Arbiter:
    """One arbiter process: ``Arbiter(cfg, argv).run()`` returns the exit status.

    It is also the process's actor (``get_actor()`` in the arbiter: name ``arbiter``, id 0)
    and the router of every ``send()``: workers and actors never talk to each other."""

    kind: ActorKind = "arbiter"
    id = 0
    name = "arbiter"

    def __init__(self, cfg: Config, argv: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.argv = list(argv)
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.sockets: list[tuple[BindSpec, socket.socket]] = []
        # (outbox, inbox): idle connections pass between workers (see handoff.py).
        self.handoff: tuple[socket.socket, socket.socket] | None = None
        # Workers that said they stopped accepting; when the stop began, and whether the
        # listeners were shut down since (so new connections are refused, not queued).
        self.not_accepting: set[int] = set()
        self._stop_began: float | None = None
        self._listeners_shut = False
        self.sup = self._supervisor(cfg)
        self.channels: dict[int, ipc.Channel] = {}
        # The arbiter's end of each worker's socketpair, by worker id: closed in every
        # other child, so a worker sees EOF when the arbiter dies. Kept as socket objects,
        # never as fd numbers: a closed end's number is soon reused by a new socketpair,
        # and closing a stale number in a child would close that child's own channel.
        self.channel_socks: dict[int, socket.socket] = {}
        self.processes: dict[int, Any] = {}
        self.app: Any = None
        self.signals: collections.deque[int] = collections.deque()
        self.dead_requests = 0
        self.spawned = 0
        self.control: ControlServer | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context = multiprocess.get_context("fork")
        # Operations (issue 12): health and metrics, systemd, USR2.
        self.folded = Folded()  # dead workers' counters: totals never go backwards
        self.metrics_sock: socket.socket | None = None
        self.metrics: MetricsServer | None = None
        self.notifier = Notifier()
        self._watchdog = watchdog_interval()
        self._last_watchdog = 0.0
        self._status = ""
        self._announced = False  # READY=1 sent for the current generation
        self.upgrade: Upgrade | None = None  # a new arbiter we started (USR2)
        self.handing_over = False  # a new arbiter serves: drain, leave the sockets be
        self.ready_pipe = take_ready_pipe()  # we are the new arbiter of a USR2
        self.hooks = Hooks()  # --hooks, loaded in run()
        self._source_watch: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        # --reload: the files changed since the source went quiet, and its timer.
        self._source_paths: set[str] = set()
        self._source_quiet: asyncio.TimerHandle | None = None

    @staticmethod
    def _supervisor(cfg: Config) -> Supervisor:
        return Supervisor.from_settings(_settings(cfg), jitter=lambda n: random.randint(0, n))

    # -- start and stop -------------------------------------------------------------

    def run(self, pending_signals: Sequence[int] = ()) -> int:
        """Serve until stopped; ``pending_signals`` arrived before (recorded by the CLI)."""
        # Until the loop's handlers take over, a signal is only recorded (and acted on
        # once the loop runs): a Ctrl-C while binding or importing must not traceback.
        for signum in ARBITER_SIGNALS:
            signal.signal(signum, self._record_early_signal)
        self.signals.extend(pending_signals)
        setup_logging(self.cfg)
        _set_title(f"pulsar_arbiter: arbiter [{self.cfg.name}]")
        try:
            self.hooks = load_hooks(self.cfg.hooks)
            self.hooks.call("on_starting", self)
        except Exception as exc:  # a start hook's error stops the start (exit 2)
            LOGGER.error("%s", exc if isinstance(exc, HookError) else f"hook on_starting: {exc!r}")
            return EXIT_USAGE
        try:
            self._write_pid_file()
            self._bind()
            if self.cfg.preload and self.cfg.app:
                self.app = import_app(self.cfg.app)
        except (OSError, AppError, ConfigError) as exc:
            LOGGER.error("%s", exc)
            self._close_sockets()
            self._remove_pid_file()
            return EXIT_BOOT_FAILURE if isinstance(exc, AppError) else EXIT_ERROR
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            return loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()
            self._close_sockets()
            self._remove_pid_file()

    def _write_pid_file(self) -> None:
        path = self.cfg.pid
        if not path:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):
            with open(path) as file:
                other = int(file.read().strip() or 0)
            if other and other != self.pid and psutil.pid_exists(other):
                raise OSError(
                    f"pid file {path} names a running process ({other}): already running?"
                )
        with open(path, "w") as file:
            file.write(f"{self.pid}\n")

    def _remove_pid_file(self) -> None:
        if self.cfg.pid:
            path = oldbin(self.cfg.pid) if self.handing_over else self.cfg.pid
            with contextlib.suppress(OSError):
                with open(path) as file:
                    if int(file.read().strip() or 0) != self.pid:
                        return
                os.unlink(path)

    def _adopt_inherited(self) -> bool:
        """Serve the sockets systemd or an old arbiter (USR2) passed us, if any."""
        try:
            inherited = inherited_sockets()
        except ValueError as exc:
            raise OSError(str(exc)) from None
        for item in inherited:
            if item.name == METRICS_FD_NAME:
                self.metrics_sock = item.sock
                continue
            self.sockets.append((spec_of(item.sock), item.sock))
            named = f" ({item.name})" if item.name else ""
            LOGGER.info("listening on %s%s, from %s", describe(item.sock), named, item.source)
        if inherited and self.cfg.reuse_port:
            LOGGER.warning("--reuse-port is ignored with inherited sockets")
            self.cfg = self.cfg.replace(reuse_port=False)
        return bool(self.sockets)

    def _bind(self) -> None:
        inherited = self._adopt_inherited()
        if self.metrics_sock is None and self.cfg.metrics_bind is not None:
            self.metrics_sock = bind_socket(self.cfg.metrics_bind, 64)
            self.metrics_sock.set_inheritable(False)
            LOGGER.info("health and metrics on http://%s", describe(self.metrics_sock)[6:])
        reuse_port = self.cfg.reuse_port
        for spec in () if inherited else self.cfg.bind:
            own = reuse_port and spec.kind == "tcp"
            sock = bind_socket(spec, self.cfg.backlog, reuse_port=own)
            if own:
                # Each worker listens on its own socket. The arbiter's must not listen:
                # the kernel would hand it its share of the connections, never accepted.
                sock = _reserve_port(sock)
                spec = dataclasses.replace(spec, port=sock.getsockname()[1])  # not :0
            self.sockets.append((spec, sock))
            LOGGER.info("%s %s", "reserved" if own else "listening on", describe(sock))
        if any(spec.kind != "udp" for spec, _ in self.sockets):
            self.handoff = handoff_socketpair()
        if reuse_port and tcp_migrate_req_enabled() is False:
            LOGGER.warning(
                "--reuse-port: net.ipv4.tcp_migrate_req is 0, so connections queued on a "
                "worker's socket are reset when that worker exits; set it to 1"
            )
        app = self.cfg.app or "the built-in echo app (pulsar_arbiter.echo:Echo)"
        LOGGER.info("arbiter %d serving %s with %d workers", self.pid, app, self.cfg.workers)

    def _close_sockets(self) -> None:
        if self.metrics_sock is not None:
            self.metrics_sock.close()
            self.metrics_sock = None
        for spec, sock in self.sockets:
            sock.close()
            if spec.kind == "unix" and spec.path and not self.handing_over:
                with contextlib.suppress(OSError):
                    os.unlink(spec.path)
        self.sockets = []
        for end in self.handoff or ():
            end.close()
        self.handoff = None

    def _shutdown_listeners(self) -> None:
        """Stop listening for every process sharing the sockets: new clients are refused.

        Once no worker accepts, the kernel would still complete handshakes and queue the
        connections, to reset them when the last process exits; a refusal instead lets
        a client or a balancer go elsewhere at once. ``shutdown`` acts on the socket, not
        on our descriptor, so it reaches the workers' copies too; it is done only once
        they stopped accepting (an accept on a shut-down socket fails in a loop).
        """
        self._listeners_shut = True
        if self.handing_over:  # the new arbiter's workers accept on these sockets
            return
        for spec, sock in self.sockets:
            if spec.kind == "udp" or (self.cfg.reuse_port and spec.kind == "tcp"):
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        LOGGER.info("stopped listening: new connections are refused")

    def _check_listeners(self, now: float) -> None:
        if self._listeners_shut or self._stop_began is None:
            return
        if self.sup.stop_began is None:  # --drain-delay: the workers still serve
            return
        self._stop_began = max(self._stop_began, self.sup.stop_began)
        accepting = [
            w for w in self.sup.workers.values() if w.pid and w.id not in self.not_accepting
        ]
        if not accepting or now - self._stop_began >= LISTENERS_SHUTDOWN_WAIT:
            self._shutdown_listeners()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        set_actor(self, self.route)
        for signum in ARBITER_SIGNALS:
            loop.add_signal_handler(signum, self._record_signal, signum)
        try:
            self.control = ControlServer(self.cfg.control_socket_path, self)
            await self.control.start()
        except OSError as exc:
            LOGGER.warning("control socket disabled: %s", exc)
            self.control = None
        await self.start_metrics()
        try:
            await self.hooks.acall_start("when_ready", self)
        except HookError as exc:
            LOGGER.error("%s", exc)
            return EXIT_USAGE
        if self.cfg.reload:
            self._watch_source()
        while True:
            self._handle_signals()
            if self.pid == 1:
                self._reap_orphans()
            now = time.monotonic()
            for action in self.sup.decide(now):
                if isinstance(action, Exit):
                    return self._exit(action)
                self._apply(action)
            self._check_listeners(now)
            self._operations(now)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)

    def _exit(self, action: Exit) -> int:
        if action.code:
            detail = f": {self.sup.last_error}" if self.sup.last_error else ""
            LOGGER.error("exiting with status %d: %s%s", action.code, action.reason, detail)
        else:
            LOGGER.info("arbiter %d exiting: %s", self.pid, action.reason)
        return action.code

    async def _shutdown(self) -> None:
        # We are exiting: another Ctrl-C (a second press, or the terminal's to the whole
        # group) has nothing left to stop and must not interrupt the clean-up.
        loop = asyncio.get_running_loop()
        for signum in ARBITER_SIGNALS:
            if signum != signal.SIGCHLD:
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_IGN)
        if self._source_quiet is not None:
            self._source_quiet.cancel()
        if self._source_watch is not None:
            stop, task = self._source_watch
            stop.set()
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(task, 1.0)
        await self.hooks.acall_logged("on_exit", self)
        for worker in [*self.sup.workers.values(), *self.sup.actors.values()]:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        for proc in self.processes.values():
            proc.join(1.0)
        for channel in self.channels.values():
            channel.abort()
        if self.control is not None:
            await self.control.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.upgrade is not None:  # we are stopping: the new arbiter goes too
            self.upgrade.poll(float("inf"))
            self.upgrade.close()
        self.notifier.close()
        await asyncio.sleep(0)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- signals ----------------------------------------------------------------------

    def _record_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.wake()

    def _record_early_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum != signal.SIGCHLD:
                LOGGER.info("arbiter got %s", signal.Signals(signum).name)
            handler = SIGNAL_HANDLERS.get(signum)
            if handler is not None:
                handler(self)

    def stop(self, graceful: bool = True) -> None:
        now = time.monotonic()
        if self._stop_began is None:
            self._stop_began = now
            if not self.handing_over:
                self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.sup.stop(graceful, now, drain=not self.handing_over)
        self.wake()

    def _reap_orphans(self) -> None:
        """As PID 1 (a container without an init) every orphan becomes our child: reap
        those that are not workers (the workers are reaped through their sentinels)."""
        workers = {proc.pid for proc in self.processes.values()}
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid not in workers:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)

    def reload(self) -> str:
        """HUP: reload the settings and roll every worker, one at a time.

        Nothing changes unless both the settings and (with --preload) the app load: a
        refused reload leaves the running generation exactly as it was.
        """
        cfg, app = self.cfg, self.app
        if self.argv:
            try:
                cfg = self._reload_settings()
            except ConfigError as exc:
                LOGGER.error("reload refused, the settings are invalid: %s", exc)
                return f"refused: {exc}"
        if cfg.preload and cfg.app:
            try:
                app = _reimport(cfg.app)
            except AppError as exc:
                LOGGER.error("reload refused, the app does not import: %s", exc)
                return f"refused: {exc}"
        self.cfg, self.app = cfg, app
        if self.hooks:
            self._loop_task(self.hooks.acall_logged("on_reload", self))
        self.sup.reload(_settings(cfg))
        self._announced = False
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
        LOGGER.info("reload: rolling to generation %d", self.sup.generation)
        self.wake()
        return f"rolling to generation {self.sup.generation}"

    def _loop_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_log_failure)

    def _watch_source(self) -> None:
        """--reload: roll the workers when the app's source changes."""
        cfg = self.cfg
        dirs = watch_dirs(cfg.app, cfg.reload_dir)
        stop = asyncio.Event()
        watching = watch_source(
            dirs, self._source_changed, stop, ReloadFilter(cfg.reload_include, cfg.reload_exclude)
        )
        task = asyncio.get_running_loop().create_task(watching)
        task.add_done_callback(_log_failure)
        self._source_watch = (stop, task)
        LOGGER.info("reload: watching %s", ", ".join(dirs))

    def _source_changed(self, paths: set[str]) -> None:
        """Reload once the source has been quiet for the debounce: an editor's burst of
        saves, even one watchfiles reports as several sets, is one reload."""
        self._source_paths |= paths
        if self._source_quiet is not None:
            self._source_quiet.cancel()
        loop = asyncio.get_running_loop()
        self._source_quiet = loop.call_later(DEBOUNCE_MS / 1000, self._source_settled)

    def _source_settled(self) -> None:
        paths, self._source_paths, self._source_quiet = self._source_paths, set(), None
        shown = ", ".join(sorted(os.path.relpath(p) for p in paths)[:3])
        LOGGER.info("reload: %d file(s) changed (%s)", len(paths), shown)
        self.reload()

    def _reload_settings(self) -> Config:
        """The settings read again; those a reload cannot change keep their old values."""
        cfg = load_config(self.argv)
        kept = unreloadable_changes(self.cfg, cfg)
        for name in kept:
            LOGGER.warning("reload: %s needs a restart; keeping the old value", name)
        return cfg.replace(**{name: getattr(self.cfg, name) for name in kept})

    def scale(self, workers: int) -> int:
        self.sup.scale(workers)
        LOGGER.info("scaling to %d workers", self.sup.desired)
        self.wake()
        return self.sup.desired

    def reopen_logs(self) -> None:
        reopen_log_files()
        for channel in self.channels.values():
            channel.notify("reopen_logs")  # a notification: no reply comes back

    # -- actions ----------------------------------------------------------------------

    def _apply(self, action: Spawn | Stop | Kill) -> None:
        if isinstance(action, Spawn):
            self._spawn(action.worker)
        elif isinstance(action, Stop):
            self._stop(action)
        else:
            self._kill(action.worker, action.signum, action.reason)

    def _spawn(self, worker: WorkerRecord) -> None:
        parent_end, child_end = socket.socketpair()
        if worker.actor is not None:
            actor = self._actor_spec(worker, parent_end, child_end)
            self._fork(worker, parent_end, child_end, run_actor, actor)
            return
        spec = WorkerSpec(
            id=worker.id,
            generation=worker.generation,
            cfg=self.cfg,
            arbiter_pid=self.pid,
            channel=child_end,
            sockets=[
                (bind, None if self.cfg.reuse_port and bind.kind == "tcp" else sock)
                for bind, sock in self.sockets
            ],
            max_requests=worker.max_requests,
            close_fds=self._fds_to_close_in_child(parent_end),
            app=self.app,
            handoff=self.handoff,
        )
        self.hooks.call_logged("pre_fork", self, worker)
        self._fork(worker, parent_end, child_end, run_worker, spec)

    def _actor_spec(
        self, record: WorkerRecord, parent_end: socket.socket, child_end: socket.socket
    ) -> ActorProcessSpec:
        actor = next(a for a in self.cfg.actor if a.name == record.actor)
        return ActorProcessSpec(
            id=record.id,
            generation=record.generation,
            actor=actor,
            cfg=self.cfg,
            arbiter_pid=self.pid,
            channel=child_end,
            # An actor serves no sockets: it keeps none of the listeners open either.
            close_fds=[
                *self._fds_to_close_in_child(parent_end),
                *(sock.fileno() for _, sock in self.sockets),
                *(end.fileno() for end in self.handoff or ()),
            ],
        )

    def _fork(
        self,
        worker: WorkerRecord,
        parent_end: socket.socket,
        child_end: socket.socket,
        target: Callable[[Any], None],
        spec: Any,
    ) -> None:
        """Start ``target(spec)`` in a child (a worker or an actor) and connect to it."""
        what = _label(worker)
        try:
            proc = start_process(self._context, target, (spec,), what.replace(" ", "-"))
        except OSError as exc:  # EAGAIN, ENOMEM: a failed boot, not the arbiter's end
            parent_end.close()
            LOGGER.error("cannot fork %s: %s", what, exc)
            self._report_exit(self.sup.fork_failed(worker.id, str(exc), time.monotonic()))
            return
        finally:
            child_end.close()
        self.spawned += 1
        self.processes[worker.id] = proc
        self.channel_socks[worker.id] = parent_end
        self.sup.spawned(worker.id, proc.pid)
        LOGGER.info("spawned %s (pid %d, generation %d)", what, proc.pid, worker.generation)
        loop = asyncio.get_running_loop()
        loop.add_reader(proc.sentinel, self._reap, worker.id)
        task = loop.create_task(self._connect(worker.id, parent_end))
        task.add_done_callback(_log_failure)

    def _fds_to_close_in_child(self, parent_end: socket.socket) -> list[int]:
        fds = [parent_end.fileno(), *(s.fileno() for s in self.channel_socks.values())]
        if self.control is not None:
            fds.extend(self.control.filenos())
        if self.metrics is not None:
            fds.extend(self.metrics.filenos())
        if self.metrics_sock is not None:
            fds.append(self.metrics_sock.fileno())
        fds.append(self.notifier.fileno())
        if self.upgrade is not None:
            fds.append(self.upgrade.pipe)
        if self.ready_pipe is not None:
            fds.append(self.ready_pipe)
        fds.extend(loop_fds(self._loop))
        return [fd for fd in fds if fd >= 0]

    async def _connect(self, worker_id: int, parent_end: socket.socket) -> None:
        def on_message(channel: ipc.Channel, msg: ipc.Message) -> None:
            self._on_message(worker_id, channel, msg)

        channel = await ipc.Channel.connect(
            parent_end,
            on_message,
            on_command=self._worker_command,
            on_route=self._on_route,
            receiving=ipc.Direction.TO_ARBITER,
        )
        if worker_id in self.processes:
            self.channels[worker_id] = channel
        else:  # reaped while we connected: nobody would ever close this channel
            channel.abort()

    def _worker_command(self, name: str, args: dict[str, Any]) -> Any:
        """A worker's command: only those the registry lets workers call (the result of a
        plain one at once, an awaitable of an async one's)."""
        return ipc.COMMANDS.start(self, "arbiter", name, args, from_worker=True)

    def _on_message(self, worker_id: int, channel: ipc.Channel, msg: ipc.Message) -> None:
        kind = msg["type"]
        now = time.monotonic()
        worker = self.sup.workers.get(worker_id)
        if kind == "ready":
            self.sup.ready(worker_id, now)
            LOGGER.info("worker %d (pid %s) is ready", worker_id, worker and worker.pid)
        elif kind == "heartbeat":
            self.sup.heartbeat(worker_id, msg["stats"], now)
        elif kind == "draining":
            self.not_accepting.add(worker_id)
        elif kind == "retiring":
            self.sup.retiring(worker_id, msg["reason"])
            LOGGER.info(
                "worker %d (pid %s) retiring: %s; starting its replacement",
                worker_id,
                worker and worker.pid,
                msg["reason"],
            )
        elif kind == "boot_error":
            self.sup.boot_error(worker_id, msg["error"])
        self.wake()

    def _stop(self, action: Stop) -> None:
        worker = action.worker
        LOGGER.info(
            "stopping worker %d (pid %s): %s%s",
            worker.id,
            worker.pid,
            action.reason,
            "" if action.graceful else " (fast)",
        )
        channel = self.channels.get(worker.id)
        stop = ipc.stop(action.graceful, action.timeout, action.handoff)
        if channel is None or not channel.send(stop):
            for kill in self.sup.undeliverable(worker.id, time.monotonic()):
                self._apply(kill)

    def _kill(self, worker: WorkerRecord, signum: int, reason: str) -> None:
        if worker.pid is None:
            return
        LOGGER.warning(
            "killing worker %d (pid %d) with %s: %s",
            worker.id,
            worker.pid,
            signal.Signals(signum).name,
            reason,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)

    def _reap(self, worker_id: int) -> None:
        proc = self.processes.pop(worker_id, None)
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.sentinel)
        task = loop.create_task(self._finish_reap(worker_id, proc))
        task.add_done_callback(_log_failure)

    async def _finish_reap(self, worker_id: int, proc: Any) -> None:
        self.channel_socks.pop(worker_id, None)
        self.not_accepting.discard(worker_id)
        channel = self.channels.pop(worker_id, None)
        if channel is not None:
            # Read what the worker said last (its final stats) before forgetting it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(channel.closed), 1.0)
            channel.abort()
        proc.join(1.0)
        record = self.sup.workers.get(worker_id)
        self._report_exit(self.sup.exited(worker_id, proc.exitcode, time.monotonic()))
        await self.hooks.acall_logged("child_exit", self, record)
        self.wake()

    def _report_exit(self, exited: Exited | None) -> None:
        if exited is None:
            return
        worker = exited.worker
        self.dead_requests += _count(worker.stats, "requests")
        self.folded.fold(worker.stats)
        LOGGER.log(
            logging.INFO if exited.expected else logging.WARNING,
            "%s (pid %s) exited with %s (%s)",
            _label(worker),
            worker.pid,
            _describe_exit(worker.exit_code),
            worker.detail,
        )
        if exited.rollout_stopped:
            LOGGER.error(
                "a new worker of generation %d failed to boot (the worker logged why): "
                "rollout stopped, %d old worker(s) keep serving; fix the app, then reload "
                "(HUP) again",
                self.sup.generation,
                len(self.sup.old_serving()),
            )

    # -- the arbiter's actor and the router ----------------------------------------------

    def info(self) -> dict[str, Any]:
        """The arbiter's identity and stats (the ``info`` command)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "id": self.id,
            "pid": self.pid,
            "server": self.cfg.name,
            "generation": self.sup.generation,
            "uptime": time.monotonic() - self.started,
            "workers": self.sup.counts(),
            "actors": [a["name"] for a in self.sup.actor_report(time.monotonic())],
            # Calls of ours awaiting a child's answer, and children's calls running here.
            "calls_pending": sum(c.pending for c in self.channels.values()),
            "commands_running": sum(c.running for c in self.channels.values()),
        }

    def live_workers(self) -> list[dict[str, Any]]:
        """The workers alive now (the ``workers`` command): id, pid, generation, phase."""
        return [
            {"id": w.id, "pid": w.pid, "generation": w.generation, "phase": w.phase.value}
            for w in sorted(self.sup.workers.values(), key=lambda w: w.id)
            if w.pid
        ]

    def _members(self) -> tuple[dict[int, WorkerRecord], dict[str, WorkerRecord]]:
        """The workers and actors a call can reach now: serving, with a channel."""
        workers = {
            w.id: w
            for w in self.sup.workers.values()
            if w.phase in SERVING and w.id in self.channels
        }
        actors = {
            a.actor: a
            for a in self.sup.actors.values()
            if a.actor is not None and a.phase in SERVING and a.id in self.channels
        }
        return workers, actors

    async def route(
        self,
        target: str,
        name: str,
        args: dict[str, Any],
        timeout: float,
        *,
        from_child: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Run command ``name`` in every member of ``target`` live now; one answer each
        (``{"result"}`` or ``{"error", "type"}``), the dead at once, the slow at ``timeout``.
        ``from_child``: asked by a worker or an actor, which may call only the arbiter's
        commands marked for workers. CommandError for a single target not live."""
        timeout = min(timeout, MAX_CALL_TIMEOUT)
        workers, actors = self._members()
        names = members(target, workers, actors)
        calls = []
        for member in names:
            if member == "arbiter":
                call = ipc.COMMANDS.call(
                    self, "arbiter", name, args, from_worker=from_child, timeout=timeout
                )
            else:
                kind, _, key = member.partition(":")
                record = workers[int(key)] if kind == "worker" else actors[key]
                call = self.channels[record.id].request(name, args, timeout=timeout)
            calls.append(member_answer(call, name, timeout))
        # One member (most calls): awaited in this task, not gathered in a task of its own.
        answers = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        return dict(zip(names, answers, strict=True))

    def _on_route(self, msg: ipc.Message) -> Any:
        """A worker's or an actor's ``send()``: its answers, or an awaitable of them. A
        plain command of the arbiter's is answered at once (no task per call)."""
        target, name, args, timeout = msg["target"], msg["name"], msg["args"], msg["timeout"]
        if target == "arbiter":
            timeout = min(timeout, MAX_CALL_TIMEOUT)
            start = functools.partial(
                ipc.COMMANDS.start, self, "arbiter", name, args, from_worker=True, timeout=timeout
            )
            return answer_here("arbiter", start, name, timeout)
        return self.route(target, name, args, timeout, from_child=True)

    # -- operations: health and metrics, systemd, USR2 (issue 12) ----------------------

    async def start_metrics(self) -> None:
        if self.metrics_sock is None:
            return
        self.metrics = MetricsServer(self.metrics_sock, self.metrics_snapshot, self.sup.health)
        await self.metrics.start()

    def metrics_snapshot(self) -> Snapshot:
        """What /metrics shows, from the heartbeats and records: no worker is asked."""
        now = time.monotonic()
        workers = [
            WorkerSample(
                id=w.id,
                pid=w.pid,
                phase=w.phase.value,
                generation=w.generation,
                stats=w.stats,
                heartbeat_age=now - (w.last_beat or w.started_at),
                rss=int(_process_usage(w.pid)["rss"]) if w.pid else 0,
            )
            for w in sorted(self.sup.workers.values(), key=lambda w: w.id)
        ]
        return Snapshot(
            workers=workers,
            folded=self.folded,
            exits_by_reason={r.value: n for r, n in self.sup.exits_by_reason.items()},
            spawned=self.spawned,
            desired=self.sup.desired,
            generation=self.sup.generation,
            healthy=self.sup.health()[0],
            phases=self.sup.counts(),
        )

    def _operations(self, now: float) -> None:
        """After each decision: tell systemd what changed, follow a USR2 hand-over."""
        if not self._announced and self.sup.rollout_done():
            self._announced = True
            self._serving()
        elif not self._announced and self.sup.replacement_blocked_generation is not None:
            self._announced = True  # a stopped rollout: the old generation serves on
            self.notifier.notify("READY=1", "STATUS=reload failed: the old workers serve on")
        counts = self.sup.counts()
        status = f"STATUS={counts['ready']}/{self.sup.desired} workers ready"
        if self.sup.stopping:
            status = f"STATUS=stopping: {sum(counts.values())} workers left"
        if status != self._status:
            self._status = status
            self.notifier.notify(status)
        if self._watchdog is not None and now - self._last_watchdog >= self._watchdog:
            self._last_watchdog = now
            self.notifier.notify("WATCHDOG=1")
        if self.upgrade is not None:
            self._follow_upgrade(now)

    def _serving(self) -> None:
        """The current generation serves: READY=1; a new arbiter of a USR2 says so."""
        lines = ["READY=1"]
        if self.ready_pipe is not None:
            lines.append(f"MAINPID={self.pid}")
            tell_ready(self.ready_pipe)
            self.ready_pipe = None
            LOGGER.info("arbiter %d serves: the old arbiter hands over", self.pid)
        self.notifier.notify(*lines)

    def start_upgrade(self) -> None:
        self.hooks.call_logged("pre_exec", self)
        """USR2: start a new arbiter (new code) on our sockets; it takes over once ready."""
        if self.upgrade is not None or self.sup.stopping:
            LOGGER.warning("USR2 ignored: %s", "an upgrade runs" if self.upgrade else "stopping")
            return
        if self.cfg.reuse_port:
            LOGGER.error("USR2 refused: --reuse-port sockets are per worker, not inheritable")
            return
        named = [("bind", sock) for _, sock in self.sockets]
        if self.metrics_sock is not None:
            named.append((METRICS_FD_NAME, self.metrics_sock))
        if self.cfg.pid:
            with contextlib.suppress(OSError):
                os.replace(self.cfg.pid, oldbin(self.cfg.pid))
        self._close_control()  # the new arbiter takes the control socket's path
        deadline = time.monotonic() + self.cfg.boot_timeout + STATS_TIMEOUT * 10
        try:
            self.upgrade = Upgrade.start(self.argv, named, deadline)
        except OSError as exc:
            self._upgrade_failed(f"it could not be started: {exc}")
            return
        assert self._loop is not None
        self._loop.add_reader(self.upgrade.pipe, self.wake)
        LOGGER.info("USR2: started a new arbiter (pid %d) on our sockets", self.upgrade.pid)

    def _follow_upgrade(self, now: float) -> None:
        assert self.upgrade is not None and self._loop is not None
        result = self.upgrade.poll(now)
        if result is None:
            return
        upgrade, self.upgrade = self.upgrade, None
        self._loop.remove_reader(upgrade.pipe)
        upgrade.close()
        ready, why = result
        if not ready:
            self._upgrade_failed(why)
            return
        LOGGER.info("USR2: the new arbiter (pid %d) serves; handing over and exiting", upgrade.pid)
        self.notifier.notify(f"MAINPID={upgrade.pid}")
        self.handing_over = True
        self.stop(True)

    def _upgrade_failed(self, why: str) -> None:
        LOGGER.error(
            "USR2: the new arbiter failed to start (%s); this arbiter (pid %d) serves on",
            why,
            self.pid,
        )
        if self.cfg.pid:
            with contextlib.suppress(OSError):
                os.replace(oldbin(self.cfg.pid), self.cfg.pid)
        assert self._loop is not None
        self._loop.create_task(self._reopen_control()).add_done_callback(_log_failure)

    def _close_control(self) -> None:
        if self.control is not None:
            assert self._loop is not None
            control, self.control = self.control, None
            self._loop.create_task(control.close()).add_done_callback(_log_failure)

    async def _reopen_control(self) -> None:
        await asyncio.sleep(0)  # the closing task ran first
        control = ControlServer(self.cfg.control_socket_path, self)
        try:
            await control.start()
        except OSError as exc:
            LOGGER.warning("control socket disabled: %s", exc)
            return
        self.control = control

    # -- stats ------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Per worker and summed: fresh from each worker, at most one heartbeat old."""
        workers = sorted(self.sup.workers.values(), key=lambda w: w.id)
        # Read with the snapshot of the workers, before awaiting their answers: a worker
        # reaped meanwhile adds its requests to dead_requests and is in ``fresh`` too.
        dead_requests = self.dead_requests
        fresh = await asyncio.gather(*(self._worker_stats(w) for w in workers))
        totals = {
            "requests": dead_requests + sum(_count(w, "requests") for w in fresh),
            "connections": sum(_count(w, "connections") for w in fresh),
            "workers": len(fresh),
            "spawned": self.spawned,
            "recycles": self.sup.recycles,
            "exited": self.sup.exits,
            "exited_by_reason": {
                reason.value: count for reason, count in self.sup.exits_by_reason.items()
            },
            "rss": sum(_count(w, "rss") for w in fresh),
        }
        return {
            "arbiter": {
                "pid": self.pid,
                "name": self.cfg.name,
                "uptime": time.monotonic() - self.started,
                "generation": self.sup.generation,
                "rollout_stopped": self.sup.replacement_blocked_generation is not None,
                "desired_workers": self.sup.desired,
                "phases": self.sup.counts(),
                "binds": [describe(sock) for _, sock in self.sockets],
                **_process_usage(self.pid),
            },
            "workers": fresh,
            "actors": self.sup.actor_report(time.monotonic()),
            "totals": totals,
        }

    async def _worker_stats(self, worker: WorkerRecord) -> dict[str, Any]:
        stats = dict(worker.stats)
        channel = self.channels.get(worker.id)
        if channel is not None and worker.phase in (Phase.READY, Phase.RETIRING):
            with contextlib.suppress(Exception):
                stats = dict(await channel.request("stats", timeout=STATS_TIMEOUT))
        stats.update(
            id=worker.id,
            pid=worker.pid,
            phase=worker.phase.value,
            generation=worker.generation,
            age=time.monotonic() - worker.started_at,
        )
        stats.setdefault("requests", 0)
        stats.setdefault("connections", 0)
        if worker.pid:
            stats.update(_process_usage(worker.pid))
        return stats


def _label(record: WorkerRecord) -> str:
    """How the log names a child: ``worker 3`` or ``actor scheduler``."""
    return f"actor {record.actor}" if record.actor is not None else f"worker {record.id}"


def _reserve_port(listening: socket.socket) -> socket.socket:
    """A socket bound like ``listening`` (with SO_REUSEPORT) but not listening, which
    keeps the port for the workers' own sockets; ``listening`` is closed."""
    with listening:
        reserve = socket.socket(listening.family, listening.type)
        try:
            reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserve.bind(listening.getsockname())
        except BaseException:
            reserve.close()
            raise
    return reserve


def _process_usage(pid: int) -> dict[str, Any]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return {"rss": proc.memory_info().rss, "cpu": times.user + times.system}
    except psutil.Error:
        return {"rss": 0, "cpu": 0.0}


def _settings(cfg: Config) -> Settings:
    """What the supervisor's rules read of the settings."""
    return Settings(
        workers=cfg.workers,
        timeout=cfg.timeout,
        boot_timeout=cfg.boot_timeout,
        graceful_timeout=cfg.graceful_timeout,
        max_requests=cfg.max_requests,
        max_requests_jitter=cfg.max_requests_jitter,
        drain_delay=cfg.drain_delay,
        actors=tuple(actor.name for actor in cfg.actor),
    )


def _count(stats: dict[str, Any], key: str) -> int:
    """A counter from a worker's stats; what is not a count (a bad heartbeat) is 0."""
    value = stats.get(key, 0)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        LOGGER.error("arbiter task failed", exc_info=task.exception())


def _set_title(title: str) -> None:
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(title)


def _reimport(reference: str) -> Any:
    """Import the app again from disk (HUP with --preload): its top-level package is
    forgotten and imported anew. Not when that package is this one (``--preload
    pulsar_arbiter.echo:Echo``): the running runtime's classes must stay the ones the app
    subclasses, so only the app's own module is imported anew."""
    module = reference.partition(":")[0]
    top = module.split(".")[0]
    if top == __name__.split(".")[0]:
        stale = [module]
    else:
        stale = [n for n in sys.modules if n == top or n.startswith(top + ".")]
    for name in stale:
        sys.modules.pop(name, None)
    return import_app(reference)


SIGNAL_HANDLERS: dict[int, Callable[[Arbiter], Any]] = {
    signal.SIGTERM: lambda arbiter: arbiter.stop(True),
    signal.SIGINT: lambda arbiter: arbiter.stop(False),
    signal.SIGQUIT: lambda arbiter: arbiter.stop(False),
    signal.SIGHUP: lambda arbiter: arbiter.reload(),
    signal.SIGTTIN: lambda arbiter: arbiter.scale(arbiter.sup.desired + 1),
    signal.SIGTTOU: lambda arbiter: arbiter.scale(arbiter.sup.desired - 1),
    signal.SIGUSR1: lambda arbiter: arbiter.reopen_logs(),
    signal.SIGUSR2: lambda arbiter: arbiter.start_upgrade(),
    # Workers are reaped through their sentinels; as PID 1 the main loop reaps orphans.
    signal.SIGCHLD: lambda arbiter: None,
}
