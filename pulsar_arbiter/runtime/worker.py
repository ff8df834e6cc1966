"""What runs inside one worker process, from the fork to the exit.

The child first undoes what it inherited from the arbiter's running loop (the running
loop marker, signal handlers and wakeup fd, the arbiter's private fds), arms the parent
death signal, then serves the inherited sockets on a fresh event loop. It beats from
inside that loop, so a blocked loop stops beating and the arbiter notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .. import ipc
from ..forwarded import ForwardedResolver
from ..ipc.actor import set_actor
from ..ipc.commands import ActorKind
from ..ops.accesslog import AccessFormatter
from ..ops.binds import BindSpec, bind_socket, describe
from ..ops.config import Config
from ..ops.logs import reopen_log_files
from ..servers import DatagramServer, TcpServer
from .access import AccessLog
from .apps import AppError, Factories, build_factories
from .child import ChildActor
from .exits import WORKER_ABORTED, WORKER_BOOT_ERROR
from .handoff import HandoffReceiver, HandoffSender
from .hooks import Hooks, load_hooks
from .spawn import run_child
from .traffic import Traffic, tcp_bytes

__all__ = ["WorkerSpec", "run_worker"]

LOGGER = logging.getLogger("pulsar_arbiter.worker")

#: Seconds the ``worker_abort`` hook may take after ABRT before the process ends anyway
#: (SIGALRM's default action; the arbiter's KILL comes later still).
ABORT_HOOK_TIMEOUT = 2.0


@dataclass
class WorkerSpec:
    """Everything a worker needs, prepared by the arbiter before the fork."""

    id: int
    generation: int
    cfg: Config
    arbiter_pid: int
    channel: socket.socket
    sockets: list[tuple[BindSpec, socket.socket | None]]
    max_requests: int = 0
    close_fds: list[int] = field(default_factory=list)
    app: Any = None  # the imported app with --preload
    # (outbox, inbox) of the arbiter's handoff socketpair (see handoff.py).
    handoff: tuple[socket.socket, socket.socket] | None = None


def run_worker(spec: WorkerSpec) -> None:
    """The child process's entry point: serve until told to stop, then exit."""
    run_child(
        spec.arbiter_pid,
        spec.close_fds,
        spec.cfg,
        f"pulsar_arbiter: worker [{spec.cfg.name}]",
        lambda loop: Worker(spec, loop).main(),
    )


