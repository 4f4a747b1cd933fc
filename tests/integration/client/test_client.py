"""The client on real PostgreSQL: starting runs in the caller's transaction, reading runs and
their states, enqueueing jobs with a delay, and the errors that say what to fix."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from pgflow import (
    PgflowError,
    RunStatus,
    StepStatus,
    TaskStatus,
    enqueue,
    get_run,
    get_run_with_states,
    start_flow,
    wait_for_run,
)
from pgflow._db import create_engine
from pgflow.dsl import definition_of
from pgflow.errors import (
    FlowInputError,
    FlowNotRegisteredError,
    InputNotJSONError,
    MapInputNotArrayError,
    NotAJobError,
    RunExistsError,
)
from tests.helpers.client_flows import (
    FALSY_HANDLERS,
    GREETING_HANDLERS,
    SQUARES_HANDLERS,
    Falsy,
    Greeting,
    Reminder,
    Squares,
    driving,
    query_one,
    queue_length,
    run_count,
)
from tests.helpers.waiting import wait_until


@pytest.fixture
def unreachable() -> Engine:
    """An engine whose every connection attempt fails: a call that raises something else
    before failing to connect never touched the database."""
    return create_engine(
        URL.create("postgresql+psycopg", username="nobody", host="127.0.0.1", port=1),
        poolclass=sa.pool.NullPool,
    )


# Transactions: Session, Connection, Engine


def test_a_run_started_in_a_session_exists_only_once_the_session_commits(engine: Engine) -> None:
    with Session(engine) as session:
        run_id = start_flow(session, Greeting, {"name": "ada"})
        mine = get_run(session, run_id)
        assert mine is not None
        assert mine.status is RunStatus.STARTED
        assert get_run(engine, run_id) is None  # other connections: not yet
        assert queue_length(engine, "greeting") == 0
        session.commit()
    run = get_run(engine, run_id)
    assert run is not None
    assert (run.flow_slug, run.input) == ("greeting", {"name": "ada"})
    assert queue_length(engine, "greeting") == 1


def test_a_rolled_back_session_leaves_no_run_and_no_message(engine: Engine) -> None:
    with Session(engine) as session:
        run_id = start_flow(session, Greeting, {"name": "ada"})
        session.rollback()
    assert get_run(engine, run_id) is None
    assert run_count(engine) == 0
    assert queue_length(engine, "greeting") == 0


def test_a_connection_bind_uses_the_callers_transaction(engine: Engine) -> None:
    with engine.connect() as connection:
        committed = start_flow(connection, Greeting, {"name": "ada"})
        connection.commit()
        rolled_back = start_flow(connection, Greeting, {"name": "bob"})
        assert get_run(connection, rolled_back) is not None
        connection.rollback()
    assert get_run(engine, committed) is not None
    assert get_run(engine, rolled_back) is None


def test_an_engine_bind_commits_before_returning(engine: Engine) -> None:
    run_id = start_flow(engine, Greeting, {"name": "ada"})
    assert query_one(engine, "SELECT status FROM pgflow.runs WHERE run_id = :id", id=run_id) == (
        "started"
    )


def test_a_flow_can_be_named_by_class_definition_or_slug_and_the_run_id_chosen(
    engine: Engine,
) -> None:
    chosen = uuid.uuid4()
    ids = [
        start_flow(engine, Greeting, {"name": "a"}, run_id=chosen),
        start_flow(engine, definition_of(Greeting), {"name": "b"}),
        start_flow(engine, "greeting", {"name": "c"}, run_id=str(uuid.uuid4())),
    ]
    assert ids[0] == chosen
    assert all(isinstance(run_id, uuid.UUID) for run_id in ids)
    assert run_count(engine) == 3


# Reading runs


def test_get_run_returns_none_for_an_unknown_run(engine: Engine) -> None:
    assert get_run(engine, uuid.uuid4()) is None
    assert get_run_with_states(engine, str(uuid.uuid4())) is None


def test_get_run_with_states_has_steps_in_order_and_every_task(engine: Engine) -> None:
    run_id = start_flow(engine, Squares, [1, 2, 3])
    started = get_run_with_states(engine, run_id)
    assert started is not None
    assert [(s.step_slug, s.status) for s in started.steps] == [
        ("square", StepStatus.STARTED),
        ("total", StepStatus.CREATED),
    ]
    assert [(t.step_slug, t.task_index, t.status) for t in started.tasks] == [
        ("square", 0, TaskStatus.QUEUED),
        ("square", 1, TaskStatus.QUEUED),
        ("square", 2, TaskStatus.QUEUED),
    ]
    assert started.step("square").initial_tasks == 3

    with driving(engine, Squares, SQUARES_HANDLERS):
        wait_for_run(engine, run_id, timeout=20)
    done = get_run_with_states(engine, run_id)
    assert done is not None
    assert done.run.status == "completed"
    assert done.run.output == {"total": 14}
    assert isinstance(done.run.completed_at, datetime)
    assert {s.status for s in done.steps} == {StepStatus.COMPLETED}
    assert [t.output for t in done.tasks_of("square")] == [1, 4, 9]
    assert [t.output for t in done.tasks_of("total")] == [14]
    assert all(t.attempts_count == 1 for t in done.tasks)
    with pytest.raises(KeyError, match="no step 'nope'"):
        done.step("nope")


def test_falsy_outputs_are_stored_and_read_exactly(engine: Engine) -> None:
    run_id = start_flow(engine, Falsy, None)
    with driving(engine, Falsy, FALSY_HANDLERS):
        wait_for_run(engine, run_id, timeout=20)
    run = get_run(engine, run_id)
    assert run is not None
    assert run.output == {"zero": 0, "no": False, "empty": "", "nothing": None}
    assert run.output["zero"] == 0
    assert type(run.output["zero"]) is int
    assert run.output["no"] is False
    states = get_run_with_states(engine, run_id)
    assert states is not None
    outputs = {t.step_slug: t.output for t in states.tasks}
    assert outputs == {"zero": 0, "no": False, "empty": "", "nothing": None}
    assert outputs["no"] is False


# Jobs


def test_enqueue_starts_a_job_run(engine: Engine) -> None:
    run_id = enqueue(engine, Reminder, {"to": "ada"})
    run = get_run(engine, run_id)
    assert run is not None
    assert (run.flow_slug, run.input) == ("reminder", {"to": "ada"})
    assert _readable(engine, "reminder") == 1
    enqueue(engine, Reminder, {"to": "bob"}, delay=0)  # visible at once
    assert _readable(engine, "reminder") == 2


def test_enqueue_with_a_delay_hides_the_job_from_workers(engine: Engine) -> None:
    run_id = enqueue(engine, Reminder, {"to": "ada"}, delay=60)
    run = get_run(engine, run_id)
    assert run is not None
    assert _readable(engine, "reminder") == 0
    assert _seconds_until_visible(engine, "reminder", run.started_at) >= 60


def test_a_delayed_job_becomes_readable_and_the_delay_rounds_up(engine: Engine) -> None:
    run_id = enqueue(engine, "reminder", {"to": "ada"}, delay=timedelta(milliseconds=200))
    run = get_run(engine, run_id)
    assert run is not None
    # Visible 1 s after set_vt ran, which was after the run started and before this query.
    assert _seconds_until_visible(engine, "reminder", run.started_at) >= 1.0
    left = query_one(
        engine, "SELECT extract(epoch FROM min(vt) - clock_timestamp()) FROM pgmq.q_reminder"
    )
    assert float(left) <= 1.0
    wait_until(lambda: _readable(engine, "reminder") == 1, timeout=10)


def test_enqueue_with_a_delay_in_a_rolled_back_session_leaves_nothing(engine: Engine) -> None:
    with Session(engine) as session:
        enqueue(session, Reminder, {"to": "ada"}, delay=60)
        session.rollback()
    assert run_count(engine) == 0
    assert queue_length(engine, "reminder") == 0


def test_enqueue_refuses_flows_and_bad_delays(engine: Engine, unreachable: Engine) -> None:
    with pytest.raises(NotAJobError, match="start_flow"):
        enqueue(unreachable, Greeting, {"name": "ada"})  # type: ignore[arg-type]
    with pytest.raises(NotAJobError, match="registered as a flow"):
        enqueue(engine, "greeting", {"name": "ada"})
    with pytest.raises(ValueError, match="delay"):
        enqueue(unreachable, Reminder, {}, delay=-1)
    assert run_count(engine) == 0


def test_enqueue_with_a_delay_refuses_an_autocommit_connection(engine: Engine) -> None:
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(PgflowError, match="autocommit"):
            enqueue(autocommit, Reminder, {"to": "ada"}, delay=5)
    assert run_count(engine) == 0


# Errors that say the fix


def test_an_unregistered_flow_names_the_migration_commands(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(FlowNotRegisteredError) as raised:
            start_flow(session, "not_there", {})
        # Refused by a check, not a failed statement: the caller's transaction goes on.
        start_flow(session, Greeting, {"name": "ada"})
        session.commit()
    message = str(raised.value)
    assert "'not_there' is not registered" in message
    assert "alembic revision --autogenerate" in message
    assert "alembic upgrade heads" in message
    assert "pgflow compile" in message
    assert raised.value.similar == ()  # nothing registered is close to 'not_there'
    assert run_count(engine) == 1


def test_a_misspelt_flow_slug_suggests_the_registered_one(engine: Engine) -> None:
    with pytest.raises(FlowNotRegisteredError) as raised:
        start_flow(engine, "greetnig", {"name": "ada"})
    assert raised.value.similar[0] == "greeting"
    assert "flow 'greetnig' is not registered in this database (did you mean 'greeting'" in str(
        raised.value
    )


def test_a_root_map_input_must_be_a_list_checked_from_the_class_before_any_sql(
    unreachable: Engine,
) -> None:
    with pytest.raises(MapInputNotArrayError) as raised:
        start_flow(unreachable, Squares, {"numbers": [1, 2]})
    assert str(raised.value) == (
        "flow 'squares' maps over its input in step 'square', so the input must be a JSON "
        "array (a list), got an object (dict). Pass a list, e.g. [item, ...]."
    )
    assert isinstance(raised.value, FlowInputError)


def test_a_root_map_input_given_by_slug_is_checked_by_the_database(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(MapInputNotArrayError, match=r"step 'square'.*got a number"):
            start_flow(session, "squares", 7)
        start_flow(session, "squares", [7])
        session.commit()
    assert run_count(engine) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"when": datetime(2024, 1, 1)}, "datetime is not JSON serializable"),
        ({1, 2}, "set is not JSON serializable"),
        ([float("nan")], "Out of range float values"),
        ({"text": "a\x00b"}, "NUL character"),
        ({"text": "bad \ud800"}, r"lone surrogate \(\\ud800\)"),
        ({"bad \udfff key": 1}, r"lone surrogate \(\\udfff\)"),
    ],
)
def test_input_that_is_not_json_is_refused_before_any_sql(
    unreachable: Engine, value: Any, reason: str
) -> None:
    with pytest.raises(InputNotJSONError, match=reason) as raised:
        start_flow(unreachable, Greeting, value)
    assert isinstance(raised.value, TypeError)
    assert str(raised.value).startswith("input for flow 'greeting' is not JSON")


def test_a_lone_surrogate_is_refused_and_the_callers_transaction_goes_on(engine: Engine) -> None:
    with Session(engine) as session:
        start_flow(session, Greeting, {"name": "ada"})
        with pytest.raises(InputNotJSONError, match="lone surrogate"):
            start_flow(session, Greeting, {"name": "grace \udc80"})
        start_flow(session, Greeting, {"name": "grace 😀"})  # astral characters are fine
        session.commit()
    assert run_count(engine) == 2


def test_text_that_only_looks_like_an_escaped_nul_is_fine(engine: Engine) -> None:
    run_id = start_flow(engine, Greeting, {"name": "\\u0000"})
    run = get_run(engine, run_id)
    assert run is not None
    assert run.input == {"name": "\\u0000"}


def test_a_taken_run_id_is_refused_and_the_transaction_goes_on(engine: Engine) -> None:
    run_id = start_flow(engine, Greeting, {"name": "ada"})
    with Session(engine) as session:
        with pytest.raises(RunExistsError, match=str(run_id)):
            start_flow(session, Greeting, {"name": "bob"}, run_id=run_id)
        start_flow(session, Greeting, {"name": "bob"})
        session.commit()
    assert run_count(engine) == 2


def test_starting_a_run_and_completing_it_end_to_end(engine: Engine) -> None:
    run_id = start_flow(engine, Greeting, {"name": " grace hopper"})
    with driving(engine, Greeting, GREETING_HANDLERS):
        run = wait_for_run(engine, run_id, timeout=20)
    assert run.output == {"greeting": "Hello, Grace Hopper!"}


def _readable(engine: Engine, queue: str) -> int:
    """How many messages a worker's pgmq.read would get now (rolled back: nothing reserved)."""
    with engine.connect() as connection:
        count = connection.execute(
            sa.text("SELECT count(*) FROM pgmq.read(:queue, 30, 10)"), {"queue": queue}
        ).scalar_one()
        connection.rollback()
    return int(count)


def _seconds_until_visible(engine: Engine, queue: str, since: datetime) -> float:
    vt = query_one(engine, f"SELECT min(vt) FROM pgmq.q_{queue}")
    return float((vt - since).total_seconds())
