"""What the benchmarks share: the simulator in its own process, its stats, this process's CPU time."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def start_simulator(*options: str) -> tuple[subprocess.Popen[str], str]:
    """``orchestrator simulate`` on a free port with these options: (its process, its URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "simulate", "--port", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    url = next(word for word in process.stdout.readline().split() if word.startswith("http://"))
    return process, url


def simulator_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_simulator/stats") as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def process_cpu(pid: int) -> float:
    """CPU seconds another process has used so far, user and system (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    """CPU seconds this process has used, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
