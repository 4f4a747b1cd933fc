"""Waits in traces and events (pgflow.otel, pgflow._tracing.record_ended_waits): a signal is a
span in the caller's context, a wait is a span from its begin to its end in its run's trace,
recorded by whoever ends it (the signal, or the worker's deadline sweep), and ``wait.ended``
says how each ended; a subflow's child run is a span in its parent's trace, recorded by the worker
that logs the child's end (record_ended_children). In-memory OpenTelemetry exporter, real database
and worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgflow.otel
from pgflow import Flow, signal, start_flow, step, subflow, telemetry, wait_step
from pgflow.errors import NotAWaitStepError
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker, wait_until_finished


class Approve(Flow, slug="otel_approve"):
    @wait_step
    def approval(self) -> None: ...

    @step(depends_on=[approval])
    def record(self, deps: dict[str, Any]) -> Any:
        return deps["approval"]


class Deadline(Flow, slug="otel_deadline"):
    @wait_step(timeout=1)
    def reply(self) -> None: ...


class Optional(Flow, slug="otel_optional"):
    @wait_step(timeout=1, on_timeout="skip")
    def maybe(self) -> None: ...

    @step(depends_on=[maybe])
    def after(self, deps: dict[str, Any]) -> Any:
        return sorted(deps)


@pytest.fixture
def spans(pgflow_engine: Engine) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with pgflow.otel.instrument(tracer_provider=provider):
        yield exporter


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = telemetry.subscribe(lambda event, fields: seen.append((event, dict(fields))))
    yield seen
    unsubscribe()


def _named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def _waiting_since_ns(engine: Engine, run_id: object, step_slug: str) -> int:
    with engine.connect() as connection:
        moment = connection.execute(
            sa.text(
                "SELECT waiting_since FROM pgflow_python.waits"
                " WHERE run_id = :run AND step_slug = :step"
            ),
            {"run": run_id, "step": step_slug},
        ).scalar_one()
    return int(moment.timestamp() * 1_000_000_000)


def test_a_signal_is_a_span_and_the_wait_it_ends_is_a_span_in_the_runs_trace(
    pgflow_engine: Engine,
    spans: InMemorySpanExporter,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    register_flows(pgflow_engine, Approve)
    run_id = start_flow(pgflow_engine, Approve, {"order": 1})
    began = _waiting_since_ns(pgflow_engine, run_id, "approval")
    signal(pgflow_engine, run_id, "approval", {"ok": True})

    [start] = _named(spans, "pgflow.start_flow")
    [sent] = _named(spans, "pgflow.signal")
    [wait] = _named(spans, "pgflow.wait")
    assert sent.name == "pgflow.signal approval"
    assert sent.kind is SpanKind.PRODUCER
    assert dict(sent.attributes or {}) == {
        "pgflow.run_id": str(run_id),
        "pgflow.step_slug": "approval",
        "pgflow.flow_slug": "otel_approve",
        "pgflow.outcome": "completed",
    }
    assert wait.name == "pgflow.wait otel_approve.approval"
    assert wait.kind is SpanKind.INTERNAL
    assert dict(wait.attributes or {}) == {
        "pgflow.flow_slug": "otel_approve",
        "pgflow.step_slug": "approval",
        "pgflow.run_id": str(run_id),
        "pgflow.task_index": 0,
        "pgflow.waits_for": "signal",
        "pgflow.outcome": "signalled",
    }
    # From the moment it began waiting (the database's time) to the signal.
    assert wait.start_time == began
    assert wait.end_time is not None
    assert began <= wait.end_time <= (sent.end_time or 0)
    assert [(e.name, e.timestamp) for e in wait.events] == [
        ("pgflow.wait.begin", began),
        ("pgflow.wait.signalled", wait.end_time),
    ]
    # In the run's trace, the child of its start; linked to the signal that ended it.
    assert wait.context is not None
    assert start.context is not None
    assert wait.context.trace_id == start.context.trace_id
    assert wait.parent is not None
    assert wait.parent.span_id == start.context.span_id
    ended_by = [link for link in wait.links if link.context.span_id == sent.context.span_id]
    assert [dict(link.attributes or {}) for link in ended_by] == [{"pgflow.link": "ended_by"}]

    [ended] = [fields for event, fields in events if event == "wait.ended"]
    waited_ms = ended.pop("waited_ms")
    since = datetime.fromisoformat(ended.pop("waiting_since"))
    assert abs(since.timestamp() * 1e9 - began) < 1_000  # the same moment, to the microsecond
    assert ended == {
        "flow": "otel_approve",
        "run_id": str(run_id),
        "step": "approval",
        "outcome": "signalled",
    }
    assert 0 <= waited_ms <= (wait.end_time - began) / 1e6 + 1


def test_a_repeated_a_refused_and_a_rolled_back_signal(
    pgflow_engine: Engine,
    spans: InMemorySpanExporter,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    register_flows(pgflow_engine, Approve)
    run_id = start_flow(pgflow_engine, Approve, None)
    with Session(pgflow_engine) as session:
        signal(session, run_id, "approval", "rolled back")
        session.rollback()
    signal(pgflow_engine, run_id, "approval", "first")
    signal(pgflow_engine, run_id, "approval", "again")
    with pytest.raises(NotAWaitStepError):
        signal(pgflow_engine, run_id, "record", 1)

    outcomes = [(s.attributes or {}).get("pgflow.outcome") for s in _named(spans, "pgflow.signal")]
    assert outcomes == ["completed", "completed", "already_signalled", None]
    [refused] = [s for s in _named(spans, "pgflow.signal") if s.name == "pgflow.signal record"]
    assert refused.status.status_code is StatusCode.ERROR
    # A wait span per signal that ended the wait (the rolled-back one is documented to stay).
    assert len(_named(spans, "pgflow.wait")) == 2
    assert [f["outcome"] for e, f in events if e == "wait.ended"] == ["signalled", "signalled"]


@pytest.mark.anyio
async def test_the_deadline_sweep_records_each_timed_out_wait(
    pgflow_engine: Engine,
    spans: InMemorySpanExporter,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    register_flows(pgflow_engine, Deadline, Optional)
    failing = start_flow(pgflow_engine, Deadline, None)
    skipping = start_flow(pgflow_engine, Optional, None)
    async with running_worker(pgflow_engine, Deadline, Optional, deadline_check_interval=0.1):
        assert (await wait_until_finished(pgflow_engine, failing))["status"] == "failed"
        assert (await wait_until_finished(pgflow_engine, skipping))["status"] == "completed"
    waits = {s.name: s for s in _named(spans, "pgflow.wait")}
    assert set(waits) == {"pgflow.wait otel_deadline.reply", "pgflow.wait otel_optional.maybe"}
    for span in waits.values():
        assert (span.attributes or {})["pgflow.outcome"] == "timed_out"
        assert [e.name for e in span.events] == ["pgflow.wait.begin", "pgflow.wait.timed_out"]
        assert span.end_time is not None
        assert span.start_time is not None
        # Its timeout is one second: it waited at least that long.
        assert span.end_time - span.start_time >= 1_000_000_000
        assert not span.links[1:]  # linked to the run's start only: no signal ended it
    ended = sorted(
        (f["step"], f["outcome"], f["action"], f["waited_ms"] >= 1000)
        for e, f in events
        if e == "wait.ended"
    )
    assert ended == [
        ("maybe", "timed_out", "skipped", True),
        ("reply", "timed_out", "failed", True),
    ]


class Kid(Flow, slug="otel_kid"):
    @wait_step
    def ok(self) -> None: ...


class Parent(Flow, slug="otel_parent"):
    @subflow(Kid)
    def kid(self, input: Any) -> Any:
        return input


async def _until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    with anyio.fail_after(timeout):
        while not (result := condition()):
            await anyio.sleep(0.05)
    assert result, what
    return result


def _child(engine: Engine, parent: object) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT child_run_id, child_started_at, ended_at"
                " FROM pgflow_python.subflow_children WHERE run_id = :run"
            ),
            {"run": parent},
        ).one_or_none()


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


@pytest.mark.anyio
async def test_a_child_run_is_a_span_in_the_parents_trace_linked_to_the_childs_trace(
    pgflow_engine: Engine,
    spans: InMemorySpanExporter,
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    register_flows(pgflow_engine, Kid, Parent)
    parent = start_flow(pgflow_engine, Parent, {"order": 1})
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1):
        child = await _until(
            lambda: (row := _child(pgflow_engine, parent)) and row.child_run_id, "the child"
        )
        signal(pgflow_engine, child, "ok", "paid")  # the child completes, and so the parent
        assert (await wait_until_finished(pgflow_engine, parent))["status"] == "completed"
        await _until(lambda: _named(spans, "pgflow.subflow"), "the subflow span")
    [sub] = _named(spans, "pgflow.subflow")
    starts = {s.name: s for s in _named(spans, "pgflow.start_flow")}
    parent_start = starts["pgflow.start_flow otel_parent"]
    child_start = starts["pgflow.start_flow otel_kid"]  # the worker's start of the child
    assert sub.name == "pgflow.subflow otel_parent.kid"
    assert sub.kind is SpanKind.INTERNAL
    assert dict(sub.attributes or {}) == {
        "pgflow.flow_slug": "otel_parent",
        "pgflow.step_slug": "kid",
        "pgflow.run_id": str(parent),
        "pgflow.task_index": 0,
        "pgflow.waits_for": "subflow",
        "pgflow.outcome": "completed",
        "pgflow.child_flow_slug": "otel_kid",
        "pgflow.child_run_id": str(child),
    }
    # From the child's start to its end (the database's times), in the parent's trace.
    row = _child(pgflow_engine, parent)
    assert (sub.start_time, sub.end_time) == (_ns(row.child_started_at), _ns(row.ended_at))
    assert [e.name for e in sub.events] == ["pgflow.subflow.begin", "pgflow.subflow.completed"]
    assert sub.context is not None
    assert parent_start.context is not None
    assert sub.context.trace_id == parent_start.context.trace_id
    assert sub.parent is not None
    assert sub.parent.span_id == parent_start.context.span_id
    # Linked to the child run's trace: the span that started it, which the child keeps.
    assert child_start.context is not None
    assert child_start.context.trace_id != parent_start.context.trace_id
    assert (child_start.attributes or {})["pgflow.run_id"] == str(child)
    to_child = [link for link in sub.links if link.context.span_id == child_start.context.span_id]
    assert [dict(link.attributes or {}) for link in to_child] == [{"pgflow.link": "child_run"}]
    # The child's own wait is in the child's trace.
    [kid_wait] = _named(spans, "pgflow.wait otel_kid.ok")
    assert kid_wait.context is not None
    assert kid_wait.context.trace_id == child_start.context.trace_id
    [ended] = [fields for event, fields in events if event == "subflow.child_ended"]
    assert (ended["child_run_id"], ended["outcome"]) == (str(child), "completed")
