"""Instructions per request (or WebSocket message) of an HTTP server, under callgrind.

    python scripts/callgrind_http.py ours-asgi            # --asgi peer_hello:asgi, 1 worker
    PULSAR_ARBITER_PURE=1 python scripts/callgrind_http.py ours-asgi
    python scripts/callgrind_http.py ours-ws              # --asgi ws_echo:app, echo messages
    python scripts/callgrind_http.py uvicorn              # peers' uvicorn (httptools, uvloop)
    python scripts/callgrind_http.py uvicorn-ws           # uvicorn --ws websockets
    N1=2000 N2=12000 CONNS=1 python scripts/callgrind_http.py ours-asgi

Why: wall-clock CPU per request on this shared 2-core machine moves by 10-20 % between
runs, too much to see a change of a few percent; callgrind counts the instructions the
server executes, which do not depend on the machine's load. The server runs under
``valgrind --tool=callgrind`` (forked processes followed, one output file per pid); the
client, outside valgrind, sends N keep-alive GETs (``CONNS`` connections, one request in
flight on each) and the server is stopped with SIGTERM. Two runs, with N1 and N2
requests, cancel the start-up and shutdown: the figure is ``(I(N2) - I(N1)) / (N2 - N1)``
of the process that served (the busiest one: the worker, not the arbiter). Timers
(heartbeats, the Date cache's second) add a little that depends on the wall time under
valgrind, so figures within ~1 % are the same. ``TOP=30`` prints the functions that cost
most per request, self and inclusive (the difference of the two runs' profiles, so the
start-up's compiling and importing drops out); ``KEEP=dir`` keeps both runs' files.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "scripts" / "bench" / "apps"
# The peers' venv scripts/bench/run.py creates (scripts/bench/peers.py, PEERS_DIR).
PEERS = Path(os.environ.get("PEERS", REPO / "scripts" / "bench" / ".peers"))
HOST = "127.0.0.1"
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def argv_of(server: str, port: int, tmp: str) -> list[str]:
    bind = ["--host", HOST, "--port", str(port)]
    if server in ("ours-asgi", "ours-ws"):
        app = "peer_hello:asgi" if server == "ours-asgi" else "ws_echo:app"
        return [
            sys.executable,
            "-m",
            "pulsar_arbiter",
            "--asgi",
            app,
            "--workers",
            "1",
            "--bind",
            f"{HOST}:{port}",
            "--log-level",
            "warning",
            "--control-socket",
            f"{tmp}/ctl.sock",
        ]
    if server in ("uvicorn", "uvicorn-ws"):
        app = "peer_hello:asgi" if server == "uvicorn" else "ws_echo:app"
        extra = ["--ws", "websockets"] if server == "uvicorn-ws" else []
        return [
            str(PEERS / "bin" / "python"),
            str(PEERS / "bin" / "uvicorn"),
            app,
            "--app-dir",
            str(APPS),
            *bind,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            *extra,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    raise SystemExit(f"unknown server {server!r}")


def connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection((HOST, port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def read_response(sock: socket.socket, pending: bytearray) -> None:
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            match = re.search(rb"(?i)content-length:\s*(\d+)", bytes(pending[:end]))
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(pending) >= total:
                del pending[:total]
                return
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        pending += data


def drive_http(port: int, count: int, conns: int) -> None:
    deadline = time.monotonic() + 120
    socks = [connect(port, deadline) for _ in range(conns)]
    buffers = [bytearray() for _ in socks]
    # The first request may wait for the worker to boot under valgrind.
    socks[0].sendall(GET)
    read_response(socks[0], buffers[0])
    done = 1
    while done < count:
        batch = socks[: min(conns, count - done)]
        for sock in batch:
            sock.sendall(GET)
        for sock, pending in zip(batch, buffers, strict=False):
            read_response(sock, pending)
        done += len(batch)
    for sock in socks:
        sock.close()


def ws_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def read_exact(sock: socket.socket, pending: bytearray, size: int) -> bytes:
    while len(pending) < size:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        pending += data
    out = bytes(pending[:size])
    del pending[:size]
    return out


def drive_ws(port: int, count: int, conns: int) -> None:
    deadline = time.monotonic() + 120
    socks = []
    buffers = []
    key = base64.b64encode(os.urandom(16)).decode()
    for _ in range(conns):
        sock = connect(port, deadline)
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        pending = bytearray()
        while b"\r\n\r\n" not in pending:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("handshake refused")
            pending += data
        head, _, rest = bytes(pending).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {head!r}")
        socks.append(sock)
        buffers.append(bytearray(rest))
    frame = ws_frame(b"x" * 100)
    done = 0
    while done < count:
        batch = socks[: min(conns, count - done)]
        for sock in batch:
            sock.sendall(frame)
        for sock, pending in zip(batch, buffers, strict=False):
            first = read_exact(sock, pending, 2)
            size = first[1] & 0x7F
            read_exact(sock, pending, size)
        done += len(batch)
    for sock in socks:
        sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000, masked
    for sock in socks:
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        sock.close()


def run(server: str, count: int, conns: int, out: Path) -> dict[int, int]:
    """Instructions of each process of one callgrind run serving ``count`` requests."""
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/callgrind.out.%p",
        *argv_of(server, port, str(out)),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(APPS))
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        if server.endswith("-ws"):
            drive_ws(port, count, conns)
        else:
            drive_http(port, count, conns)
    finally:
        proc.send_signal(signal.SIGTERM)  # the arbiter (or uvicorn) stops gracefully
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    totals: dict[int, int] = {}
    for path in out.glob("callgrind.out.*"):
        text = path.read_text(errors="replace")
        match = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(
            r"^totals:\s*(\d+)", text, re.M
        )
        if match:
            totals[int(path.name.rsplit(".", 1)[1])] = int(match.group(1))
    return totals


def profile(path: Path, inclusive: bool) -> dict[str, int]:
    """Instructions by function of one callgrind file (``callgrind_annotate``)."""
    text = subprocess.run(
        [
            "callgrind_annotate",
            f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100",
            "--auto=no",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)$", line)
        if match and "PROGRAM TOTALS" not in line:
            name = re.sub(r"^\S*/", "", match.group(2).split(" [", 1)[0])
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def busiest(totals: dict[int, int], out: Path) -> Path:
    pid = max(totals, key=lambda each: totals[each])
    return out / f"callgrind.out.{pid}"


def top(first: Path, second: Path, runs: int, count: int) -> None:
    for inclusive in (False, True):
        one, two = profile(first, inclusive), profile(second, inclusive)
        diff = {name: (two.get(name, 0) - one.get(name, 0)) / runs for name in two}
        print(f"-- per request, {'inclusive' if inclusive else 'self'}")
        for name, cost in sorted(diff.items(), key=lambda item: -item[1])[:count]:
            print(f"{cost:10,.0f}  {name}")


def main() -> int:
    server = sys.argv[1] if len(sys.argv) > 1 else "ours-asgi"
    n1 = int(os.environ.get("N1", "2000"))
    n2 = int(os.environ.get("N2", "12000"))
    conns = int(os.environ.get("CONNS", "1"))
    keep = os.environ.get("KEEP")
    count = int(os.environ.get("TOP", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(keep) if keep else Path(tmp)
        if keep and base.exists():
            shutil.rmtree(base)
        first = run(server, n1, conns, base / "n1")
        second = run(server, n2, conns, base / "n2")
        if count:
            top(busiest(first, base / "n1"), busiest(second, base / "n2"), n2 - n1, count)
    busiest1 = max(first.values())
    busiest2 = max(second.values())
    per = (busiest2 - busiest1) / (n2 - n1)
    all_per = (sum(second.values()) - sum(first.values())) / (n2 - n1)
    mode = "pure" if os.environ.get("PULSAR_ARBITER_PURE", "") not in ("", "0") else "default"
    unit = "message" if server.endswith("-ws") else "request"
    print(
        f"{server} ({mode}, {conns} conn): {per:,.0f} instructions/{unit} in the busiest "
        f"process, {all_per:,.0f} in all processes (N1={n1}, N2={n2})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
