-- The trace context a run was started in (W3C Trace Context: traceparent and tracestate), so
-- that every task span, in whichever process and language runs the task, links to the span that
-- started the run. Written by the client in the statement that starts the run, only when
-- OpenTelemetry instrumentation is enabled (pgflow-python[otel]); read by workers once per
-- claimed batch. Plain text columns: any language's propagator can read and write them.
--
-- No foreign key to pgflow.runs (see task_requeues); rows are deleted with their runs by pruning.
CREATE TABLE IF NOT EXISTS pgflow_python.run_trace_contexts (
    run_id uuid PRIMARY KEY,
    traceparent text NOT NULL,
    tracestate text,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgflow_python.run_trace_contexts IS
    'pgflow-python: the W3C trace context each run was started in, for task spans to link to.';
