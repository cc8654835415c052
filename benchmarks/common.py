"""Helpers for the benchmarks: run an ember command in a child process, time it, read its peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# the atomic models of ../shared (EMBER_STRUCTURES: another folder holding them, e.g. on a GPU machine)
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
SHARED = Path(os.environ.get("EMBER_STRUCTURES", _BESIDE))


def run_ember(*args: str) -> tuple[float, float]:
    """Run `ember ARGS` in a fresh process → (wall seconds, peak resident memory in GiB).

    Each call forks a new child, and RUSAGE_CHILDREN reports the largest child so far, so the
    caller should run the memory-critical command first or in its own process."""
    start = time.perf_counter()
    cmd = [sys.executable, "-c", "from ember.cli.main import main; main()", *args]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib / 2**20


def table(rows: list[tuple[str, str, str]]) -> str:
    """Markdown table of (measure, value, bar) rows."""
    lines = ["| measure | value | bar |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
