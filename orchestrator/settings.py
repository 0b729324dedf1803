"""How a job runs: every setting's name, type, range, default and help, in one place.

``SETTINGS`` is the one source: the job spec's ``[run]`` and ``[limits]`` tables, the command
line's options and the Python API are all read and checked through it, and ``JobSettings`` (stored
with the job, so that ``resume`` runs it the same way) has exactly its fields. Precedence: built-in
defaults < the spec < the command line (or the API's keyword arguments).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.errors import UserError
from orchestrator.when import deadline_form

LIMIT_NAMES = ("rpm", "itpm", "otpm")
LIMIT_HELP = {"rpm": "requests per minute", "itpm": "input tokens per minute", "otpm": "output tokens per minute"}


@dataclass(frozen=True)
class Setting:
    """One setting: ``kind`` is int, float or str; ``low`` is inclusive unless ``low_open``."""

    name: str
    kind: type
    help: str
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    choices: tuple[str, ...] = ()
    option: str = ""  # the command line's name, when it is not --<name with dashes>
    modes: tuple[str, ...] = ("stream", "batch")  # the modes it applies to (given for another: refused)
    grammar: Callable[[str], object] | None = None  # a text setting's form: raises ValueError saying what is wrong

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What a valid value is, for messages."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if self.kind is int else "a number"
        if self.low is None:
            return kind
        bound = f"above {_plain(self.low)}" if self.low_open else f"at least {_plain(self.low)}"
        if self.high is not None:
            bound += f" and at most {_plain(self.high)}"
        return f"{kind} {bound}"

    def check(self, value: Any) -> Any:
        """``value`` as this setting's type, or ValueError saying what a valid one is."""
        if self.kind is str:
            if isinstance(value, str) and self.grammar is not None:
                self.grammar(value)
                return value
            if isinstance(value, str) and (not self.choices or value in self.choices):
                return value
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if self.kind is int and (not number_ok or (isinstance(value, float) and not value.is_integer())):
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        if not number_ok or math.isnan(value):
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        number = int(value) if self.kind is int else float(value)
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        if too_low or (self.high is not None and number > self.high) or (self.kind is float and math.isinf(number)):
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        return number


