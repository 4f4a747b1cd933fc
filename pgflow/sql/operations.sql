-- Operating runs: cancel, retry, resume, prune, list (pgflow/operations/). The functions are in
-- pgflow/schema/sql/extension/0020_run_control.sql.

-- name: ops_cancel_run
-- description: Cancel a started run (status failed plus our marker); one row: outcome, status, cancelled_at, tasks_cancelled.
SELECT c.outcome, c.status, c.cancelled_at, c.tasks_cancelled
FROM pgflow_python.cancel_run(CAST(:run_id AS uuid), CAST(:reason AS text)) AS c;

-- name: ops_retry_run
-- description: Start a failed run again as a new run with lineage; one row: outcome, status, new_run_id.
SELECT r.outcome, r.status, r.new_run_id
FROM pgflow_python.retry_run(CAST(:run_id AS uuid)) AS r;

-- name: ops_resume_run
-- description: Continue a failed or cancelled run in place; one row: outcome, status, tasks_requeued.
SELECT r.outcome, r.status, r.tasks_requeued
FROM pgflow_python.resume_run(CAST(:run_id AS uuid)) AS r;

-- name: ops_prune_cutoff
-- description: The database's now() minus the retention window (one cutoff for every batch of a prune), and for worker rows minus at least :worker_floor.
-- A live worker's row must never go (a TypeScript worker does not register again, and its
-- claims would then break upstream's foreign key), however short the window asked for.
SELECT now() - CAST(:older_than AS interval) AS cutoff,
       now() - greatest(CAST(:older_than AS interval), CAST(:worker_floor AS interval))
           AS workers_cutoff;

-- name: prune_runs_batch
-- description: Delete one batch of :status runs finished before :cutoff, oldest first after the cursor (:after_started_at, :after_run_id), with their rows and messages; the next cursor and counts.
SELECT p.last_started_at, p.last_run_id, p.matched, p.runs, p.step_states, p.step_tasks,
       p.messages, p.extension_rows
FROM pgflow_python.prune_runs_batch(
    CAST(:cutoff AS timestamptz), CAST(:status AS text), CAST(:flows AS text[]),
    CAST(:after_started_at AS timestamptz), CAST(:after_run_id AS uuid),
    CAST(:batch_size AS integer)
) AS p;

-- name: ops_prune_workers
-- description: Delete up to :row_limit worker rows with no heartbeat since :cutoff; how many.
SELECT pgflow_python.prune_workers(
    CAST(:cutoff AS timestamptz), CAST(:flows AS text[]), CAST(:row_limit AS integer)
) AS workers;

-- name: ops_prune_preview
-- description: What a prune with these arguments would delete (a dry run); one row of counts.
SELECT p.runs, p.step_states, p.step_tasks, p.messages, p.extension_rows, p.workers
FROM pgflow_python.prune_preview(
    CAST(:cutoff AS timestamptz), CAST(:statuses AS text[]), CAST(:flows AS text[]),
    CAST(:workers_cutoff AS timestamptz)
) AS p;

