"""``Cron``: a validated schedule declaration, the cron arithmetic the scheduler needs, and the
binding of the schedules a Flow/Job class declares (``schedule=Cron(...)``, checked at class
creation).

A value module below the DSL: it imports no database code and no feature package.

Cron expressions are evaluated by cronsim: five fields (minute hour day month weekday), or six
with a leading seconds field. Times are computed in the schedule's IANA time zone (zoneinfo),
with Debian cron's rules at daylight-saving changes (see docs/schedules.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from pgflow.definition import FlowDefinition, StepType
from pgflow.errors import InvalidScheduleError

Missed = Literal["latest", "all", "none"]
MISSED_POLICIES: tuple[Missed, ...] = ("latest", "all", "none")
NAME_MAX_LENGTH = 128
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")
_INT4_MAX = 2**31 - 1
# Any instant works for checking that an expression parses; a fixed one keeps it deterministic.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cron:
    """A cron schedule: ``Cron("0 3 * * *", input={...}, timezone="Europe/Paris")``.

    - ``expression``: 5 fields (``minute hour day month weekday``) or 6 with a leading seconds
      field (``"*/10 * * * * *"``: every 10 seconds).
    - ``name``: unique over the database; defaults to the flow's slug when a class declares one
      schedule (several on one class need names).
    - ``input``: the run's input (default ``{}``). An object input also gets the tick's time
      under ``time_key`` (default ``"scheduled_at"``, ISO 8601 with the zone's offset; ``None``
      adds nothing); other inputs are passed as they are.
    - ``timezone``: an IANA name (default ``"UTC"``).
    - ``missed``: what a scheduler does with ticks it finds already past (no worker was
      running, or it was late): ``"latest"`` one run for the most recent of them, ``"all"`` one
      run per tick (the most recent ``catch_up_limit``), ``"none"`` only a tick at most
      ``grace`` seconds late.

    Invalid values raise :class:`~pgflow.errors.InvalidScheduleError` at once.
    """

    expression: str
    name: str | None = None
    input: Any = field(default_factory=dict)
    timezone: str = "UTC"
    missed: Missed = "latest"
    catch_up_limit: int = 100
    grace: int = 60
    time_key: str | None = "scheduled_at"
    flow_slug: str | None = None
    """Set when the schedule is bound to a flow (declared on a class, or created by the API)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression", " ".join(str(self.expression).split()))
        object.__setattr__(self, "input", _json_copy(self.input, self._owner))
        _validate(self)

    @property
    def _owner(self) -> str:
        label = self.name or self.flow_slug
        return f"schedule {label!r}" if label else f"schedule {self.expression!r}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def bound(self, flow_slug: str, default_name: str | None = None) -> Cron:
        """This schedule for ``flow_slug``, named ``default_name`` unless it has a name."""
        return replace(self, flow_slug=flow_slug, name=self.name or default_name)

    def run_input(self, tick: datetime) -> Any:
        """The input of the run started for ``tick``."""
        if isinstance(self.input, dict) and self.time_key is not None:
            return {**self.input, self.time_key: tick.astimezone(self.zone).isoformat()}
        return self.input

    # -- ticks -------------------------------------------------------------------------------

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (UTC)."""
        found = next(CronSim(self.expression, moment.astimezone(self.zone)), None)
        if found is None:
            raise InvalidScheduleError(f"{self._owner}: {self.expression!r} never fires again")
        return found.astimezone(UTC)

    def ticks_back_from(self, moment: datetime) -> Iterator[datetime]:
        """Ticks at or before ``moment``, most recent first (UTC)."""
        # cronsim's reverse iteration starts strictly before a whole second; a microsecond
        # past it makes a tick at ``moment`` itself count.
        start = moment.astimezone(self.zone)
        if start.microsecond == 0:
            start += timedelta(microseconds=1)
        for tick in CronSim(self.expression, start, reverse=True):
            yield tick.astimezone(UTC)

    def due(self, first_due: datetime, now: datetime) -> list[datetime]:
        """The ticks in ``[first_due, now]`` to fire under the missed-tick policy, oldest first."""
        if first_due > now:
            return []
        limit = self.catch_up_limit if self.missed == "all" else 1
        found: list[datetime] = []
        for tick in self.ticks_back_from(now):
            if tick < first_due or len(found) == limit:
                break
            found.append(tick)
        if self.missed == "none" and found and (now - found[0]).total_seconds() > self.grace:
            return []
        return found[::-1]

    # -- plain data (Alembic revisions, the database) -----------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Literal data: expression, name and flow slug, then the values that differ from the
        defaults."""
        data: dict[str, Any] = {"name": self.name, "flow_slug": self.flow_slug}
        data["cron"] = self.expression
        for item in fields(self):
            if item.name in ("expression", "name", "flow_slug"):
                continue
            value = getattr(self, item.name)
            if value != _defaults()[item.name]:
                data[item.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cron:
        known = {f.name for f in fields(cls)} - {"expression"} | {"cron"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidScheduleError(f"unknown schedule keys {unknown}; known: {sorted(known)}")
        values = {k: v for k, v in data.items() if k != "cron"}
        return cls(str(data.get("cron", "")), **values)

    def compared(self) -> dict[str, Any]:
        """What autogenerate compares: everything but the name."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        del data["name"]
        return data


def _defaults() -> dict[str, Any]:
    return {
        item.name: item.default_factory() if callable(item.default_factory) else item.default
        for item in fields(Cron)
    }


def _json_copy(value: Any, owner: str) -> Any:
    """A copy that is plain JSON data (so a later change to the caller's dict changes nothing)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidScheduleError(f"{owner}: input is not JSON: {exc}") from None
    return json.loads(text)


def _validate(cron: Cron) -> None:
    owner = cron._owner
    if cron.name is not None:
        validate_name(cron.name)
    try:
        CronSim(cron.expression, _PROBE)
    except (CronSimError, ValueError) as exc:
        raise InvalidScheduleError(
            f"{owner}: invalid cron expression {cron.expression!r}: {exc}. Use 5 fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or 6 with a leading "
            "seconds field (e.g. '*/10 * * * * *')"
        ) from None
    if not isinstance(cron.timezone, str) or not cron.timezone:
        raise InvalidScheduleError(f"{owner}: timezone must be an IANA name such as 'Europe/Paris'")
    try:
        ZoneInfo(cron.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"{owner}: unknown time zone {cron.timezone!r}: use an IANA name such as "
            "'Europe/Paris' or 'UTC' (install the tzdata package where the system has no "
            "time zone database)"
        ) from None
    if cron.missed not in MISSED_POLICIES:
        raise InvalidScheduleError(
            f"{owner}: missed must be one of {list(MISSED_POLICIES)}, got {cron.missed!r}"
        )
    for name, minimum in (("catch_up_limit", 1), ("grace", 0)):
        value = getattr(cron, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not minimum <= value <= _INT4_MAX
        ):
            raise InvalidScheduleError(
                f"{owner}: {name} must be an integer of at least {minimum}, got {value!r}"
            )
    if cron.time_key is not None and (not isinstance(cron.time_key, str) or not cron.time_key):
        raise InvalidScheduleError(f"{owner}: time_key must be a non-empty string or None")
    if cron.time_key is not None and isinstance(cron.input, dict) and cron.time_key in cron.input:
        raise InvalidScheduleError(
            f"{owner}: the input already has the key {cron.time_key!r}, where the tick's time "
            "goes; choose another time_key=..., or time_key=None to add nothing"
        )


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > NAME_MAX_LENGTH:
        raise InvalidScheduleError(
            f"invalid schedule name {name!r}: use up to {NAME_MAX_LENGTH} letters, digits and "
            "_ . : -, starting with a letter"
        )
    return name


ScheduleDeclaration = Cron | Sequence[Cron] | None


def bind_declared(
    owner: str, definition: FlowDefinition, declaration: ScheduleDeclaration
) -> tuple[Cron, ...]:
    """The class's schedules bound to its flow; a clear error for anything pgflow would refuse."""
    if declaration is None:
        return ()
    crons = [declaration] if isinstance(declaration, Cron) else list(declaration)
    for cron in crons:
        if not isinstance(cron, Cron):
            raise InvalidScheduleError(
                f"{owner}: schedule= takes Cron(...) or a list of them, got {cron!r}"
            )
    if len(crons) > 1 and any(cron.name is None for cron in crons):
        raise InvalidScheduleError(
            f"{owner} declares {len(crons)} schedules: give each a name=... (unique over the "
            "database), e.g. Cron('0 3 * * *', name='nightly')"
        )
    root_map = next(
        (s.slug for s in definition.steps if s.step_type is StepType.MAP and not s.depends_on),
        None,
    )
    bound: list[Cron] = []
    for cron in crons:
        schedule = cron.bound(definition.slug, default_name=definition.slug)
        if root_map is not None and not isinstance(schedule.input, list):
            raise InvalidScheduleError(
                f"{owner}: schedule {schedule.name!r} starts flow {definition.slug!r}, which maps "
                f"over its input in step {root_map!r}, so its input must be a list"
            )
        if schedule.name in {b.name for b in bound}:
            raise InvalidScheduleError(f"{owner} declares schedule {schedule.name!r} twice")
        bound.append(schedule)
    return tuple(bound)


def schedules_of(flow_class: type) -> tuple[Cron, ...]:
    """The schedules declared on a concrete Flow/Job class (bound to its slug)."""
    found = vars(flow_class).get("__pgflow_schedules__", ())
    return tuple(found)
