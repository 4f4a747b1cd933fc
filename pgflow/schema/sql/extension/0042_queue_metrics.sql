-- Queue figures for metrics (pgflow.otel's gauges): per flow queue, how many messages it holds,
-- how many are visible (ready to be claimed), how long the oldest visible one has been ready and
-- how old the oldest message is. A visible message that waits long means no worker takes it; an
-- old message that is not visible is a delayed retry or a task in flight.
--
-- pgmq's own metrics() lacks the ready age and varies between pgmq versions; this reads the
-- queue tables directly, one statement per flow. A flow whose queue table is missing is skipped.
CREATE OR REPLACE FUNCTION pgflow_python.queue_metrics()
RETURNS TABLE (
    flow_slug text,
    messages bigint,
    ready_messages bigint,
    oldest_ready_seconds double precision,
    oldest_message_seconds double precision
)
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    flow record;
BEGIN
    FOR flow IN SELECT f.flow_slug FROM pgflow.flows AS f ORDER BY f.flow_slug LOOP
        IF to_regclass(format('pgmq.%I', 'q_' || flow.flow_slug)) IS NULL THEN
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, count(*), count(*) FILTER (WHERE q.vt <= now()),'
            ' coalesce(extract(epoch FROM now() - min(q.vt) FILTER (WHERE q.vt <= now())), 0)::float8,'
            ' coalesce(extract(epoch FROM now() - min(q.enqueued_at)), 0)::float8'
            ' FROM pgmq.%I AS q',
            flow.flow_slug, 'q_' || flow.flow_slug
        );
    END LOOP;
END
$$;

COMMENT ON FUNCTION pgflow_python.queue_metrics() IS
    'pgflow-python: per flow queue: messages, ready messages, oldest ready and oldest message age.';