-- name: ops_list_runs
-- description: Runs, newest first, filtered by flow, status ('cancelled' = failed with our marker), start time, (:waiting) a step waiting for a signal or for its child runs (a subflow step) and (:key_path, :key_value) the JSON value at a path of the input (a limit's key); with each resume's failed_at and resumed_at, so a duration leaves out the time the run sat failed.
SELECT
    r.run_id, r.flow_slug, r.status, r.remaining_steps, r.started_at, r.completed_at,
    r.failed_at, c.cancelled_at, c.reason AS cancel_reason, l.restart_of_run_id,
    sf.schedule_name, sf.fire_time AS scheduled_for,
    ARRAY(SELECT rr.failed_at FROM pgflow_python.run_resumes AS rr
          WHERE rr.run_id = r.run_id ORDER BY rr.resumed_at) AS resumes_failed_at,
    ARRAY(SELECT rr.resumed_at FROM pgflow_python.run_resumes AS rr
          WHERE rr.run_id = r.run_id ORDER BY rr.resumed_at) AS resumed_at
FROM pgflow.runs AS r
LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = r.run_id
LEFT JOIN pgflow_python.run_lineage AS l ON l.run_id = r.run_id
LEFT JOIN pgflow_python.schedule_fires AS sf ON sf.run_id = r.run_id
WHERE (CAST(:flow_slug AS text) IS NULL OR r.flow_slug = CAST(:flow_slug AS text))
  AND (CAST(:status AS text) IS NULL
       OR (CAST(:status AS text) = 'cancelled' AND r.status = 'failed' AND c.run_id IS NOT NULL)
       OR r.status = CAST(:status AS text))
  AND (CAST(:since AS timestamptz) IS NULL OR r.started_at >= CAST(:since AS timestamptz))
  AND (NOT CAST(:waiting AS boolean) OR (r.status = 'started' AND (EXISTS (
      SELECT 1 FROM pgflow_python.waits AS w
      JOIN pgflow.step_tasks AS t
        ON t.run_id = w.run_id AND t.step_slug = w.step_slug AND t.task_index = w.task_index
      WHERE w.run_id = r.run_id AND w.ended_at IS NULL AND t.status = 'started')
    OR EXISTS (
      SELECT 1 FROM pgflow_python.subflow_children AS sc
      JOIN pgflow.step_states AS ss ON ss.run_id = sc.run_id AND ss.step_slug = sc.step_slug
      WHERE sc.run_id = r.run_id AND sc.ended_at IS NULL AND ss.status = 'started'))))
  AND (CAST(:key_path AS text[]) IS NULL
       OR r.input #> CAST(:key_path AS text[]) = CAST(:key_value AS jsonb))
ORDER BY r.started_at DESC, r.run_id
LIMIT CAST(:row_limit AS integer);

-- name: ops_run_steps
-- description: A run's steps in declaration order with task counts, attempts, durations, the last error of an unfinished task and the size of the outputs.
-- A completed step has no error: a task that failed an attempt (before a retry or a resume) and
-- then completed keeps upstream's error_message, which is history, not the step's state.
SELECT
    ss.step_slug, st.step_type, ss.status, ss.remaining_deps, ss.initial_tasks,
    ss.remaining_tasks, ss.started_at, ss.completed_at, ss.failed_at,
    CASE WHEN ss.status <> 'completed' THEN coalesce(ss.error_message, (
        SELECT t.error_message FROM pgflow.step_tasks AS t
        WHERE t.run_id = ss.run_id AND t.step_slug = ss.step_slug
          AND t.error_message IS NOT NULL AND t.status <> 'completed'
        ORDER BY t.failed_at DESC NULLS LAST, t.task_index
        LIMIT 1
    )) END AS error_message,
    coalesce(tasks.total, 0) AS tasks,
    coalesce(tasks.completed, 0) AS completed_tasks,
    coalesce(tasks.failed, 0) AS failed_tasks,
    coalesce(tasks.attempts, 0) AS attempts,
    coalesce(tasks.output_bytes, 0) AS output_bytes,
    coalesce((SELECT array_agg(d.dep_slug ORDER BY d.dep_slug) FROM pgflow.deps AS d
              WHERE d.flow_slug = ss.flow_slug AND d.step_slug = ss.step_slug),
             '{}') AS depends_on,
    (SELECT k.skip_reason FROM pgflow_python.step_skips AS k
     WHERE k.run_id = ss.run_id AND k.step_slug = ss.step_slug) AS skip_reason,
    ws.wait_kind AS waits_for,
    CASE WHEN ss.status = 'started' THEN w.waiting_since END AS waiting_since,
    CASE WHEN ss.status = 'started' THEN w.timeout_at END AS waiting_until,
    (SELECT g.received_at FROM pgflow_python.signals AS g
     WHERE g.run_id = ss.run_id AND g.step_slug = ss.step_slug) AS signalled_at
FROM pgflow.step_states AS ss
JOIN pgflow.steps AS st ON st.flow_slug = ss.flow_slug AND st.step_slug = ss.step_slug
LEFT JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE t.status = 'completed') AS completed,
           count(*) FILTER (WHERE t.status = 'failed') AS failed,
           sum(t.attempts_count) AS attempts,
           sum(octet_length(t.output::text)) AS output_bytes
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = ss.run_id AND t.step_slug = ss.step_slug
) AS tasks ON true
LEFT JOIN pgflow_python.wait_steps AS ws
  ON ws.flow_slug = ss.flow_slug AND ws.step_slug = ss.step_slug
LEFT JOIN pgflow_python.waits AS w
  ON w.run_id = ss.run_id AND w.step_slug = ss.step_slug AND w.task_index = 0
  AND w.ended_at IS NULL
WHERE ss.run_id = :run_id
ORDER BY st.step_index, ss.step_slug;

-- name: ops_run_deadline
-- description: When a run is cancelled if still going (extension/0071), and where that comes from; no row without a deadline.
SELECT d.deadline_at, d.source
FROM pgflow_python.run_deadlines AS d
WHERE d.run_id = :run_id;

-- name: ops_run_resumes
-- description: A run's resumes, oldest first: when, which failure they undid, how many tasks went back.
SELECT rr.resumed_at, rr.failed_at, rr.was_cancelled, rr.reason, rr.tasks_requeued
FROM pgflow_python.run_resumes AS rr
WHERE rr.run_id = :run_id
ORDER BY rr.resumed_at;

-- name: ops_list_workers
-- description: Worker rows, newest heartbeat first, with their started tasks; state alive, draining (deprecated, still beating), stopped (deprecated, silent) or dead (silent longer than :stale_after seconds without being stopped).
SELECT
    w.worker_id, w.queue_name, w.function_name, w.started_at, w.last_heartbeat_at,
    w.deprecated_at,
    CASE
        WHEN w.last_heartbeat_at < now() - make_interval(secs => CAST(:stale_after AS integer))
            THEN CASE WHEN w.deprecated_at IS NULL THEN 'dead' ELSE 'stopped' END
        WHEN w.deprecated_at IS NOT NULL THEN 'draining'
        ELSE 'alive'
    END AS state,
    (SELECT count(*) FROM pgflow.step_tasks AS t
     WHERE t.last_worker_id = w.worker_id AND t.status = 'started') AS tasks_started
FROM pgflow.workers AS w
WHERE (CAST(:flow_slug AS text) IS NULL OR w.queue_name = CAST(:flow_slug AS text))
ORDER BY w.last_heartbeat_at DESC, w.worker_id
LIMIT CAST(:row_limit AS integer);

-- name: ops_run_ids_with_prefix
-- description: Run ids between :low and :high (a hex prefix padded with 0s and fs): a primary-key range, at most :row_limit.
SELECT r.run_id
FROM pgflow.runs AS r
WHERE r.run_id BETWEEN CAST(:low AS uuid) AND CAST(:high AS uuid)
ORDER BY r.run_id
LIMIT CAST(:row_limit AS integer);
