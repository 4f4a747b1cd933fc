-- Subflow steps (extension/0073_subflows.sql): the worker's subflow starter and the run views.

-- name: claim_child_starts
-- description: Lease up to :row_limit pending child starts of subflow steps of :flow_slugs for :lease_seconds; each with its task's input and the run's input.
SELECT run_id, flow_slug, step_slug, task_index, attempt, child_flow_slug, input, flow_input
FROM pgflow_python.claim_child_starts(:flow_slugs, :lease_seconds, :row_limit)

-- name: start_child
-- description: Start the child run of a subflow task with :child_input, unless one was started; outcome and the child's run id.
SELECT outcome, child_run_id
FROM pgflow_python.start_child(:run_id, :step_slug, :task_index, CAST(:child_input AS jsonb))

-- name: store_child_trace_context
-- description: The trace context child run :run_id was started in (the worker's pgflow.start_flow span; tracing on only), as a client's start_flow stores one.
INSERT INTO pgflow_python.run_trace_contexts (run_id, traceparent, tracestate)
VALUES (:run_id, :traceparent, :tracestate)
ON CONFLICT (run_id) DO NOTHING

-- name: child_start_failed
-- description: A subflow step's method failed on attempt :attempt: retry the start later or fail the step and run; outcome and retry time.
SELECT outcome, retry_at
FROM pgflow_python.child_start_failed(:run_id, :step_slug, :task_index, :attempt, :error_message)

-- name: release_child_starts
-- description: Give back unused the leases of these pending child starts (still leased on attempt :attempts): due again at once, the attempt not counted; the starts released.
UPDATE pgflow_python.subflow_children AS c
SET lease_until = NULL, start_attempts = c.start_attempts - 1
FROM unnest(CAST(:run_ids AS uuid[]), CAST(:step_slugs AS text[]),
            CAST(:task_indexes AS integer[]), CAST(:attempts AS integer[]))
     AS u(run_id, step_slug, task_index, attempt)
WHERE c.run_id = u.run_id AND c.step_slug = u.step_slug AND c.task_index = u.task_index
  AND c.start_attempts = u.attempt AND c.child_run_id IS NULL AND c.ended_at IS NULL
  AND c.lease_until > clock_timestamp()
RETURNING c.run_id

-- name: take_ended_children
-- description: Up to :row_limit ended child runs of subflow steps of :flow_slugs not yet logged, each taken once.
SELECT run_id, flow_slug, step_slug, task_index, child_flow_slug, child_run_id, outcome,
       ended_at, child_started_at
FROM pgflow_python.take_ended_children(:flow_slugs, :row_limit)

-- name: subflow_links
-- description: The parent of run :run_id (as a child) and its children (as a parent), oldest first.
SELECT 'parent' AS relation, c.run_id AS other_run_id, c.flow_slug AS other_flow_slug,
       c.step_slug, c.task_index, r.status AS other_status, c.outcome, c.child_started_at
FROM pgflow_python.subflow_children AS c
LEFT JOIN pgflow.runs AS r ON r.run_id = c.run_id
WHERE c.child_run_id = :run_id
UNION ALL
SELECT 'child', c.child_run_id, c.child_flow_slug, c.step_slug, c.task_index, r.status,
       c.outcome, c.child_started_at
FROM pgflow_python.subflow_children AS c
LEFT JOIN pgflow.runs AS r ON r.run_id = c.child_run_id
WHERE c.run_id = :run_id
ORDER BY relation DESC, step_slug, task_index
