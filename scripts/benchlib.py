"""What the benchmarks share: the simulator in its own process, its stats, this process's CPU time."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


def cpu() -> float:
    """CPU seconds this process has used, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds another (running) process has used, user and system, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prompt(i: int) -> str:
    """The prompt of request ``i`` in the benchmarks' jobs."""
    return f"Request number {i}: write about rate limits."


def write_prompt_lines(path: Path, lines: int, *, custom_ids: bool = False) -> None:
    """A JSONL job of ``lines`` prompt lines (``{"prompt": ...}``, with ``"custom_id": "r<i>"`` if asked)."""
    with path.open("w") as handle:
        for i in range(lines):
            line = {"prompt": prompt(i), "custom_id": f"r{i}"} if custom_ids else {"prompt": prompt(i)}
            handle.write(json.dumps(line) + "\n")


@contextmanager
def stopped_after(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """The process, stopped with SIGTERM (as Ctrl-C stops a run) when the block ends; killed if it
    does not stop within two minutes, or if the block fails."""
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
