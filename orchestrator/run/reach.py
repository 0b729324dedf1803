"""Whether the endpoint can be reached at all (pure): a job must not burn its requests on a wrong URL.

An attempt that did not reach the Messages API (no connection could be made: refused, no such
host, TLS, connect timeout; or a client error without the API's error body, as a wrong URL's 404
page) is the endpoint's failure, not the request's. The endpoint is unreachable, and the job stops
with its requests left pending, when ``UNREACHABLE_AFTER`` attempts in a row (over the whole job,
in the order they end) missed it with no answer between them, or when a request would otherwise be
given up because of it before the endpoint answered anything in this run. Any answer of the API (a
reply, an API error, a stream that started) resets the count: a blip of a reachable endpoint is
only retried.
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
    answered: bool = False  # the API answered an attempt of this run
    streak: int = 0  # attempts in a row that missed it

    def answer(self) -> None:
        self.answered = True
        self.streak = 0

    def missed(self, gives_up: bool) -> bool:
        """Count an attempt that did not reach the API (``gives_up``: its request would end with it);
        whether the endpoint is now unreachable."""
        self.streak += 1
        return self.streak >= self.after or (gives_up and not self.answered)


def unreachable(failure: Failure, streak: int) -> Failure:
    """The job-stopping failure an attempt that missed the API becomes once the endpoint is unreachable."""
    error = failure.error["error"]
    message = f"{error['message']}; {streak} attempt(s) in a row did not reach the API, none was answered"
    return replace(
        failure,
        outcome=Outcome.FATAL,
        reason=UNREACHABLE,
        error={**failure.error, "error": {**error, "message": message}},
    )
