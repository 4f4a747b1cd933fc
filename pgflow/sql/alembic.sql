-- Queries of the Alembic plugin: reading flow definitions back from the database, and the
-- flow-admin functions of pgflow/schema/sql/extension/0002_flow_admin.sql.

-- name: flows_table_present
-- description: Whether pgflow.flows exists (false before the schema is installed).
SELECT to_regclass('pgflow.flows') IS NOT NULL AS present

-- name: stored_flows
-- description: Every stored flow with its type and options.
-- flow_type is our additive column; to_jsonb reads it without failing where it is absent.
SELECT f.flow_slug,
       coalesce(to_jsonb(f) ->> 'flow_type', 'flow') AS flow_type,
       f.opt_max_attempts AS max_attempts,
       f.opt_base_delay AS base_delay,
       f.opt_timeout AS timeout
FROM pgflow.flows AS f
ORDER BY f.flow_slug

-- name: stored_steps
-- description: Every stored step with its type and options, in declaration order per flow.
SELECT s.flow_slug,
       s.step_slug,
       s.step_type,
       s.opt_max_attempts AS max_attempts,
       s.opt_base_delay AS base_delay,
       s.opt_timeout AS timeout,
       s.opt_start_delay AS start_delay
FROM pgflow.steps AS s
ORDER BY s.flow_slug, s.step_index

-- name: step_conditions_present
-- description: Whether this database has our step_conditions table (extension/0061_step_conditions.sql).
SELECT to_regclass('pgflow_python.step_conditions') IS NOT NULL

-- name: waits_present
-- description: Whether this database has our wait_steps and flow_run_timeouts tables (extension/0070, 0071).
SELECT to_regclass('pgflow_python.wait_steps') IS NOT NULL
   AND to_regclass('pgflow_python.flow_run_timeouts') IS NOT NULL

-- name: stored_wait_steps
-- description: Every wait step, under the DSL's names (extension/0070_wait_steps.sql).
SELECT w.flow_slug, w.step_slug, w.wait_kind AS wait, w.timeout_seconds AS wait_timeout,
       w.on_timeout
FROM pgflow_python.wait_steps AS w

-- name: stored_run_timeouts
-- description: Every flow's run_timeout in seconds (extension/0071_deadlines.sql).
SELECT t.flow_slug, t.run_timeout_seconds AS run_timeout
FROM pgflow_python.flow_run_timeouts AS t

-- name: set_wait_step_options
-- description: Change a wait step's timeout and on_timeout (extension/0072_wait_step_options.sql); keys not given are kept.
SELECT 1 FROM pgflow_python.set_wait_step_options(:flow_slug, :step_slug, CAST(:options AS jsonb))

-- name: set_flow_run_timeout
-- description: Set (NULL: remove) a flow's run_timeout (extension/0071_deadlines.sql).
SELECT 1 FROM pgflow_python.set_flow_run_timeout(:flow_slug, CAST(:run_timeout AS integer))

-- name: stored_conditions
-- description: Every step's condition options, under the DSL's names (extension/0061_step_conditions.sql).
SELECT c.flow_slug,
       c.step_slug,
       c.required_input_pattern AS if_,
       c.forbidden_input_pattern AS if_not,
       c.when_unmet,
       c.when_exhausted AS retries_exhausted
FROM pgflow_python.step_conditions AS c

-- name: set_step_condition_options
-- description: Change a stored step's condition options (extension/0061_step_conditions.sql).
SELECT pgflow_python.set_step_condition_options(:flow_slug, :step_slug, CAST(:options AS jsonb))

-- name: concurrency_limits_present
-- description: Whether this database has our concurrency_limits table (extension/0080_concurrency_limits.sql).
SELECT to_regclass('pgflow_python.concurrency_limits') IS NOT NULL

-- name: stored_concurrency
-- description: Every flow's concurrency limit (extension/0080_concurrency_limits.sql), as Concurrency.to_dict.
SELECT l.flow_slug,
       CASE WHEN l.key_path IS NULL THEN jsonb_build_object('limit', l.max_running)
            ELSE jsonb_build_object('limit', l.max_running, 'key', to_jsonb(l.key_path)) END
           AS concurrency
FROM pgflow_python.concurrency_limits AS l
WHERE l.step_slug = ''

-- name: set_concurrency_limit
-- description: Set or remove (limit NULL) a flow's (step_slug NULL) or a step's concurrency limit (extension/0080_concurrency_limits.sql).
SELECT pgflow_python.set_concurrency_limit(
    :flow_slug, CAST(:step_slug AS text), :max_running, CAST(:key_path AS text[]))

-- name: flow_priorities_present
-- description: Whether this database has our flow_priorities table (extension/0081_priorities.sql).
SELECT to_regclass('pgflow_python.flow_priorities') IS NOT NULL

