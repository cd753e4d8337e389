"""Throwaway S3 server: moto in its own process on a free loopback port.

moto keeps objects in memory, so ``stop()`` would lose them. This module is therefore also
the server's entry point (``python -m tests.servers.s3 PORT WORKDIR``): it restores the S3
buckets from ``WORKDIR/moto-s3.json`` (bodies base64, plus metadata), serves moto's app
one request at a time (moto is not thread-safe) without request logging, and on SIGTERM
closes the listening socket and writes the buckets back. So ``stop()`` + ``start()`` keeps
port and data, like the other servers. The child also exits when its parent dies (a killed
test session), besides the ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from blokrun.config import DatasourceSettings
from tests.servers.base import ServerUnavailable, free_port, wait_for_port

BUCKET = "blokrun-test"
ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"  # moto accepts anything; distinct so tests can look for leaks
_REPO = Path(__file__).resolve().parents[2]
_ACCOUNT = "123456789012"  # moto's default account


@dataclass
class MotoServer:
    workdir: Path
    port: int
    driver: str = "s3"
    label: str = "s3-moto"
    proc: subprocess.Popen[bytes] | None = None
    _counter: int = 0
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.workdir / "moto.log"
        atexit.register(self.stop)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        """Each call gets its own URL prefix, so stores never see each other's objects."""
        self._counter += 1
        base = DatasourceSettings(
            name=name,
            type="s3",
            url=f"s3://{BUCKET}/store-{self._counter}",
            endpoint_url=self.endpoint,
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.servers.s3", str(self.port), str(self.workdir)],
                cwd=_REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for_port(self.port, timeout=20)
        except ServerUnavailable:
            self.stop()
            tail = self._log.read_text(errors="replace")[-500:]
            raise ServerUnavailable(f"moto server did not start: {tail}") from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # the child saves its state, then exits
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(workdir: Path) -> MotoServer:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ServerUnavailable(f"moto is not installed ({exc}): pip install 'moto[s3]'") from exc
    server = MotoServer(workdir=workdir, port=free_port())
    server.start()
    req = urllib.request.Request(f"{server.endpoint}/{BUCKET}", method="PUT")
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except OSError as exc:
        server.stop()
        raise ServerUnavailable(f"cannot create bucket on moto: {exc}") from exc
    return server


# -- the child process ---------------------------------------------------------------------


def _serve(port: int, workdir: Path) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log(self, type: str, message: str, *args: object) -> None:
            pass

    state = workdir / "moto-s3.json"
    backend = s3_backends[_ACCOUNT]["aws"]
    if state.exists():  # plain JSON written by this module: no pickle, even in test code
        for bucket, objects in json.loads(state.read_text()).items():
            backend.create_bucket(bucket, "us-east-1")
            for name, obj in objects.items():
                stored = backend.put_object(bucket, name, base64.b64decode(obj["body"]))
                stored.set_metadata(obj["metadata"])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: Any, start_response: Any) -> Any:
        # moto is not thread-safe: two concurrent PUTs of one key can close the buffer the
        # other is hashing (HTTP 500). Threads still keep connections alive in parallel.
        with lock:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", port, serialized, threaded=True, request_handler=QuietHandler)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.serve_forever(poll_interval=0.05)  # returns on SIGTERM, socket closed
    for _ in range(3):  # a request thread may still be changing the dict
        with contextlib.suppress(RuntimeError):
            dump = {
                bucket.name: {
                    name: {
                        "body": base64.b64encode(obj.value).decode("ascii"),
                        "metadata": dict(obj.metadata),
                    }
                    for name, obj in list(bucket.keys.items())
                }
                for bucket in list(backend.buckets.values())
            }
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(dump))
            tmp.replace(state)
            break


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))
