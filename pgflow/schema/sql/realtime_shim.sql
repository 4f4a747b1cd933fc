-- Stand-in for Supabase's realtime.send on plain PostgreSQL. Upstream pgflow calls it on every
-- run and step transition; here it becomes a NOTIFY on channel "pgflow". Only identifiers and
-- statuses are sent, never outputs, so a payload stays far below PostgreSQL's 8000-byte limit.
CREATE SCHEMA IF NOT EXISTS realtime;

CREATE OR REPLACE FUNCTION realtime.send(
    payload jsonb,
    event text,
    topic text,
    private boolean DEFAULT true
) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    message text;
BEGIN
    message := jsonb_strip_nulls(jsonb_build_object(
        'topic', topic,
        'event', event,
        'run_id', payload -> 'run_id',
        'flow_slug', payload -> 'flow_slug',
        'step_slug', payload -> 'step_slug',
        'status', payload -> 'status'
    ))::text;
    -- Slugs are bounded by upstream's is_valid_slug, so this only guards against future fields.
    IF octet_length(message) > 7900 THEN
        message := jsonb_build_object('topic', left(topic, 100), 'event', left(event, 300))::text;
    END IF;
    PERFORM pg_notify('pgflow', message);
END;
$$;

COMMENT ON FUNCTION realtime.send(jsonb, text, text, boolean) IS
    'pgflow-python shim: compact NOTIFY on channel pgflow (no realtime service on this server).';
