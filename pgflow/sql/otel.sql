-- Queries of the OpenTelemetry instrumentation (pgflow/otel.py), run only when it is enabled.

-- name: otel_run_trace_contexts
-- description: The stored trace contexts of a batch of runs (runs started without one have no row).
SELECT run_id, traceparent, tracestate
FROM pgflow_python.run_trace_contexts
WHERE run_id = ANY(:run_ids);

-- name: otel_queue_metrics
-- description: Per flow queue: messages, ready messages, oldest ready and oldest message age in seconds, tasks held for a concurrency slot and starts booked for later by a rate limit (extension/0080, 0082).
SELECT q.flow_slug, q.messages, q.ready_messages, q.oldest_ready_seconds,
       q.oldest_message_seconds,
       (SELECT count(*) FROM pgflow_python.held_tasks AS h
        WHERE h.flow_slug = q.flow_slug)::integer AS waiting_on_limit,
       (SELECT count(*) FROM pgflow_python.rate_starts AS s
        WHERE s.flow_slug = q.flow_slug AND s.at > clock_timestamp())::integer AS waiting_on_rate
FROM pgflow_python.queue_metrics() AS q;

-- name: otel_ended_waits
-- description: The ended waits of (:run_ids[i], :step_slugs[i]) pairs: flow, task, what they waited for, when they began and ended, how, and their run's stored trace context.
SELECT
    w.run_id,
    w.step_slug,
    w.task_index,
    w.flow_slug,
    coalesce(ws.wait_kind, 'signal') AS waits_for,
    w.waiting_since,
    w.ended_at,
    w.outcome,
    tc.traceparent,
    tc.tracestate,
    CAST(NULL AS text) AS child_flow_slug,
    CAST(NULL AS uuid) AS child_run_id,
    CAST(NULL AS text) AS child_traceparent,
    CAST(NULL AS text) AS child_tracestate
FROM unnest(CAST(:run_ids AS uuid[]), CAST(:step_slugs AS text[])) AS k (run_id, step_slug)
JOIN pgflow_python.waits AS w ON w.run_id = k.run_id AND w.step_slug = k.step_slug
LEFT JOIN pgflow_python.wait_steps AS ws
    ON ws.flow_slug = w.flow_slug AND ws.step_slug = w.step_slug
LEFT JOIN pgflow_python.run_trace_contexts AS tc ON tc.run_id = w.run_id
WHERE w.ended_at IS NOT NULL
ORDER BY w.run_id, w.step_slug, w.task_index;

-- name: otel_ended_children
-- description: The ended child runs of subflow tasks (:run_ids[i], :step_slugs[i], :task_indexes[i]) of the parent, as otel_ended_waits rows (waits_for 'subflow', from the child's start to its end, outcome completed/failed/cancelled) with the child's flow, run id and stored trace context.
SELECT
    c.run_id,
    c.step_slug,
    c.task_index,
    c.flow_slug,
    'subflow' AS waits_for,
    coalesce(c.child_started_at, c.waiting_since) AS waiting_since,
    c.ended_at,
    c.outcome,
    tc.traceparent,
    tc.tracestate,
    c.child_flow_slug,
    c.child_run_id,
    cc.traceparent AS child_traceparent,
    cc.tracestate AS child_tracestate
FROM unnest(CAST(:run_ids AS uuid[]), CAST(:step_slugs AS text[]),
            CAST(:task_indexes AS integer[])) AS k (run_id, step_slug, task_index)
JOIN pgflow_python.subflow_children AS c
    ON c.run_id = k.run_id AND c.step_slug = k.step_slug AND c.task_index = k.task_index
LEFT JOIN pgflow_python.run_trace_contexts AS tc ON tc.run_id = c.run_id
LEFT JOIN pgflow_python.run_trace_contexts AS cc ON cc.run_id = c.child_run_id
WHERE c.ended_at IS NOT NULL AND c.child_run_id IS NOT NULL
ORDER BY c.run_id, c.step_slug, c.task_index;
