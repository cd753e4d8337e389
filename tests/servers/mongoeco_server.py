"""Run mongoeco's MongoDB wire-protocol emulator on a loopback port until SIGTERM/SIGINT.

Run by the Python 3.13 interpreter of ``.venv-mongoeco/`` (mongoeco needs >= 3.13), never
imported by the test suite itself::

    .venv-mongoeco/bin/python tests/servers/mongoeco_server.py --port 27999 --data DIR/db.sqlite

Data lives in a SQLite file (mongoeco's persistent engine), so a stopped and restarted
server on the same ``--data`` keeps its documents, like a mongod with its ``--dbpath``.
Prints ``ready <port>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def serve(host: str, port: int, data: str) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine  # type: ignore[import-not-found]
    from mongoeco.wire import AsyncMongoEcoProxyServer  # type: ignore[import-not-found]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(data), host=host, port=port)
    address = await server.start()
    print(f"ready {address.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", required=True, help="SQLite file for the documents")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