-- name: stored_priorities
-- description: Every flow's default priority (extension/0081_priorities.sql).
SELECT f.flow_slug, f.priority::integer AS priority
FROM pgflow_python.flow_priorities AS f

-- name: set_flow_priority
-- description: Set or remove (priority NULL) a flow's default priority (extension/0081_priorities.sql).
SELECT pgflow_python.set_flow_priority(:flow_slug, CAST(:priority AS integer))

-- name: rate_limits_present
-- description: Whether this database has our rate_limits table (extension/0082_rate_limits.sql).
SELECT to_regclass('pgflow_python.rate_limits') IS NOT NULL

-- name: stored_rate_limits
-- description: Every flow's rate limit (extension/0082_rate_limits.sql), as RateLimit.to_dict.
SELECT l.flow_slug,
       jsonb_strip_nulls(jsonb_build_object(
           'limit', l.max_starts,
           'per', extract(epoch FROM l.period)::float8,
           'key', to_jsonb(l.key_path),
           'name', CASE WHEN l.budget LIKE ':%' THEN NULL ELSE l.budget END)) AS rate_limit
FROM pgflow_python.rate_limits AS l
WHERE l.step_slug = ''

-- name: set_rate_limit
-- description: Set or remove (limit NULL) a flow's (step_slug NULL) or a step's rate limit (extension/0082_rate_limits.sql).
SELECT pgflow_python.set_rate_limit(
    :flow_slug, CAST(:step_slug AS text), CAST(:max_starts AS integer),
    make_interval(secs => CAST(:seconds AS float8)), CAST(:key_path AS text[]),
    CAST(:name AS text))

-- name: stored_step_limits
-- description: Every step's own concurrency and rate limits (extension/0080, 0082), as Concurrency.to_dict / RateLimit.to_dict (NULL: none).
SELECT coalesce(c.flow_slug, r.flow_slug) AS flow_slug,
       coalesce(c.step_slug, r.step_slug) AS step_slug,
       CASE WHEN c.flow_slug IS NULL THEN NULL
            WHEN c.key_path IS NULL THEN jsonb_build_object('limit', c.max_running)
            ELSE jsonb_build_object('limit', c.max_running, 'key', to_jsonb(c.key_path))
       END AS concurrency,
       CASE WHEN r.flow_slug IS NULL THEN NULL
            ELSE jsonb_strip_nulls(jsonb_build_object(
                'limit', r.max_starts,
                'per', extract(epoch FROM r.period)::float8,
                'key', to_jsonb(r.key_path),
                'name', CASE WHEN r.budget LIKE ':%' THEN NULL ELSE r.budget END))
       END AS rate_limit
FROM (SELECT * FROM pgflow_python.concurrency_limits WHERE step_slug <> '') AS c
FULL JOIN (SELECT * FROM pgflow_python.rate_limits WHERE step_slug <> '') AS r
    ON r.flow_slug = c.flow_slug AND r.step_slug = c.step_slug

-- name: stored_deps
-- description: Dependencies in the order their steps were declared (the deps table keeps no order).
SELECT d.flow_slug, d.step_slug, d.dep_slug
FROM pgflow.deps AS d
JOIN pgflow.steps AS s ON s.flow_slug = d.flow_slug AND s.step_slug = d.dep_slug
ORDER BY d.flow_slug, d.step_slug, s.step_index

-- name: run_counts
-- description: Per flow, how many runs it has and how many are still started.
SELECT r.flow_slug,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'started') AS started
FROM pgflow.runs AS r
GROUP BY r.flow_slug

-- name: set_flow_options
-- description: Change a stored flow's options (extension/0002_flow_admin.sql).
SELECT 1 FROM pgflow_python.set_flow_options(:flow_slug, CAST(:options AS jsonb))

-- name: set_step_options
-- description: Change a stored step's options (extension/0002_flow_admin.sql).
SELECT 1 FROM pgflow_python.set_step_options(:flow_slug, :step_slug, CAST(:options AS jsonb))

-- name: delete_flow
-- description: Delete a flow, its queue and (when :delete_runs) its runs (extension/0002_flow_admin.sql).
SELECT pgflow_python.delete_flow(:flow_slug, delete_runs => :delete_runs)

-- name: subflows_present
-- description: Whether this database has our subflow_steps table (extension/0073_subflows.sql).
SELECT to_regclass('pgflow_python.subflow_steps') IS NOT NULL

-- name: stored_subflow_steps
-- description: Every subflow step and the flow it runs (extension/0073_subflows.sql).
SELECT s.flow_slug, s.step_slug, s.child_flow_slug AS subflow
FROM pgflow_python.subflow_steps AS s
