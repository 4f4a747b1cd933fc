-- Queries the worker runs. Upstream's functions do the orchestration; these only feed them.

-- name: register_worker
-- description: One row per (worker process, flow queue): upstream start_tasks needs it (foreign key).
INSERT INTO pgflow.workers (worker_id, queue_name, function_name)
VALUES (:worker_id, :queue_name, :function_name)
ON CONFLICT (worker_id) DO UPDATE SET last_heartbeat_at = now(), deprecated_at = NULL

-- name: heartbeat
-- description: Keeps the rows alive; a non-null deprecated_at asks this worker to stop claiming.
UPDATE pgflow.workers
SET last_heartbeat_at = now()
WHERE worker_id = ANY(:worker_ids)
RETURNING worker_id, deprecated_at

-- name: mark_stopped
-- description: Mark this worker's rows stopped (deprecated_at) when it shuts down.
UPDATE pgflow.workers
SET deprecated_at = coalesce(deprecated_at, now()), last_heartbeat_at = now()
WHERE worker_id = ANY(:worker_ids)

-- name: claim_task_batch
-- description: Claim up to :qty tasks of a flow for this worker; one row per started task.
-- pgflow_python.claim_task_batch (extension/0012_claim_task_batch.sql) reads up to :qty messages
-- with a short reservation :vt, starts their tasks (upstream's start_tasks with a cached plan),
-- and reserves each for its timeout plus :margin.
SELECT task, task_timeout AS timeout, attempt
FROM pgflow_python.claim_task_batch(:flow_slug, :worker_id, :qty, :vt, :margin)

-- name: complete_task_batch
-- description: Record a batch of task outputs set-based; rows: positions recorded, runs ended.
-- A batch of completions in one transaction, each statement once per batch, with upstream's
-- semantics (extension/0010_complete_task_batch.sql). Rows with `recorded` set give the 1-based
-- positions of the tasks this worker still held, which are the ones recorded; rows with
-- `recorded` NULL are runs the batch ended (id, flow, status, started and ended at).
SELECT recorded, ended_run_id, ended_flow_slug, ended_status, run_started_at, run_ended_at
FROM pgflow_python.complete_task_batch(
    :worker_id, :run_ids, :step_slugs, :task_indexes, CAST(:outputs AS jsonb[])
)

-- name: fail_task_outcome
-- description: Record a failed attempt with its traceback, if this worker still holds the task (extension/0040_task_failures.sql); upstream's fail_task retries it or fails the step and the run (or skips the step: retries_exhausted, extension/0062_failure_outcomes.sql). Returns the attempt, the retry time, whether this report failed the run, the run's start and failure times, whether it skipped the step and when it completed the run; no row when the task was not this worker's any more.
-- Fenced: after a stalled-task recovery gave the task to another worker, a late report must
-- not count (upstream does not check who reports). retryable = false fails the step now.
SELECT attempt, retry_at, run_failed, run_started_at, run_failed_at, step_skipped,
       run_completed_at
FROM pgflow_python.fail_task_outcome(
    :worker_id, :run_id, :step_slug, :task_index, :error_message, :error_type, :traceback,
    :retryable
)

-- name: registered_flow_slugs
-- description: The slugs of the flows stored, to suggest one for a slug that names none (did you mean).
SELECT f.flow_slug FROM pgflow.flows AS f ORDER BY f.flow_slug;

-- name: registered_flow
-- description: A flow as stored, one row per step (flow columns repeated), to compare with its class; no rows when it is not stored.
SELECT f.flow_type,
       f.opt_max_attempts AS flow_max_attempts,
       f.opt_base_delay AS flow_base_delay,
       f.opt_timeout AS flow_timeout,
       s.step_slug, s.step_type,
       s.opt_max_attempts AS max_attempts,
       s.opt_base_delay AS base_delay,
       s.opt_timeout AS timeout,
       s.opt_start_delay AS start_delay,
       coalesce(ARRAY(SELECT d.dep_slug FROM pgflow.deps d
                      WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug
                      ORDER BY d.dep_slug), '{}') AS depends_on
FROM pgflow.flows f
JOIN pgflow.steps s ON s.flow_slug = f.flow_slug
WHERE f.flow_slug = :flow_slug
ORDER BY s.step_index

-- name: create_flow_defaults
-- description: What pgflow.create_flow uses for an omitted option, read from its signature (0.8.1: 3, 5, 60).
SELECT DISTINCT ON (a.name)
       a.name,
       pg_get_function_arg_default(p.oid, a.position::integer)::integer AS value
FROM pg_proc AS p
CROSS JOIN LATERAL unnest(p.proargnames) WITH ORDINALITY AS a(name, position)
WHERE p.pronamespace = 'pgflow'::regnamespace
  AND p.proname = 'create_flow'
  AND a.name IN ('max_attempts', 'base_delay', 'timeout')
ORDER BY a.name, p.pronargs DESC

-- name: ensure_wakeup_trigger
-- description: Install the wake-up trigger on a flow's queue table (extension/0003_worker_wakeups.sql).
SELECT pgflow_python.ensure_wakeup_trigger(:queue_name)

-- name: listen_for_wakeups
-- description: Subscribe to the wake-ups the queue triggers of extension/0003_worker_wakeups.sql send (payload: queue).
LISTEN pgflow_wakeup

-- name: next_visible_at
-- description: When the next message of a queue becomes visible (NULL when the queue is empty).
SELECT pgflow_python.next_visible_at(:queue_name) AS at

-- name: recover_stalled_tasks
-- description: Requeue or fail the tasks of workers whose heartbeats stopped (extension/0004_stalled_task_recovery.sql).
SELECT run_id, step_slug, task_index, action
FROM pgflow_python.recover_stalled_tasks(:heartbeat_timeout, :max_requeues)

-- name: cancelled_runs
-- description: Which of the runs a worker is running tasks of were cancelled (its cancel watcher asks while tasks run).
SELECT c.run_id
FROM pgflow_python.run_cancellations AS c
JOIN pgflow.runs AS r ON r.run_id = c.run_id AND r.status = 'failed'
WHERE c.run_id = ANY(:run_ids)

-- name: run_input
-- description: The flow input, for handlers of steps whose task input does not carry it (ctx.flow_input()).
SELECT input FROM pgflow.runs WHERE run_id = :run_id

-- name: refresh_statistics
-- description: Analyze pgflow's tables and these queues where autovacuum does not run (extension/0011_statistics_upkeep.sql).
SELECT analyzed_table, changed_rows
FROM pgflow_python.refresh_statistics(CAST(:queue_names AS text[]))

-- name: claim_tasks_isolated
-- description: Claim like claim_task_batch, one message at a time, failing the tasks that cannot be started (extension/0007).
SELECT task, task_timeout AS timeout, attempt, rejection
FROM pgflow_python.claim_tasks_isolated(:flow_slug, :worker_id, :qty, :vt, :margin)

-- name: release_unstarted_tasks
-- description: Give back this worker's started tasks that it is not running, without spending an attempt (extension/0007).
SELECT run_id, step_slug, task_index
FROM pgflow_python.release_unstarted_tasks(:worker_id, :run_ids, :step_slugs, :task_indexes)

-- name: enforce_deadlines
-- description: Time out waits and cancel runs past their deadline, at most :row_limit of each (extension/0071); one row per action, a wait's with since when it waited and for how long (ms).
-- The join reads each wait as it was when the statement began (its start time is not changed
-- by the sweep), for the wait.ended events.
SELECT d.kind, d.run_id, d.step_slug, d.action, w.waiting_since,
       1000 * extract(epoch FROM clock_timestamp() - w.waiting_since) AS waited_ms
FROM pgflow_python.enforce_deadlines(:row_limit) AS d
LEFT JOIN pgflow_python.waits AS w
    ON w.run_id = d.run_id AND w.step_slug = d.step_slug AND w.task_index = 0
