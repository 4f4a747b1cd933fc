-- Least-privilege access for the roles that use pgflow: what each kind of role needs, in one
-- place, read both by the grant (pgflow db grant) and by the worker's start-up check.
--
-- worker   claims, runs and records tasks: reads and writes pgflow's, pgmq's and our tables
--          (upstream's functions are SECURITY INVOKER: they act with the caller's rights).
-- client   starts flows and jobs and reads runs: writes runs, step states, tasks, idempotency
--          keys, trace contexts and queue messages; may not delete anything, register workers, define flows or
--          record task outcomes (that needs DELETE on queues and INSERT on their archives).
-- operator operates runs: what a client may do, plus cancel, resume and retry runs, manage
--          schedules and prune (operators, and dashboards that are not --read-only). Cancelling
--          archives a run's messages and pruning deletes runs with everything about them, so it
--          writes every table as a worker does; it claims and records nothing only by choice.
-- readonly reads everything (dashboards with --read-only, reporting); changes nothing. It may
--          execute only our read-only functions that its reads call (below): PUBLIC may execute
--          no function of schema pgflow_python (the installer revokes it after every install,
--          sql/function_privileges.sql), since some are SECURITY DEFINER and write.
--
-- No role here may create, alter or drop objects: migrations run as the owner.
-- A table that the client's start path writes must be listed below (in a later extension file
-- that replaces access_needed); tests/integration/test_worker_access.py starts runs as a client
-- role and fails when one is missing.

-- One row per (object, privilege) that a role of kind `access` needs, for the objects that exist
-- now. `queues` limits pgmq's queue tables to those flows (a worker's own); NULL means all.
CREATE OR REPLACE FUNCTION pgflow_python.access_needed(access text, queues text[] DEFAULT NULL)
RETURNS TABLE (object_kind text, object_name text, privilege text)
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
DECLARE
    dml text[] := ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'];
    schemas text[] := ARRAY['pgflow', 'pgmq', 'pgflow_python', 'realtime'];
    queue_tables text[];
BEGIN
    IF access NOT IN ('worker', 'client', 'operator', 'readonly') THEN
        RAISE EXCEPTION 'unknown access %: use worker, client, operator or readonly', access
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF queues IS NOT NULL THEN
        SELECT coalesce(array_agg(pgmq.format_table_name(q, kind)), '{}') INTO queue_tables
        FROM unnest(queues) AS q, unnest(ARRAY['q', 'a']) AS kind;
    END IF;

    RETURN QUERY
    SELECT 'schema', n.nspname::text, 'USAGE'
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname = ANY (schemas);

    RETURN QUERY
    WITH tables AS (
        SELECT n.nspname::text AS nsp, c.relname::text AS rel
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND n.nspname IN ('pgflow', 'pgmq', 'pgflow_python')
          -- pgmq's queue tables: only the given queues' (others may belong to other apps)
          AND (n.nspname <> 'pgmq' OR c.relname !~ '^[qa]_' OR queue_tables IS NULL
               OR c.relname = ANY (queue_tables))
    ),
    wanted AS (
        SELECT t.nsp, t.rel, p.privilege
        FROM tables AS t
        CROSS JOIN LATERAL unnest(
            CASE
                WHEN access IN ('worker', 'operator') THEN dml
                WHEN access = 'readonly' THEN ARRAY['SELECT']
                -- client
                WHEN t.nsp = 'pgmq' AND t.rel ~ '^q_' THEN ARRAY['SELECT', 'INSERT', 'UPDATE']
                WHEN (t.nsp, t.rel) IN (('pgflow', 'runs'), ('pgflow', 'step_states'),
                                        ('pgflow', 'step_tasks'),
                                        ('pgflow_python', 'idempotency_keys'),
                                        ('pgflow_python', 'run_trace_contexts'),
                                        -- start_flow skips a root step whose condition
                                        -- is unmet (extension/0061)
                                        ('pgflow_python', 'step_skips'))
                    THEN ARRAY['SELECT', 'INSERT', 'UPDATE']
                ELSE ARRAY['SELECT']
            END
        ) AS p(privilege)
    )
    SELECT 'table', pg_catalog.format('%I.%I', w.nsp, w.rel), w.privilege FROM wanted AS w;

    IF access <> 'readonly' THEN
        RETURN QUERY
        SELECT 'sequence', pg_catalog.format('%I.%I', n.nspname, c.relname), p.privilege
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        CROSS JOIN unnest(ARRAY['USAGE', 'SELECT']) AS p(privilege)
        WHERE c.relkind = 'S' AND n.nspname IN ('pgflow', 'pgmq', 'pgflow_python');

        RETURN QUERY
        SELECT 'function', p.oid::regprocedure::text, 'EXECUTE'
        FROM pg_catalog.pg_proc AS p
        JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY (schemas) AND p.prokind IN ('f', 'p');
    ELSE
        -- No function of ours is executable by PUBLIC (sql/function_privileges.sql); readonly
        -- gets the read-only ones its read paths call: run_facts (get_run, describe_run),
        -- queue_metrics (metrics). Upstream's and pgmq's functions keep PUBLIC's EXECUTE.
        RETURN QUERY
        SELECT 'function', p.oid::regprocedure::text, 'EXECUTE'
        FROM pg_catalog.pg_proc AS p
        WHERE p.oid::regprocedure::text IN ('pgflow_python.run_facts(uuid)',
                                            'pgflow_python.queue_metrics()');
    END IF;
