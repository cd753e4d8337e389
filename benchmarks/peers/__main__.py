"""``python -m benchmarks.peers``: blokrun against Burr, LangGraph and DBOS on one workload.

1. Makes each peer's virtualenv if missing (``benchmarks/peers/.venvs/<peer>``, pinned
   requirements; a changed pin reinstalls) so no peer's dependencies touch blokrun's.
2. Starts one throwaway ``redis-server`` and one PostgreSQL cluster on free loopback ports
   (the test suite's launchers, ``tests/servers``), and a scratch folder for SQLite files.
3. Runs rounds: in each round every (system, backend) runs once, as its own process with
   its own venv's python (``bench_<system>.py measure ...``), systems taking turns first.
   Each process warms up, measures, and prints one JSON line.
4. Pools the samples of all rounds, takes medians, writes ``benchmarks/peers/RESULTS.md``
   and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = HERE / ".venvs"
RESULTS = HERE / "RESULTS.md"
MARKER = "PEERS-RESULT "
UNIT_TIMEOUT = 300.0

#: peer -> pinned requirements, installed in its own venv
REQUIREMENTS: dict[str, list[str]] = {
    "burr": ["burr[redis,asyncpg,aiosqlite]==0.42.*"],
    "langgraph": [
        "langgraph==1.*",
        "langgraph-checkpoint-postgres",
        "langgraph-checkpoint-sqlite",
        "langgraph-checkpoint-redis",
        "psycopg[binary,pool]",
    ],
    "dbos": ["dbos==3.*"],
}

LABELS = {
    "blokrun": "blokrun",
    "burr": "Apache Burr",
    "langgraph": "LangGraph",
    "dbos": "DBOS Transact",
    "floor": "floor (one raw round trip)",
}
#: the package whose version names the system in the table
MAIN_PACKAGE = {
    "blokrun": "blokrun",
    "burr": "apache-burr",
    "langgraph": "langgraph",
    "dbos": "dbos",
}
SYSTEMS = ["blokrun", "burr", "langgraph", "dbos", "floor"]
COLUMNS = ["redis", "postgresql", "sqlite", "off"]
#: blokrun has no SQLite driver: its filesystem driver (fsync on) is measured instead
BACKENDS = {
    "blokrun": ["redis", "postgresql", "filesystem", "off"],
    "burr": ["redis", "postgresql", "sqlite", "off"],
    "langgraph": ["redis", "postgresql", "sqlite", "off"],
    "dbos": ["postgresql", "sqlite"],
    "floor": ["redis", "postgresql", "sqlite", "off"],
}
NOT_RUN = {
    ("dbos", "redis"): "n/a: no Redis system database",
    ("dbos", "off"): "n/a: DBOS cannot run without persisting",
}
#: the backend where "100 runs at once" and the resumes are measured (all systems have it)
SHARED = "postgresql"
DASH = "\u2013"  # an empty cell


@dataclass(frozen=True)
class Plan:
    rounds: int
    repeats: str  # measured runs per N (10, 100) in each round
    concurrent: int
    resume_warm: int
    resume_new: int


def plan(system: str, quick: bool) -> Plan:
    if quick:
        return Plan(rounds=1, repeats="2,1", concurrent=100, resume_warm=1, resume_new=1)
    if system == "dbos":  # slow: ~5 ms a step and ~1 s a resume (queue polling)
        return Plan(rounds=5, repeats="3,2", concurrent=100, resume_warm=2, resume_new=1)
    return Plan(rounds=7, repeats="10,5", concurrent=100, resume_warm=5, resume_new=1)


# -- virtualenvs ---------------------------------------------------------------------------


def python_of(system: str) -> Path:
    if system in REQUIREMENTS:
        return VENVS / system / "bin" / "python"
    return Path(sys.executable)  # blokrun and the floor: blokrun's venv (same client libs)


def ensure_venv(peer: str) -> str | None:
    """Create/refresh the peer's venv; ``None`` when ready, else why it is not."""
    venv = VENVS / peer
    stamp = venv / ".requirements"
    wanted = "\n".join(REQUIREMENTS[peer]) + "\n"
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return None
    VENVS.mkdir(parents=True, exist_ok=True)
    log = VENVS / f"{peer}.install.log"
    base = shutil.which("python3") or sys.executable
    print(f"installing {peer} into {venv} ({', '.join(REQUIREMENTS[peer])}) ...", flush=True)
    steps = [
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS[peer]],
    ]
    with log.open("w") as out:
        for cmd in steps:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                return f"install failed ({' '.join(cmd[-3:])}): {tail[0][:200]}"
    stamp.write_text(wanted)
    return None


