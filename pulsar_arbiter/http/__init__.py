"""HTTP/1.1 on the Protocols/Transports API: a connection, consumers, a raw handler API.

The layers, each importing (at run time) only those before it:

* :mod:`.limits` - what a peer may make a connection hold (:class:`Limits`);
* :mod:`.wire` - HTTP as bytes: status lines, the ``Date`` cache, error answers;
* :mod:`.errors` - errors by fault (:class:`PeerError`, with the ``status`` answered);
* :mod:`.state` - the request stream's state, one enum and one transition table;
* :mod:`.request` - :class:`HttpRequest` and :class:`Response`, the raw-handler API;
* :mod:`.connection` - :class:`HttpConnection`, the asyncio shell: it feeds the
  parser's events to the state and carries out what follows;
* :mod:`.consumer` - :class:`HttpConsumer` (answers one request) and
  :class:`RawHttpConsumer`;
* :mod:`.factory` - :class:`HttpProtocolFactory`, :func:`http_protocol_factory`;
* :mod:`.wsgi` - WSGI apps on top of all this; nothing here imports it.

Raw handlers
------------
The fastest way to answer: ``handler(request: HttpRequest) -> Response``, or an
``async def`` handler returning a Response. It is called once the whole request has
arrived (``request.body``, bounded by ``Limits.max_body``). A plain function returning a
Response costs no task, no future and no thread hop; an ``async def`` handler costs one
task (it is not cancelled if the client goes away: its answer is dropped). A Response
encodes its status line and headers on first use and caches them, so a response built
once at import time and returned for every request costs no encoding at all::

    HELLO = Response(b"Hello, World!", content_type="text/plain")

    def hello(request: HttpRequest) -> Response:
        return HELLO

    server = TcpServer(http_protocol_factory(hello), loop, address=...)

``Response.body`` may be bytes, an iterable of bytes or an async iterable of bytes; the
iterables are streamed with write flow control, ``chunked`` unless a ``content-length``
header is given. The server owns framing: ``content-length`` of a bytes body,
``transfer-encoding``, ``date`` and ``connection`` are computed per request. A raw handler
may upgrade the connection (``request.connection.upgrade(consumer_factory)``) and answer
``Response(status=101, headers=[("upgrade", ...), ("connection", "Upgrade")])``: the bytes
after that request go to the new consumer.

WSGI applications are served by :func:`pulsar_arbiter.http.wsgi.wsgi_protocol_factory`.
"""

from __future__ import annotations

from .connection import HttpConnection
from .consumer import HttpConsumer, RawHttpConsumer
from .errors import PeerError
from .factory import HttpProtocolFactory, http_protocol_factory
from .limits import Limits
from .request import HttpRequest, Response
from .state import State
from .wire import date_header, error_response, status_line

__all__ = [
    "HttpConnection",
    "HttpConsumer",
    "HttpProtocolFactory",
    "HttpRequest",
    "Limits",
    "PeerError",
    "RawHttpConsumer",
    "Response",
    "State",
    "date_header",
    "error_response",
    "http_protocol_factory",
    "status_line",
]
