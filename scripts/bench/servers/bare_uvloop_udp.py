"""Bare UDP echo on uvloop (DatagramProtocol, sendto back to the sender).

Usage: bare_uvloop_udp.py --host 127.0.0.1 --port N  (prints READY <port>)
"""

from __future__ import annotations

from _echo import parse_args, run, serve_udp

if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    run(serve_udp(args.host, args.port), use_uvloop=True)
