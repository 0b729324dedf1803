"""Whether the endpoint can be reached at all (pure): a job must not burn its requests on a wrong URL.

An attempt that could not connect (refused, no such host, TLS, connect timeout) is the endpoint's
failure, not the request's. The endpoint is unreachable, and the job stops with its requests left
pending, when ``UNREACHABLE_AFTER`` attempts in a row (over the whole job, in the order they end)
could not connect with no answer between them, or when a request would otherwise be given up
because of it before the endpoint answered anything in this run. Any answer (a reply, an HTTP
error, a stream that started) resets the count: a blip of a reachable endpoint is only retried.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.api.failures import Failure
from orchestrator.models import Outcome

UNREACHABLE_AFTER = 5
UNREACHABLE = "unreachable"  # the reason of the failure that stops the job


@dataclass
class Reach:
    after: int = UNREACHABLE_AFTER
    answered: bool = False  # the endpoint answered an attempt of this run
    streak: int = 0  # attempts in a row that could not connect

    def answer(self) -> None:
        self.answered = True
        self.streak = 0

    def connect_failed(self, out_of_tries: bool) -> bool:
        """Count an attempt that could not connect; whether the endpoint is now unreachable."""
        self.streak += 1
        return self.streak >= self.after or (out_of_tries and not self.answered)


def unreachable(failure: Failure, streak: int) -> Failure:
    """The job-stopping failure a connect failure becomes once the endpoint is unreachable."""
    error = failure.error["error"]
    message = f"{error['message']}; {streak} attempt(s) in a row could not connect and none was answered"
    return replace(
        failure,
        outcome=Outcome.FATAL,
        reason=UNREACHABLE,
        error={**failure.error, "error": {**error, "message": message}},
    )
