-- Changing and deleting flow definitions. Upstream's create_flow/add_step ignore a flow or step
-- that exists (new options are silently dropped) and upstream has no delete, so migrations (the
-- Alembic plugin) need these. Additive only: nothing upstream calls them.

-- What create_flow uses when an option is omitted, read from its signature so that a flow reset
-- to "the default" ends up exactly like a flow created without that option (0.8.1: 3, 5, 60;
-- note the base_delay column default is 1, not create_flow's 5).
CREATE OR REPLACE FUNCTION pgflow_python.create_flow_default(option text)
RETURNS integer
LANGUAGE sql
STABLE
SET search_path = ''
AS $$
    SELECT pg_catalog.pg_get_function_arg_default(p.oid, a.position::integer)::integer
    FROM pg_catalog.pg_proc p
    CROSS JOIN LATERAL unnest(p.proargnames) WITH ORDINALITY AS a(name, position)
    WHERE p.pronamespace = 'pgflow'::regnamespace
      AND p.proname = 'create_flow'
      AND a.name = create_flow_default.option
    ORDER BY p.pronargs DESC
    LIMIT 1
$$;

-- Sets the flow options named in `options` (a JSON object); null resets an option to
-- create_flow's default, since the flow columns are NOT NULL. Options not named are kept.
CREATE OR REPLACE FUNCTION pgflow_python.set_flow_options(flow_slug text, options jsonb)
RETURNS pgflow.flows
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    unknown text[];
    result pgflow.flows;
BEGIN
    SELECT array_agg(key ORDER BY key) INTO unknown
    FROM jsonb_object_keys(options) AS key
    WHERE key NOT IN ('max_attempts', 'base_delay', 'timeout', 'flow_type');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown flow options: %', array_to_string(unknown, ', ')
            USING HINT = 'flow options are max_attempts, base_delay, timeout and flow_type';
    END IF;

    UPDATE pgflow.flows AS f SET
        opt_max_attempts = CASE WHEN options ? 'max_attempts' THEN coalesce(
            (options ->> 'max_attempts')::integer,
            pgflow_python.create_flow_default('max_attempts')) ELSE f.opt_max_attempts END,
        opt_base_delay = CASE WHEN options ? 'base_delay' THEN coalesce(
            (options ->> 'base_delay')::integer,
            pgflow_python.create_flow_default('base_delay')) ELSE f.opt_base_delay END,
        opt_timeout = CASE WHEN options ? 'timeout' THEN coalesce(
            (options ->> 'timeout')::integer,
            pgflow_python.create_flow_default('timeout')) ELSE f.opt_timeout END,
        flow_type = CASE WHEN options ? 'flow_type'
            THEN coalesce(options ->> 'flow_type', 'flow') ELSE f.flow_type END
    WHERE f.flow_slug = set_flow_options.flow_slug
    RETURNING * INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow "%" does not exist', flow_slug USING ERRCODE = 'no_data_found';
    END IF;
    RETURN result;
END;
$$;

-- Sets the step options named in `options`; null means "inherit the flow's value" (the step
-- columns are nullable), as when add_step is called without that option.
CREATE OR REPLACE FUNCTION pgflow_python.set_step_options(
    flow_slug text,
    step_slug text,
    options jsonb
)
RETURNS pgflow.steps
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    unknown text[];
    result pgflow.steps;
BEGIN
    SELECT array_agg(key ORDER BY key) INTO unknown
    FROM jsonb_object_keys(options) AS key
    WHERE key NOT IN ('max_attempts', 'base_delay', 'timeout', 'start_delay');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown step options: %', array_to_string(unknown, ', ')
            USING HINT = 'step options are max_attempts, base_delay, timeout and start_delay';
    END IF;

    UPDATE pgflow.steps AS s SET
        opt_max_attempts = CASE WHEN options ? 'max_attempts'
            THEN (options ->> 'max_attempts')::integer ELSE s.opt_max_attempts END,
        opt_base_delay = CASE WHEN options ? 'base_delay'
            THEN (options ->> 'base_delay')::integer ELSE s.opt_base_delay END,
        opt_timeout = CASE WHEN options ? 'timeout'
            THEN (options ->> 'timeout')::integer ELSE s.opt_timeout END,
        opt_start_delay = CASE WHEN options ? 'start_delay'
            THEN (options ->> 'start_delay')::integer ELSE s.opt_start_delay END
    WHERE s.flow_slug = set_step_options.flow_slug
      AND s.step_slug = set_step_options.step_slug
    RETURNING * INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, step_slug
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN result;
END;
$$;

-- Deletes a flow: its runs (with their step states and tasks), steps, dependencies, the flow row
-- and its pgmq queue. Refuses while runs exist unless delete_runs is true, so that losing run
-- history is always an explicit decision. Returns the number of runs deleted.
CREATE OR REPLACE FUNCTION pgflow_python.delete_flow(flow_slug text, delete_runs boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run_count bigint;
    started_count bigint;
BEGIN
    -- Locking the flow row blocks start_flow (its foreign-key check) until we commit, so no run
    -- can slip in between the count and the delete.
    PERFORM 1 FROM pgflow.flows AS f WHERE f.flow_slug = delete_flow.flow_slug FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow "%" does not exist', flow_slug USING ERRCODE = 'no_data_found';
    END IF;

    SELECT count(*), count(*) FILTER (WHERE r.status = 'started')
    INTO run_count, started_count
    FROM pgflow.runs AS r
    WHERE r.flow_slug = delete_flow.flow_slug;
    IF run_count > 0 AND NOT delete_runs THEN
        RAISE EXCEPTION 'flow "%" has % runs (% still started); deleting the flow deletes them',
            flow_slug, run_count, started_count
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'pass delete_runs => true to delete the flow together with its runs';
    END IF;

    DELETE FROM pgflow.step_tasks AS t WHERE t.flow_slug = delete_flow.flow_slug;
    DELETE FROM pgflow.step_states AS s WHERE s.flow_slug = delete_flow.flow_slug;
    DELETE FROM pgflow.runs AS r WHERE r.flow_slug = delete_flow.flow_slug;
    DELETE FROM pgflow.deps AS d WHERE d.flow_slug = delete_flow.flow_slug;
    DELETE FROM pgflow.steps AS s WHERE s.flow_slug = delete_flow.flow_slug;
    DELETE FROM pgflow.flows AS f WHERE f.flow_slug = delete_flow.flow_slug;
    IF EXISTS (SELECT 1 FROM pgmq.meta AS m WHERE m.queue_name = delete_flow.flow_slug) THEN
        PERFORM pgmq.drop_queue(flow_slug);
    END IF;
    RETURN run_count;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_flow_options(text, jsonb) IS
    'pgflow-python: update flow options (null = create_flow default); used by migrations.';
COMMENT ON FUNCTION pgflow_python.set_step_options(text, text, jsonb) IS
    'pgflow-python: update step options (null = inherit from the flow); used by migrations.';
COMMENT ON FUNCTION pgflow_python.delete_flow(text, boolean) IS
    'pgflow-python: delete a flow, its queue and (only with delete_runs) its runs.';
