"""Wake-up triggers and next_visible_at (extension/0003) against a real server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from sqlalchemy.engine import URL

from tests.helpers import database

CHANNEL = "pgflow_wakeup"
DEADLINE_S = 10.0
WORKER = uuid.UUID(int=1)
Conn = psycopg.Connection[tuple[object, ...]]


class Listener:
    """A LISTEN connection. Absence is proven with a sentinel: notifications arrive in commit
    order, so anything a committed statement sent shows up before a sentinel sent after it."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.connection = psycopg.connect(database.libpq_url(url), autocommit=True)
        self.connection.execute(f"LISTEN {CHANNEL}")

    def received(self) -> list[str]:
        """Payloads (in order) sent on the channel since the last call."""
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        with psycopg.connect(database.libpq_url(self.url), autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, sentinel))
        payloads: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while (remaining := deadline - time.monotonic()) > 0:
            for notify in self.connection.notifies(timeout=remaining, stop_after=1):
                if notify.payload == sentinel:
                    return payloads
                payloads.append(notify.payload)
        raise TimeoutError(f"sentinel not received within {DEADLINE_S} s; got {payloads}")

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def db(pgflow_database: URL) -> Iterator[Conn]:
    with psycopg.connect(database.libpq_url(pgflow_database), autocommit=True) as connection:
        yield connection


@pytest.fixture
def listener(pgflow_database: URL) -> Iterator[Listener]:
    listening = Listener(pgflow_database)
    yield listening
    listening.close()


def create_flow(
    db: Conn,
    slug: str,
    *,
    base_delay: int = 0,
    start_delay: int | None = None,
    wakeups: bool = True,
) -> None:
    db.execute("SELECT pgflow.create_flow(%s, 3, %s, 60)", (slug, base_delay))
    db.execute("SELECT pgflow.add_step(%s, 'only', start_delay => %s)", (slug, start_delay))
    if wakeups:
        db.execute("SELECT pgflow_python.ensure_wakeup_trigger(%s)", (slug,))


def start_run(db: Conn, slug: str) -> None:
    db.execute("SELECT pgflow.start_flow(%s, '{}'::jsonb)", (slug,))


def claim(db: Conn, slug: str) -> list[tuple[object, ...]]:
    db.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
        " VALUES (%s, %s, 'test') ON CONFLICT DO NOTHING",
        (WORKER, slug),
    )
    return db.execute(
        "SELECT run_id, step_slug, task_index, msg_id FROM pgflow.start_tasks("
        " %s, ARRAY(SELECT msg_id FROM pgmq.read(%s, 60, 10)), %s)",
        (slug, slug, WORKER),
    ).fetchall()


def wakeup_triggers(db: Conn, table: str) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT tgname, tgtype FROM pg_trigger"
        " WHERE tgrelid = to_regclass(%s) AND tgname LIKE 'pgflow_python_wakeup_%%'"
        " ORDER BY tgname",
        (f"pgmq.{table}",),
    ).fetchall()


def test_starting_a_run_wakes_listeners_with_the_queue_name(db: Conn, listener: Listener) -> None:
    create_flow(db, "woken")
    create_flow(db, "unwatched", wakeups=False)
    assert listener.received() == []
    start_run(db, "unwatched")
    assert listener.received() == []
    start_run(db, "woken")
    assert listener.received() == ["woken"]


def test_a_notification_is_sent_at_commit_not_before(
    pgflow_database: URL, db: Conn, listener: Listener
) -> None:
    create_flow(db, "committed")
    with psycopg.connect(database.libpq_url(pgflow_database)) as writer:
        start_run(writer, "committed")
        assert listener.received() == []
        writer.rollback()
        assert listener.received() == []
        start_run(writer, "committed")
        writer.commit()
    assert listener.received() == ["committed"]