# -- servers -------------------------------------------------------------------------------


@dataclass
class Servers:
    redis_url: str = ""
    pg_url: str = ""
    data_dir: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    _stop: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for fn in reversed(self._stop):
            try:
                fn()
            except Exception as exc:  # best effort at the end
                print(f"stopping a server: {exc}", file=sys.stderr)


def start_servers(workdir: Path) -> Servers:
    sys.path.insert(0, str(REPO))
    from tests.servers import postgresql, redis  # the test suite's throwaway launchers
    from tests.servers.base import ServerUnavailable

    s = Servers(data_dir=str(workdir / "data"))
    Path(s.data_dir).mkdir(parents=True)
    try:
        r = redis.launch(workdir)
        s.redis_url = r.url
        s._stop.append(r.stop)
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        s.versions["redis-server"] = out.stdout.split()[2].removeprefix("v=")
    except (ServerUnavailable, OSError, IndexError) as exc:
        s.problems["redis"] = f"n/a: no redis-server: {exc}"
    try:
        pg = postgresql.launch(workdir)
        s.pg_url = pg.url
        s._stop.append(pg.cleanup)
        s.versions["PostgreSQL"] = pg.bindir.parent.name
    except (ServerUnavailable, OSError) as exc:
        s.problems["postgresql"] = f"n/a: no PostgreSQL: {exc}"
    import sqlite3

    s.versions["SQLite"] = sqlite3.sqlite_version
    return s


# -- running the units ---------------------------------------------------------------------


@dataclass
class Outcome:
    samples: dict[str, list[float]] = field(default_factory=dict)  # measure -> samples
    versions: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why this unit has no figures (or no more)
    failed_later: str | None = None  # a round failed after others had given figures


