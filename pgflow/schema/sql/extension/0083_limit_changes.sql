-- Changing a limit while workers run (issue 24): set_concurrency_limit (0080) created its
-- triggers on every call, and CREATE TRIGGER on the flow's queue, then on pgflow.runs, takes
-- locks in the opposite order from a worker completing a task (its run, then its queue): a
-- limit changed under load deadlocked with the workers (tests/acceptance/
-- test_flow_control_changes.py). Now only missing triggers are created, pgflow.runs' first
-- (pgflow_python.has_trigger: extension/0082).

-- Sets (or with max_running NULL removes) the concurrency limit of a flow (step_slug NULL) or
-- of one of its steps. Used by compiled flows and migrations; takes effect at once: raising a
-- limit releases held tasks into the new slots, removing one releases all of them. Lowering a
-- limit stops nothing that already runs: new tasks wait until the count is under it.
CREATE OR REPLACE FUNCTION pgflow_python.set_concurrency_limit(
    flow_slug text,
    step_slug text,
    max_running integer,
    key_path text[] DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    target text := coalesce(step_slug, '');
    queue_table text := pgmq.format_table_name(flow_slug, 'q');
    slot record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgflow.flows AS f
                   WHERE f.flow_slug = set_concurrency_limit.flow_slug) THEN
        RAISE EXCEPTION 'no flow "%"', flow_slug USING ERRCODE = 'no_data_found';
    END IF;
    IF target <> '' AND NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, target
            USING ERRCODE = 'no_data_found';
    END IF;
    IF max_running IS NOT NULL AND max_running < 1 THEN
        RAISE EXCEPTION 'a concurrency limit must be at least 1, got %', max_running
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(key_path) = 0 THEN
        key_path := NULL;
    END IF;

    IF max_running IS NULL THEN
        DELETE FROM pgflow_python.concurrency_limits AS l
        WHERE l.flow_slug = set_concurrency_limit.flow_slug AND l.step_slug = target;
    ELSE
        INSERT INTO pgflow_python.concurrency_limits AS l (flow_slug, step_slug, max_running,
                                                          key_path)
        VALUES (set_concurrency_limit.flow_slug, target, set_concurrency_limit.max_running,
                set_concurrency_limit.key_path)
        ON CONFLICT ON CONSTRAINT concurrency_limits_pkey DO UPDATE
        SET max_running = excluded.max_running, key_path = excluded.key_path;
    END IF;

    IF max_running IS NOT NULL THEN
        -- DDL only where a trigger is missing (a changed limit needs none), and pgflow.runs'
        -- before the queue's: workers lock a run, then its queue, and a trigger created on
        -- the queue first deadlocked with them.
        IF key_path IS NOT NULL AND NOT pgflow_python.has_trigger(
            'pgflow.runs', 'pgflow_python_check_concurrency_keys'
        ) THEN
            CREATE OR REPLACE TRIGGER pgflow_python_check_concurrency_keys
                AFTER INSERT ON pgflow.runs
                FOR EACH ROW EXECUTE FUNCTION pgflow_python.check_concurrency_keys();
        END IF;
        IF NOT pgflow_python.has_trigger(pg_catalog.format('pgmq.%I', queue_table),
                                         'pgflow_python_free_slot') THEN
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_admit_or_hold BEFORE INSERT ON pgmq.%I '
                'FOR EACH ROW EXECUTE FUNCTION pgflow_python.admit_or_hold(%L)',
                queue_table, flow_slug);
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_keep_held BEFORE UPDATE OF vt ON pgmq.%I '
                'FOR EACH ROW WHEN (OLD.vt = ''infinity'') '
                'EXECUTE FUNCTION pgflow_python.keep_held(%L)',
                queue_table, flow_slug);
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_free_slot AFTER DELETE ON pgmq.%I '
                'FOR EACH ROW EXECUTE FUNCTION pgflow_python.free_slot(%L)',
                queue_table, flow_slug);
        END IF;
    END IF;

    -- Held tasks that the new limit lets run (all of them when the limit is gone).
    FOR slot IN
        SELECT DISTINCT h.key_value FROM pgflow_python.held_tasks AS h
        WHERE h.flow_slug = set_concurrency_limit.flow_slug AND h.limit_step_slug = target
        ORDER BY h.key_value
    LOOP
        INSERT INTO pgflow_python.concurrency_slots AS s (flow_slug, step_slug, key_value,
                                                         in_flight)
        VALUES (set_concurrency_limit.flow_slug, target, slot.key_value, 0)
        ON CONFLICT ON CONSTRAINT concurrency_slots_pkey DO NOTHING;
        PERFORM 1 FROM pgflow_python.concurrency_slots AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
          AND s.key_value = slot.key_value
        FOR UPDATE;
        WHILE (max_running IS NULL OR max_running > (
                   SELECT s.in_flight FROM pgflow_python.concurrency_slots AS s
                   WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
                     AND s.key_value = slot.key_value))
              AND pgflow_python.release_held_task(set_concurrency_limit.flow_slug, target,
                                                  slot.key_value) LOOP
            UPDATE pgflow_python.concurrency_slots AS s SET in_flight = s.in_flight + 1
            WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
              AND s.key_value = slot.key_value;
        END LOOP;
    END LOOP;
    IF max_running IS NULL THEN
        -- Nothing counts for a limit that is gone.
        DELETE FROM pgflow_python.concurrency_holders AS c
        WHERE c.flow_slug = set_concurrency_limit.flow_slug AND c.step_slug = target;
        DELETE FROM pgflow_python.concurrency_slots AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target;
        IF NOT EXISTS (SELECT 1 FROM pgflow_python.concurrency_limits AS l
                       WHERE l.flow_slug = set_concurrency_limit.flow_slug) THEN
            EXECUTE pg_catalog.format(
                'DROP TRIGGER IF EXISTS pgflow_python_admit_or_hold ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_keep_held ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_free_slot ON pgmq.%1$I',
                queue_table);
        END IF;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_concurrency_limit(text, text, integer, text[]) IS
    'pgflow-python: set or remove (max_running NULL) a per-key concurrency limit of a flow/step.';
