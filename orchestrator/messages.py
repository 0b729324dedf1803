"""What a run that ended early tells its caller: the error of a job stopped by the API, the spend
cap or its database, naming what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import JobAborted, StorageError
from orchestrator.models import State
from orchestrator.pricing import money

if TYPE_CHECKING:
    from orchestrator.runtime.summary import Summary


def resume_hint(db: Path, python: bool, option: str = "", value: str = "") -> str:
    """How to resume the job in ``db``, as its caller writes it, perhaps with ``option`` set to ``value``."""
    if python:
        given = f"{option}={value}" if option else ""
        return f"orchestrator.open_job({str(db)!r}).resume({given})"
    given = f" --{option.replace('_', '-')} {value}" if option else ""
    return f"orchestrator resume {db}{given}"


def aborted_error(summary: Summary, db: Path, python: bool = False) -> JobAborted | None:
    """The error a run stopped by the API (bad key, no permission, its spend limit), by the spend
    cap or by its database (a full disk, a read-only file) ends with, if it was; ``python``: its
    hints are written for a Python caller."""
    if summary.storage is not None:
        lost = ""
        if summary.unsaved:
            named = ", ".join(summary.unsaved[:10]) + (", ..." if len(summary.unsaved) > 10 else "")
            lost = (
                f" What was received for {len(summary.unsaved):,} requests could not be saved ({named}): "
                "they will be requested again."
            )
        return StorageError(
            f"the job stopped: {summary.storage}{lost} Everything else is saved. Free space (or make the "
            f"database writable), then resume with: {resume_hint(db, python)}"
        )
    failure = summary.aborted
    if failure is None and summary.capped:
        left = summary.counts[State.PENDING] + summary.counts[State.RUNNING]
        return JobAborted(
            f"the job stopped at its spend cap: spent {money(summary.cost)} of the {money(summary.cap)} cap "
            f"({'max_cost' if python else '--max-cost'}), {left:,} requests left. Resume with a higher cap: "
            f"{resume_hint(db, python, 'max_cost', 'USD')}"
        )
    if failure is None:
        return None
    from orchestrator.run.reach import UNREACHABLE  # imports the SDK (loaded by now: the job ran)

    error = failure.error.get("error", {})
    if failure.reason == UNREACHABLE:
        return JobAborted(
            f"the job stopped: the endpoint cannot be reached: {error.get('message')}. Its requests are left "
            f"pending. Check the URL ({'base_url' if python else '--base-url'}, ANTHROPIC_BASE_URL) and the network, "
            f"then resume with: {resume_hint(db, python)} (give {'base_url' if python else '--base-url URL'} "
            "to run it against another endpoint)"
        )
    return JobAborted(
        f"the job stopped: {failure.reason} ({error.get('type')}: {error.get('message')}). "
        f"Fix the cause, then resume with: {resume_hint(db, python)}"
    )