STREAM, BATCH = "stream", "batch"
MAX_BATCH_REQUESTS = 100_000  # the API's limit of requests per message batch

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "mode",
        str,
        "stream: concurrent streams, results in minutes at the standard price; "
        "batch: the Message Batches API, results within 24 h at half the price",
        choices=(STREAM, BATCH),
    ),
    Setting("concurrency", int, "streams at once", low=1),
    Setting("max_attempts", int, "attempts per request", low=1),
    Setting("retry_max_seconds", float, "stop retrying a request after this many seconds", low=0),
    # The floors below are where a smaller value stops meaning anything but load: a commit takes
    # milliseconds, the API's first byte takes longer than a tenth of a second, polls of batches
    # that take minutes need not come faster than a hundred a second.
    Setting(
        "checkpoint_interval",
        float,
        "seconds between checkpoints of partial output (at least 0.01: a commit takes milliseconds)",
        low=0.01,
    ),
    Setting(
        "read_timeout",
        float,
        "seconds without a byte before a stream counts as stalled (at least 0.1)",
        low=0.1,
    ),
    Setting("backoff_base", float, "seconds of the first retry's backoff (doubled per attempt)", low=0),
    Setting("backoff_cap", float, "longest backoff between attempts, in seconds", low=0),
    Setting(
        "recover",
        str,
        "how a broken stream goes on: prefill (exact), continue (4.6+ models, not exact), restart; "
        "auto: prefill where the model accepts it, else restart",
        choices=("auto", "prefill", "continue", "restart"),
    ),
    Setting(
        "max_cost",
        float,
        "spend cap in USD: launch nothing that could take the job's cost past it (worst case: input + max_tokens; "
        "in batch mode at batch prices)",
        low=0,
        low_open=True,
    ),
    Setting(
        "headroom",
        float,
        "share of each rate limit to aim for",
        low=0,
        low_open=True,
        high=1,
        option="--limit-headroom",
    ),
    Setting(
        "cache",
        str,
        "prompt caching: auto places cache breakpoints on the prefixes requests share and warms each "
        "prefix with one request before the others read it; off sends the requests as they are",
        choices=("auto", "off"),
    ),
    Setting(
        "batch_size",
        int,
        "requests per message batch at most (batch mode; each batch also stays under 256 MB)",
        low=1,
        high=MAX_BATCH_REQUESTS,
        modes=(BATCH,),
    ),
    Setting(
        "poll_interval",
        float,
        "seconds between polls of the batches in flight at first; doubled while none ends, up to 60 (batch mode; "
        "at least 0.01)",
        low=0.01,
        modes=(BATCH,),
    ),
)
SETTINGS += (
    Setting(
        "deadline",
        str,
        "the time the job must be done by: a duration (90m, 8h, 1h30m), a time of day (09:00) or a date and "
        "time (2026-12-05T09:00); the job goes to message batches while there is time and streams the rest, "
        "at the lowest price that meets it (kept as a time for resume)",
        grammar=deadline_form,
    ),
)
LIMITS: tuple[Setting, ...] = tuple(
    Setting(name, float, LIMIT_HELP[name], low=0, low_open=True) for name in LIMIT_NAMES
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def flag_of(name: str) -> str:
    """An option's name on the command line: a setting's flag, else ``--<name with dashes>``."""
    return BY_NAME[name].flag if name in BY_NAME else "--" + name.replace("_", "-")


@dataclass
class JobSettings:
    """How a job runs; stored with the job so that ``resume`` runs it the same way."""

    mode: str = STREAM  # stream | batch
    concurrency: int = 8
    max_attempts: int = 5
    retry_max_seconds: float = 600.0  # give up on a request after this long of retrying
    checkpoint_interval: float = 0.25
    read_timeout: float = 120.0
    backoff_base: float = 0.5  # seconds; doubled per attempt, full jitter
    backoff_cap: float = 30.0
    recover: str = "auto"  # auto | prefill | continue | restart
    headroom: float = 0.97  # share of each rate limit the client aims for
    batch_size: int = MAX_BATCH_REQUESTS  # requests per message batch at most
    poll_interval: float = 5.0  # seconds between the first polls of batches in flight
    max_cost: float | None = None  # USD; None: no spend cap
    cache: str = "auto"  # auto | off: breakpoints placed on shared prefixes, cache-aware launching
    deadline: str | None = None  # as given (a duration, a time of day, a datetime); the store keeps its time
    limits: dict[str, Any] = field(default_factory=dict)  # {"rpm": .., "itpm": .., "otpm": .., "<model>": {...}}


DEFAULTS = JobSettings()


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def run_problems(run: Mapping[str, Any]) -> list[str]:
    """What is wrong with a spec's ``[run]`` table, one message per key."""
    problems = []
    for key, value in run.items():
        setting = BY_NAME.get(key)
        if setting is None:
            problems.append(f"[run] has unknown key {key!r} (known: {', '.join(sorted(BY_NAME))})")
            continue
        try:
            setting.check(value)
        except ValueError as exc:
            problems.append(f"[run] {key} {exc}")
    return problems


def limit_problems(limits: Mapping[str, Any]) -> list[str]:
    """What is wrong with a spec's ``[limits]`` table (limits for every model, or tables per model)."""
    problems = []
    for key, value in limits.items():
        table = value if isinstance(value, dict) else {key: value}
        where = f"[limits] model {key!r}:" if isinstance(value, dict) else "[limits]"
        for name, number in table.items():
            if name not in LIMIT_NAMES:
                problems.append(f"{where} has unknown key {name!r}: use rpm, itpm, otpm, for every model or per model")
                continue
            try:
                LIMITS[LIMIT_NAMES.index(name)].check(number)
            except ValueError as exc:
                problems.append(f"{where} {name} {exc}")
    return problems


def merge(
    spec_run: Mapping[str, Any],
    spec_limits: Mapping[str, Any],
    given: Mapping[str, Any],
    named: Callable[[str], str] = flag_of,
) -> JobSettings:
    """Built-in defaults, then a spec's ``[run]`` and ``[limits]``, then ``given`` (the run options'
    settings by name, checked already). Raises UserError for a setting given for the other mode,
    naming it as ``named`` does (a spec's ``[run]`` may hold both modes' settings: those are ignored)."""
    values: dict[str, Any] = {f.name: getattr(DEFAULTS, f.name) for f in fields(JobSettings) if f.name != "limits"}
    for key, value in spec_run.items():
        try:
            values[key] = BY_NAME[key].check(value)
        except (KeyError, ValueError):
            raise UserError("; ".join(run_problems(spec_run))) from None
    limits = dict(spec_limits)
    for setting in (*SETTINGS, *LIMITS):
        value = given.get(setting.name)
        if value is None:
            continue
        if setting in LIMITS:
            limits[setting.name] = value
        else:
            values[setting.name] = value
    if values["deadline"] is not None and given.get("mode") == STREAM:
        if given.get("deadline") is not None:
            raise UserError(
                f"{named('deadline')} runs the job through message batches, streaming what they leave, and "
                f"{named('mode')} {STREAM} asks for streaming alone: drop one of them"
            )
        values["deadline"] = None  # streaming asked for: the spec's deadline gives way
    if values["deadline"] is not None:
        values["mode"] = BATCH  # a deadline runs through message batches, streaming what they leave
    mode = values["mode"]
    for setting in (*SETTINGS, *LIMITS):
        if given.get(setting.name) is not None and mode not in setting.modes:
            name = named(setting.name)
            raise UserError(
                f"{name} is for {' and '.join(setting.modes)} mode only, and this job runs in {mode} mode: drop {name}"
            )
    return JobSettings(**values, limits=limits)


@dataclass(frozen=True)
class LimitSpec:
    """Per-minute limits for one model (None: learn it from the headers, or no limit)."""

    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None

    def of(self, name: str) -> float | None:
        return {"requests": self.rpm, "input-tokens": self.itpm, "output-tokens": self.otpm}[name]


def limit_specs(limits: Mapping[str, Any]) -> tuple[LimitSpec, dict[str, LimitSpec]]:
    """(the limits for every model, the limits of each model with a table of its own)."""
    default = LimitSpec(**{k: limits[k] for k in LIMIT_NAMES if k in limits})
    per_model = {
        name: LimitSpec(**{**default.__dict__, **value}) for name, value in limits.items() if isinstance(value, dict)
    }
    return default, per_model