def test_a_retry_without_delay_wakes_listeners_and_a_delayed_one_does_not(
    db: Conn, listener: Listener
) -> None:
    create_flow(db, "retry_now", base_delay=0)
    create_flow(db, "retry_later", base_delay=30)
    for slug in ("retry_now", "retry_later"):
        start_run(db, slug)
        [(run_id, step_slug, task_index, _msg_id)] = claim(db, slug)
        assert listener.received() == [slug]  # the start; reading and claiming stay silent
        db.execute("SELECT pgflow.fail_task(%s, %s, %s, 'boom')", (run_id, step_slug, task_index))
        status = db.execute(
            "SELECT status FROM pgflow.step_tasks WHERE run_id = %s", (run_id,)
        ).fetchone()
        assert status == ("queued",)
        assert listener.received() == (["retry_now"] if slug == "retry_now" else [])


def test_visibility_moved_into_the_future_stays_silent_and_back_to_now_wakes(
    db: Conn, listener: Listener
) -> None:
    create_flow(db, "extended")
    start_run(db, "extended")
    [(msg_id, *_)] = db.execute("SELECT msg_id FROM pgmq.read('extended', 30, 1)").fetchall()
    assert listener.received() == ["extended"]
    db.execute("SELECT pgmq.set_vt('extended', %s, 600)", (msg_id,))
    db.execute("SELECT pgmq.set_vt('extended', %s, 60)", (msg_id,))  # earlier, still future
    assert listener.received() == []
    db.execute("SELECT pgmq.set_vt('extended', %s, 0)", (msg_id,))
    assert listener.received() == ["extended"]


def test_one_statement_inserting_100_messages_fires_the_trigger_once(
    db: Conn, listener: Listener
) -> None:
    create_flow(db, "batch")
    db.execute("SELECT pgflow_python.ensure_wakeup_trigger('batch')")
    with db.transaction():
        # The per-transaction call counter shows statement-level firing; NOTIFY's own
        # de-duplication would hide a row-level trigger from the listener.
        db.execute("SET LOCAL track_functions = 'pl'")
        ids = db.execute(
            "SELECT pgmq.send_batch('batch', array_fill('{}'::jsonb, ARRAY[100]))"
        ).fetchall()
        calls = db.execute(
            "SELECT pg_stat_get_xact_function_calls("
            " 'pgflow_python.wakeup_after_insert()'::regprocedure)"
        ).fetchone()
    assert len(ids) == 100
    assert calls == (1,)
    assert listener.received() == ["batch"]


def test_triggers_are_statement_level_and_installed_once(db: Conn, listener: Listener) -> None:
    create_flow(db, "twice")
    db.execute("SELECT pgflow_python.ensure_wakeup_trigger('twice')")
    db.execute("SELECT pgflow_python.ensure_wakeup_trigger('twice')")
    triggers = wakeup_triggers(db, "q_twice")
    assert [name for name, _ in triggers] == [
        "pgflow_python_wakeup_insert",
        "pgflow_python_wakeup_update",
    ]
    row_level = 1  # TRIGGER_TYPE_ROW in pg_trigger.tgtype
    assert all(int(str(tgtype)) & row_level == 0 for _, tgtype in triggers)
    start_run(db, "twice")
    assert listener.received() == ["twice"]


def test_concurrent_ensures_both_succeed(pgflow_database: URL, db: Conn) -> None:
    create_flow(db, "raced", wakeups=False)
    errors: list[Exception] = []
    with psycopg.connect(database.libpq_url(pgflow_database)) as first:
        first.execute("SELECT pgflow_python.ensure_wakeup_trigger('raced')")
        second_pid: list[int] = []

        def second_caller() -> None:
            try:
                with psycopg.connect(database.libpq_url(pgflow_database)) as second:
                    second_pid.append(second.info.backend_pid)
                    second.execute("SELECT pgflow_python.ensure_wakeup_trigger('raced')")
                    second.commit()
            except Exception as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=second_caller)
        thread.start()
        deadline = time.monotonic() + DEADLINE_S
        while not (second_pid and waits_for_a_lock(db, second_pid[0])):
            assert time.monotonic() < deadline, "the second caller never waited for the first"
            time.sleep(0.01)
        first.commit()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert errors == []
    assert len(wakeup_triggers(db, "q_raced")) == 2


