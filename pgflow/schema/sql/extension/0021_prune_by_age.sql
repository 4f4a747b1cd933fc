-- Pruning batches found through the runs' age instead of a walk over every run.
--
-- 0020's prune_runs walks pgflow.runs in run_id order, so each prune examines every run, the
-- started ones and the recent ones too (with a large backlog of queued runs most of its
-- batches found nothing to delete). A run that finished before the cutoff also started before
-- it, so this one reads, per status, only runs that started before the cutoff, in (started_at,
-- run_id) order from a cursor: the index on (status, started_at, run_id) (0050) serves it as a
-- range scan. prune_runs stays for callers of 0020's signature.
--
-- One call = one short transaction: up to batch_size runs of `status` that started before
-- cutoff, after the cursor (after_started_at, after_run_id), are examined; those that also
-- finished before cutoff and belong to one of flows (NULL: all) are locked (SKIP LOCKED: a run
-- someone holds is left for the next prune) and deleted with everything that refers to them,
-- through delete_runs. The caller moves on to the next status when matched < batch_size.
-- Deletes the given runs with everything that refers to them, in foreign-key order (upstream's
-- keys have no cascades): their pgmq messages (archived, or still queued for a failed run;
-- also the messages resume_run replaced), step_tasks, step_states, runs, and their rows in every
-- pgflow_python table with a run_id column (tables later extension files add included). The
-- caller must hold the runs' row locks and have checked they are finished (prune_runs_batch).
CREATE OR REPLACE FUNCTION pgflow_python.delete_runs(run_ids uuid[])
RETURNS TABLE (
    runs bigint,
    step_states bigint,
    step_tasks bigint,
    messages bigint,
    extension_rows bigint
)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    doomed uuid[] := delete_runs.run_ids;
    queue record;
    deleted bigint;
    own_table record;
BEGIN
    runs := 0; step_states := 0; step_tasks := 0; messages := 0; extension_rows := 0;
    -- Messages first (they are found through the tasks): each task's current one, and those
    -- resume_run replaced. Archived ones mostly; a failed run's message may still be queued.
    FOR queue IN
        SELECT m.queue_name, array_agg(m.msg_id) AS ids
        FROM (
            SELECT t.flow_slug AS queue_name, t.message_id AS msg_id
            FROM pgflow.step_tasks AS t
            WHERE t.run_id = ANY(doomed) AND t.message_id IS NOT NULL
            UNION
            SELECT rt.flow_slug, rt.previous_message_id
            FROM pgflow_python.resumed_tasks AS rt
            WHERE rt.run_id = ANY(doomed) AND rt.previous_message_id IS NOT NULL
        ) AS m
        GROUP BY m.queue_name
    LOOP
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format(
            'pgmq.%I', pgmq.format_table_name(queue.queue_name, 'a'))) IS NULL;
        EXECUTE pg_catalog.format('DELETE FROM pgmq.%I AS a WHERE a.msg_id = ANY($1)',
                                  pgmq.format_table_name(queue.queue_name, 'a'))
        USING queue.ids;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        messages := messages + deleted;
        EXECUTE pg_catalog.format('DELETE FROM pgmq.%I AS q WHERE q.msg_id = ANY($1)',
                                  pgmq.format_table_name(queue.queue_name, 'q'))
        USING queue.ids;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        messages := messages + deleted;
    END LOOP;

    DELETE FROM pgflow.step_tasks AS t WHERE t.run_id = ANY(doomed);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    step_tasks := deleted;
    DELETE FROM pgflow.step_states AS s WHERE s.run_id = ANY(doomed);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    step_states := deleted;
    DELETE FROM pgflow.runs AS r WHERE r.run_id = ANY(doomed);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    runs := deleted;

    -- Every table of ours keyed by run id, including those later extension files add.
    FOR own_table IN
        SELECT c.relname
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
        WHERE c.relnamespace = 'pgflow_python'::regnamespace
          AND c.relkind IN ('r', 'p')
          AND a.attname = 'run_id'
          AND a.atttypid = 'uuid'::regtype
          AND NOT a.attisdropped
        ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('DELETE FROM pgflow_python.%I AS x WHERE x.run_id = ANY($1)',
                                  own_table.relname)
        USING doomed;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        extension_rows := extension_rows + deleted;
    END LOOP;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.delete_runs(uuid[]) IS
    'pgflow-python: delete locked, finished runs with their rows, messages and records.';

CREATE OR REPLACE FUNCTION pgflow_python.prune_runs_batch(
    cutoff timestamptz,
    status text,
    flows text[],
    after_started_at timestamptz,
    after_run_id uuid,
    batch_size integer
)
RETURNS TABLE (
    last_started_at timestamptz,
    last_run_id uuid,
    matched integer,
    runs bigint,
    step_states bigint,
    step_tasks bigint,
    messages bigint,
    extension_rows bigint
)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    candidates uuid[];
    doomed uuid[];
BEGIN
    IF prune_runs_batch.status NOT IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'prune_runs_batch deletes completed or failed runs, not %',
            prune_runs_batch.status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(array_agg(page.run_id ORDER BY page.started_at, page.run_id), '{}'),
           max(page.started_at), count(*)
    INTO candidates, last_started_at, matched
    FROM (
        SELECT r.run_id, r.started_at
        FROM pgflow.runs AS r
        WHERE r.status = prune_runs_batch.status
          AND r.started_at < prune_runs_batch.cutoff
          AND (prune_runs_batch.after_started_at IS NULL
               OR (r.started_at, r.run_id)
                  > (prune_runs_batch.after_started_at, prune_runs_batch.after_run_id))
        ORDER BY r.started_at, r.run_id
        LIMIT prune_runs_batch.batch_size
    ) AS page;
    last_run_id := candidates[matched];
    runs := 0; step_states := 0; step_tasks := 0; messages := 0; extension_rows := 0;
    IF matched = 0 THEN
        RETURN NEXT;
        RETURN;
    END IF;

    -- FOR UPDATE re-checks the conditions on the latest row version once locked.
    SELECT coalesce(array_agg(locked.run_id), '{}') INTO doomed
    FROM (
        SELECT r.run_id
        FROM pgflow.runs AS r
        WHERE r.run_id = ANY(candidates)
          AND r.status = prune_runs_batch.status
          AND coalesce(r.completed_at, r.failed_at) < prune_runs_batch.cutoff
          AND (prune_runs_batch.flows IS NULL OR r.flow_slug = ANY(prune_runs_batch.flows))
        FOR UPDATE SKIP LOCKED
    ) AS locked;
    IF cardinality(doomed) = 0 THEN
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT d.runs, d.step_states, d.step_tasks, d.messages, d.extension_rows
    INTO runs, step_states, step_tasks, messages, extension_rows
    FROM pgflow_python.delete_runs(doomed) AS d;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.prune_runs_batch(timestamptz, text, text[], timestamptz, uuid, integer) IS
    'pgflow-python: delete one batch of finished runs of one status, oldest first, with all they own.';
