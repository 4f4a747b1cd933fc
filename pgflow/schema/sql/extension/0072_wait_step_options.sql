-- Migrations change a wait step's timeout and on_timeout in place (alembic_pgflow's
-- update_flow_options); extension/0070_wait_steps.sql holds the steps themselves.

-- Migrations change a wait step's options like other step options: the keys named in `options`
-- (wait_timeout, on_timeout; the DSL's names) are set, null resets one to its default, keys not
-- named are kept. Applies to waits that start afterwards.
CREATE OR REPLACE FUNCTION pgflow_python.set_wait_step_options(
    flow_slug text,
    step_slug text,
    options jsonb
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    unknown text[];
    current pgflow_python.wait_steps%ROWTYPE;
BEGIN
    SELECT array_agg(key ORDER BY key) INTO unknown
    FROM jsonb_object_keys(options) AS key
    WHERE key NOT IN ('wait_timeout', 'on_timeout');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown wait step options: %', array_to_string(unknown, ', ')
            USING HINT = 'wait step options are wait_timeout and on_timeout';
    END IF;
    SELECT * INTO current FROM pgflow_python.wait_steps AS w
    WHERE w.flow_slug = set_wait_step_options.flow_slug
      AND w.step_slug = set_wait_step_options.step_slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step "%" of flow "%" is not a wait step', step_slug, flow_slug
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pgflow_python.set_wait_step(
        flow_slug,
        step_slug,
        CASE WHEN options ? 'wait_timeout' THEN (options ->> 'wait_timeout')::integer
             ELSE current.timeout_seconds END,
        CASE WHEN options ? 'on_timeout' THEN options ->> 'on_timeout' ELSE current.on_timeout END
    );
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_wait_step_options(text, text, jsonb) IS
    'pgflow-python: update some of a wait step''s options; used by migrations.';

-- A client role (pgflow db grant --client: a web app) starts runs and signals waits, but may not
-- record task outcomes itself (no DELETE on queues, no INSERT on their archives), which
-- complete_task needs. So the functions a client's start_flow and signal reach run as their
-- owner, the role that applied the migrations: signal() (it completes a waiting task through
-- complete_task), the early-signal trigger, the wait gate and the deadline writers (tables a
-- client does not otherwise write). Each acts only on the run it is given, with search_path ''.
ALTER FUNCTION pgflow_python.signal(uuid, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION pgflow_python.apply_early_signal() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.begin_wait() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.apply_run_timeout() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.set_run_deadline(uuid, timestamptz) SECURITY DEFINER;