class Worker(ChildActor):
    """One worker's servers, heartbeat and IPC; the process's actor (``worker:ID``)."""

    kind: ActorKind = "worker"

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(spec.id, spec.cfg, spec.arbiter_pid, loop)
        self.spec = spec
        self.servers: list[TcpServer | DatagramServer] = []
        # The stream servers by the index of their bind: handed-over connections name it.
        self.tcp_servers: dict[int, TcpServer] = {}
        self._stop: asyncio.Future[tuple[bool, float, bool]] = loop.create_future()
        self._sender: HandoffSender | None = None
        self._receiver: HandoffReceiver | None = None
        self._retiring = False
        self._interrupted = False  # worker_int ran (a fast stop)
        self.traffic = Traffic()  # bytes and request durations, for the heartbeat
        self.commands = 0  # commands handled, for the heartbeat
        self.hooks = Hooks()  # --hooks, loaded first thing in main()
        self.access_log: AccessLog | None = None
        if spec.cfg.access_log:
            formatter = AccessFormatter(spec.cfg.access_log_format, spec.cfg.log_format == "json")
            proxied = spec.cfg.proxy_headers
            resolver = ForwardedResolver(spec.cfg.forwarded_allow_ips) if proxied else None
            self.access_log = AccessLog(formatter, resolver)

    @property
    def name(self) -> str:
        return f"worker:{self.spec.id}"

    @property
    def stopping(self) -> bool:
        return self._stop.done()

    def _on_arbiter_gone(self) -> None:
        self.stop(True, None)

    async def main(self) -> int:
        self.channel = await ipc.Channel.connect(
            self.spec.channel,
            self._on_message,
            self.loop,
            on_command=self._run_command,
            receiving=ipc.Direction.TO_WORKER,
            max_commands=self.cfg.max_commands,
        )
        set_actor(self, self._route)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop, True, None)
        # Not a loop handler: the loop may be the thing that is stuck.
        signal.signal(signal.SIGABRT, self._on_abort)
        self.channel.closed.add_done_callback(self._arbiter_gone)
        try:
            # post_fork raising is a failed boot, as any boot error.
            self.hooks = load_hooks(self.cfg.hooks)
            await self.hooks.acall("post_fork", None, self)
            factories = build_factories(self.cfg, self.spec.app)
            # An ASGI app's lifespan startup: a failing one is a failed boot.
            startup = getattr(factories.stream, "startup", None)
            if startup is not None:
                await startup()
            await self._start_servers(factories)
        except (AppError, OSError, ImportError, ssl.SSLError) as exc:
            LOGGER.error("worker failed to boot: %s", exc)
            return await self._boot_failed(exc)
        except Exception as exc:
            LOGGER.exception("worker failed to boot")
            return await self._boot_failed(exc)
        self._start_handoff()
        if self._stop.done():  # told to stop while booting: accept nothing
            self._stop_accepting()
        self.channel.send(ipc.ready(self.pid))
        LOGGER.info("worker %d ready (%s)", self.pid, factories.description)
        self.start_heartbeat()
        await self.hooks.acall_logged("post_worker_init", self)
        graceful, timeout, handoff = await self._stop
        await self._close_servers(timeout if graceful else 0.0, handoff)
        shutdown = getattr(factories.stream, "shutdown", None)
        if shutdown is not None:  # an ASGI app's lifespan shutdown, within the grace period
            try:
                await asyncio.wait_for(shutdown(), max(timeout if graceful else 0.0, 1.0))
            except Exception:
                LOGGER.exception("worker %d: the app's shutdown failed", self.pid)
        # The app's thread pool (threaded WSGI): its requests are done or aborted by now.
        close_pool = getattr(factories.stream, "close", None)
        if callable(close_pool):
            close_pool(wait=False)
        if self._sender is not None:
            self._sender.close()
        self.stop_heartbeat()
        self.send_last_beat()
        await self.hooks.acall_logged("worker_exit", None, self)
        LOGGER.info("worker %d exiting after %d requests", self.pid, self.requests)
        return 0

    async def _boot_failed(self, exc: BaseException) -> int:
        """Tell the arbiter why (it prints it when it gives up), then exit non-zero."""
        await self._close_servers(0)
        self._stop.cancel()  # we are leaving: the channel closing is not the arbiter dying
        if self.channel is not None and not self.channel.is_closing:
            error = str(exc) if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"
            self.channel.send(ipc.boot_error(error))
            self.channel.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.channel.closed), 1.0)
        return WORKER_BOOT_ERROR

    # -- serving ------------------------------------------------------------------------

    async def _start_servers(self, factories: Factories) -> None:
        cfg = self.cfg
        sslcontext = _ssl_context(cfg)
        for index, (bind, sock) in enumerate(self.spec.sockets):
            if sock is None:  # --reuse-port: this worker's own socket
                sock = bind_socket(bind, cfg.backlog, reuse_port=True)
            if bind.kind == "udp":
                if factories.datagram is None:
                    raise AppError(f"{factories.description} cannot serve datagrams on {bind}")
                dgram = DatagramServer(
                    factories.datagram,
                    self.loop,
                    name=describe(sock),
                    sockets=[sock],
                    max_requests=self.spec.max_requests,
                    logger=LOGGER,
                )
                self._watch(dgram)
                await dgram.create_endpoint()
                self.servers.append(dgram)
            else:
                server = TcpServer(
                    factories.stream,
                    self.loop,
                    name=describe(sock),
                    sockets=[sock],
                    max_requests=self.spec.max_requests,
                    keep_alive=cfg.keep_alive,
                    logger=LOGGER,
                )
                server.graceful_timeout = cfg.graceful_timeout
                server.handoff_raw = cfg.handoff
                server.proxy_protocol = cfg.proxy_protocol or bind.proxy_protocol
                self._watch(server)
                await server.start_serving(backlog=cfg.backlog, sslcontext=sslcontext)
                self.servers.append(server)
                self.tcp_servers[index] = server

    def _start_handoff(self) -> None:
        """Take connections handed over by draining workers; hand ours when we drain."""
        if self.spec.handoff is None or not self.tcp_servers:
            return
        outbox, inbox = self.spec.handoff
        self._sender = HandoffSender(outbox, self.loop)
        self._receiver = HandoffReceiver(inbox, self.loop, self._adopt)
        self._receiver.start()

    def _adopt(self, bind: int, sock: socket.socket) -> None:
        server = self.tcp_servers.get(bind)
        if server is None:  # pragma: no cover - every worker serves every bind
            LOGGER.error("closing a handed-over connection for unknown bind %d", bind)
            sock.close()
            return
        baseline = tcp_bytes(sock)  # counted by the worker that handed it over
        task = self.loop.create_task(server.adopt(sock))
        task.add_done_callback(partial(_adopted, sock))
        task.add_done_callback(partial(self._count_adopted, baseline))

    def _count_adopted(self, baseline: tuple[int, int], task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.traffic.adopted(task.result(), baseline)

    def _watch(self, server: TcpServer | DatagramServer) -> None:
        self.traffic.watch(server, http=self.cfg.wsgi or self.cfg.http or self.cfg.asgi)
        server.bind_event("max_requests", self._max_requests)
        if self.access_log is not None:
            self.access_log.watch(server)

    async def _close_servers(self, grace: float, handoff: bool = False) -> None:
        sender = self._sender if handoff else None
        closing = [s.close(grace) for s in self.servers if not isinstance(s, TcpServer)]
        for bind, server in self.tcp_servers.items():
            given = partial(sender.offer, bind) if sender is not None else None
            closing.append(server.close(grace, handoff=given))
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    @property
    def requests(self) -> int:
        return sum(s.requests_processed for s in self.servers)

    def stats(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "id": self.spec.id,
            "generation": self.spec.generation,
            "age": time.monotonic() - self.started,
            "requests": self.requests,
            "connections": sum(
                len(s.connections) for s in self.servers if isinstance(s, TcpServer)
            ),
            "sessions": sum(s.sessions for s in self.servers),
            "max_requests": self.spec.max_requests,
            "retiring": self._retiring,
            "commands": self.commands,
            **self.traffic.stats(self.tcp_servers.values()),
        }

    # -- lifecycle ---------------------------------------------------------------------

    def _max_requests(self, server: Any, **kw: Any) -> None:
        if not self._retiring and self.channel is not None:
            self._retiring = True
            LOGGER.info(
                "worker %d reached %d requests: asking to be replaced",
                self.pid,
                self.spec.max_requests,
            )
            self.channel.send(ipc.retiring("max_requests"))

    def stop(
        self, graceful: bool = True, timeout: float | None = None, handoff: bool = False
    ) -> None:
        """Stop accepting at once, then drain (``handoff``: to the workers still serving)."""
        if not graceful and not self._interrupted:  # the arbiter's INT or QUIT
            self._interrupted = True
            self.hooks.call_logged("worker_int", self)
        if self._stop.done():
            if not graceful:  # already draining, now told to stop fast: cut it short
                self._abort_connections()
            return
        grace = self.cfg.graceful_timeout if timeout is None else timeout
        self._stop_accepting()
        self._stop.set_result((graceful, grace, handoff and graceful))

    def _on_abort(self, signum: int, frame: Any) -> None:
        """ABRT: the arbiter's heartbeat timeout, as gunicorn's ``--timeout``. Runs the
        ``worker_abort`` hook (at most ABORT_HOOK_TIMEOUT s), then exits non-zero."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # ends the process even in C code
        signal.setitimer(signal.ITIMER_REAL, ABORT_HOOK_TIMEOUT)
        LOGGER.error("worker %d: aborted (no heartbeat in time)", self.pid)
        self.hooks.call_logged("worker_abort", self)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(WORKER_ABORTED)

    def _stop_accepting(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
        for server in self.servers:
            if isinstance(server, TcpServer):
                server.stop_accepting()
        if self.channel is not None and not self.channel.is_closing:
            self.channel.send(ipc.draining())

    def _abort_connections(self) -> None:
        LOGGER.info("worker %d: fast stop, aborting connections still draining", self.pid)
        for server in self.servers:
            if isinstance(server, TcpServer):
                for protocol in server.connections:
                    protocol.abort()

    def reopen_logs(self) -> None:
        """USR1 reached the arbiter: reopen the log files (after logrotate moved them)."""
        reopen_log_files()

    def _on_message(self, channel: ipc.Channel, msg: ipc.Message) -> None:
        if msg["type"] == "stop":  # the only notification that comes to workers
            self.stop(msg["graceful"], msg["timeout"], msg["handoff"])

    def _run_command(self, name: str, args: dict[str, Any]) -> Any:
        """A command from the arbiter (``command`` or ``notify``), through the registry."""
        self.commands += 1
        return ipc.COMMANDS.start(self, "worker", name, args)  # plain: answered at once


def _adopted(sock: socket.socket, task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        sock.close()
        if not task.cancelled():
            LOGGER.error("cannot serve a handed-over connection: %s", task.exception())


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cfg.certfile, cfg.keyfile)
    return context
