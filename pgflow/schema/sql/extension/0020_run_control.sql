-- Operating runs: cancel, retry, resume, idempotent starts and pruning (pgflow/operations/).
--
-- Upstream's statuses stay upstream's. A cancelled run is a `failed` run plus a row in
-- run_cancellations: upstream's complete_task/fail_task/start_tasks make no change on a failed
-- run, so TypeScript workers on the same database leave it alone without knowing about us.
-- Lineage, resumes and idempotency keys are facts in our tables, keyed by run id, and pruned with
-- their runs (delete_runs deletes from every pgflow_python table that has a run_id column).
--
-- Timestamps written here use clock_timestamp(), not now(): a caller may run these functions in
-- a long transaction of its own, and upstream's check constraints (failed_at >= started_at, ...)
-- compare with times that other transactions wrote after that transaction began.

CREATE TABLE IF NOT EXISTS pgflow_python.run_cancellations (
    run_id uuid PRIMARY KEY,
    reason text,
    cancelled_at timestamptz NOT NULL
);

COMMENT ON TABLE pgflow_python.run_cancellations IS
    'pgflow-python: runs cancelled by cancel_run (upstream status failed); removed by resume_run.';

-- One row per run started by retry_run; restart_of_run_id is unique, so a run is retried once
-- (retry the retry to try again) and two concurrent retries cannot both start a run.
CREATE TABLE IF NOT EXISTS pgflow_python.run_lineage (
    run_id uuid PRIMARY KEY,
    restart_of_run_id uuid NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

COMMENT ON TABLE pgflow_python.run_lineage IS
    'pgflow-python: run_id was started by retry_run as a new run of restart_of_run_id.';

-- One row per resume_run of a run (resumed in place: same run id).
CREATE TABLE IF NOT EXISTS pgflow_python.run_resumes (
    run_id uuid NOT NULL,
    resumed_at timestamptz NOT NULL,
    failed_at timestamptz,
    was_cancelled boolean NOT NULL,
    reason text,
    tasks_requeued integer NOT NULL,
    PRIMARY KEY (run_id, resumed_at)
);

COMMENT ON TABLE pgflow_python.run_resumes IS
    'pgflow-python: each resume_run of a failed or cancelled run, with the failure it undid.';

-- What each requeued task looked like before resume_run reset it, including the message it had
-- (kept in the pgmq archive, so delete_runs can find and delete it with the run).
CREATE TABLE IF NOT EXISTS pgflow_python.resumed_tasks (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    resumed_at timestamptz NOT NULL,
    flow_slug text NOT NULL,
    previous_status text NOT NULL,
    previous_attempts integer NOT NULL,
    previous_message_id bigint,
    previous_error text,
    PRIMARY KEY (run_id, step_slug, task_index, resumed_at)
);

COMMENT ON TABLE pgflow_python.resumed_tasks IS
    'pgflow-python: tasks put back in their queue by resume_run, as they were before.';

-- A key is remembered until its run is pruned.
CREATE TABLE IF NOT EXISTS pgflow_python.idempotency_keys (
    flow_slug text NOT NULL,
    idempotency_key text NOT NULL,
    run_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (flow_slug, idempotency_key)
);

CREATE INDEX IF NOT EXISTS idempotency_keys_run_id ON pgflow_python.idempotency_keys (run_id);

COMMENT ON TABLE pgflow_python.idempotency_keys IS
    'pgflow-python: start_flow(idempotency_key=...) keys; the same (flow, key) returns run_id.';

-- ---------------------------------------------------------------------------------------------
-- Starting a run, optionally once per (flow, key). Returns the run and whether this call
-- created it. Two transactions racing with one key: the second one's insert waits for the first
-- to commit, then finds its row and returns that run (READ COMMITTED: each statement of this
-- function sees the latest commits). A key whose run no longer exists (deleted with its flow)
-- is taken over by the new run.
-- A named type, not OUT parameters: the client calls start_run inside a CASE and reads the
-- fields of the result, which an anonymous record does not allow.
DO $$
BEGIN
    CREATE TYPE pgflow_python.started_run AS (run_id uuid, created boolean);
EXCEPTION WHEN duplicate_object THEN
    NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pgflow_python.start_run(
    flow_slug text,
    input jsonb,
    run_id uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL
)
RETURNS pgflow_python.started_run
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    new_run_id uuid := coalesce(start_run.run_id, pg_catalog.gen_random_uuid());
    existing uuid;
    result pgflow_python.started_run;
BEGIN
    IF start_run.idempotency_key IS NOT NULL THEN
        LOOP
            INSERT INTO pgflow_python.idempotency_keys (flow_slug, idempotency_key, run_id,
                                                        created_at)
            VALUES (start_run.flow_slug, start_run.idempotency_key, new_run_id,
                    pg_catalog.clock_timestamp())
            ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
            EXIT WHEN FOUND;
            SELECT k.run_id INTO existing
            FROM pgflow_python.idempotency_keys AS k
            WHERE k.flow_slug = start_run.flow_slug
              AND k.idempotency_key = start_run.idempotency_key
            FOR UPDATE;
            CONTINUE WHEN NOT FOUND;  -- pruned between the insert and this read: insert again
            IF EXISTS (SELECT 1 FROM pgflow.runs AS r WHERE r.run_id = existing) THEN
                result := ROW(existing, false);
                RETURN result;
            END IF;
            UPDATE pgflow_python.idempotency_keys AS k
            SET run_id = new_run_id, created_at = pg_catalog.clock_timestamp()
            WHERE k.flow_slug = start_run.flow_slug
              AND k.idempotency_key = start_run.idempotency_key;
            EXIT;
        END LOOP;
    END IF;
    SELECT r.run_id INTO existing
    FROM pgflow.start_flow(start_run.flow_slug, start_run.input, new_run_id) AS r;
    result := ROW(existing, true);
    RETURN result;
END;
$$;

COMMENT ON FUNCTION pgflow_python.start_run(text, jsonb, uuid, text) IS
    'pgflow-python: pgflow.start_flow, once per (flow, idempotency_key) when a key is given.';

-- ---------------------------------------------------------------------------------------------
-- Cancelling a started run: status failed (upstream's vocabulary), a run_cancellations row, its
-- queued and started tasks 'cancelled' and started steps failed with "cancelled: <reason>", their messages
-- archived (no worker can read them again), run:failed and step:<slug>:failed events sent.
-- Created steps stay created: they never started. outcome: 'cancelled', or for a run that is not
-- started 'already_cancelled' / 'not_running' (nothing changed), or 'unknown'.
--
-- Locks the run first, as complete_task and fail_task do, so a report racing with the cancel
-- either lands before it (and is kept) or sees a failed run (and changes nothing). A worker
-- still running a task of the run learns of the cancel from run_cancellations; its late
-- complete_task is a no-op and its late fail_task finds no started task.
CREATE OR REPLACE FUNCTION pgflow_python.cancel_run(run_id uuid, reason text DEFAULT NULL)
RETURNS TABLE (outcome text, status text, cancelled_at timestamptz, tasks_cancelled integer)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run pgflow.runs%ROWTYPE;
    at timestamptz;
    message text;
    message_ids bigint[];
    steps_failed integer;
BEGIN
    SELECT * INTO run FROM pgflow.runs AS r WHERE r.run_id = cancel_run.run_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown';
        RETURN NEXT;
        RETURN;
    END IF;
    IF run.status <> 'started' THEN
        SELECT c.cancelled_at INTO cancelled_at
        FROM pgflow_python.run_cancellations AS c WHERE c.run_id = cancel_run.run_id;
        outcome := CASE WHEN cancelled_at IS NULL THEN 'not_running' ELSE 'already_cancelled' END;
        status := run.status;
        tasks_cancelled := 0;
        RETURN NEXT;
        RETURN;
    END IF;

    at := pg_catalog.clock_timestamp();
    message := 'cancelled' || coalesce(': ' || cancel_run.reason, '');

    INSERT INTO pgflow_python.run_cancellations (run_id, reason, cancelled_at)
    VALUES (cancel_run.run_id, cancel_run.reason, at)
    ON CONFLICT ON CONSTRAINT run_cancellations_pkey
    DO UPDATE SET reason = excluded.reason, cancelled_at = excluded.cancelled_at;

    -- Upstream's order: step states before tasks.
    PERFORM 1 FROM pgflow.step_states AS s WHERE s.run_id = cancel_run.run_id FOR UPDATE;
    -- Tasks before the run: failing the run would cancel them too (extension/0060), without
    -- the reason.
    WITH ended AS (
        UPDATE pgflow.step_tasks AS t
        SET status = 'cancelled', error_message = message
        WHERE t.run_id = cancel_run.run_id AND t.status IN ('queued', 'started')
        RETURNING t.message_id
    )
    SELECT coalesce(array_agg(e.message_id) FILTER (WHERE e.message_id IS NOT NULL), '{}'),
           count(*)
    INTO message_ids, tasks_cancelled
    FROM ended AS e;
    IF cardinality(message_ids) > 0 THEN
        PERFORM pgmq.archive(run.flow_slug, message_ids);
    END IF;
    UPDATE pgflow.runs AS r SET status = 'failed', failed_at = at
    WHERE r.run_id = cancel_run.run_id;

    -- The event is sent from RETURNING, as upstream does, so it goes out for exactly the rows
    -- updated, in order.
    WITH failed_steps AS (
        UPDATE pgflow.step_states AS s
        SET status = 'failed',
            failed_at = GREATEST(at, s.started_at),
            error_message = message
        WHERE s.run_id = cancel_run.run_id AND s.status = 'started'
        RETURNING realtime.send(
            pg_catalog.jsonb_build_object(
                'event_type', 'step:failed',
                'run_id', s.run_id,
                'step_slug', s.step_slug,
                'status', 'failed',
                'error_message', message,
                'failed_at', s.failed_at
            ),
            pg_catalog.concat('step:', s.step_slug, ':failed'),
            pg_catalog.concat('pgflow:run:', s.run_id),
            false
        ) AS _sent
    )
    SELECT count(*) INTO steps_failed FROM failed_steps;

    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'run:failed',
            'run_id', cancel_run.run_id,
            'flow_slug', run.flow_slug,
            'status', 'failed',
            'error_message', message,
            'cancelled', true,
            'failed_at', at
        ),
        'run:failed',
        pg_catalog.concat('pgflow:run:', cancel_run.run_id),
        false
    );

    outcome := 'cancelled';
    status := 'failed';
    cancelled_at := at;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.cancel_run(uuid, text) IS
    'pgflow-python: cancel a started run (status failed + run_cancellations row); no-op otherwise.';

