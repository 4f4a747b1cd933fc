-- Queries of the OpenTelemetry instrumentation (pgflow/otel.py), run only when it is enabled.

-- name: otel_run_trace_contexts
-- description: The stored trace contexts of a batch of runs (runs started without one have no row).
SELECT run_id, traceparent, tracestate
FROM pgflow_python.run_trace_contexts
WHERE run_id = ANY(:run_ids);

-- name: otel_queue_metrics
-- description: Per flow queue: messages, ready messages, oldest ready and oldest message age in seconds.
SELECT flow_slug, messages, ready_messages, oldest_ready_seconds, oldest_message_seconds
FROM pgflow_python.queue_metrics();
