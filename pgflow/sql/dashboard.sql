-- Web dashboard queries (pgflow/dashboard/). Read-only; each one reads a bounded slice through an
-- index (see extension/0050_dashboard_indexes.sql). The runs list, whose filters vary, is built
-- with SQLAlchemy Core in pgflow/dashboard/_data.py.

-- name: dashboard_read_settings
-- description: Settings for the dashboard's read transaction: no JIT (compiling costs its aggregates 0.3-1 s, ten times the query).
SET LOCAL jit = off;

-- name: dashboard_replica_lag
-- description: On a streaming replica: seconds behind (0 once it has replayed all it received; else since its last replayed commit). Not a replica: replica false.
SELECT
    pg_is_in_recovery() AS replica,
    CASE
        WHEN NOT pg_is_in_recovery() THEN NULL
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
    END AS lag_seconds;

-- name: dashboard_flow_stats
-- description: Per flow, runs started since :since: counts by status (cancelled apart from failed) and p50/p95 duration (seconds) of the completed ones.
-- One index range per flow (LATERAL) instead of one sort of the whole window by flow.
SELECT
    f.flow_slug,
    f.flow_type,
    s.started,
    s.completed,
    s.failed,
    s.cancelled,
    s.running,
    s.percentiles[1] AS p50_seconds,
    s.percentiles[2] AS p95_seconds
FROM pgflow.flows AS f
CROSS JOIN LATERAL (
    SELECT
        count(*) AS started,
        count(*) FILTER (WHERE r.status = 'completed') AS completed,
        count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NULL) AS failed,
        count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NOT NULL) AS cancelled,
        count(*) FILTER (WHERE r.status = 'started') AS running,
        percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
            ORDER BY extract(epoch FROM r.completed_at - r.started_at)
        ) FILTER (WHERE r.status = 'completed') AS percentiles
    FROM pgflow.runs AS r
    LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = r.run_id
    WHERE r.flow_slug = f.flow_slug AND r.started_at >= :since
) AS s
ORDER BY f.flow_type, f.flow_slug;

-- name: dashboard_throughput
-- description: Runs started since :since that ended, counted per :bucket of their end time and per outcome (cancelled apart from failed).
SELECT
    date_bin(
        CAST(:bucket AS interval),
        coalesce(r.completed_at, r.failed_at),
        CAST(:since AS timestamptz)
    ) AS bucket_start,
    count(*) FILTER (WHERE r.status = 'completed') AS completed,
    count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NULL) AS failed,
    count(*) FILTER (WHERE r.status = 'failed' AND c.run_id IS NOT NULL) AS cancelled
FROM pgflow.runs AS r
LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = r.run_id
WHERE r.started_at >= :since
  AND r.status <> 'started'
GROUP BY 1
ORDER BY 1;

-- name: dashboard_queue_metrics
-- description: pgmq metrics of each flow's queue as JSON (columns differ between pgmq versions).
SELECT f.flow_slug, to_jsonb(pgmq.metrics(f.flow_slug)) AS metrics
FROM pgflow.flows AS f
WHERE EXISTS (SELECT 1 FROM pgmq.meta AS m WHERE m.queue_name = f.flow_slug)
ORDER BY f.flow_slug;

-- name: dashboard_worker_counts
-- description: Worker rows by state: alive (heartbeat within :stale_seconds, not deprecated), stale, stopped.
SELECT
    count(*) FILTER (
        WHERE w.deprecated_at IS NULL
          AND w.last_heartbeat_at >= now() - make_interval(secs => :stale_seconds)
    ) AS alive,
    count(*) FILTER (
        WHERE w.deprecated_at IS NULL
          AND w.last_heartbeat_at < now() - make_interval(secs => :stale_seconds)
    ) AS stale,
    count(*) FILTER (WHERE w.deprecated_at IS NOT NULL) AS stopped
FROM pgflow.workers AS w;

-- name: dashboard_flows
-- description: Every flow with its type, options, step count and latest run (one index probe per flow).
SELECT
    f.flow_slug,
    f.flow_type,
    f.opt_max_attempts,
    f.opt_base_delay,
    f.opt_timeout,
    f.created_at,
    (SELECT count(*) FROM pgflow.steps AS s WHERE s.flow_slug = f.flow_slug) AS step_count,
    (SELECT count(*) FROM pgflow.steps AS s
     WHERE s.flow_slug = f.flow_slug AND s.step_type = 'map') AS map_step_count,
    latest.started_at AS latest_run_at,
    latest.status AS latest_run_status
FROM pgflow.flows AS f
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status
    FROM pgflow.runs AS r
    WHERE r.flow_slug = f.flow_slug
    ORDER BY r.started_at DESC
    LIMIT 1
) AS latest ON true
ORDER BY f.flow_slug;

