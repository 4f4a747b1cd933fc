-- Stalled-task recovery. Upstream 0.8.1 never returns a task stuck in 'started' to its queue (a
-- worker crashed, or its completion was lost), so the run never finishes. Live workers call
-- recover_stalled_tasks() periodically; it puts such tasks back (a bounded number of times) and
-- then fails them through upstream's fail_task, so retries, exhaustion and run failure follow
-- upstream's rules. Additive only: TypeScript workers never call it, and it changes a task
-- exactly the way fail_task's own retry path does (status 'queued', started_at NULL, message
-- visible again).

-- How often each task was put back. Our own table because upstream 0.8.1 has no column for it;
-- no foreign key to pgflow.step_tasks, so that upstream migrations touching that table's keys
-- can never fail because of us. Rows of deleted runs stay behind (see docs/operations-recovery.md).
CREATE TABLE IF NOT EXISTS pgflow_python.task_requeues (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    requeue_count integer NOT NULL CHECK (requeue_count >= 0),
    last_requeued_at timestamptz NOT NULL,
    last_worker_id uuid,
    last_reason text NOT NULL,
    PRIMARY KEY (run_id, step_slug, task_index)
);

COMMENT ON TABLE pgflow_python.task_requeues IS
    'pgflow-python: how often recover_stalled_tasks put each stalled task back in its queue.';

