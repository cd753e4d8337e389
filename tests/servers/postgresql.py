"""A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run through
``runuser -u postgres`` in a folder owned by ``postgres``. That folder is a fresh
``/tmp/blokrun-pg-*`` rather than ``workdir``, because pytest's base temp folder is mode
0700 and the ``postgres`` user could not reach a folder inside it; it is removed at exit.

The cluster runs with ``fsync=off``: the contract suite checks behaviour, not crash
durability, and fsync off makes ``initdb`` and every commit much faster. Authentication
is ``trust`` for the ``blok`` superuser; the role :data:`PASSWORD_ROLE` must log in with
``scram-sha-256`` over TCP, so a test can show a password never reaches an error message.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from itertools import count
from pathlib import Path

from blokrun.config import DatasourceSettings
from tests.servers.base import ServerUnavailable, free_port

USER = "blok"
PASSWORD_ROLE = "blok_pw"
_HBA = f"""\
local all all trust
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


def _bindir() -> Path:
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
        candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise ServerUnavailable("no initdb/pg_ctl found (run .ci/setup/postgresql.sh)")


class PostgresServer:
    driver = "postgresql"

    def __init__(self, bindir: Path, root: Path, as_postgres: bool) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockdir = root / "sock"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.label = f"postgresql-{bindir.parent.name}"
        self._as_postgres = as_postgres
        self._pid: int | None = None
        self._tables = count(1)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerUnavailable(
                f"{args[0]} {args[1] if len(args) > 1 else ''} failed "
                f"({proc.returncode}): {proc.stderr.strip()[-1000:]} {tail}"
            )

    def init(self) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            for path in (self.root, self.sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        (self.data / "pg_hba.conf").write_text(_HBA)

    def start(self) -> None:
        if self._pid is not None:
            return
        opts = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                  "-t", "60", "start")  # fmt: skip
        self._pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        pid, self._pid = self._pid, None
        if pid is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "20", "stop")
            return
        except (ServerUnavailable, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):  # pg_ctl failed: stop it by its PID
            os.kill(pid, signal.SIGQUIT)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        """Each call gets its own table, so every store starts empty (like a fresh folder)."""
        base = DatasourceSettings(
            name=name, type="postgresql", url=self.url, table=f"blokrun_t{next(self._tables)}"
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans() -> None:
    """Stop clusters left by a test session that was killed before its atexit hook ran."""
    for root in Path(tempfile.gettempdir()).glob("blokrun-pg-*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError, ProcessLookupError):
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(root, ignore_errors=True)


def launch(workdir: Path) -> PostgresServer:
    bindir = _bindir()
    _reap_orphans()
    as_postgres = os.geteuid() == 0
    if as_postgres:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable(
                "running as root and no 'postgres' user to run initdb"
            ) from None
        if shutil.which("runuser") is None:
            raise ServerUnavailable("running as root and no runuser to drop to 'postgres'")
        root = Path(tempfile.mkdtemp(prefix="blokrun-pg-"))
        (root / "owner.pid").write_text(str(os.getpid()))
        (workdir / "cluster-path.txt").write_text(str(root))
    else:
        root = workdir / "pg"
        root.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(bindir, root, as_postgres)
    atexit.register(server.cleanup)
    try:
        server.init()
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server