END;
$$;

COMMENT ON FUNCTION pgflow_python.access_needed(text, text[]) IS
    'pgflow-python: the privileges a worker, client, operator or readonly role needs on existing objects.';

-- Grants `access` to `grantee` on every object access_needed lists, and default privileges so
-- that objects the calling role creates later (a flow added later gets new pgmq queue tables;
-- an upgrade may add tables of ours) are covered too. Run it as the role that applies
-- migrations. Idempotent; returns the number of object privileges granted.
CREATE OR REPLACE FUNCTION pgflow_python.grant_access(grantee text, access text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    needed record;
    granted integer := 0;
    target text;
    table_privileges text := CASE access
        WHEN 'worker' THEN 'SELECT, INSERT, UPDATE, DELETE'
        WHEN 'operator' THEN 'SELECT, INSERT, UPDATE, DELETE'
        WHEN 'client' THEN 'SELECT'
        ELSE 'SELECT'
    END;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = grantee) THEN
        RAISE EXCEPTION 'role % does not exist: CREATE ROLE % first (NOLOGIN for a group role)',
            grantee, grantee USING ERRCODE = 'undefined_object';
    END IF;
    FOR needed IN SELECT * FROM pgflow_python.access_needed(access) LOOP
        target := CASE needed.object_kind
            WHEN 'schema' THEN pg_catalog.format('SCHEMA %I', needed.object_name)
            WHEN 'table' THEN 'TABLE ' || needed.object_name
            WHEN 'sequence' THEN 'SEQUENCE ' || needed.object_name
            ELSE 'FUNCTION ' || needed.object_name
        END;
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', needed.privilege, target, grantee);
        granted := granted + 1;
    END LOOP;

    EXECUTE pg_catalog.format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA pgflow, pgflow_python GRANT %s ON TABLES TO %I',
        table_privileges, grantee);
    EXECUTE pg_catalog.format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA pgmq GRANT %s ON TABLES TO %I',
        CASE access WHEN 'client' THEN 'SELECT, INSERT, UPDATE' ELSE table_privileges END,
        grantee);
    IF access <> 'readonly' THEN
        EXECUTE pg_catalog.format(
            'ALTER DEFAULT PRIVILEGES IN SCHEMA pgflow, pgmq, pgflow_python'
            ' GRANT USAGE, SELECT ON SEQUENCES TO %I', grantee);
        -- Functions an upgrade adds later: PUBLIC may not execute them (function_privileges.sql).
        EXECUTE pg_catalog.format(
            'ALTER DEFAULT PRIVILEGES IN SCHEMA pgflow_python GRANT EXECUTE ON ROUTINES TO %I',
            grantee);
    END IF;
    RETURN granted;
END;
$$;

COMMENT ON FUNCTION pgflow_python.grant_access(text, text) IS
    'pgflow-python: grant a worker, client, operator or readonly role what it needs, now and for later flows.';
