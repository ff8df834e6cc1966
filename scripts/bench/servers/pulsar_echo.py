"""pulsar_arbiter's TCP echo in one process: TcpServer + Connection + the Echo consumer.

The same stack a worker runs (one consumer per request, events, flow control, idle
timer), without the arbiter, so it compares one to one with bare_uvloop_echo.py.

Usage: pulsar_echo.py --host 127.0.0.1 --port N [--loop uvloop|asyncio] [--udp]
(TCP ready = port accepts; UDP prints ``READY <port>``)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal

from pulsar_arbiter import Connection, DatagramServer, TcpServer
from pulsar_arbiter.echo import Echo
from pulsar_arbiter.servers import datagram_protocol_factory


async def serve(host: str, port: int, udp: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: TcpServer | DatagramServer
    if udp:
        server = DatagramServer(datagram_protocol_factory(Echo), loop, address=(host, port))
        await server.create_endpoint()
        print(f"READY {server.address[1]}", flush=True)
    else:
        server = TcpServer(
            functools.partial(Connection, Echo), loop, address=(host, port), keep_alive=15
        )
        await server.start_serving(backlog=4096)
    await stop.wait()
    await server.close(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--udp", action="store_true")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.udp)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