-- name: dashboard_flow
-- description: One flow's row, or no row.
SELECT f.flow_slug, f.flow_type, f.opt_max_attempts, f.opt_base_delay, f.opt_timeout, f.created_at
FROM pgflow.flows AS f
WHERE f.flow_slug = :flow_slug;

-- name: dashboard_flow_steps
-- description: A flow's steps in declaration order with their dependencies (slugs) and options.
SELECT
    s.step_slug,
    s.step_type,
    s.step_index,
    s.opt_max_attempts,
    s.opt_base_delay,
    s.opt_timeout,
    s.opt_start_delay,
    coalesce((
        SELECT array_agg(d.dep_slug ORDER BY d.dep_slug)
        FROM pgflow.deps AS d
        WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug
    ), ARRAY[]::text[]) AS depends_on
FROM pgflow.steps AS s
WHERE s.flow_slug = :flow_slug
ORDER BY s.step_index;

-- name: dashboard_run
-- description: One run with its flow's type, cancellation, lineage, resumes (count, and each one's failed_at and resumed_at: durations leave out the time the run sat failed), subflow parent and children (the first 20); input and output as text cut at :preview_chars, with their full lengths.
SELECT
    r.run_id,
    r.flow_slug,
    f.flow_type,
    r.status,
    r.remaining_steps,
    r.started_at,
    r.completed_at,
    r.failed_at,
    left(CAST(r.input AS text), :preview_chars) AS input_preview,
    length(CAST(r.input AS text)) AS input_chars,
    left(CAST(r.output AS text), :preview_chars) AS output_preview,
    length(CAST(r.output AS text)) AS output_chars,
    c.cancelled_at,
    c.reason AS cancel_reason,
    origin.restart_of_run_id,
    retry.run_id AS retried_as_run_id,
    (SELECT count(*) FROM pgflow_python.run_resumes AS rr WHERE rr.run_id = r.run_id)
        AS resume_count,
    ARRAY(SELECT rr.failed_at FROM pgflow_python.run_resumes AS rr
          WHERE rr.run_id = r.run_id ORDER BY rr.resumed_at) AS resumes_failed_at,
    ARRAY(SELECT rr.resumed_at FROM pgflow_python.run_resumes AS rr
          WHERE rr.run_id = r.run_id ORDER BY rr.resumed_at) AS resumed_at,
    parent.run_id AS parent_run_id,
    parent.step_slug AS parent_step_slug,
    ARRAY(SELECT k.child_run_id FROM pgflow_python.subflow_children AS k
          WHERE k.run_id = r.run_id AND k.child_run_id IS NOT NULL
          ORDER BY k.step_slug, k.task_index LIMIT 20) AS child_run_ids,
    (SELECT count(*) FROM pgflow_python.subflow_children AS k
     WHERE k.run_id = r.run_id AND k.child_run_id IS NOT NULL) AS child_count
FROM pgflow.runs AS r
JOIN pgflow.flows AS f ON f.flow_slug = r.flow_slug
LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = r.run_id
LEFT JOIN pgflow_python.run_lineage AS origin ON origin.run_id = r.run_id
LEFT JOIN pgflow_python.run_lineage AS retry ON retry.restart_of_run_id = r.run_id
LEFT JOIN pgflow_python.subflow_children AS parent ON parent.child_run_id = r.run_id
WHERE r.run_id = :run_id;

-- name: dashboard_run_failures
-- description: A run's failed attempts (pgflow_python.task_failures), oldest first, at most :limit; message and traceback cut at :preview_chars.
SELECT
    tf.step_slug,
    tf.task_index,
    tf.attempt,
    tf.error_type,
    left(tf.error_message, :preview_chars) AS message_preview,
    length(tf.error_message) AS message_chars,
    left(tf.traceback, :preview_chars) AS traceback_preview,
    length(tf.traceback) AS traceback_chars,
    tf.retryable,
    tf.retry_at,
    tf.failed_at
FROM pgflow_python.task_failures AS tf
WHERE tf.run_id = :run_id
ORDER BY tf.failed_at, tf.step_slug, tf.task_index, tf.attempt
LIMIT :limit;

-- name: dashboard_run_steps
-- description: A run's steps in declaration order: state, timestamps, error and task counts by status.
SELECT
    s.step_slug,
    s.step_type,
    s.step_index,
    ss.status,
    ss.initial_tasks,
    ss.remaining_tasks,
    ss.created_at,
    ss.started_at,
    ss.completed_at,
    ss.failed_at,
    left(ss.error_message, :preview_chars) AS error_preview,
    length(ss.error_message) AS error_chars,
    coalesce(counts.by_status, '{}'::jsonb) AS task_counts
