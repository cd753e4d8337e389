"""Throwaway MongoDB for the tests: mongoeco (an emulator), or a real mongod when given one.

No real ``mongod`` can be installed on this machine (every route downloads a binary from a
host it cannot reach), so by default the tests run against **mongoeco**, a MongoDB
wire-protocol emulator written in Python. It needs Python >= 3.13, so it runs as a separate
process from its own venv (``.venv-mongoeco/``, made by ``.ci/setup/mongodb.sh``) via
``tests/servers/mongoeco_server.py``, on a free loopback port, with its documents in a
SQLite file under the session's workdir (so ``stop()``/``start()`` keep the data). The
label says it is an emulator: ``mongodb-mongoeco-emulator``.

With ``BLOKRUN_TEST_MONGO_URL=mongodb://[user:pass@]host:port/`` (a standalone mongod or a
replica-set primary, no TLS/SRV) the tests run against that server instead, label
``mongodb-real``, in a database of their own (``blokrun_test_<random>``, dropped at exit).
The client then reaches it through a loopback TCP forwarder (``directConnection=true``):
``stop()`` closes the forwarder and cuts every connection, so outage tests get a real
outage without the tests stopping someone's mongod.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from blokrun.config import DatasourceSettings, mask_url
from tests.servers.base import ServerUnavailable, free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("mongoeco_server.py")
ENV_URL = "BLOKRUN_TEST_MONGO_URL"
ENV_PYTHON = "BLOKRUN_MONGOECO_PYTHON"  # override of .venv-mongoeco/bin/python
#: mongoeco is a CPU-bound Python emulator that runs a bulk write one document at a time
#: (5-15 ms per write on a loaded 2-core machine): a batch of 1,000 takes seconds, so its
#: default operation timeout is larger than the product's 5 s. Tests may override it.
EMULATOR_TIMEOUT = 30.0


class _Collections:
    """A fresh collection per ``settings()`` call, like the filesystem's fresh folder."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"store_{self._n}"


class MongoecoServer:
    driver = "mongodb"
    label = "mongodb-mongoeco-emulator"
    emulator = True

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "mongoeco.sqlite"
        self.log = workdir / "mongoeco.log"
        self.url = f"mongodb://127.0.0.1:{self.port}/"
        self.database = "blokrun_test"
        self._proc: subprocess.Popen[bytes] | None = None
        self._collections = _Collections()
        atexit.register(self.stop)

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        base = DatasourceSettings(
            name=name,
            type="mongodb",
            url=self.url,
            database=self.database,
            collection=self._collections.next(),
            timeout=EMULATOR_TIMEOUT,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(self.python),
                    str(LAUNCHER),
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-1500:]
                self._proc = None
                raise ServerUnavailable(
                    "mongoeco (MongoDB wire-protocol emulator) exited at start-up; "
                    f"run .ci/setup/mongodb.sh. Its output: {tail}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerUnavailable(
                        f"mongoeco did not listen on port {self.port} in 30 s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # graceful close can take ~5 s (mongoeco joins a heartbeat thread)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Forwarder:
    """A loopback TCP forwarder to ``target``; :meth:`stop` cuts every connection."""

    def __init__(self, target: tuple[str, int], port: int) -> None:
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="mongo-forwarder")
        self._thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # TimeoutError: poll the stop flag again
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class RealMongoServer:
    driver = "mongodb"
    label = "mongodb-real"
    emulator = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mongodb" or not parts.hostname:
            raise ServerUnavailable(
                f"{ENV_URL}={mask_url(url)!r}: expected mongodb://[user:pass@]host:port/ "
                "(one host, no SRV)"
            )
        self.real_url = url
        self.database = f"blokrun_test_{secrets.token_hex(4)}"
        self._forwarder = _Forwarder((parts.hostname, parts.port or 27017), free_port())
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "directconnection"]
        query.append(("directConnection", "true"))
        self.url = urlunsplit(
            ("mongodb", f"{netloc}127.0.0.1:{self._forwarder.port}", "/", urlencode(query), "")
        )
        self._collections = _Collections()
        atexit.register(self._drop_database)

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        base = DatasourceSettings(
            name=name,
            type="mongodb",
            url=self.url,
            database=self.database,
            collection=self._collections.next(),
            timeout=5.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def start(self) -> None:
        self._forwarder.start()

    def stop(self) -> None:
        self._forwarder.stop()

    def check(self) -> None:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.real_url, serverSelectionTimeoutMS=5000
        )
        try:
            client.admin.command("ping")
        except Exception as exc:
            raise ServerUnavailable(
                f"{ENV_URL}={mask_url(self.real_url)!r} is unreachable: {type(exc).__name__}"
            ) from None
        finally:
            client.close()

    def _drop_database(self) -> None:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.real_url, serverSelectionTimeoutMS=3000
        )
        with contextlib.suppress(Exception):
            client.drop_database(self.database)
        client.close()


def mongoeco_python() -> Path:
    override = os.environ.get(ENV_PYTHON)
    return Path(override) if override else ROOT / ".venv-mongoeco" / "bin" / "python"


def launch(workdir: Path) -> MongoecoServer | RealMongoServer:
    real_url = os.environ.get(ENV_URL)
    if real_url:
        real = RealMongoServer(real_url)
        real.check()
        real.start()
        return real
    python = mongoeco_python()
    if not python.exists():
        raise ServerUnavailable(
            "mongoeco (MongoDB wire-protocol emulator) needs Python 3.13 under pyenv and its "
            f"venv {python.parent.parent}; run .ci/setup/mongodb.sh "
            f"(or set {ENV_URL} to a real mongod)"
        )
    server = MongoecoServer(python, workdir)
    server.start()
    return server
