-- Client queries: starting runs, reading them, waiting for them (pgflow/client/).

-- name: client_start_flow
-- description: Start a run unless the flow is unknown, a root map gets a non-array, the run id is taken, or a job is required and the flow is not one; one row per registered flow, run_id NULL when refused. With an idempotency key, the run already started with that key is returned instead (created false); stores the run's trace context when one is given.
-- Checking here instead of letting start_flow raise keeps the caller's transaction usable
-- after a refusal. The start is a function call inside CASE, so it runs only when every check
-- passed; OFFSET 0 keeps the checks (and the call) from being inlined and evaluated twice.
-- With OpenTelemetry enabled, :traceparent/:tracestate (the start span's context) are stored
-- with a newly created run in the same statement, so no worker can claim one of its tasks
-- before they are there.
WITH attempt AS (
    SELECT
        checks.flow_type,
        checks.root_map_step,
        checks.run_exists,
        (checks.started).run_id AS run_id,
        (checks.started).created AS created
    FROM (
        SELECT
            facts.*,
            CASE
                WHEN (facts.root_map_step IS NULL
                      OR jsonb_typeof(CAST(:input AS jsonb)) = 'array')
                    AND NOT facts.run_exists
                    AND (NOT CAST(:require_job AS boolean) OR facts.flow_type = 'job')
                THEN pgflow_python.start_run(
                    facts.flow_slug, CAST(:input AS jsonb), CAST(:run_id AS uuid),
                    CAST(:idempotency_key AS text), CAST(:priority AS integer)
                )
            END AS started
        FROM (
            SELECT
                f.flow_slug,
                f.flow_type,
                (SELECT s.step_slug FROM pgflow.steps AS s
                 WHERE s.flow_slug = f.flow_slug AND s.step_type = 'map' AND s.deps_count = 0
                 ORDER BY s.step_index LIMIT 1) AS root_map_step,
                EXISTS (SELECT 1 FROM pgflow.runs AS r WHERE r.run_id = CAST(:run_id AS uuid))
                    AS run_exists
            FROM pgflow.flows AS f
            WHERE f.flow_slug = :flow_slug
            OFFSET 0
        ) AS facts
        OFFSET 0
    ) AS checks
),
traced AS (
    INSERT INTO pgflow_python.run_trace_contexts (run_id, traceparent, tracestate)
    SELECT attempt.run_id, CAST(:traceparent AS text), CAST(:tracestate AS text)
    FROM attempt
    WHERE attempt.created AND CAST(:traceparent AS text) IS NOT NULL
    ON CONFLICT (run_id) DO NOTHING
)
SELECT attempt.flow_type, attempt.root_map_step, attempt.run_exists, attempt.run_id,
       attempt.created
FROM attempt;

-- name: client_delay_queued_tasks
-- description: Hide a new run's queued task messages for :delay_seconds from now (enqueue with a delay); returns how many were delayed.
-- Run in the transaction that started the run, so no worker can read a message before its new
-- visibility time.
SELECT count(*) AS delayed
FROM pgflow.step_tasks AS t
CROSS JOIN LATERAL pgmq.set_vt(t.flow_slug, t.message_id, CAST(:delay_seconds AS integer)) AS m
WHERE t.run_id = :run_id
  AND t.status = 'queued'
  AND t.message_id IS NOT NULL;

-- name: client_get_run
-- description: One run as JSON (to_jsonb keeps 0, false and "" outputs exactly) with our facts about it (cancellation, lineage), or no row.
SELECT to_jsonb(r) || pgflow_python.run_facts(r.run_id) AS run
FROM pgflow.runs AS r
WHERE r.run_id = :run_id;

-- name: client_get_run_with_states
-- description: A run with its step states (declaration order), tasks and recorded failed attempts, as JSON from one statement so that all come from one snapshot.
SELECT
    to_jsonb(r) || pgflow_python.run_facts(r.run_id) AS run,
    coalesce((
        SELECT jsonb_agg(to_jsonb(ss) ORDER BY st.step_index, ss.step_slug)
        FROM pgflow.step_states AS ss
        JOIN pgflow.steps AS st
          ON st.flow_slug = ss.flow_slug AND st.step_slug = ss.step_slug
        WHERE ss.run_id = r.run_id
    ), '[]'::jsonb) AS steps,
    coalesce((
        SELECT jsonb_agg(to_jsonb(t) ORDER BY st.step_index, t.step_slug, t.task_index)
        FROM pgflow.step_tasks AS t
        JOIN pgflow.steps AS st
          ON st.flow_slug = t.flow_slug AND st.step_slug = t.step_slug
        WHERE t.run_id = r.run_id
    ), '[]'::jsonb) AS tasks,
    coalesce((
        SELECT jsonb_agg(to_jsonb(f) ORDER BY f.failed_at, f.step_slug, f.task_index, f.attempt)
        FROM pgflow_python.task_failures AS f
        WHERE f.run_id = r.run_id
    ), '[]'::jsonb) AS failures
FROM pgflow.runs AS r
WHERE r.run_id = :run_id;

-- name: client_task_failures
-- description: A run's recorded failed attempts (type, message, traceback, retry) in the order they happened.
SELECT to_jsonb(f) AS failure
FROM pgflow_python.task_failures AS f
WHERE f.run_id = :run_id
ORDER BY f.failed_at, f.step_slug, f.task_index, f.attempt;

-- name: client_run_status
-- description: A run's status alone: the cheap check a waiter repeats; no row for an unknown run.
SELECT r.status
FROM pgflow.runs AS r
WHERE r.run_id = :run_id;

-- name: client_failed_step
-- description: Why a run failed: its first failed step with that step's error, the failed task (index, attempts, error) if one exists, and that attempt's failure record (with its traceback) if a Python worker recorded one.
-- A type violation (a step feeding a map returned a non-array) is recorded on the step state;
-- an exhausted retry on both, so the step's message comes first.
SELECT
    ss.step_slug,
    coalesce(ss.error_message, t.error_message) AS error_message,
    t.task_index,
    t.attempts_count,
    (SELECT to_jsonb(f) FROM pgflow_python.task_failures AS f
     WHERE f.run_id = ss.run_id AND f.step_slug = ss.step_slug
       AND f.task_index = t.task_index AND f.attempt = t.attempts_count) AS failure
FROM pgflow.step_states AS ss
LEFT JOIN LATERAL (
    SELECT task.task_index, task.attempts_count, task.error_message
    FROM pgflow.step_tasks AS task
    WHERE task.run_id = ss.run_id
      AND task.step_slug = ss.step_slug
      AND task.status = 'failed'
    ORDER BY task.failed_at, task.task_index
    LIMIT 1
) AS t ON true
WHERE ss.run_id = :run_id
  AND ss.status = 'failed'
ORDER BY ss.failed_at, ss.step_slug
LIMIT 1;

-- name: listen_for_run_events
-- description: Subscribe to the run and step events the realtime shim (realtime_shim.sql) sends; run waiters and the dashboard.
LISTEN pgflow;

-- name: unlisten_run_events
-- description: Unsubscribe before the connection goes back to the pool.
UNLISTEN pgflow;

-- name: client_signal
-- description: Send the output of a wait step (extension/0070); one row: outcome, flow_slug, run_status, step_status, signalled_at, and since when the step waited (NULL: it did not wait yet).
-- The join reads the wait as it was when the statement began (its start time is not changed
-- by the signal), for the wait.ended event.
SELECT s.outcome, s.flow_slug, s.run_status, s.step_status, s.signalled_at, w.waiting_since
FROM pgflow_python.signal(CAST(:run_id AS uuid), :step_slug, CAST(:output AS jsonb)) AS s
LEFT JOIN pgflow_python.waits AS w
    ON w.run_id = CAST(:run_id AS uuid) AND w.step_slug = :step_slug AND w.task_index = 0

-- name: client_set_run_deadline
-- description: Give a run started in this transaction a deadline (extension/0071): in :deadline_seconds from now, or at :deadline_at.
SELECT pgflow_python.set_run_deadline(
    CAST(:run_id AS uuid),
    coalesce(CAST(:deadline_at AS timestamptz),
             clock_timestamp() + make_interval(secs => CAST(:deadline_seconds AS double precision)))
)