def test_upper_case_slugs_use_pgmqs_lower_case_table_and_keep_their_spelling(
    db: Conn, listener: Listener
) -> None:
    create_flow(db, "WakeUp_Mixed", wakeups=False)
    # Called with another spelling, as a careless caller might: the payload is still the slug.
    db.execute("SELECT pgflow_python.ensure_wakeup_trigger('wakeup_mixed')")
    assert len(wakeup_triggers(db, "q_wakeup_mixed")) == 2
    start_run(db, "WakeUp_Mixed")
    assert listener.received() == ["WakeUp_Mixed"]
    next_visible = db.execute("SELECT pgflow_python.next_visible_at('WakeUp_Mixed')").fetchone()
    assert next_visible is not None
    assert next_visible[0] is not None


def test_an_unknown_queue_is_an_error(db: Conn) -> None:
    for function in ("ensure_wakeup_trigger", "next_visible_at"):
        with pytest.raises(psycopg.errors.UndefinedTable, match='pgmq queue "nope" does not exist'):
            db.execute(f"SELECT pgflow_python.{function}('nope')")


def test_next_visible_at_is_the_earliest_vt(db: Conn) -> None:
    create_flow(db, "delayed", start_delay=120)
    assert db.execute("SELECT pgflow_python.next_visible_at('delayed')").fetchone() == (None,)
    before = now(db)
    start_run(db, "delayed")
    at = next_visible_at(db, "delayed")
    assert before + timedelta(seconds=119) < at < now(db) + timedelta(seconds=121)
    db.execute("SELECT pgmq.send('delayed', '{}'::jsonb, 30)")
    earlier = next_visible_at(db, "delayed")
    assert before + timedelta(seconds=29) < earlier < at
    db.execute("SELECT pgmq.send('delayed', '{}'::jsonb)")
    assert next_visible_at(db, "delayed") <= now(db)


def test_a_role_that_does_not_own_the_queue_can_ensure_the_triggers(
    pgflow_database: URL, db: Conn
) -> None:
    create_flow(db, "owned_elsewhere", wakeups=False)
    role = f"pgflow_test_worker_{uuid.uuid4().hex[:8]}"
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT USAGE ON SCHEMA pgflow_python, pgmq TO "{role}"')
        # PUBLIC may execute no function of ours (sql/function_privileges.sql).
        db.execute(
            f'GRANT EXECUTE ON FUNCTION pgflow_python.ensure_wakeup_trigger(text) TO "{role}"'
        )
        as_worker = pgflow_database.set(username=role, password=None)
        with psycopg.connect(database.libpq_url(as_worker), autocommit=True) as worker:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(
                    "CREATE TRIGGER t AFTER INSERT ON pgmq.q_owned_elsewhere"
                    " FOR EACH STATEMENT EXECUTE FUNCTION pgflow_python.wakeup_after_insert()"
                )
            worker.execute("SELECT pgflow_python.ensure_wakeup_trigger('owned_elsewhere')")
        assert len(wakeup_triggers(db, "q_owned_elsewhere")) == 2
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


def waits_for_a_lock(db: Conn, pid: int) -> bool:
    row = db.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row == (True,)


def now(db: Conn) -> datetime:
    row = db.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    assert isinstance(row[0], datetime)
    return row[0]


def next_visible_at(db: Conn, queue: str) -> datetime:
    row = db.execute("SELECT pgflow_python.next_visible_at(%s)", (queue,)).fetchone()
    assert row is not None
    assert isinstance(row[0], datetime)
    return row[0]