-- ---------------------------------------------------------------------------------------------
-- Retrying a failed (or cancelled) run: a new run of the same flow with the same input, recorded
-- in run_lineage. outcome: 'retried', 'already_retried' (the run's earlier retry is returned),
-- 'not_failed' or 'unknown'. The idempotency key of the run, if any, moves to the new run, so a
-- start with that key finds the latest attempt.
CREATE OR REPLACE FUNCTION pgflow_python.retry_run(run_id uuid)
RETURNS TABLE (outcome text, status text, new_run_id uuid)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run pgflow.runs%ROWTYPE;
BEGIN
    -- The lock serialises concurrent retries of one run: the second sees the first's lineage.
    SELECT * INTO run FROM pgflow.runs AS r WHERE r.run_id = retry_run.run_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown';
        RETURN NEXT;
        RETURN;
    END IF;
    status := run.status;
    SELECT l.run_id INTO new_run_id
    FROM pgflow_python.run_lineage AS l WHERE l.restart_of_run_id = retry_run.run_id;
    IF FOUND THEN
        outcome := 'already_retried';
        RETURN NEXT;
        RETURN;
    END IF;
    IF run.status <> 'failed' THEN
        outcome := 'not_failed';
        RETURN NEXT;
        RETURN;
    END IF;

    new_run_id := pg_catalog.gen_random_uuid();
    INSERT INTO pgflow_python.run_lineage (run_id, restart_of_run_id, created_at)
    VALUES (new_run_id, retry_run.run_id, pg_catalog.clock_timestamp());
    UPDATE pgflow_python.idempotency_keys AS k SET run_id = new_run_id
    WHERE k.run_id = retry_run.run_id;
    PERFORM pgflow.start_flow(run.flow_slug, run.input, new_run_id);
    outcome := 'retried';
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.retry_run(uuid) IS
    'pgflow-python: start a failed run again as a new run with lineage (restart_of_run_id).';

-- ---------------------------------------------------------------------------------------------
-- Resuming a failed (or cancelled) run in place: same run id, completed tasks and their outputs
-- kept, every other task of a started or failed step put back in its queue as a fresh task
-- (status queued, attempts 0, no error, a new message with upstream's body), failed steps
-- started again, the run started again. Then upstream's own functions take over: cascade of
-- taskless steps, start_ready_steps for steps whose dependencies completed, maybe_complete_run.
-- A map step resumes only the elements that did not complete.
--
-- The state written is exactly what start_ready_steps writes for a step it starts (status
-- started, remaining_tasks = tasks still to complete, one queued task per message), so
-- start_tasks, complete_task and fail_task (ours or a TypeScript worker's) continue from it.
-- The old message of each task stays in the archive (recorded in resumed_tasks for pruning).
-- outcome: 'resumed', 'not_failed' or 'unknown'.
CREATE OR REPLACE FUNCTION pgflow_python.resume_run(run_id uuid)
RETURNS TABLE (outcome text, status text, tasks_requeued integer)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run pgflow.runs%ROWTYPE;
    at timestamptz;
    cancellation pgflow_python.run_cancellations%ROWTYPE;
    failure text;
    step_slugs text[];
    task_indexes integer[];
    old_message_ids bigint[];
    new_message_ids bigint[];
BEGIN
    SELECT * INTO run FROM pgflow.runs AS r WHERE r.run_id = resume_run.run_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown';
        RETURN NEXT;
        RETURN;
    END IF;
    status := run.status;
    IF run.status <> 'failed' THEN
        outcome := 'not_failed';
        tasks_requeued := 0;
        RETURN NEXT;
        RETURN;
    END IF;

    at := pg_catalog.clock_timestamp();
    PERFORM 1 FROM pgflow.step_states AS s WHERE s.run_id = resume_run.run_id FOR UPDATE;
    PERFORM 1 FROM pgflow.step_tasks AS t WHERE t.run_id = resume_run.run_id FOR UPDATE;

    -- An unfinished wait (extension/0070: a task with no message and no handler) is removed:
    -- its step has no task left, goes back to 'created' below and waits afresh once ready
    -- (a signal kept for it is applied then).
    DELETE FROM pgflow.step_tasks AS t
    WHERE t.run_id = resume_run.run_id AND t.message_id IS NULL
      AND t.status NOT IN ('completed', 'skipped');

    DELETE FROM pgflow_python.run_cancellations AS c
    WHERE c.run_id = resume_run.run_id
    RETURNING * INTO cancellation;
    SELECT coalesce(ss.error_message, t.error_message) INTO failure
    FROM pgflow.step_states AS ss
    LEFT JOIN pgflow.step_tasks AS t
      ON t.run_id = ss.run_id AND t.step_slug = ss.step_slug AND t.status = 'failed'
    WHERE ss.run_id = resume_run.run_id AND ss.status = 'failed'
    ORDER BY ss.failed_at, ss.step_slug, t.task_index
    LIMIT 1;

    -- Every unfinished task of a step that has tasks. Steps still 'created' have none yet.
    INSERT INTO pgflow_python.resumed_tasks (
        run_id, step_slug, task_index, resumed_at, flow_slug, previous_status,
        previous_attempts, previous_message_id, previous_error
    )
    SELECT t.run_id, t.step_slug, t.task_index, at, t.flow_slug, t.status, t.attempts_count,
           t.message_id, t.error_message
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = resume_run.run_id AND t.status NOT IN ('completed', 'skipped');

    SELECT coalesce(array_agg(t.step_slug ORDER BY t.step_slug, t.task_index), '{}'),
           coalesce(array_agg(t.task_index ORDER BY t.step_slug, t.task_index), '{}'),
           coalesce(array_agg(t.message_id) FILTER (WHERE t.message_id IS NOT NULL), '{}')
    INTO step_slugs, task_indexes, old_message_ids
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = resume_run.run_id AND t.status NOT IN ('completed', 'skipped');
    tasks_requeued := cardinality(step_slugs);

    -- Normally archived already (fail_task and cancel_run archive them); a message still in the
    -- queue would be read a second time.
    IF cardinality(old_message_ids) > 0 THEN
        PERFORM pgmq.archive(run.flow_slug, old_message_ids);
    END IF;

    IF tasks_requeued > 0 THEN
        -- send_batch returns ids in the order of the messages (upstream relies on it as well).
        SELECT array_agg(m.msg_id ORDER BY m.ord) INTO new_message_ids
        FROM pgmq.send_batch(
            run.flow_slug,
            ARRAY(
                SELECT pg_catalog.jsonb_build_object(
                    'flow_slug', t.flow_slug,
                    'run_id', t.run_id,
                    'step_slug', t.step_slug,
                    'task_index', t.task_index
                )
                FROM pgflow.step_tasks AS t
                WHERE t.run_id = resume_run.run_id AND t.status NOT IN ('completed', 'skipped')
                ORDER BY t.step_slug, t.task_index
            ),
            0
        ) WITH ORDINALITY AS m(msg_id, ord);

        UPDATE pgflow.step_tasks AS t
        SET status = 'queued',
            message_id = fresh.msg_id,
            attempts_count = 0,
            error_message = NULL,
            output = NULL,
            queued_at = at,
            started_at = NULL,
            completed_at = NULL,
            failed_at = NULL,
            last_worker_id = NULL
        FROM unnest(step_slugs, task_indexes, new_message_ids)
            AS fresh(step_slug, task_index, msg_id)
        WHERE t.run_id = resume_run.run_id
          AND t.step_slug = fresh.step_slug
          AND t.task_index = fresh.task_index;
    END IF;

    -- The run first: a step going back to created has its condition evaluated again
    -- (extension/0061), which may fail the run again. Skipped steps stay skipped.
    UPDATE pgflow.runs AS r
    SET status = 'started',
        failed_at = NULL,
        remaining_steps = (
            SELECT count(*) FROM pgflow.step_states AS ss
            WHERE ss.run_id = resume_run.run_id
              AND ss.status NOT IN ('completed', 'skipped')
        )
    WHERE r.run_id = resume_run.run_id;

    -- Steps with tasks to do are started; a failed step with no task row goes back to created
    -- (start_ready_steps starts it once its dependencies are done).
    UPDATE pgflow.step_states AS s
    SET status = CASE WHEN counts.total > 0 THEN 'started' ELSE 'created' END,
        remaining_tasks = CASE WHEN counts.total > 0
                               THEN counts.total - counts.completed ELSE NULL END,
        started_at = CASE WHEN counts.total > 0 THEN coalesce(s.started_at, at) ELSE NULL END,
        failed_at = NULL,
        error_message = NULL
    FROM (
        SELECT ss.step_slug,
               count(t.task_index) AS total,
               count(t.task_index) FILTER (WHERE t.status = 'completed') AS completed
        FROM pgflow.step_states AS ss
        LEFT JOIN pgflow.step_tasks AS t
          ON t.run_id = ss.run_id AND t.step_slug = ss.step_slug
        WHERE ss.run_id = resume_run.run_id AND ss.status IN ('started', 'failed')
        GROUP BY ss.step_slug
    ) AS counts
    WHERE s.run_id = resume_run.run_id AND s.step_slug = counts.step_slug;

    INSERT INTO pgflow_python.run_resumes (run_id, resumed_at, failed_at, was_cancelled, reason,
                                           tasks_requeued)
    VALUES (resume_run.run_id, at, run.failed_at, cancellation.run_id IS NOT NULL,
            CASE WHEN cancellation.run_id IS NOT NULL THEN cancellation.reason ELSE failure END,
            tasks_requeued);

    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'run:started',
            'run_id', resume_run.run_id,
            'flow_slug', run.flow_slug,
            'status', 'started',
            'resumed', true,
            'started_at', run.started_at
        ),
        'run:started',
        pg_catalog.concat('pgflow:run:', resume_run.run_id),
        false
    );

    PERFORM pgflow.cascade_complete_taskless_steps(resume_run.run_id);
    PERFORM pgflow.start_ready_steps(resume_run.run_id);
    PERFORM pgflow.maybe_complete_run(resume_run.run_id);

    outcome := 'resumed';
    SELECT r.status INTO status FROM pgflow.runs AS r WHERE r.run_id = resume_run.run_id;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.resume_run(uuid) IS
    'pgflow-python: continue a failed or cancelled run in place, re-running only unfinished tasks.';

-- ---------------------------------------------------------------------------------------------
-- Pruning, batches found through the runs' age. A run that finished before the cutoff also
-- started before it, so a batch reads, per status, only runs that started before the cutoff, in
-- (started_at, run_id) order from a cursor: the index on (status, started_at, run_id) (0050)
-- serves it as a range scan, and started or recent runs are never examined.
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

-- What prune_runs_batch would delete for the same arguments, counted in one statement per table (a dry
-- run); workers as prune_workers would select them.
CREATE OR REPLACE FUNCTION pgflow_python.prune_preview(
    cutoff timestamptz,
    statuses text[],
    flows text[],
    workers_cutoff timestamptz
)
RETURNS TABLE (
    runs bigint,
    step_states bigint,
    step_tasks bigint,
    messages bigint,
    extension_rows bigint,
    workers bigint
)
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
DECLARE
    doomed uuid[];
    queue record;
    found_rows bigint;
    own_table record;
BEGIN
    SELECT coalesce(array_agg(r.run_id), '{}') INTO doomed
    FROM pgflow.runs AS r
    WHERE r.status = ANY(prune_preview.statuses)
      AND r.status <> 'started'
      AND coalesce(r.completed_at, r.failed_at) < prune_preview.cutoff
      AND (prune_preview.flows IS NULL OR r.flow_slug = ANY(prune_preview.flows));
    runs := cardinality(doomed);
    SELECT count(*) INTO step_states FROM pgflow.step_states AS s WHERE s.run_id = ANY(doomed);
    SELECT count(*) INTO step_tasks FROM pgflow.step_tasks AS t WHERE t.run_id = ANY(doomed);
    messages := 0;
    extension_rows := 0;
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
        EXECUTE pg_catalog.format(
            'SELECT (SELECT count(*) FROM pgmq.%I AS a WHERE a.msg_id = ANY($1))'
            ' + (SELECT count(*) FROM pgmq.%I AS q WHERE q.msg_id = ANY($1))',
            pgmq.format_table_name(queue.queue_name, 'a'),
            pgmq.format_table_name(queue.queue_name, 'q'))
        INTO found_rows USING queue.ids;
        messages := messages + found_rows;
    END LOOP;
    FOR own_table IN
        SELECT c.relname
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
        WHERE c.relnamespace = 'pgflow_python'::regnamespace
          AND c.relkind IN ('r', 'p')
          AND a.attname = 'run_id'
          AND a.atttypid = 'uuid'::regtype
          AND NOT a.attisdropped
    LOOP
        EXECUTE pg_catalog.format(
            'SELECT count(*) FROM pgflow_python.%I AS x WHERE x.run_id = ANY($1)',
            own_table.relname)
        INTO found_rows USING doomed;
        extension_rows := extension_rows + found_rows;
    END LOOP;
    SELECT count(*) INTO workers FROM pgflow.workers AS w
    WHERE w.last_heartbeat_at < prune_preview.workers_cutoff
      AND (prune_preview.flows IS NULL OR w.queue_name = ANY(prune_preview.flows));
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.prune_preview(timestamptz, text[], text[], timestamptz) IS
    'pgflow-python: count what prune_runs_batch and prune_workers would delete (a dry run).';

-- Worker rows silent since before cutoff (one row per flow per worker start; a live worker
-- heartbeats every few seconds), of the given queues (NULL: all), at most row_limit per call. Deleting a row makes upstream's
-- foreign key set step_tasks.last_worker_id to NULL on the tasks that name it.
CREATE OR REPLACE FUNCTION pgflow_python.prune_workers(
    cutoff timestamptz,
    queues text[],
    row_limit integer
)
RETURNS bigint
LANGUAGE sql
SET search_path = ''
AS $$
    WITH doomed AS (
        SELECT w.worker_id FROM pgflow.workers AS w
        WHERE w.last_heartbeat_at < prune_workers.cutoff
          AND (prune_workers.queues IS NULL OR w.queue_name = ANY(prune_workers.queues))
        ORDER BY w.last_heartbeat_at
        LIMIT prune_workers.row_limit
        FOR UPDATE SKIP LOCKED
    ),
    deleted AS (
        DELETE FROM pgflow.workers AS w USING doomed AS d
        WHERE w.worker_id = d.worker_id
        RETURNING 1
    )
    SELECT count(*) FROM deleted
$$;

COMMENT ON FUNCTION pgflow_python.prune_workers(timestamptz, text[], integer) IS
    'pgflow-python: delete up to row_limit pgflow.workers rows with no heartbeat since cutoff.';

-- What our tables know about a run, as JSON keys merged into the run's row by the client:
-- cancelled_at and cancel_reason (a cancelled run), restart_of_run_id (a run started by
-- retry_run), retried_as_run_id (the retry of this run), resumed_count.
CREATE OR REPLACE FUNCTION pgflow_python.run_facts(run_id uuid)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = ''
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'cancelled_at', (SELECT c.cancelled_at FROM pgflow_python.run_cancellations AS c
                         WHERE c.run_id = run_facts.run_id),
        'cancel_reason', (SELECT c.reason FROM pgflow_python.run_cancellations AS c
                          WHERE c.run_id = run_facts.run_id),
        'restart_of_run_id', (SELECT l.restart_of_run_id FROM pgflow_python.run_lineage AS l
                              WHERE l.run_id = run_facts.run_id),
        'retried_as_run_id', (SELECT l.run_id FROM pgflow_python.run_lineage AS l
                              WHERE l.restart_of_run_id = run_facts.run_id),
        'resumed_count', (SELECT count(*) FROM pgflow_python.run_resumes AS rr
                          WHERE rr.run_id = run_facts.run_id)
    )
$$;

COMMENT ON FUNCTION pgflow_python.run_facts(uuid) IS
    'pgflow-python: cancellation, lineage and resumes of a run, as JSON keys.';
