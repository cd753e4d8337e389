"""``blokrun run`` and ``blokrun resume`` of a small workflow in a fresh process, end to end.

Wall time of the ``blokrun`` console script (the interpreter start, imports, loading the
workflow, the embedded filesystem datasource with fsync, the run or resume, the output),
median of several; the goal is 300 ms. Also the bare interpreter, for scale.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from benchmarks.harness import Report

SECTION = "Fresh process (the blokrun command, embedded default)"
REPO = Path(__file__).resolve().parents[1]


def _time(cmd: list[str], env: dict[str, str], expect: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != expect:
        raise RuntimeError(f"{cmd}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def _compile() -> None:
    """Bytecode as an installed package has it (pip compiles on install): without it every
    start compiles ~40 modules (~80 ms here), e.g. under PYTHONDONTWRITEBYTECODE=1."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "blokrun")], check=True)


async def run(report: Report, quick: bool = False) -> None:
    reps = 7 if not quick else 3
    exe = Path(sys.executable).parent / "blokrun"
    blokrun = [str(exe)] if exe.exists() else [sys.executable, "-m", "blokrun"]
    _compile()
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-startup-") as tmp:
        wf = Path(tmp) / "small.json"
        steps = [{"name": f"s{i}", "node": "set", "inputs": {f"k{i}": i}} for i in range(4)]
        steps.append({"name": "pay", "node": "benchmarks.nodes:provider_env"})
        wf.write_bytes(orjson.dumps({"name": "small", "steps": steps}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "BLOKRUN_"))}
        env["BLOKRUN_HOME"] = str(Path(tmp) / "home")
        env["PYTHONPATH"] = str(REPO)
        bare = [_time([sys.executable, "-c", "pass"], env, 0) for _ in range(reps)]
        runs, resumes = [], []
        for i in range(reps + 1):
            runs.append(_time([*blokrun, "run", str(wf), "--request-id", f"ok{i}"], env, 0))
            down = {**env, "BENCH_PROVIDER_DOWN": "1"}
            _time([*blokrun, "run", str(wf), "--request-id", f"f{i}"], down, 1)
            resumes.append(_time([*blokrun, "resume", f"f{i}"], env, 0))
    report.add(SECTION, "python -c pass", statistics.median(bare), "s", "the interpreter alone")
    for name, values in (
        ("blokrun run (5 steps)", runs[1:]),
        ("blokrun resume (1 step left)", resumes[1:]),
    ):
        report.add(
            SECTION, name, statistics.median(values), "s", f"median of {reps}; goal <= 300 ms"
        )
