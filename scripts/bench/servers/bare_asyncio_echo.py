"""Bare TCP echo on the stock asyncio loop: shows what uvloop itself buys.

Usage: bare_asyncio_echo.py --host 127.0.0.1 --port N  (ready = port accepts)
"""

from __future__ import annotations

from _echo import parse_args, run, serve_tcp

if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    run(serve_tcp(args.host, args.port), use_uvloop=False)
