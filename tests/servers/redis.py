"""A throwaway ``redis-server`` on a free loopback port, in a folder of its own.

Started as a foreground subprocess (``--daemonize no``) so it is stopped by its PID. No
periodic snapshots and no AOF (``--save "" --appendonly no``): nothing writes to disk while
tests run. ``stop()`` sends ``SAVE`` before terminating the PID, so ``start()`` reloads the
data (``dump.rdb`` in the server's folder), as the outage tests expect. Every
``settings()`` call gets a fresh database number (``--databases 1024``), flushed before it
is handed out, so each test sees an empty store like the filesystem driver's new folder.
It also listens on a unix socket (``unix_url``) to test ``unix://`` URLs.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import redis

from blokrun.config import DatasourceSettings
from tests.servers.base import ServerUnavailable, free_port

DATABASES = 1024
_LIVE: set[subprocess.Popen[bytes]] = set()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    _LIVE.discard(proc)


@atexit.register
def _stop_all() -> None:  # backstop if the session is interrupted before stop()
    for proc in list(_LIVE):
        _stop(proc)


class RedisServer:
    driver = "redis"

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.label = "redis" if password is None else "redis-auth"
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_db = 0

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        auth = f"password={quote(self.password, safe='')}&" if self.password else ""
        return f"unix://{self.socket}?{auth}db=0"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (run .ci/setup/redis.sh)")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--databases", str(DATABASES),
            "--logfile", "",
            "--enable-debug-command", "local",  # DEBUG SET-ACTIVE-EXPIRE in the size() test
        ]  # fmt: skip
        if len(str(self.socket)) < 100:  # sun_path limit
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _LIVE.add(self._proc)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = self._client(0, timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    tail = (self.dir / "redis.log").read_text(errors="replace")[-500:]
                    _LIVE.discard(self._proc)
                    raise ServerUnavailable(f"redis-server exited at start: {tail}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerUnavailable(f"redis-server did not answer PING on {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._save()
            _stop(self._proc)
            self._proc = None

    def _save(self) -> None:
        """Snapshot to ``dump.rdb`` so a restart keeps the data (best effort)."""
        client = self._client(0, timeout=10)
        try:
            client.save()
        except redis.RedisError:
            pass
        finally:
            client.close()

    def _client(self, db: int, timeout: float) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=self.password, socket_timeout=timeout
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def fresh_db(self) -> int:
        """A database number no earlier ``settings()`` call handed out (emptied first)."""
        db = self._next_db % DATABASES
        self._next_db += 1
        client = self._client(db, timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()
        return db

    def settings(self, name: str = "ds", /, **overrides: object) -> DatasourceSettings:
        """``name`` is positional-only so ``settings("x", name="y")`` overrides it too."""
        base = DatasourceSettings(name=name, type="redis", url=f"{self.url}/{self.fresh_db()}")
        return replace(base, **overrides)  # type: ignore[arg-type]


def launch(workdir: Path, *, password: str | None = None) -> RedisServer:
    server = RedisServer(workdir, password=password)
    server.start()
    return server
