"""``RunOptions``: one run of a job as its caller asks for it, the only form run options take.

The command line builds it from its parsed options (``cli/parser.py``), the Python API from its
keyword arguments (``library.py``); it is stored with the job as JSON (``to_json``), and ``resume``
is the stored options with what is given now (``resumed``). Its run settings are the one table
``settings.SETTINGS`` (and ``LIMITS``), one field each, None meaning "not given": a job spec's
``[run]`` and ``[limits]`` are merged under them once, at the top of a run (``settings.merge``).
Values are checked when it is made, and messages name an option as the caller wrote it:
``--concurrency`` on the command line, ``concurrency`` in Python.

Adding a run setting: a ``Setting`` in ``settings.SETTINGS``, its default in ``JobSettings``, a
field here (``kind | None = None``), and a keyword in ``library.run_job``, ``arun_job`` and
``Job.resume``; ``tests/test_options.py`` fails until all of them agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.endpoint import SIMULATOR
from orchestrator.errors import UserError
from orchestrator.jobs.output import read_schema, schema_text_problems
from orchestrator.jobs.params import value_problem
from orchestrator.settings import LIMITS, SETTINGS, STREAM, Setting, flag_of

if TYPE_CHECKING:
    from orchestrator.simulator.config import SimulatorConfig

TABLE: tuple[Setting, ...] = (*SETTINGS, *LIMITS)  # every run setting, by the order of the table
DEFAULT_FIELDS = ("model", "max_tokens", "system", "temperature")  # request defaults given as options (and the schema)
ONE_OFF = ("allow_endpoint_change", "retry_errored")  # what one run may do, never stored for the next
NOT_STORED = (*ONE_OFF, "python", "db")  # the database is where the options are stored


@dataclass(frozen=True)
class RunOptions:
    """One run of a job. Settings left None come from the job spec's ``[run]``, else the defaults."""

    job: Path  # a job file or spec (it may be gone if ``db`` holds the job)
    db: Path | None = None
    results: Path | None = None
    simulate: SimulatorConfig | None = None  # run against the built-in simulator with this configuration
    base_url: str | None = None
    allow_changed: bool = False
    allow_endpoint_change: bool = False  # go on against another endpoint than the job's results came from
    retry_errored: bool = False  # errored results run again
    quiet: bool = False  # no progress
    watch: int | None = None  # serve a live view of the run on this port of 127.0.0.1 (0: any free port)
    prices: Path | None = None
    # request defaults: they override a spec's [defaults]; each line's own fields override these
    model: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    temperature: float | None = None
    # structured outputs: a JSON schema file, or the schema itself; every request's output_config.format
    output_schema: Path | dict[str, Any] | None = None
    # run settings (settings.SETTINGS): they override a spec's [run]
    mode: str | None = None
    concurrency: int | None = None
    max_attempts: int | None = None
    retry_max_seconds: float | None = None
    checkpoint_interval: float | None = None
    read_timeout: float | None = None
    backoff_base: float | None = None
    backoff_cap: float | None = None
    recover: str | None = None
    max_cost: float | None = None
    headroom: float | None = None
    cache: str | None = None
    batch_size: int | None = None
    poll_interval: float | None = None
    deadline: str | None = None
    # rate limits for every model (settings.LIMITS): they override a spec's [limits]
    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    python: bool = field(default=False, compare=False)  # made by the Python API: messages name keywords

    def __post_init__(self) -> None:
        if self.simulate is not None and self.base_url is not None:
            raise UserError(f"give {self.option('simulate')} or {self.option('base_url')}, not both")
        for setting in TABLE:
            value = getattr(self, setting.name)
            if value is not None:
                try:
                    object.__setattr__(self, setting.name, setting.check(value))
                except ValueError as exc:
                    raise UserError(f"{self.option(setting.name)} {exc}") from None
        for key, value in self.defaults.items():
            problem = value_problem(key, value)
            if problem is not None:
                raise UserError(f"{self.option(key)} {problem}")
        if isinstance(self.output_schema, dict):
            problems = schema_text_problems(self.output_schema, self.option("output_schema"))
            if problems:
                raise UserError("; ".join(problems))

    def option(self, name: str) -> str:
        """An option's name as this run's caller writes it: ``concurrency`` in Python, else ``--concurrency``."""
        return name if self.python else flag_of(name)

    @property
    def given(self) -> dict[str, Any]:
        """The run settings and limits given, by name."""
        return {s.name: getattr(self, s.name) for s in TABLE if getattr(self, s.name) is not None}

    @property
    def defaults(self) -> dict[str, Any]:
        """The request defaults given (model, max_tokens, system, temperature)."""
        return {name: getattr(self, name) for name in DEFAULT_FIELDS if getattr(self, name) is not None}

    def request_defaults(self) -> dict[str, Any]:
        """The request defaults given, with the output schema (read and checked, if a file) as
        ``output_config.format``; JobFileError naming the file if it cannot be read or the API would refuse it."""
        defaults = self.defaults
        schema = self.output_schema
        if isinstance(schema, Path):
            schema = read_schema(schema, f"{self.option('output_schema')} {schema}")
        if schema is not None:
            defaults["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return defaults

    def to_json(self) -> dict[str, Any]:
        """What is stored with the job, so that ``resume`` runs it the same way: all but the one-off
        permissions; the job file by its absolute path, so a resume works from anywhere."""
        stored: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in NOT_STORED or value is None or value is False:
                continue
            if item.name in ("job", "output_schema") and isinstance(value, Path):
                value = str(value.resolve())
            elif isinstance(value, Path):
                value = str(value)
            elif item.name == "simulate":
                value = _plain(dataclasses.asdict(value))
            stored[item.name] = value
        return stored

    @classmethod
    def from_json(cls, stored: Mapping[str, Any], **now: Any) -> RunOptions:
        """Options stored with a job (``to_json``), with ``now`` replacing fields."""
        values: dict[str, Any] = {}
        names = {item.name for item in fields(cls)}
        for key, value in stored.items():
            if key not in names:
                continue  # a field of a later version
            if key in ("job", "results", "prices") or (key == "output_schema" and isinstance(value, str)):
                value = Path(value)
            elif key == "simulate":
                from orchestrator.simulator.config import SimulatorConfig  # a simulated job only

                value = SimulatorConfig.from_json(value)
            values[key] = value
        return cls(**{**values, **now})


def _plain(value: Any) -> Any:
    """A dataclass's fields as JSON values (frozensets as sorted lists, tuples as lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def resumed(
    stored: RunOptions,
    db: Path,
    endpoint: str | None,
    *,
    simulate: SimulatorConfig | bool | None = None,
    base_url: str | None = None,
    quiet: bool | None = None,
    allow_endpoint_change: bool = False,
    retry_errored: bool = False,
    python: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> RunOptions:
    """``resume``: the job's stored options, with the settings given now over them, against the
    endpoint given now, else the one of the job's last run (``endpoint``: ``SIMULATOR``, a URL or
    None when not recorded). A simulated run keeps the simulator configuration it was stored with."""

    def simulator() -> SimulatorConfig:
        if simulate is not None and simulate is not True and simulate is not False:
            return simulate
        if stored.simulate is not None:
            return stored.simulate
        from orchestrator.simulator.config import SimulatorConfig

        return SimulatorConfig()

    where: dict[str, Any] = {}
    if simulate or base_url:
        where = {"simulate": simulator() if simulate else None, "base_url": base_url}
    elif endpoint is not None:
        where = {"simulate": simulator() if endpoint == SIMULATOR else None}
        where["base_url"] = None if endpoint == SIMULATOR else endpoint
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    unknown = sorted(set(given) - {s.name for s in TABLE})
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}")
    if given.get("mode") == STREAM and "deadline" not in given:
        given["deadline"] = None  # streaming the rest now: the stored deadline no longer holds
    if "deadline" in given and "mode" not in given:
        given["mode"] = None  # a deadline now: batches and streaming, whatever mode was stored
    if (mode := given.get("mode")) is not None:  # a mode now: what was stored for the other no longer applies
        given |= {s.name: None for s in TABLE if mode not in s.modes and s.name not in given}
    return dataclasses.replace(
        stored,
        db=db,
        quiet=stored.quiet if quiet is None else quiet,
        allow_endpoint_change=allow_endpoint_change,
        retry_errored=retry_errored,
        python=python,
        **where,
        **given,
    )
