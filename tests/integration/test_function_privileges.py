"""No function of schema pgflow_python is executable by PUBLIC (several are SECURITY DEFINER and
write): a readonly role (`pgflow db grant --readonly`) may call only the read-only functions its
reads use, and is refused the writing ones; the worker, client and operator kinds keep them all,
including functions added after the grant (default privileges)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import URL, Engine

from pgflow import get_run, start_flow
from tests.helpers.database import libpq_url, register_flows, run_sql
from tests.integration.test_worker_access import Early, Roles, pgflow_grant, roles

__all__ = ["roles"]

READONLY_FUNCTIONS = {"pgflow_python.run_facts(uuid)", "pgflow_python.queue_metrics()"}

OURS = """
SELECT p.oid::regprocedure::text AS signature,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may,
       has_function_privilege(%(reader)s, p.oid, 'EXECUTE') AS reader_may,
       has_function_privilege(%(worker)s, p.oid, 'EXECUTE') AS worker_may,
       has_function_privilege(%(client)s, p.oid, 'EXECUTE') AS client_may,
       p.provolatile, p.prosecdef, p.prorettype = 'trigger'::regtype AS is_trigger,
       array(SELECT format('NULL::%%s', t::regtype) FROM unnest(p.proargtypes) AS t) AS nulls
FROM pg_proc AS p
WHERE p.pronamespace = 'pgflow_python'::regnamespace
ORDER BY 1
"""


def functions_of_ours(roles: Roles) -> list[dict[str, object]]:
    names = {"reader": roles.readonly, "worker": roles.worker, "client": roles.client}
    with psycopg.connect(libpq_url(roles.database)) as connection:
        cursor = connection.cursor(row_factory=psycopg.rows.dict_row)
        return list(cursor.execute(OURS, names).fetchall())


def test_only_granted_roles_may_execute_our_functions(roles: Roles) -> None:
    done = pgflow_grant(
        roles.database,
        *("--worker", roles.worker, "--client", roles.client, "--readonly", roles.readonly),
    )
    assert done.returncode == 0, done.stderr
    functions = functions_of_ours(roles)
    assert len(functions) > 50
    assert [f["signature"] for f in functions if f["public_may"]] == []
    assert all(f["worker_may"] and f["client_may"] for f in functions)
    readable = {str(f["signature"]) for f in functions if f["reader_may"]}
    assert readable == READONLY_FUNCTIONS
    assert all(f["provolatile"] == "s" and not f["prosecdef"] for f in functions if f["reader_may"])
    # Among those refused: SECURITY DEFINER functions that write as the owner.
    refused = {str(f["signature"]).split("(")[0] for f in functions if not f["reader_may"]}
    assert {
        "pgflow_python.set_run_priority",
        "pgflow_python.ensure_priority_trigger",
        "pgflow_python.book_rate_start",
        "pgflow_python.signal",
        "pgflow_python.recover_stalled_tasks",
        "pgflow_python.release_held_task",
        "pgflow_python.ensure_wakeup_trigger",
    } <= refused

    # A function an upgrade adds later: the granted kinds get it, PUBLIC and readonly do not
    # (the installer revokes PUBLIC's EXECUTE after applying files: sql/function_privileges.sql).
    run_sql(
        roles.database,
        "CREATE FUNCTION pgflow_python.added_later() RETURNS int LANGUAGE sql AS 'SELECT 1';"
        "REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA pgflow_python FROM PUBLIC;",
    )
    added = [f for f in functions_of_ours(roles) if f["signature"] == "pgflow_python.added_later()"]
    assert [
        (f["public_may"], f["reader_may"], f["worker_may"], f["client_may"]) for f in added
    ] == [(False, False, True, True)]


def test_a_readonly_role_reads_runs_and_is_refused_every_function_that_writes(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early)
    done = pgflow_grant(roles.database, "--readonly", roles.readonly)
    assert done.returncode == 0, done.stderr
    run_sql(roles.database, f'ALTER ROLE "{roles.readonly}" LOGIN')
    run_id = start_flow(pgflow_engine, Early, 1)
    reader_engine = roles.engine(roles.readonly)
    try:
        assert get_run(reader_engine, run_id) is not None  # calls run_facts
    finally:
        reader_engine.dispose()
    reader_url = roles.database.set(username=roles.readonly)
    callable_ = [f for f in functions_of_ours(roles) if not f["is_trigger"]]
    refused = 0
    with psycopg.connect(libpq_url(reader_url), autocommit=True) as reader:
        reader.execute("SELECT * FROM pgflow_python.queue_metrics()").fetchall()
        for function in callable_:
            if function["reader_may"]:
                continue
            name = str(function["signature"]).split("(")[0]
            call = f"SELECT {name}({', '.join(function['nulls'])})"  # type: ignore[arg-type]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(call)
            refused += 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(
                "SELECT pgflow_python.book_rate_start('access_early', 'double', %s, 0, 'infinity')",
                (run_id,),
            )
    assert refused > 30


def test_a_start_is_never_booked_at_an_infinite_time(pgflow_database: URL) -> None:
    with psycopg.connect(libpq_url(pgflow_database), autocommit=True) as owner:
        for at in ("infinity", "-infinity"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot be booked"):
                owner.execute(
                    "SELECT pgflow_python.book_rate_start('f', 's', gen_random_uuid(), 0, %s)",
                    (at,),
                )