FROM pgflow.steps AS s
LEFT JOIN pgflow.step_states AS ss
    ON ss.run_id = :run_id AND ss.step_slug = s.step_slug
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(grouped.status, grouped.tasks) AS by_status
    FROM (
        SELECT t.status, count(*) AS tasks
        FROM pgflow.step_tasks AS t
        WHERE t.run_id = :run_id AND t.step_slug = s.step_slug
        GROUP BY t.status
    ) AS grouped
) AS counts ON true
WHERE s.flow_slug = :flow_slug
ORDER BY s.step_index;

-- name: dashboard_run_tasks
-- description: A run's first :per_step tasks of each step (by task index), values cut at :preview_chars.
SELECT
    s.step_slug,
    t.task_index,
    t.status,
    t.attempts_count,
    t.queued_at,
    t.started_at,
    t.completed_at,
    t.failed_at,
    t.last_worker_id,
    left(CAST(t.output AS text), :preview_chars) AS output_preview,
    length(CAST(t.output AS text)) AS output_chars,
    left(t.error_message, :preview_chars) AS error_preview,
    length(t.error_message) AS error_chars
FROM pgflow.steps AS s
CROSS JOIN LATERAL (
    SELECT *
    FROM pgflow.step_tasks AS task
    WHERE task.run_id = :run_id AND task.step_slug = s.step_slug
    ORDER BY task.task_index
    LIMIT :per_step
) AS t
WHERE s.flow_slug = :flow_slug
ORDER BY s.step_index, t.task_index;

-- name: dashboard_step_tasks_page
-- description: One step's tasks after task index :after_index (keyset), only those in :status when given, values cut at :preview_chars.
SELECT
    t.step_slug,
    t.task_index,
    t.status,
    t.attempts_count,
    t.queued_at,
    t.started_at,
    t.completed_at,
    t.failed_at,
    t.last_worker_id,
    left(CAST(t.output AS text), :preview_chars) AS output_preview,
    length(CAST(t.output AS text)) AS output_chars,
    left(t.error_message, :preview_chars) AS error_preview,
    length(t.error_message) AS error_chars
FROM pgflow.step_tasks AS t
WHERE t.run_id = :run_id AND t.step_slug = :step_slug AND t.task_index > :after_index
  AND (CAST(:status AS text) IS NULL OR t.status = CAST(:status AS text))
ORDER BY t.task_index
LIMIT :limit;

-- name: dashboard_run_value
-- description: A run's whole input or output (:which is 'input' or 'output') as JSON, or no row.
SELECT CASE CAST(:which AS text) WHEN 'input' THEN r.input ELSE r.output END AS value
FROM pgflow.runs AS r
WHERE r.run_id = :run_id;

-- name: dashboard_task_value
-- description: One task's whole output (JSON) and error message, or no row.
SELECT t.output, t.error_message
FROM pgflow.step_tasks AS t
WHERE t.run_id = :run_id AND t.step_slug = :step_slug AND t.task_index = :task_index;

-- name: dashboard_step_error
-- description: One step state's whole error message, or no row.
SELECT ss.error_message
FROM pgflow.step_states AS ss
WHERE ss.run_id = :run_id AND ss.step_slug = :step_slug;

-- name: dashboard_workers_page
-- description: Worker rows, latest heartbeat first, after the keyset (:after_heartbeat, :after_worker_id); state and tasks completed since :since.
SELECT
    w.worker_id,
    w.queue_name,
    w.function_name,
    w.started_at,
    w.last_heartbeat_at,
    w.deprecated_at,
    CASE
        WHEN w.deprecated_at IS NOT NULL THEN 'stopped'
        WHEN w.last_heartbeat_at >= now() - make_interval(secs => :stale_seconds) THEN 'alive'
        ELSE 'stale'
    END AS state,
    (SELECT count(*) FROM pgflow.step_tasks AS t
     WHERE t.last_worker_id = w.worker_id
       AND t.status = 'completed'
       AND t.completed_at >= :since) AS tasks_done
FROM pgflow.workers AS w
WHERE CAST(:after_heartbeat AS timestamptz) IS NULL
   OR (w.last_heartbeat_at, w.worker_id)
      < (CAST(:after_heartbeat AS timestamptz), CAST(:after_worker_id AS uuid))
ORDER BY w.last_heartbeat_at DESC, w.worker_id DESC
LIMIT :limit;

-- name: dashboard_schedule_last_runs
-- description: Each schedule's latest fire (cron tick or manual trigger) with its run's status as the dashboard shows it ('cancelled' apart from 'failed'; NULL once pruned).
SELECT DISTINCT ON (sf.schedule_name)
    sf.schedule_name,
    sf.run_id,
    sf.fired_at,
    sf.manual,
    CASE WHEN c.run_id IS NOT NULL THEN 'cancelled' ELSE r.status END AS status
FROM pgflow_python.schedule_fires AS sf
LEFT JOIN pgflow.runs AS r ON r.run_id = sf.run_id
LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = sf.run_id
ORDER BY sf.schedule_name, sf.fired_at DESC;
