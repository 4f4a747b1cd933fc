"""pgflow_python.refresh_statistics (extension/0011): where autovacuum does not run, workers
analyze pgflow's tables and their queues once enough rows changed, and never an empty table."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from tests.helpers.database import libpq_url

CHANGED = """
SELECT s.relname, s.n_mod_since_analyze FROM pg_stat_user_tables s
WHERE s.schemaname || '.' || s.relname = ANY(%s)
"""


def _settle(connection: psycopg.Connection[Any], tables: list[str], at_least: int) -> None:
    """Wait until the cumulative statistics show the changes (they are flushed asynchronously)."""
    deadline = time.monotonic() + 30
    while True:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        changed = dict(connection.execute(CHANGED, (tables,)).fetchall())
        if len(changed) == len(tables) and min(changed.values()) >= at_least:
            return
        assert time.monotonic() < deadline, f"statistics never showed the changes: {changed}"
        time.sleep(0.1)


def test_filled_tables_are_analyzed_and_empty_ones_never(pgflow_database: URL) -> None:
    with psycopg.connect(libpq_url(pgflow_database), autocommit=True) as connection:
        autovacuum = connection.execute("SELECT current_setting('autovacuum')").fetchone()
        connection.execute("SELECT pgflow.create_flow('filled')")
        connection.execute("SELECT pgflow.add_step('filled', 'only')")
        connection.execute("SELECT pgflow.create_flow('drained')")
        connection.execute("SELECT pgflow.add_step('drained', 'only')")
        connection.execute(
            "SELECT count(*) FROM generate_series(1, 300) AS n,"
            " LATERAL pgflow.start_flow('filled', jsonb_build_object('n', n))"
        )
        # Many changes, but empty again: analyzing it would record "no rows".
        connection.execute("SELECT pgmq.send_batch('drained', array_fill('{}'::jsonb, ARRAY[300]))")
        connection.execute("DELETE FROM pgmq.q_drained")
        connection.execute("SELECT pg_stat_force_next_flush()")
        _settle(connection, ["pgflow.step_tasks", "pgmq.q_filled", "pgmq.q_drained"], 300)

        analyzed: dict[str, int] = dict(
            connection.execute(
                "SELECT * FROM pgflow_python.refresh_statistics(ARRAY['filled', 'drained'])"
            ).fetchall()
        )
        if autovacuum == ("on",):
            assert analyzed == {}  # autovacuum's job
            return
        assert set(analyzed) == {
            "pgflow.runs",
            "pgflow.step_states",
            "pgflow.step_tasks",
            "pgmq.q_filled",
        }
        assert all(changes >= 300 for changes in analyzed.values())
        [(rows,)] = connection.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'pgmq.q_filled'::regclass"
        ).fetchall()
        assert rows == 300
        [(drained_rows,)] = connection.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'pgmq.q_drained'::regclass"
        ).fetchall()
        assert drained_rows == -1  # never analyzed

        # Nothing changed since: nothing to do.
        connection.execute("SELECT pg_stat_force_next_flush()")
        again = connection.execute(
            "SELECT * FROM pgflow_python.refresh_statistics(ARRAY['filled', 'drained'])"
        ).fetchall()
        assert again == []
