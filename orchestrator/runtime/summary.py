"""How a run of a job ended, in either mode: counts, tokens, why it stopped (the engines' answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from orchestrator.api.failures import Failure
from orchestrator.errors import StorageError
from orchestrator.models import State, Usage


@dataclass
class Summary:
    counts: dict[str, int]
    billed: Usage  # over every attempt of the job, all runs
    elapsed: float  # seconds of this run
    stopped: bool  # by a signal
    aborted: Failure | None  # why the job could not go on
    pauses: int = 0  # pool-wide cool-downs after a 429
    cuts: int = 0  # times an overload cut the concurrency
    detached: int = 0  # message batches left running on the server by a stop (batch mode)
    capped: bool = False  # the spend cap stopped the launches
    cost: Decimal | None = None  # USD billed by the whole job; None if a model is unpriced
    cap: Decimal | None = None  # the spend cap of this run
    storage: StorageError | None = None  # the database could not be written: the job stopped
    unsaved: list[str] = field(default_factory=list)  # custom_ids whose received replies could not be saved

    @property
    def complete(self) -> bool:
        return self.counts[State.PENDING] == 0 and self.counts[State.RUNNING] == 0
