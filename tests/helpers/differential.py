"""Two databases driven through the same scenario: one reports through upstream's own functions
(the oracle), the other through pgflow-python's set-based completion. Snapshots of every table
are compared row by row; ids that depend on the order of inserts (message ids) and timestamps
are compared by meaning (which task a message belongs to, whether a timestamp is set)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy.engine import URL

from pgflow.testing import temporary_database
from tests.helpers.database import libpq_url
from tests.mutation import MUTANT_VARIABLE

# Events upstream sends through realtime.send, kept in order (and by transaction) instead of
# notified.
CAPTURE_EVENTS = """
CREATE TABLE public.captured_events (
    seq bigserial PRIMARY KEY, topic text NOT NULL, event text NOT NULL, payload jsonb NOT NULL,
    xid bigint NOT NULL DEFAULT txid_current()
);
CREATE OR REPLACE FUNCTION realtime.send(
    payload jsonb, event text, topic text, private boolean DEFAULT true
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.captured_events (topic, event, payload) VALUES (topic, event, payload)
$$;
"""


Event = tuple[str, str, str]  # topic, event name, payload without timestamps (JSON text)


@dataclass(frozen=True)
class StepShape:
    slug: str
    deps: tuple[str, ...]
    is_map: bool
    max_attempts: int | None = None
    start_delay: int | None = None
    timeout: int | None = None


@dataclass(frozen=True)
class FlowShape:
    slug: str
    steps: tuple[StepShape, ...]
    max_attempts: int = 3

    def feeds_map(self, step_slug: str) -> bool:
        return any(s.is_map and step_slug in s.deps for s in self.steps)

    def has_root_map(self) -> bool:
        return any(s.is_map and not s.deps for s in self.steps)


@dataclass(frozen=True)
class Report:
    """One task's outcome as a worker reports it: an output (completion) or an error."""

    run_id: uuid.UUID
    step_slug: str
    task_index: int
    output: Any = None
    error: str | None = None


@dataclass
class CallResult:
    recorded: set[int] = field(default_factory=set)
    ended: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)  # in the order the call sent them


