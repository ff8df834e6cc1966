"""pulsar_arbiter: a multiprocess, actor-style server runtime with the pulsar API."""

# First: with PULSAR_ARBITER_PURE set, importing _core makes the modules below load from
# their .py sources even when the compiled core (mypyc) is installed beside them.
from . import _core  # noqa: F401  # isort: skip
from .clients import AbstractClient, AbstractUdpClient, Pool, PoolConnection
from .events import AbstractEvent, Event, EventHandler, OneTime
from .ipc.actor import command, get_actor, send
from .ipc.errors import CommandError
from .mixins import FlowControl, Timeout
from .protocols import (
    Connection,
    DatagramProtocol,
    Producer,
    Protocol,
    ProtocolConsumer,
    PulsarProtocol,
)
from .servers import DatagramServer, TcpServer

__version__ = "0.1.0"

__all__ = [
    "AbstractClient",
    "AbstractEvent",
    "AbstractUdpClient",
    "CommandError",
    "Connection",
    "DatagramProtocol",
    "DatagramServer",
    "Event",
    "EventHandler",
    "FlowControl",
    "OneTime",
    "Pool",
    "PoolConnection",
    "Producer",
    "Protocol",
    "ProtocolConsumer",
    "PulsarProtocol",
    "TcpServer",
    "Timeout",
    "command",
    "get_actor",
    "send",
]