def run_unit(system: str, backend: str, servers: Servers, p: Plan, log: Path) -> dict[str, Any]:
    cmd = [str(python_of(system)), str(HERE / f"bench_{system}.py"), "measure",
           "--backend", backend, "--redis-url", servers.redis_url, "--pg-url", servers.pg_url,
           "--data-dir", servers.data_dir, "--repeats", p.repeats]  # fmt: skip
    if backend == SHARED:
        cmd += ["--concurrent", str(p.concurrent), "--resume-warm", str(p.resume_warm),
                "--resume-new", str(p.resume_new)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("a") as err:
        err.write(f"\n=== {system} {backend}: {' '.join(cmd)}\n")
        err.flush()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                  timeout=UNIT_TIMEOUT, cwd=HERE, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {UNIT_TIMEOUT:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            return result
    return {"error": f"exited {proc.returncode} without a result (see {log.name})"}


def collect(outcome: Outcome, result: dict[str, Any]) -> None:
    outcome.versions.update(result.get("versions", {}))
    if "unavailable" in result:
        outcome.problem = f"n/a: {result['unavailable']}"
        return
    if "error" in result:
        if outcome.samples:  # keep what earlier rounds measured; say so under the table
            outcome.failed_later = result["error"]
        outcome.problem = f"error: {result['error']}"
        return
    for n, values in result.get("per_step", {}).items():
        outcome.samples.setdefault(f"step{n}", []).extend(values)
    for key in ("concurrent", "resume_warm", "resume_new"):
        outcome.samples.setdefault(key, []).extend(result.get(key, []))
    for key, values in result.get("resume_warm_notes", {}).items():
        outcome.samples.setdefault(f"note_{key}", []).extend(values)


def run_rounds(
    servers: Servers, quick: bool, log: Path, not_installed: dict[str, str]
) -> dict[tuple[str, str], Outcome]:
    outcomes: dict[tuple[str, str], Outcome] = {}
    for system in SYSTEMS:
        for backend in BACKENDS[system]:
            why = not_installed.get(system) or servers.problems.get(backend)
            outcomes[(system, backend)] = Outcome(problem=why)
    rounds = max(plan(s, quick).rounds for s in SYSTEMS)
    for r in range(rounds):
        order = SYSTEMS[r % len(SYSTEMS) :] + SYSTEMS[: r % len(SYSTEMS)]
        print(f"round {r + 1}/{rounds}: {' -> '.join(order)}", flush=True)
        for system in order:
            p = plan(system, quick)
            if r >= p.rounds:
                continue
            for backend in BACKENDS[system]:
                outcome = outcomes[(system, backend)]
                if outcome.problem:  # not installed, no server, unavailable or failed
                    continue
                t0 = time.perf_counter()
                collect(outcome, run_unit(system, backend, servers, p, log))
                took = time.perf_counter() - t0
                print(f"  {system:<10} {backend:<11} {took:5.1f}s  {outcome.problem or 'ok'}",
                      flush=True)  # fmt: skip
    return outcomes


# -- the table -----------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """Three significant figures: 4.21 µs, 87.5 µs, 348 ms, 1.03 s."""
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        value = seconds / scale
        if value < 1000 or unit == "s":
            break
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def med(o: Outcome, key: str) -> float | None:
    values = o.samples.get(key)
    return statistics.median(values) if values else None


def failed(o: Outcome) -> str | None:
    """Why ``o`` has no figures to show (``None``: it has)."""
    return None if o.failed_later else o.problem


def per_step_cell(o: Outcome) -> str:
    if failed(o):
        return str(o.problem)
    a, b = med(o, "step10"), med(o, "step100")
    if a is None or b is None:
        return "error: no samples"
    return f"{fmt_time(a)} / {fmt_time(b)}"


def cells(outcomes: dict[tuple[str, str], Outcome], system: str) -> list[str]:
    row = []
    for column in COLUMNS:
        if (system, column) in NOT_RUN:
            row.append(NOT_RUN[(system, column)])
        elif system == "blokrun" and column == "sqlite":
            fs = outcomes[("blokrun", "filesystem")]
            row.append(f"{DASH} (no SQLite driver; filesystem with fsync: {per_step_cell(fs)})")
        else:
            o = outcomes.get((system, column))
            row.append(per_step_cell(o) if o is not None else DASH)
    shared = outcomes[(system, SHARED)]
    why = failed(shared)
    if why:
        return [*row, why, why]
    c = med(shared, "concurrent")
    row.append(f"{c:,.0f}" if c is not None else "error: no samples")
    warm, new = med(shared, "resume_warm"), med(shared, "resume_new")
    if warm is None or new is None:
        row.append("error: no samples")
    else:
        replay = med(shared, "note_replay")
        extra = f" (replay alone {fmt_time(replay)})" if replay is not None else ""
        row.append(f"{fmt_time(warm)}{extra} / {fmt_time(new)}")
    return row


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return DASH
    return f"{a / b:.2f}"


def ratio_row(outcomes: dict[tuple[str, str], Outcome], peer: str) -> list[str]:
    mine = {c: outcomes.get(("blokrun", c)) for c in COLUMNS}
    row = []
    for column in COLUMNS:
        theirs = outcomes.get((peer, column))
        ours = mine[column]
        if column == "sqlite" or theirs is None or ours is None or failed(theirs) or failed(ours):
            row.append(DASH)
            continue
        row.append(
            f"{ratio(med(ours, 'step10'), med(theirs, 'step10'))} / "
            f"{ratio(med(ours, 'step100'), med(theirs, 'step100'))}"
        )
    ours, theirs = outcomes[("blokrun", SHARED)], outcomes[(peer, SHARED)]
    if failed(ours) or failed(theirs):
        return [*row, DASH, DASH]
    row.append(ratio(med(ours, "concurrent"), med(theirs, "concurrent")))
    row.append(
        f"{ratio(med(ours, 'resume_warm'), med(theirs, 'resume_warm'))} / "
        f"{ratio(med(ours, 'resume_new'), med(theirs, 'resume_new'))}"
    )
    return row


def system_label(system: str, o: dict[tuple[str, str], Outcome]) -> str:
    versions: dict[str, str] = {}
    for backend in BACKENDS[system]:
        versions.update(o[(system, backend)].versions)
    pkg = MAIN_PACKAGE.get(system)
    if pkg is None:
        return LABELS[system]
    return f"{LABELS[system]} {versions.get(pkg, '(not installed)')}"


def all_versions(outcomes: dict[tuple[str, str], Outcome], system: str) -> str:
    versions: dict[str, str] = {}
    for backend in BACKENDS[system]:
        versions.update(outcomes[(system, backend)].versions)
    return ", ".join(f"{k} {v}" for k, v in versions.items()) or "-"


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


HEADER = (
    "| system | Redis | PostgreSQL | SQLite | persistence off | 100 runs at once (steps/s) "
    "| resume a 100-step run: warm / new process |"
)


def render(
    outcomes: dict[tuple[str, str], Outcome],
    servers: Servers,
    quick: bool,
    load: str,
    took: float,
) -> str:
    p, slow = plan("blokrun", quick), plan("dbos", quick)
    lines = [
        "## Peers: blokrun against Burr, LangGraph and DBOS",
        "",
        "Written by `make bench-peers` (`python -m benchmarks.peers"
        f"{' --quick' if quick else ''}`). One workload on every system: a linear workflow of "
        "N steps, each adding ~50 bytes (`k<i>`: 40 characters) to the state, a checkpoint "
        "after every step, the servers on loopback. Every figure is a median over rounds "
        "that interleave the systems (each round runs every system and backend once, in its "
        "own process and virtualenv, a different system first each round; every process "
        "warms up first).",
        "",
        "Per-step cells are the wall time of one run divided by N, for **N = 10 / N = 100**; "
        "the checkpoint overhead per step is a cell minus the same system's *persistence "
        "off* cell. *100 runs at once* and the resumes run on PostgreSQL for every system.",
        "",
        HEADER,
        "|---|---|---|---|---|---:|---|",
    ]
    for system in SYSTEMS:
        row = [system_label(system, outcomes), *cells(outcomes, system)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "blokrun ÷ peer, same columns (per step and resume: **below 1, blokrun takes less "
        "time**; steps/s: **above 1, blokrun does more**):",
        "",
        HEADER.replace("| system |", "| blokrun ÷ |"),
        "|---|---|---|---|---|---:|---|",
    ]
    for peer in ["burr", "langgraph", "dbos", "floor"]:
        lines.append(f"| {LABELS[peer]} | " + " | ".join(ratio_row(outcomes, peer)) + " |")
    lines += [
        "",
        "How each system was run (`benchmarks/peers/bench_<system>.py` says more):",
        "",
        "- **blokrun**: a `Runner` with the drivers' defaults (asyncpg pool of 10, redis-py "
        "pool of 32), built-in `set` steps; no SQLite driver, so the SQLite column shows its "
        "filesystem driver with fsync (temp file, fsync, rename, folder fsync per record).",
        "- **Apache Burr**: async persisters (`AsyncRedisBasePersister`, "
        "`AsyncPostgreSQLPersister` with `use_pool=True`: asyncpg's pool of 10, "
        "`AsyncSQLitePersister`), applications built with `abuild()` from a graph built once; "
        "the application build counts as part of each run.",
        "- **LangGraph**: `AsyncPostgresSaver` on a psycopg `AsyncConnectionPool` (max 10), "
        "`AsyncSqliteSaver`; a `TypedDict` state with one key per step; "
        '`durability="sync"` (each checkpoint written before the next step, as the others '
        'do; LangGraph\'s default `"async"` overlaps it with the next step). '
        "`AsyncRedisSaver` needs the RediSearch and RedisJSON modules (Redis Stack / Redis 8), "
        f"which this redis-server {servers.versions.get('redis-server', '?')} does not have.",
        "- **DBOS Transact**: async `@DBOS.workflow` / `@DBOS.step`; `DBOSConfig` with only the "
        "system database URL (SQLAlchemy pool of 20 on PostgreSQL). Its checkpoint is the "
        "step's output row; it cannot run with persistence off. Fewer repetitions: "
        f"{plural(slow.rounds, 'round')} of {slow.repeats.replace(',', ' / ')} runs per N "
        f"and {plural(slow.resume_warm, 'warm resume')} per round (the others: "
        f"{plural(p.rounds, 'round')} of {p.repeats.replace(',', ' / ')} runs and "
        f"{plural(p.resume_warm, 'warm resume')}); one new-process resume per round.",
        "- **floor**: no framework: the whole state JSON-encoded and written in one round "
        "trip per step (redis-py asyncio `SET`; asyncpg `INSERT … ON CONFLICT DO UPDATE`, "
        "pool of 10 without asyncpg's reset query (which would be a second round trip); "
        "stdlib `sqlite3` upsert + commit in WAL mode with `synchronous=FULL`), "
        "and for *off* a dict assignment. Same client libraries as blokrun.",
        "- **100 runs at once**: 100 runs of the 10-step workflow started together in one "
        "process with `asyncio.gather` (after a warm-up batch of 10), checkpointed steps per "
        "second.",
        "- **Resume**: a 100-step run whose last step failed (its 99 steps checkpointed) is "
        "resumed: the latest checkpoint loaded and the last step run. *warm*: in the process "
        "that ran it, connections open; *new process*: wall time of a fresh `python` that "
        "imports the library, connects, resumes and exits. blokrun `runner.resume(id)`; "
        "Burr a new application `initialize_from` the persister; LangGraph `ainvoke(None)` "
        "on the thread; floor a read of the state and the last write. DBOS resumes only a "
        "workflow whose process died (one that raised is final), so a helper process is "
        "killed (`os._exit`) inside the 100th step; then `DBOS.resume_workflow_async` and "
        "its result. That goes through DBOS's internal queue, polled about once a second by "
        "default: the cell also gives the workflow's replay alone (function start to "
        "return: 99 recorded steps read back, the last one run).",
        "",
        f"Servers: redis-server {servers.versions.get('redis-server', '-')} without RDB/AOF "
        f"(in memory); PostgreSQL {servers.versions.get('PostgreSQL', '-')} test cluster with "
        "`fsync=off` (so PostgreSQL figures are CPU and round trips, not disk); SQLite "
        f"{servers.versions.get('SQLite', '-')} files on the local ext4 disk, each library "
        "with its own defaults.",
        "",
        f"- machine: {machine()}; load average at start: {load}; other jobs share this "
        "machine, so figures move between runs: compare within one run",
        f"- Python {platform.python_version()}; the whole run took {took:.0f} s",
    ]
    for (system, backend), o in outcomes.items():
        if o.failed_later:
            lines.append(
                f"- **{LABELS[system]} on {backend}: a later round failed** (its figures are "
                f"from the rounds before): {o.failed_later}"
            )
    for system in SYSTEMS:
        lines.append(f"- {LABELS[system]}: {all_versions(outcomes, system)}")
    lines.append(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, few repeats (smoke)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "-"
    not_installed = {}
    for peer in REQUIREMENTS:
        problem = ensure_venv(peer)
        if problem:
            not_installed[peer] = f"n/a: {problem}"
    workdir = Path(tempfile.mkdtemp(prefix="blokrun-peers-"))
    log = VENVS / "last-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    servers = start_servers(workdir)
    try:
        outcomes = run_rounds(servers, args.quick, log, not_installed)
    finally:
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(outcomes, servers, args.quick, load, time.perf_counter() - t0)
    RESULTS.write_text(text)
    print()
    print(text)
    from benchmarks.harness import merge_peers

    merge_peers()
    print(f"wrote {RESULTS} (stderr of the runs: {log})")


if __name__ == "__main__":
    main()