class Arm:
    """One database and how it records reports."""

    def __init__(self, conninfo: str, *, set_based: bool) -> None:
        self.conninfo = conninfo
        self.connection = psycopg.connect(conninfo, autocommit=True)
        self.set_based = set_based
        self._second: psycopg.Connection[Any] | None = None
        mutant = os.environ.get(MUTANT_VARIABLE)
        if set_based and mutant:
            self.execute(Path(mutant).read_text())

    def close(self) -> None:
        self.connection.close()
        if self._second is not None:
            self._second.close()

    def execute(
        self,
        statement: str | sql.Composed,
        params: Any = None,
        *,
        connection: psycopg.Connection[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        cursor = (connection or self.connection).execute(statement, params)
        return cursor.fetchall() if cursor.description else []

    def create_flow(self, flow: FlowShape) -> None:
        with self.connection.transaction():
            self.execute("SELECT pgflow.create_flow(%s, %s, 1, 60)", (flow.slug, flow.max_attempts))
            for s in flow.steps:
                self.execute(
                    "SELECT pgflow.add_step(%s, %s, %s::text[], %s, NULL, %s, %s, %s)",
                    (
                        flow.slug,
                        s.slug,
                        list(s.deps),
                        s.max_attempts,
                        s.timeout,
                        s.start_delay,
                        "map" if s.is_map else "single",
                    ),
                )

    def register_workers(self, worker_ids: list[uuid.UUID]) -> None:
        for worker_id in worker_ids:
            self.execute(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                " VALUES (%s, 'differential', 'differential')",
                (worker_id,),
            )

    def start_run(self, flow_slug: str, run_id: uuid.UUID, flow_input: Any) -> None:
        self.execute("SELECT pgflow.start_flow(%s, %s, %s)", (flow_slug, Jsonb(flow_input), run_id))

    def claim(
        self, flow_slug: str, worker_id: uuid.UUID, tasks: list[tuple[uuid.UUID, str, int]]
    ) -> list[tuple[Any, ...]]:
        """Start exactly these tasks; returns their records (message ids aside)."""
        rows = self.execute(
            "SELECT t.message_id FROM pgflow.step_tasks t"
            " JOIN unnest(%s::uuid[], %s::text[], %s::int[]) AS c(run_id, step_slug, task_index)"
            "   ON (t.run_id, t.step_slug, t.task_index) = (c.run_id, c.step_slug, c.task_index)",
            ([t[0] for t in tasks], [t[1] for t in tasks], [t[2] for t in tasks]),
        )
        # Ours: the plpgsql twin with a cached plan (extension/0012_claim_task_batch.sql).
        start = "pgflow_python.start_claimed_tasks" if self.set_based else "pgflow.start_tasks"
        records = self.execute(
            sql.SQL(
                "SELECT s.run_id, s.step_slug, s.task_index, s.input, s.flow_slug, s.input IS NULL"
                " FROM {}(%s, %s::bigint[], %s) AS s"
            ).format(sql.SQL(start)),
            (flow_slug, [r[0] for r in rows], worker_id),
        )
        # SQL NULL and JSON null both arrive as None: tell them apart.
        told = [(*r[:3], _SQL_NULL if r[5] else r[3], r[4]) for r in records]
        return sorted(told, key=lambda r: (str(r[0]), r[1], r[2]))

    def tasks_with_status(self, run_ids: list[uuid.UUID], status: str) -> list[Any]:
        return self.execute(
            "SELECT run_id, step_slug, task_index, last_worker_id FROM pgflow.step_tasks"
            " WHERE run_id = ANY(%s) AND status = %s ORDER BY run_id, step_slug, task_index",
            (run_ids, status),
        )

    def report(self, worker_id: uuid.UUID, reports: list[Report]) -> CallResult:
        """One report call in its own transaction: all completions or all failures."""
        with self.connection.transaction():
            return self._report(self.connection, worker_id, reports)

    def report_concurrently(
        self, first: tuple[uuid.UUID, list[Report]], second: tuple[uuid.UUID, list[Report]]
    ) -> tuple[CallResult, CallResult]:
        """Two report calls from two connections at once: the first runs in a transaction left
        open while the second starts on another connection and runs until it finishes or waits
        for a lock the first holds; then the first commits. The same interleaving in both arms,
        whatever the calls do (the first never waits for the second: no deadlock)."""
        if self._second is None:
            self._second = psycopg.connect(self.conninfo, autocommit=True)
        other = self._second
        [(other_pid,)] = self.execute("SELECT pg_backend_pid()", connection=other)
        outcome: list[CallResult | BaseException] = []

        def run_second() -> None:
            try:
                with other.transaction():
                    outcome.append(self._report(other, *second))
            except BaseException as exc:  # handed to the main thread below
                outcome.append(exc)

        with self.connection.transaction():
            first_result = self._report(self.connection, *first)
            thread = threading.Thread(target=run_second)
            thread.start()
            deadline = time.monotonic() + 30
            while thread.is_alive() and not self.execute(
                "SELECT 1 WHERE pg_backend_pid() = ANY(pg_blocking_pids(%s))", (other_pid,)
            ):
                assert time.monotonic() < deadline, "the second call neither ended nor waited"
                time.sleep(0.005)
        thread.join(30)
        assert not thread.is_alive(), "the second call did not end after the first committed"
        [second_result] = outcome
        if isinstance(second_result, BaseException):
            raise second_result
        return first_result, second_result

    def _report(
        self, connection: psycopg.Connection[Any], worker_id: uuid.UUID, reports: list[Report]
    ) -> CallResult:
        failing = reports[0].error is not None
        assert all((r.error is not None) == failing for r in reports)
        [(xid,)] = self.execute("SELECT txid_current()", connection=connection)
        # Failures go through upstream's fail_task in both arms (failures are rare: no
        # set-based path of ours), so scenarios check that the two compose.
        if self.set_based and not failing:
            result = self._complete_set_based(connection, worker_id, reports)
        else:
            result = self._report_one_by_one(connection, worker_id, reports, failing=failing)
        events = self.execute(
            "SELECT topic, event, payload FROM public.captured_events WHERE xid = %s ORDER BY seq",
            (xid,),
            connection=connection,
        )
        if not self.set_based or failing:
            # Upstream announces the runs a call ended (and nothing else tells under
            # concurrency: a run another call ended meanwhile also changed status).
            result.ended = {
                (uuid.UUID(payload["run_id"]), payload["status"])
                for _, event, payload in events
                if event in ("run:completed", "run:failed")
            }
        result.events = [(topic, event, _payload_text(payload)) for topic, event, payload in events]
        return result

    def _complete_set_based(
        self, connection: psycopg.Connection[Any], worker_id: uuid.UUID, reports: list[Report]
    ) -> CallResult:
        rows = self.execute(
            "SELECT recorded, ended_run_id, ended_status, run_ended_at IS NOT NULL"
            " FROM pgflow_python.complete_task_batch("
            "  %s, %s::uuid[], %s::text[], %s::int[], %s::jsonb[])",
            (
                worker_id,
                [r.run_id for r in reports],
                [r.step_slug for r in reports],
                [r.task_index for r in reports],
                [None if r.output is _SQL_NULL else Jsonb(r.output) for r in reports],
            ),
            connection=connection,
        )
        result = CallResult()
        for recorded, run_id, status, has_end in rows:
            if recorded is not None:
                assert recorded not in result.recorded, "a position reported twice"
                result.recorded.add(recorded)
            else:
                assert has_end, "an ended run without its end time"
                assert (run_id, status) not in result.ended, "an ended run twice"
                result.ended.add((run_id, status))
        return result

    def _report_one_by_one(
        self,
        connection: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        reports: list[Report],
        *,
        failing: bool,
    ) -> CallResult:
        result = CallResult()
        order = sorted(
            range(len(reports)),
            key=lambda i: (reports[i].run_id, reports[i].step_slug, reports[i].task_index, i),
        )
        for i in order:
            r = reports[i]
            held = self.execute(
                "SELECT 1 FROM pgflow.step_tasks WHERE run_id = %s AND step_slug = %s"
                " AND task_index = %s AND status = 'started' AND last_worker_id = %s FOR UPDATE",
                (r.run_id, r.step_slug, r.task_index, worker_id),
                connection=connection,
            )
            if not held:
                continue
            if failing:
                self.execute(
                    "SELECT pgflow.fail_task(%s, %s, %s, %s)",
                    (r.run_id, r.step_slug, r.task_index, r.error),
                    connection=connection,
                )
            else:
                output = None if r.output is _SQL_NULL else Jsonb(r.output)
                self.execute(
                    "SELECT pgflow.complete_task(%s, %s, %s, %s)",
                    (r.run_id, r.step_slug, r.task_index, output),
                    connection=connection,
                )
            result.recorded.add(i + 1)
        return result

    def snapshot(self, flow_slugs: list[str], run_ids: list[uuid.UUID]) -> dict[str, Any]:
        """Every row of the scenario, by meaning."""
        snap: dict[str, Any] = {}
        snap["runs"] = self.execute(
            "SELECT run_id, flow_slug, status, input, output, remaining_steps,"
            " completed_at IS NOT NULL, failed_at IS NOT NULL, completed_at >= started_at"
            " FROM pgflow.runs WHERE run_id = ANY(%s) ORDER BY run_id",
            (run_ids,),
        )
        snap["step_states"] = self.execute(
            "SELECT run_id, step_slug, flow_slug, status, remaining_tasks, remaining_deps,"
            " initial_tasks, error_message, started_at IS NOT NULL, completed_at IS NOT NULL,"
            " failed_at IS NOT NULL FROM pgflow.step_states WHERE run_id = ANY(%s)"
            " ORDER BY run_id, step_slug",
            (run_ids,),
        )
        snap["step_tasks"] = self.execute(
            "SELECT run_id, step_slug, task_index, flow_slug, status, attempts_count,"
            " error_message, output, last_worker_id, message_id IS NOT NULL,"
            " started_at IS NOT NULL, completed_at IS NOT NULL, failed_at IS NOT NULL"
            " FROM pgflow.step_tasks WHERE run_id = ANY(%s) ORDER BY run_id, step_slug, task_index",
            (run_ids,),
        )
        for slug in flow_slugs:
            snap[f"messages:{slug}"] = self._messages(slug)
        events = self.execute(
            "SELECT topic, event, payload FROM public.captured_events ORDER BY seq"
        )
        snap["events"] = Counter(
            (topic, event, _payload_text(payload))
            for topic, event, payload in events
            if any(topic == f"pgflow:run:{run_id}" for run_id in run_ids)
        )
        return snap

    def _messages(self, flow_slug: str) -> list[tuple[Any, ...]]:
        """Each task's message: in the queue or the archive, its body and read count, and whether
        it was sent with a start delay while the task was never tried (later delays are
        fail_task's)."""
        rows = []
        for where, table in (("queue", f"q_{flow_slug}"), ("archive", f"a_{flow_slug}")):
            rows += self.execute(
                sql.SQL(
                    "SELECT %s, m.message, m.read_ct, t.run_id, t.step_slug, t.task_index,"
                    # Start delays are 0 or 3 s; vt counts from clock_timestamp(), enqueued_at
                    # from the transaction's start, so compare which, not the exact interval.
                    " CASE WHEN t.attempts_count = 0"
                    "  THEN m.vt - m.enqueued_at >= interval '3 seconds' END"
                    " FROM pgmq.{} m LEFT JOIN pgflow.step_tasks t"
                    "  ON t.flow_slug = %s AND t.message_id = m.msg_id"
                ).format(sql.Identifier(table)),
                (where, flow_slug),
            )
        for row in rows:
            body, task = row[1], row[3:6]
            assert task[0] is not None, f"a message without its task: {body}"
            assert (body["run_id"], body["step_slug"], body["task_index"]) == (
                str(task[0]),
                task[1],
                task[2],
            ), f"message {body} belongs to task {task}"
        return sorted(rows, key=lambda r: (r[0], str(r[3]), r[4], r[5]))

    def features(self, run_ids: list[uuid.UUID]) -> list[str]:
        """What a scenario exercised, for hypothesis' statistics."""
        [row] = self.execute(
            "SELECT"
            " bool_or(r.status = 'completed'), bool_or(r.status = 'failed'),"
            " bool_or(r.status = 'started'),"
            " EXISTS (SELECT 1 FROM pgflow.step_states s WHERE s.run_id = ANY(%s)"
            "   AND s.initial_tasks = 0 AND s.status = 'completed'),"
            " EXISTS (SELECT 1 FROM pgflow.step_states s WHERE s.run_id = ANY(%s)"
            "   AND s.error_message LIKE '[TYPE_VIOLATION]%%'),"
            " EXISTS (SELECT 1 FROM pgflow.step_tasks t WHERE t.run_id = ANY(%s)"
            "   AND t.attempts_count > 1),"
            " EXISTS (SELECT 1 FROM pgflow.step_tasks t WHERE t.run_id = ANY(%s)"
            "   AND t.task_index > 0 AND t.status = 'completed')"
            " FROM pgflow.runs r WHERE r.run_id = ANY(%s)",
            (run_ids,) * 5,
        )
        names = [
            "run completed",
            "run failed",
            "run unfinished",
            "empty map",
            "type violation",
            "retried",
            "map elements completed",
        ]
        return [name for name, present in zip(names, row, strict=True) if present]

    def events_in_order(self, run_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        return [
            (event, payload)
            for event, payload in self.execute(
                "SELECT event, payload FROM public.captured_events WHERE topic = %s ORDER BY seq",
                (f"pgflow:run:{run_id}",),
            )
        ]


@contextmanager
def arm_pair(server: URL, template: str, workers: list[uuid.UUID]) -> Iterator[tuple[Arm, Arm]]:
    """The oracle and our arm, each in a database of its own cloned from ``template``, capturing
    events, with ``workers`` registered."""
    with (
        temporary_database(server, template=template) as oracle_url,
        temporary_database(server, template=template) as ours_url,
    ):
        pair = (
            Arm(libpq_url(oracle_url), set_based=False),
            Arm(libpq_url(ours_url), set_based=True),
        )
        try:
            for arm in pair:
                arm.execute(CAPTURE_EVENTS)
                arm.register_workers(workers)
            yield pair
        finally:
            for arm in pair:
                arm.close()


class _SqlNull:
    """An output given as SQL NULL rather than JSON null (upstream treats both as non-arrays)."""

    def __repr__(self) -> str:
        return "SQL_NULL"


_SQL_NULL: Any = _SqlNull()
SQL_NULL: Any = _SQL_NULL


def _payload_text(payload: dict[str, Any]) -> str:
    """A payload without its timestamps, comparable across databases."""
    return json.dumps({k: v for k, v in payload.items() if not k.endswith("_at")}, sort_keys=True)


def assert_causal_order(events: list[tuple[str, dict[str, Any]]], flow: FlowShape) -> None:
    """Within one run: a step starts after it was created by its parents' completions, the run
    completes last, and each step completes once."""
    deps = {s.slug: s.deps for s in flow.steps}
    completed: set[str] = set()
    for position, (event, payload) in enumerate(events):
        step_slug = payload.get("step_slug")
        if event.endswith(":started") and step_slug is not None:
            missing = [d for d in deps[step_slug] if d not in completed]
            assert not missing, f"{step_slug} started before {missing} completed: {events}"
        elif event.endswith(":completed") and step_slug is not None:
            missing = [d for d in deps[step_slug] if d not in completed]
            assert not missing, f"{step_slug} completed before {missing}: {events}"
            assert step_slug not in completed, f"{step_slug} completed twice: {events}"
            completed.add(step_slug)
        elif event == "run:completed":
            assert position == len(events) - 1, f"run:completed is not last: {events}"
