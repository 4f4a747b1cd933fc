-- Failure records and non-retryable failures.
--
-- Upstream keeps one error_message per task ("ValueError: message", overwritten by each retry)
-- and copies it into step_states, runs' realtime events and the TypeScript client. That column
-- stays exactly as upstream and TypeScript workers write it. What it cannot hold goes here: one
-- row per failed attempt with the exception type, the message and the traceback (bounded by the
-- worker), whether the failure was retryable and when the retry follows. Keeping tracebacks out
-- of error_message keeps upstream's rows, NOTIFY payloads and TypeScript readers unchanged, and
-- keeps every attempt's record instead of the last one's.
--
-- No foreign key to pgflow.step_tasks, so that upstream migrations touching that table's keys
-- can never fail because of us (as for task_requeues); rows are deleted with their runs by
-- pruning (run_id leads the primary key).
CREATE TABLE IF NOT EXISTS pgflow_python.task_failures (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    flow_slug text NOT NULL,
    error_type text NOT NULL,
    error_message text NOT NULL,
    traceback text,
    retryable boolean NOT NULL,
    retry_at timestamptz,
    worker_id uuid,
    failed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_failures_pkey PRIMARY KEY (run_id, step_slug, task_index, attempt)
);

COMMENT ON TABLE pgflow_python.task_failures IS
    'pgflow-python: every failed attempt of a task: exception type, message, traceback, retry.';

-- Record a failed attempt of a task this worker still holds, through upstream's fail_task.
--
-- Fenced like complete_task_batch: only while the task is 'started' and last claimed by
-- reporting_worker (after a stalled-task recovery handed it to another worker, a late report
-- must not count); the row lock keeps the sweep, which skips locked rows, away until commit.
-- Returns no row when the task was not this worker's any more.
--
-- retryable = false (the handler raised pgflow.NonRetryableError) fails the task at once,
-- whatever attempts remain: upstream's fail_task decides "retry or fail" from
-- attempts_count < max_attempts alone, so attempts_count is raised to max_attempts for that one
-- call and put back to the real count right after, in the same transaction. Everything else is
-- upstream's own exhausted-attempts path: the task, its step and the run fail, the run's other
-- queued and started messages are archived, the realtime events are sent. A failed run is inert
-- for upstream (complete_task and fail_task change nothing on it), so TypeScript workers serving
-- the flow's other steps finish or drop their tasks as after any failure.
--
-- Returned: the attempt number, retry_at (when the retry's message becomes visible; NULL when
-- no retry follows), run_failed (this report failed the run), the run's started_at and
-- failed_at, so the worker can log the run's end and its duration without another query.
CREATE OR REPLACE FUNCTION pgflow_python.fail_task(
    reporting_worker uuid,
    failed_run_id uuid,
    failed_step_slug text,
    failed_task_index integer,
    error_message text,
    error_type text,
    error_traceback text,
    retryable boolean
)
RETURNS TABLE (
    attempt integer,
    retry_at timestamptz,
    run_failed boolean,
    run_started_at timestamptz,
    run_failed_at timestamptz
)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    v_attempt integer;
    v_flow_slug text;
    v_max_attempts integer;
    v_base_delay numeric;
    v_status text;
    v_retry_at timestamptz;
    v_run_status text;
    v_run_started_at timestamptz;
BEGIN
    SELECT t.attempts_count, t.flow_slug INTO v_attempt, v_flow_slug
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = failed_run_id
      AND t.step_slug = failed_step_slug
      AND t.task_index = failed_task_index
      AND t.status = 'started'
      AND t.last_worker_id = reporting_worker
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    SELECT coalesce(s.opt_max_attempts, f.opt_max_attempts),
           coalesce(s.opt_base_delay, f.opt_base_delay)
    INTO v_max_attempts, v_base_delay
    FROM pgflow.steps AS s
    JOIN pgflow.flows AS f ON f.flow_slug = s.flow_slug
    WHERE s.flow_slug = v_flow_slug AND s.step_slug = failed_step_slug;

    IF NOT retryable AND v_attempt < v_max_attempts THEN
        UPDATE pgflow.step_tasks AS t
        SET attempts_count = v_max_attempts
        WHERE t.run_id = failed_run_id
          AND t.step_slug = failed_step_slug
          AND t.task_index = failed_task_index;
    END IF;

    -- Locked in upstream's order after the task (as fail_task itself would), to tell whether
    -- this report is the one that fails the run.
    SELECT r.status, r.started_at INTO v_run_status, v_run_started_at
    FROM pgflow.runs AS r
    WHERE r.run_id = failed_run_id
    FOR UPDATE;

    PERFORM pgflow.fail_task(failed_run_id, failed_step_slug, failed_task_index, error_message);

    IF NOT retryable AND v_attempt < v_max_attempts THEN
        UPDATE pgflow.step_tasks AS t
        SET attempts_count = v_attempt
        WHERE t.run_id = failed_run_id
          AND t.step_slug = failed_step_slug
          AND t.task_index = failed_task_index;
    END IF;

    SELECT t.status INTO v_status
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = failed_run_id
      AND t.step_slug = failed_step_slug
      AND t.task_index = failed_task_index;

    IF v_status = 'queued' THEN
        -- The delay upstream's fail_task gave the message (pgmq.set_vt: from clock_timestamp()).
        v_retry_at := clock_timestamp()
            + make_interval(secs => pgflow.calculate_retry_delay(v_base_delay, v_attempt));
    END IF;

    INSERT INTO pgflow_python.task_failures AS tf (
        run_id, step_slug, task_index, attempt, flow_slug, error_type, error_message,
        traceback, retryable, retry_at, worker_id
    )
    VALUES (
        failed_run_id, failed_step_slug, failed_task_index, v_attempt, v_flow_slug, error_type,
        error_message, error_traceback, retryable, v_retry_at, reporting_worker
    )
    -- An attempt fails twice only if it was given back unspent in between: keep the last.
    ON CONFLICT ON CONSTRAINT task_failures_pkey DO UPDATE
    SET error_type = excluded.error_type,
        error_message = excluded.error_message,
        traceback = excluded.traceback,
        retryable = excluded.retryable,
        retry_at = excluded.retry_at,
        worker_id = excluded.worker_id,
        failed_at = excluded.failed_at;

    RETURN QUERY
    SELECT v_attempt, v_retry_at,
           v_run_status <> 'failed' AND r.status = 'failed',
           v_run_started_at,
           r.failed_at
    FROM pgflow.runs AS r
    WHERE r.run_id = failed_run_id;
END
$$;

COMMENT ON FUNCTION pgflow_python.fail_task(uuid, uuid, text, integer, text, text, text, boolean)
    IS 'pgflow-python: record a failed attempt (fenced to the reporting worker) with its traceback; retryable = false fails the task at once.';
