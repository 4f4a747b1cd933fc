"""The set-based completion (pgflow_python.complete_task_batch) against upstream's own functions.

Generated scenarios (DAGs of single and map steps with fan-ins, empty and non-array map inputs,
several runs, two workers, batches of any composition in any order, failures with retries,
reports by a worker that no longer holds the task, the same task reported twice in one batch or
two, late reports of tasks already completed or queued for a retry, and rounds whose batches run
two at a time from two connections) run once through upstream 0.8.1's complete_task, one task at
a time in the worker's order (the oracle), and once through ours; failures go through upstream's
fail_task in both. After every round the two databases must hold the same rows, and every report
call must record the same tasks, end the same runs and send the same events (in upstream's order
on a run's topic where upstream defines it). Derandomized with a bounded number of examples, so
CI runs the same corpus every time; tests/mutation.py checks that the corpus catches mistakes.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers.differential import (
    SQL_NULL,
    Arm,
    CallResult,
    FlowShape,
    Report,
    StepShape,
    arm_pair,
    assert_causal_order,
)

WORKERS = [
    uuid.UUID("00000000-0000-4000-8000-00000000000a"),
    uuid.UUID("00000000-0000-4000-8000-00000000000b"),
]
_flow_numbers = itertools.count(1)
_run_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def arms(pgflow_server: Any, pgflow_template_database: str) -> Iterator[tuple[Arm, Arm]]:
    with arm_pair(pgflow_server.url, pgflow_template_database, WORKERS) as pair:
        yield pair


@st.composite
def flow_shapes(draw: st.DrawFn) -> FlowShape:
    count = draw(st.integers(2, 5))
    steps: list[StepShape] = []
    for i in range(count):
        earlier = [s.slug for s in steps]
        is_map = draw(st.booleans())
        if is_map:
            deps = draw(st.sampled_from([(), *[(slug,) for slug in earlier for _ in range(2)]]))
        else:
            deps = (
                tuple(draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)))
                if earlier
                else ()
            )
        steps.append(
            StepShape(
                slug=f"s{i}",
                deps=deps,
                is_map=is_map,
                max_attempts=draw(st.sampled_from([None, None, None, 1, 2])),
                start_delay=draw(st.sampled_from([None, None, 0, 3])),
            )
        )
    return FlowShape(
        slug=f"diff_{next(_flow_numbers)}",
        steps=tuple(steps),
        max_attempts=draw(st.sampled_from([1, 2, 3, 3])),
    )


def _output(
    data: st.DataObject, flow: FlowShape, step_slug: str, task_index: int, *, arrays_only: bool
) -> Any:
    label = f"{step_slug}[{task_index}] output"
    if flow.feeds_map(step_slug):
        arrays = st.lists(st.integers(0, 9), max_size=3)
        if arrays_only:
            return data.draw(arrays, label=label)
        output = data.draw(
            st.one_of(arrays, st.sampled_from(["not an array", None, SQL_NULL, {"a": 1}])),
            label=label,
        )
        if not isinstance(output, list):
            event("non-array output for a map's parent")
        return output
    return data.draw(
        st.sampled_from([0, False, "", None, {"k": task_index}, [task_index, "x"], "text"]),
        label=label,
    )


def _assert_same(oracle: Arm, ours: Arm, flow: FlowShape, run_ids: list[Any]) -> None:
    expected = oracle.snapshot([flow.slug], run_ids)
    actual = ours.snapshot([flow.slug], run_ids)
    for table in expected:
        assert actual[table] == expected[table], f"{table} differs"


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_set_based_completion_matches_upstream(arms: tuple[Arm, Arm], data: st.DataObject) -> None:
    oracle, ours = arms
    flow = data.draw(flow_shapes(), label="flow")
    for arm in arms:
        arm.create_flow(flow)
    run_ids: list[uuid.UUID] = []
    for _ in range(data.draw(st.integers(1, 3), label="runs")):
        run_id = uuid.UUID(int=(0xD1FF << 64) | next(_run_numbers))
        flow_input: Any = (
            data.draw(
                st.one_of(st.just([]), st.lists(st.integers(0, 9), min_size=1, max_size=4)),
                label="input array",
            )
            if flow.has_root_map()
            else {"n": len(run_ids)}
        )
        for arm in arms:
            arm.start_run(flow.slug, run_id, flow_input)
        run_ids.append(run_id)
    _assert_same(oracle, ours, flow, run_ids)

    for _ in range(8):
        queued = [tuple(t[:3]) for t in oracle.tasks_with_status(run_ids, "queued")]
        started = oracle.tasks_with_status(run_ids, "started")
        if not queued and not started:
            break
        _claim_round(data, arms, flow, queued, nothing_started=not started)
        _report_round(data, arms, flow, run_ids)
        _assert_same(oracle, ours, flow, run_ids)

    for run_id in run_ids:
        assert_causal_order(ours.events_in_order(run_id), flow)
    for feature in ours.features(run_ids):
        event(feature)


def _claim_round(
    data: st.DataObject,
    arms: tuple[Arm, Arm],
    flow: FlowShape,
    queued: list[tuple[Any, ...]],
    *,
    nothing_started: bool,
) -> None:
    claims: dict[int, list[tuple[Any, ...]]] = {0: [], 1: []}
    for task in queued:
        who = data.draw(st.sampled_from([0, 0, 1, None]), label=f"claimer of {task[1:]}")
        if who is not None:
            claims[who].append(task)
    if nothing_started and not claims[0] and not claims[1]:
        claims[0] = list(queued)
    for who, tasks in claims.items():
        if tasks:
            records = [arm.claim(flow.slug, WORKERS[who], tasks) for arm in arms]
            assert records[0] == records[1], "start_tasks handed out different inputs"


def _report_round(
    data: st.DataObject, arms: tuple[Arm, Arm], flow: FlowShape, run_ids: list[uuid.UUID]
) -> None:
    """Report what the workers hold, in batches of drawn sizes sent in a drawn order; some
    reports come twice (in one batch or two), some late (for tasks already completed, or failed
    and queued for retry), some from a worker that lost the task. A concurrent round sends its
    calls two at a time from two connections (outputs then never fail a run: under concurrency
    upstream itself would race there, checking the run's status before taking its lock)."""
    oracle = arms[0]
    concurrent = data.draw(st.booleans(), label="concurrent round")
    pending: dict[tuple[int, bool], list[Report]] = {}

    def add(reporter: int, report: Report) -> None:
        reports = pending.setdefault((reporter, report.error is not None), [])
        reports.insert(data.draw(st.integers(0, len(reports)), label="position"), report)

    def completion(run_id: Any, step_slug: str, task_index: int) -> Report:
        output = _output(data, flow, step_slug, task_index, arrays_only=concurrent)
        return Report(run_id, step_slug, task_index, output)

    for run_id, step_slug, task_index, holder in oracle.tasks_with_status(run_ids, "started"):
        actions = ["complete"] * 5 + ["twice", "keep", "stale"]
        if not concurrent:
            actions += ["fail", "fail, then complete"]
        action = data.draw(st.sampled_from(actions), label=f"{step_slug}[{task_index}] action")
        reporter = WORKERS.index(holder)
        if action == "keep":
            continue
        if action == "stale":
            reporter = 1 - reporter
        if action.startswith("fail"):
            add(reporter, Report(run_id, step_slug, task_index, error=f"boom {step_slug}"))
        if action != "fail":
            add(reporter, completion(run_id, step_slug, task_index))
        if action == "twice":
            add(reporter, completion(run_id, step_slug, task_index))
    # Late reports: a worker reporting again a task it completed, or one that failed since and
    # waits for its retry (both still carry the worker's id).
    for run_id, step_slug, task_index, status, holder in oracle.execute(
        "SELECT run_id, step_slug, task_index, status, last_worker_id FROM pgflow.step_tasks"
        " WHERE run_id = ANY(%s) AND last_worker_id IS NOT NULL"
        " AND (status = 'completed' OR (status = 'queued' AND attempts_count > 0))"
        " ORDER BY run_id, step_slug, task_index",
        (run_ids,),
    ):
        odds = 1 if status == "queued" else 3  # retries are rarer than completions
        if data.draw(st.integers(0, odds), label=f"late report of {step_slug}[{task_index}]") == 0:
            event(f"late report for a {status} task")
            add(WORKERS.index(holder), completion(run_id, step_slug, task_index))

    _send(data, arms, pending, concurrent=concurrent)


def _send(
    data: st.DataObject,
    arms: tuple[Arm, Arm],
    pending: dict[tuple[int, bool], list[Report]],
    *,
    concurrent: bool,
) -> None:
    calls: list[tuple[int, list[Report]]] = []
    for (reporter, _), reports in pending.items():
        # Split into batches of drawn sizes, keeping the worker's order.
        rest = reports
        while rest:
            size = data.draw(st.integers(1, len(rest)), label="batch size")
            calls.append((reporter, rest[:size]))
            rest = rest[size:]
    for _, reports in calls:
        keys = [(r.run_id, r.step_slug, r.task_index) for r in reports]
        if len(set(keys)) < len(keys):
            event("the same position twice in a batch")
    order = data.draw(st.permutations(range(len(calls))), label="call order")
    while order:
        if concurrent and len(order) >= 2:
            first, second = calls[order[0]], calls[order[1]]
            order = order[2:]
            event("concurrent batches")
            expected = arms[0].report_concurrently(_call(first), _call(second))
            actual = arms[1].report_concurrently(_call(first), _call(second))
            for call, want, got in zip((first, second), expected, actual, strict=True):
                _assert_same_call(call[1], want, got)
        else:
            call = calls[order[0]]
            order = order[1:]
            want, got = (arm.report(*_call(call)) for arm in arms)
            _assert_same_call(call[1], want, got)


def _call(call: tuple[int, list[Report]]) -> tuple[uuid.UUID, list[Report]]:
    return WORKERS[call[0]], call[1]


def _assert_same_call(reports: list[Report], expected: CallResult, actual: CallResult) -> None:
    """The same positions recorded, the same runs ended, the same events: in upstream's order
    on each run's topic where the call reported one step of that run (upstream sends a step's
    completion, then what it started, then the run's end); as a multiset where it reported
    several (upstream interleaves them task by task, we send all completions first)."""
    assert actual.recorded == expected.recorded, f"recorded positions differ for {reports}"
    assert actual.ended == expected.ended, f"ended runs differ for {reports}"
    steps_of: dict[str, set[str]] = {}
    for r in reports:
        steps_of.setdefault(f"pgflow:run:{r.run_id}", set()).add(r.step_slug)
    for topic, steps in steps_of.items():
        want = [e for e in expected.events if e[0] == topic]
        got = [e for e in actual.events if e[0] == topic]
        if len(steps) == 1:
            assert got == want, f"events on {topic} differ (or their order) for {reports}"
        else:
            assert Counter(got) == Counter(want), f"events on {topic} differ for {reports}"
    assert {e[0] for e in actual.events} <= set(steps_of), "events on a run not reported"


def _single(slug: str, *deps: str) -> StepShape:
    return StepShape(slug, deps, is_map=False)


def _map(slug: str, *deps: str) -> StepShape:
    return StepShape(slug, deps, is_map=True)


SCRIPTED = {
    "map of a map, fan-in of both": (
        (_map("a"), _map("b", "a"), _single("c", "b", "a")),
        [3, 1, 2],
    ),
    "fan-in of parents completed in one batch": (
        (_single("a"), _single("b"), _single("c"), _single("d", "a", "b", "c")),
        {"x": 1},
    ),
    "single feeding a map, leaf maps": (
        (_single("a"), _map("b", "a"), _map("c", "b"), _single("d", "a")),
        {"x": 1},
    ),
    "empty map cascade": (
        (_single("empty"), _map("b", "empty"), _map("c", "b"), _single("d", "c", "empty")),
        {"x": 1},
    ),
}


def _scripted_output(step_slug: str, task_index: int, record_input: Any) -> Any:
    if step_slug == "a":
        return [10, 20, 30] if not isinstance(record_input, int) else record_input * 2
    if step_slug == "empty":
        return []
    return {"step": step_slug, "index": task_index, "got": record_input}


@pytest.mark.parametrize("name", list(SCRIPTED))
def test_whole_waves_in_one_batch_match_upstream(arms: tuple[Arm, Arm], name: str) -> None:
    """Every started task of every run completed in one batch per round: fan-ins, map sizes and
    map output order, which random batches may hit only rarely, are always exercised here."""
    oracle, ours = arms
    steps, flow_input = SCRIPTED[name]
    flow = FlowShape(slug=f"scripted_{next(_flow_numbers)}", steps=steps)
    run_ids = [uuid.UUID(int=(0x5C41 << 64) | next(_run_numbers)) for _ in range(3)]
    for arm in arms:
        arm.create_flow(flow)
        for run_id in run_ids:
            arm.start_run(flow.slug, run_id, flow_input)
    for _ in range(10):
        queued = [tuple(t[:3]) for t in oracle.tasks_with_status(run_ids, "queued")]
        if not queued:
            break
        records = [arm.claim(flow.slug, WORKERS[0], queued) for arm in arms]
        assert records[0] == records[1]
        reports = [
            Report(run_id, slug, index, _scripted_output(slug, index, record_input))
            for run_id, slug, index, record_input, _ in records[0]
        ]
        expected, actual = (arm.report(WORKERS[0], reports) for arm in arms)
        assert actual.recorded == expected.recorded == set(range(1, len(reports) + 1))
        assert actual.ended == expected.ended
        _assert_same(oracle, ours, flow, run_ids)
    statuses = {row[2] for row in ours.snapshot([flow.slug], run_ids)["runs"]}
    assert statuses == {"completed"}
    for run_id in run_ids:
        assert_causal_order(ours.events_in_order(run_id), flow)


@pytest.mark.parametrize("value", ["not an array", None, SQL_NULL, {"a": 1}, 7], ids=repr)
def test_non_array_feeding_a_map_matches_upstream(arms: tuple[Arm, Arm], value: Any) -> None:
    """Each kind of non-array output of a map's parent, reported in one batch with the run's
    other tasks before and after it (upstream fails the run at that task, so which of the others
    still complete depends on their order), next to a run that gets an array."""
    oracle, ours = arms
    steps = (_single("a"), _single("b"), _map("m", "b"), _single("z"), _single("y", "m", "z"))
    flow = FlowShape(slug=f"non_array_{next(_flow_numbers)}", steps=steps)
    run_ids = [uuid.UUID(int=(0xBAD << 64) | next(_run_numbers)) for _ in range(2)]
    for arm in arms:
        arm.create_flow(flow)
        for run_id in run_ids:
            arm.start_run(flow.slug, run_id, {"x": 1})
    queued = [tuple(t[:3]) for t in oracle.tasks_with_status(run_ids, "queued")]
    records = [arm.claim(flow.slug, WORKERS[0], queued) for arm in arms]
    assert records[0] == records[1]
    reports = [
        Report(run_id, slug, index, value if (run_id, slug) == (run_ids[0], "b") else [1, 2])
        for run_id, slug, index, _, _ in records[0]
    ]
    expected, actual = (arm.report(WORKERS[0], reports) for arm in arms)
    _assert_same_call(reports, expected, actual)
    _assert_same(oracle, ours, flow, run_ids)
    statuses = [row[2] for row in ours.snapshot([flow.slug], run_ids)["runs"]]
    assert statuses == ["failed", "started"]


def test_late_and_repeated_reports_match_upstream(arms: tuple[Arm, Arm]) -> None:
    """Reports a worker may send again: for a task it already completed (in a later batch and
    twice in one batch) and for a task that failed since and waits for its retry. None counts;
    the first report of a position given twice in one batch does."""
    oracle, ours = arms
    flow = FlowShape(
        slug=f"late_{next(_flow_numbers)}", steps=(_map("items"), _single("sum", "items"))
    )
    run_id = uuid.UUID(int=(0x1A7E << 64) | next(_run_numbers))
    for arm in arms:
        arm.create_flow(flow)
        arm.start_run(flow.slug, run_id, [1, 2, 3])
    queued = [tuple(t[:3]) for t in oracle.tasks_with_status([run_id], "queued")]
    records = [arm.claim(flow.slug, WORKERS[0], queued) for arm in arms]
    assert records[0] == records[1]

    def send(reports: list[Report], expected_positions: set[int]) -> None:
        expected, actual = (arm.report(WORKERS[0], reports) for arm in arms)
        _assert_same_call(reports, expected, actual)
        assert actual.recorded == expected_positions
        _assert_same(oracle, ours, flow, [run_id])

    send([Report(run_id, "items", 0, "first"), Report(run_id, "items", 0, "second")], {1})
    send([Report(run_id, "items", 1, error="retry me")], {1})  # queued for its retry
    send(
        [
            Report(run_id, "items", 0, "again"),
            Report(run_id, "items", 1, "too late"),
            Report(run_id, "items", 2, 30),
            Report(run_id, "items", 2, 31),
        ],
        {3},
    )
    [(status, remaining)] = ours.execute(
        "SELECT status, remaining_tasks FROM pgflow.step_states"
        " WHERE run_id = %s AND step_slug = 'items'",
        (run_id,),
    )
    assert (status, remaining) == ("started", 1)  # only element 1, queued for its retry


def test_two_batches_finishing_a_map_together_match_upstream(arms: tuple[Arm, Arm]) -> None:
    """Two workers complete the elements of one map at the same time, the second batch waiting
    for the first: the one that finishes the map must count the other's elements when it sizes
    the dependent map (it sees them only if it waited for the run before reading)."""
    oracle, ours = arms
    flow = FlowShape(
        slug=f"together_{next(_flow_numbers)}",
        steps=(_map("items"), _map("again", "items"), _single("sum", "again")),
    )
    run_id = uuid.UUID(int=(0x2063 << 64) | next(_run_numbers))
    for arm in arms:
        arm.create_flow(flow)
        arm.start_run(flow.slug, run_id, [1, 2, 3, 4])
    for who, indexes in ((0, (0, 1)), (1, (2, 3))):
        tasks = [(run_id, "items", index) for index in indexes]
        records = [arm.claim(flow.slug, WORKERS[who], tasks) for arm in arms]
        assert records[0] == records[1]
    first = (WORKERS[0], [Report(run_id, "items", index, index * 10) for index in (0, 1)])
    second = (WORKERS[1], [Report(run_id, "items", index, index * 10) for index in (2, 3)])
    expected = oracle.report_concurrently(first, second)
    actual = ours.report_concurrently(first, second)
    for (_, reports), want, got in zip((first, second), expected, actual, strict=True):
        _assert_same_call(reports, want, got)
    _assert_same(oracle, ours, flow, [run_id])
    [(size,)] = ours.execute(
        "SELECT initial_tasks FROM pgflow.step_states WHERE run_id = %s AND step_slug = 'again'",
        (run_id,),
    )
    assert size == 4


def test_a_map_of_a_map_gets_null_elements_as_upstream(arms: tuple[Arm, Arm]) -> None:
    """A map over a map whose elements returned JSON null and SQL NULL: upstream aggregates the
    outputs, so both become JSON null elements of the dependent map's input."""
    oracle, ours = arms
    flow = FlowShape(
        slug=f"nulls_{next(_flow_numbers)}", steps=(_map("items"), _map("again", "items"))
    )
    run_id = uuid.UUID(int=(0x7011 << 64) | next(_run_numbers))
    for arm in arms:
        arm.create_flow(flow)
        arm.start_run(flow.slug, run_id, [1, 2, 3])
    outputs = [SQL_NULL, None, 5]
    queued = [tuple(t[:3]) for t in oracle.tasks_with_status([run_id], "queued")]
    first = [arm.claim(flow.slug, WORKERS[0], queued) for arm in arms]
    assert first[0] == first[1]
    reports = [Report(run_id, "items", index, output) for index, output in enumerate(outputs)]
    expected, actual = (arm.report(WORKERS[0], reports) for arm in arms)
    _assert_same_call(reports, expected, actual)
    queued = [tuple(t[:3]) for t in oracle.tasks_with_status([run_id], "queued")]
    records = [arm.claim(flow.slug, WORKERS[0], queued) for arm in arms]
    assert records[0] == records[1]
    assert [record[3] for record in records[0]] == [None, None, 5]
    _assert_same(oracle, ours, flow, [run_id])
