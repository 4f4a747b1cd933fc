-- Two claim-side repairs for the worker. Additive: TypeScript workers never call these, and each
-- leaves step_tasks and the queue in states upstream's own functions produce and accept.

-- Claiming one message at a time, for when claim_task_batch failed for a reason other than a
-- lost connection. claim_task_batch starts a whole batch in one statement, so a single message whose task
-- cannot be started (its input exceeds jsonb's 256 MB limit, say) rolls back the batch, and as
-- the oldest visible message it comes first in every later read: the flow's queue is blocked and
-- the bad run never ends. Here each message is started in a subtransaction of its own; one that
-- fails is started without its input and failed through upstream's fail_task with the database's
-- message, so upstream retries it with back-off and, attempts used up, fails its run.
--
-- Returns what claim_task_batch returns, plus rejection: NULL for a claimed task; for a rejected one
-- the error recorded (task then carries only the task's keys and msg_id).
CREATE OR REPLACE FUNCTION pgflow_python.claim_tasks_isolated(
    queue text, claiming_worker uuid, batch integer, reservation integer, margin integer
)
RETURNS TABLE (task jsonb, task_timeout integer, attempt integer, rejection text)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    read_id bigint;
    claimed record;
    got boolean;
    failure text;
    bad record;
BEGIN
    FOR read_id IN
        SELECT r.msg_id FROM pgmq.read(queue, reservation, batch) AS r ORDER BY r.msg_id
    LOOP
        got := false;
        BEGIN
            -- Same statements as claim_task_batch, for one message; a new snapshot per statement.
            SELECT c.task, c.task_timeout, c.attempt INTO claimed
            FROM pgflow_python.claim_read_messages(queue, claiming_worker, ARRAY[read_id], margin)
                AS c;
            got := FOUND;
        EXCEPTION
            -- Contention says nothing about the task: the whole claim fails, the worker backs
            -- off and claims again, and the task keeps its attempt.
            WHEN deadlock_detected OR serialization_failure OR lock_not_available THEN
                RAISE;
            WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
            failure := pg_catalog.format(
                'the task could not be started, so its handler never ran: %s', failure);
            BEGIN
                UPDATE pgflow.step_tasks AS t
                SET status = 'started', started_at = greatest(pg_catalog.now(), t.queued_at),
                    attempts_count = t.attempts_count + 1, last_worker_id = claiming_worker
                WHERE t.flow_slug = queue AND t.message_id = read_id
                  AND t.status = 'queued'
                RETURNING t.run_id, t.step_slug, t.task_index, t.attempts_count INTO bad;
                IF FOUND THEN
                    PERFORM pgflow.fail_task(bad.run_id, bad.step_slug, bad.task_index, failure);
                    task := pg_catalog.jsonb_build_object(
                        'flow_slug', queue, 'run_id', bad.run_id, 'step_slug', bad.step_slug,
                        'task_index', bad.task_index, 'msg_id', read_id);
                    task_timeout := 0;
                    attempt := bad.attempts_count;
                    rejection := failure;
                    RETURN NEXT;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                -- Even failing it failed: leave the message; it is tried again, alone, later.
                GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
                RAISE WARNING 'pgflow_python.claim_tasks_isolated: could not fail the task of message %: %',
                    read_id, failure;
            END;
            CONTINUE;
        END;
        IF NOT got AND NOT EXISTS (
            SELECT 1 FROM pgflow.step_tasks AS t
            WHERE t.message_id = read_id AND t.flow_slug = queue
        ) THEN
            -- A message of no task (see claim_task_batch, extension/0012): archived, not read
            -- again forever.
            PERFORM pgmq.archive(queue, read_id);
        END IF;
        IF got THEN
            task := claimed.task;
            task_timeout := claimed.task_timeout;
            attempt := claimed.attempt;
            rejection := NULL;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- The second half of a claim (see claim_task_batch, 0012) for messages already read:
-- start their tasks and keep each message invisible for its step's timeout plus margin.
CREATE OR REPLACE FUNCTION pgflow_python.claim_read_messages(
    queue text, claiming_worker uuid, read_ids bigint[], margin integer
)
RETURNS TABLE (task jsonb, task_timeout integer, attempt integer)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    -- start_claimed_tasks (extension/0012): upstream's start_tasks whose started_at is never
    -- before queued_at (plpgsql: the body is resolved when called, after 0012 is installed).
    WITH claimed AS (
        SELECT * FROM pgflow_python.start_claimed_tasks(queue, read_ids, claiming_worker)
    ),
    timeouts AS (
        SELECT c.msg_id, coalesce(s.opt_timeout, f.opt_timeout) AS seconds
        FROM claimed c
        JOIN pgflow.steps s ON s.flow_slug = c.flow_slug AND s.step_slug = c.step_slug
        JOIN pgflow.flows f ON f.flow_slug = c.flow_slug
    ),
    extended AS (
        SELECT count(*) AS n
        FROM pgflow.set_vt_batch(
            queue,
            ARRAY(SELECT t.msg_id FROM timeouts t ORDER BY t.msg_id),
            ARRAY(SELECT t.seconds + margin FROM timeouts t ORDER BY t.msg_id)
        )
    )
    SELECT to_jsonb(c), t.seconds, st.attempts_count + 1
    FROM claimed c
    JOIN timeouts t ON t.msg_id = c.msg_id
    JOIN pgflow.step_tasks st
      ON st.run_id = c.run_id AND st.step_slug = c.step_slug AND st.task_index = c.task_index
    CROSS JOIN extended;
END
$$;

-- Giving back tasks this worker claimed but is not running: after a claim whose reply was lost
-- (the connection broke after the commit), the database says 'started' by this worker while the
-- worker never got them. They are put back exactly as they were before the claim (queued, the
-- attempt not counted, the message visible now), so no attempt is spent on a try that never
-- happened. keep_* name the tasks the worker is running; everything else it holds is released.
-- Locks as recover_stalled_tasks does (run, then task, then message; never waiting).
CREATE OR REPLACE FUNCTION pgflow_python.release_unstarted_tasks(
    releasing_worker uuid, keep_run_ids uuid[], keep_step_slugs text[], keep_task_indexes integer[]
)
RETURNS TABLE (run_id uuid, step_slug text, task_index integer)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    candidate record;
    message_present boolean;
BEGIN
    FOR candidate IN
        SELECT t.run_id, t.step_slug, t.task_index, t.flow_slug, t.message_id
        FROM pgflow.step_tasks AS t
        WHERE t.last_worker_id = releasing_worker AND t.status = 'started'
          AND (t.run_id, t.step_slug, t.task_index) NOT IN (
              SELECT k.run_id, k.step_slug, k.task_index
              FROM unnest(keep_run_ids, keep_step_slugs, keep_task_indexes)
                  AS k(run_id, step_slug, task_index))
        ORDER BY t.run_id, t.step_slug, t.task_index
    LOOP
        PERFORM 1 FROM pgflow.runs AS r
        WHERE r.run_id = candidate.run_id AND r.status = 'started'
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        PERFORM 1 FROM pgflow.step_tasks AS t
        WHERE t.run_id = candidate.run_id AND t.step_slug = candidate.step_slug
          AND t.task_index = candidate.task_index
          AND t.status = 'started' AND t.last_worker_id = releasing_worker
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        CONTINUE WHEN candidate.message_id IS NULL;
        message_present := NULL;
        EXECUTE pg_catalog.format(
            'SELECT true FROM pgmq.%I AS m WHERE m.msg_id = $1 FOR UPDATE SKIP LOCKED',
            pgmq.format_table_name(candidate.flow_slug, 'q')
        ) INTO message_present USING candidate.message_id;
        CONTINUE WHEN message_present IS NULL;

        UPDATE pgflow.step_tasks AS t
        SET status = 'queued', started_at = NULL,
            attempts_count = greatest(t.attempts_count - 1, 0)
        WHERE t.run_id = candidate.run_id AND t.step_slug = candidate.step_slug
          AND t.task_index = candidate.task_index;
        PERFORM pgmq.set_vt(candidate.flow_slug, candidate.message_id, 0);
        run_id := candidate.run_id;
        step_slug := candidate.step_slug;
        task_index := candidate.task_index;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION pgflow_python.claim_tasks_isolated(text, uuid, integer, integer, integer) IS
    'pgflow-python: claim_task_batch one message at a time; fail the tasks that cannot be started.';
COMMENT ON FUNCTION pgflow_python.claim_read_messages(text, uuid, bigint[], integer) IS
    'pgflow-python: start the tasks of messages already read and reserve them for their timeout.';
COMMENT ON FUNCTION pgflow_python.release_unstarted_tasks(uuid, uuid[], text[], integer[]) IS
    'pgflow-python: give back tasks a worker holds but is not running, without spending an attempt.';