-- Returns one row per task it acted on: action 'requeued' (back in the queue, visible now) or
-- 'failed' (reported to pgflow.fail_task with a "stalled: ..." message; upstream then retries
-- it with backoff or, attempts exhausted, fails the step and the run).
--
-- A 'started' task of a still-started run is stalled when
--   * its worker is gone: no pgflow.workers row (rows deleted: last_worker_id is set NULL), or
--     no heartbeat for heartbeat_timeout_seconds (whether or not deprecated_at is set: a
--     draining worker that still heartbeats is finishing its tasks); or
--   * it has been started longer than its effective timeout (step's, else flow's) plus
--     heartbeat_timeout_seconds: even a live worker should have finished or failed it by then
--     (ours enforces the timeout itself; TypeScript workers do not, and upstream's own later
--     requeue function uses the same rule with a fixed 30 s margin).
-- A stalled task is put back unless it was already put back max_requeues times, or its
-- attempts are used up; then it is failed instead.
--
-- Attempts: start_tasks counted the stalled try in attempts_count, and it stays counted. The
-- handler may well have run (and had side effects), "max_attempts counts all tries" is
-- upstream's contract, upstream's own later requeue function does not refund it either, and a
-- task that kills its worker every time (OOM, segfault) must end instead of looping. So a task
-- with attempts_count >= max_attempts is failed, not put back: start_tasks would otherwise run
-- it once more than max_attempts allows, as it never checks the limit itself.
--
-- Safe to call from any number of workers: one caller at a time does the work (a transaction-
-- scoped advisory lock; the others return at once, with no rows). It locks in upstream's order
-- (run, then task, then queue row) and never waits for those locks (SKIP LOCKED), so it cannot
-- deadlock with complete_task/fail_task, a batch of reports spanning several runs, or upstream
-- 0.14's own requeue_stalled_tasks; a task skipped because someone holds its run, row or
-- message is looked at again on the next call.
-- A task whose message is no longer in the queue is left alone: putting it back (or failing it
-- into a retry) would leave a queued task nobody can read, and upstream 0.14 archives the message
-- of a task it deems permanently stalled on purpose.
CREATE OR REPLACE FUNCTION pgflow_python.recover_stalled_tasks(
    heartbeat_timeout_seconds integer DEFAULT 30,
    max_requeues integer DEFAULT 3
)
RETURNS TABLE (run_id uuid, step_slug text, task_index integer, action text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    -- sha256('pgflow_python.recover_stalled_tasks'), first 8 bytes; the installer's lock differs.
    sweep_lock CONSTANT bigint := 5485541262937703940;
    sweep_at timestamptz;
    heartbeat_limit interval;
    candidate record;
    task record;
    message_present boolean;
    reason text;
BEGIN
    IF heartbeat_timeout_seconds IS NULL OR heartbeat_timeout_seconds < 1 THEN
        RAISE EXCEPTION 'heartbeat_timeout_seconds must be at least 1, got %',
            heartbeat_timeout_seconds USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_requeues IS NULL OR max_requeues < 0 THEN
        RAISE EXCEPTION 'max_requeues must be 0 or more, got %', max_requeues
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_xact_lock(sweep_lock) THEN
        RETURN;
    END IF;

    sweep_at := pg_catalog.clock_timestamp();
    heartbeat_limit := pg_catalog.make_interval(secs => heartbeat_timeout_seconds);

    -- Candidates from a lock-free scan; each one is re-checked under its locks below, since a
    -- worker may report it or heartbeat in between.
    FOR candidate IN
        SELECT t.run_id, t.step_slug, t.task_index
        FROM pgflow.step_tasks AS t
        JOIN pgflow.runs AS r ON r.run_id = t.run_id
        JOIN pgflow.steps AS s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
        JOIN pgflow.flows AS f ON f.flow_slug = t.flow_slug
        LEFT JOIN pgflow.workers AS w ON w.worker_id = t.last_worker_id
        WHERE t.status = 'started'
          AND r.status = 'started'
          -- A task with no message is no worker's: a wait (extension/0070), ended by a
          -- signal or its timeout, never stalled.
          AND t.message_id IS NOT NULL
          AND (w.worker_id IS NULL
               OR w.last_heartbeat_at < sweep_at - heartbeat_limit
               OR coalesce(t.started_at, t.queued_at) < sweep_at - heartbeat_limit
                  - pg_catalog.make_interval(secs => coalesce(s.opt_timeout, f.opt_timeout)))
        ORDER BY t.run_id, t.step_slug, t.task_index
    LOOP
        -- The run first, as complete_task and fail_task lock it before the task.
        PERFORM 1 FROM pgflow.runs AS r
        WHERE r.run_id = candidate.run_id AND r.status = 'started'
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;

        SELECT t.flow_slug, t.message_id, t.attempts_count, t.last_worker_id,
               coalesce(t.started_at, t.queued_at) AS started_at,
               coalesce(s.opt_timeout, f.opt_timeout) AS timeout,
               coalesce(s.opt_max_attempts, f.opt_max_attempts) AS max_attempts,
               w.worker_id IS NOT NULL AS has_worker,
               w.function_name, w.last_heartbeat_at, w.deprecated_at,
               coalesce(q.requeue_count, 0) AS requeue_count
        INTO task
        FROM pgflow.step_tasks AS t
        JOIN pgflow.steps AS s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
        JOIN pgflow.flows AS f ON f.flow_slug = t.flow_slug
        LEFT JOIN pgflow.workers AS w ON w.worker_id = t.last_worker_id
        LEFT JOIN pgflow_python.task_requeues AS q
          ON q.run_id = t.run_id AND q.step_slug = t.step_slug AND q.task_index = t.task_index
        WHERE t.run_id = candidate.run_id
          AND t.step_slug = candidate.step_slug
          AND t.task_index = candidate.task_index
          AND t.status = 'started'
        FOR UPDATE OF t SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;

        IF task.last_worker_id IS NULL THEN
            reason := 'the worker that started it is gone (its pgflow.workers row was deleted)';
        ELSIF NOT task.has_worker THEN
            reason := pg_catalog.format('worker %s is gone (no pgflow.workers row)',
                task.last_worker_id);
        ELSIF task.last_heartbeat_at < sweep_at - heartbeat_limit THEN
            reason := pg_catalog.format(
                'worker %s (%s%s) sent no heartbeat for %s s (limit %s s)',
                task.last_worker_id, task.function_name,
                CASE WHEN task.deprecated_at IS NOT NULL THEN ', deprecated' ELSE '' END,
                pg_catalog.floor(extract(epoch FROM sweep_at - task.last_heartbeat_at)),
                heartbeat_timeout_seconds);
        ELSIF task.started_at < sweep_at - heartbeat_limit
                - pg_catalog.make_interval(secs => task.timeout) THEN
            reason := pg_catalog.format(
                'worker %s (%s) is alive but has not finished it within its timeout of %s s'
                ' plus %s s',
                task.last_worker_id, task.function_name, task.timeout, heartbeat_timeout_seconds);
        ELSE
            CONTINUE;  -- reported, heartbeated or claimed again since the scan
        END IF;
        reason := pg_catalog.format('stalled: %s; task started %s s ago, attempt %s of %s',
            reason, pg_catalog.floor(extract(epoch FROM sweep_at - task.started_at)),
            task.attempts_count, task.max_attempts);

        CONTINUE WHEN task.message_id IS NULL;
        message_present := NULL;
        EXECUTE pg_catalog.format(
            'SELECT true FROM pgmq.%I AS m WHERE m.msg_id = $1 FOR UPDATE SKIP LOCKED',
            pgmq.format_table_name(task.flow_slug, 'q')
        ) INTO message_present USING task.message_id;
        CONTINUE WHEN message_present IS NULL;

        run_id := candidate.run_id;
        step_slug := candidate.step_slug;
        task_index := candidate.task_index;

        IF task.requeue_count >= max_requeues OR task.attempts_count >= task.max_attempts THEN
            reason := reason || CASE
                WHEN task.attempts_count >= task.max_attempts THEN '; no attempts left'
                ELSE pg_catalog.format('; already put back %s times (max_requeues %s)',
                    task.requeue_count, max_requeues)
            END;
            PERFORM pgflow.fail_task(candidate.run_id, candidate.step_slug,
                candidate.task_index, reason);
            action := 'failed';
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- What fail_task's retry path does, minus the error and the backoff: nothing went wrong
        -- with the task itself, so it runs again at once.
        UPDATE pgflow.step_tasks AS t
        SET status = 'queued', started_at = NULL
        WHERE t.run_id = candidate.run_id
          AND t.step_slug = candidate.step_slug
          AND t.task_index = candidate.task_index;
        PERFORM pgmq.set_vt(task.flow_slug, task.message_id, 0);

        INSERT INTO pgflow_python.task_requeues AS q (
            run_id, step_slug, task_index, requeue_count, last_requeued_at, last_worker_id,
            last_reason
        )
        VALUES (candidate.run_id, candidate.step_slug, candidate.task_index, 1, sweep_at,
                task.last_worker_id, reason)
        ON CONFLICT ON CONSTRAINT task_requeues_pkey DO UPDATE
        SET requeue_count = q.requeue_count + 1,
            last_requeued_at = excluded.last_requeued_at,
            last_worker_id = excluded.last_worker_id,
            last_reason = excluded.last_reason;

        action := 'requeued';
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgflow_python.recover_stalled_tasks(integer, integer) IS
    'pgflow-python: put stalled started tasks back in their queue (at most max_requeues times), '
    'else fail them via pgflow.fail_task; one caller at a time.';
