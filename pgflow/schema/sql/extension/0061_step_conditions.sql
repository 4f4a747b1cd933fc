-- Conditional steps and skips: upstream pgflow 0.14's `if` / `ifNot` / `whenUnmet` /
-- `retriesExhausted`, as our own SQL on 0.8.1's tables. Design, measured cost and how later
-- features hold work at the same points: README.md in this folder, "Holding and skipping ready
-- work".
--
-- Where a condition is evaluated: when a step becomes ready (status 'created', no remaining
-- dependencies), before upstream's start_ready_steps can create its tasks and send their
-- messages. Row triggers on pgflow.step_states catch that moment whoever causes it: start_flow
-- inserting a run's step states (root steps), complete_task / our complete_task_batch /
-- cascade_complete_taskless_steps decrementing remaining_deps, resume_run putting a step back.
-- Their WHEN clauses are evaluated without calling a function, so a step state that does not
-- become ready costs nothing; a step that does costs one primary-key lookup here. A step whose
-- condition is unmet is failed or skipped inside the same statement's transaction, so no
-- worker, ours or TypeScript 0.8.1, ever sees a message of it.
--
-- Storage (kept so that upstream's later migrations would still apply): the step status
-- 'skipped' (widened in 0060); the patterns and modes in our table below (upstream 0.14 keeps
-- them as columns of pgflow.steps, same names); skip_reason and skipped_at in our step_skips
-- (upstream 0.14: columns of pgflow.step_states, same names and reasons: 'condition_unmet',
-- 'handler_failed', 'dependency_skipped').
--
-- A skipped step is left as upstream would leave a step that completed without output, minus
-- the output: dependents' remaining_deps decremented (plain skip), a dependent map whose array
-- was skipped gets initial_tasks 0 (upstream's cascade then completes it with []), the run's
-- remaining_steps decremented, a step:<slug>:skipped event sent. The caller then continues as
-- it always does: start_ready_steps starts the dependents, maybe_complete_run completes a run
-- with nothing left (its output holds the leaf steps that completed).

CREATE TABLE IF NOT EXISTS pgflow_python.step_conditions (
    flow_slug text NOT NULL,
    step_slug text NOT NULL,
    required_input_pattern jsonb,
    forbidden_input_pattern jsonb,
    when_unmet text NOT NULL DEFAULT 'skip'
        CHECK (when_unmet IN ('fail', 'skip', 'skip-cascade')),
    when_exhausted text NOT NULL DEFAULT 'fail'
        CHECK (when_exhausted IN ('fail', 'skip', 'skip-cascade')),
    PRIMARY KEY (flow_slug, step_slug),
    FOREIGN KEY (flow_slug, step_slug) REFERENCES pgflow.steps (flow_slug, step_slug)
        ON DELETE CASCADE
);

COMMENT ON TABLE pgflow_python.step_conditions IS
    'pgflow-python: a step''s if_/if_not patterns, when_unmet and retries_exhausted modes.';

CREATE TABLE IF NOT EXISTS pgflow_python.step_skips (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    skip_reason text NOT NULL
        CHECK (skip_reason IN ('condition_unmet', 'handler_failed', 'dependency_skipped')),
    skipped_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, step_slug)
);

COMMENT ON TABLE pgflow_python.step_skips IS
    'pgflow-python: why and when a step of a run was skipped (its status is skipped).';

-- Sets a step's condition options; with no pattern and when_exhausted 'fail' (the defaults)
-- the step has none. Used by compiled flows and by migrations (options, not shape: a change
-- applies to steps that become ready afterwards).
CREATE OR REPLACE FUNCTION pgflow_python.set_step_condition(
    flow_slug text,
    step_slug text,
    required_input_pattern jsonb DEFAULT NULL,
    forbidden_input_pattern jsonb DEFAULT NULL,
    when_unmet text DEFAULT NULL,
    when_exhausted text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_step_condition.flow_slug
          AND s.step_slug = set_step_condition.step_slug
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, step_slug
            USING ERRCODE = 'no_data_found';
    END IF;
    IF required_input_pattern IS NULL AND forbidden_input_pattern IS NULL
       AND coalesce(when_exhausted, 'fail') = 'fail' THEN
        DELETE FROM pgflow_python.step_conditions AS c
        WHERE c.flow_slug = set_step_condition.flow_slug
          AND c.step_slug = set_step_condition.step_slug;
        RETURN;
    END IF;
    INSERT INTO pgflow_python.step_conditions AS c (
        flow_slug, step_slug, required_input_pattern, forbidden_input_pattern, when_unmet,
        when_exhausted
    )
    VALUES (
        set_step_condition.flow_slug, set_step_condition.step_slug,
        set_step_condition.required_input_pattern, set_step_condition.forbidden_input_pattern,
        coalesce(set_step_condition.when_unmet, 'skip'),
        coalesce(set_step_condition.when_exhausted, 'fail')
    )
    ON CONFLICT ON CONSTRAINT step_conditions_pkey DO UPDATE
    SET required_input_pattern = excluded.required_input_pattern,
        forbidden_input_pattern = excluded.forbidden_input_pattern,
        when_unmet = excluded.when_unmet,
        when_exhausted = excluded.when_exhausted;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_step_condition(text, text, jsonb, jsonb, text, text) IS
    'pgflow-python: set (or with defaults remove) a step''s condition options.';

-- What a step's handler receives, as its condition sees it: the run input for a root step, for
-- a dependent step the object of its completed dependencies' outputs (a skipped dependency's
-- key is absent; a map dependency's outputs as an array in task order).
CREATE OR REPLACE FUNCTION pgflow_python.condition_input(run_id uuid, flow_slug text, step_slug text)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = ''
AS $$
    SELECT CASE
        WHEN s.deps_count = 0 THEN (
            SELECT r.input FROM pgflow.runs AS r WHERE r.run_id = condition_input.run_id
        )
        ELSE coalesce((
            SELECT pg_catalog.jsonb_object_agg(
                d.dep_slug,
                CASE WHEN ds.step_type = 'map' THEN (
                         SELECT coalesce(pg_catalog.jsonb_agg(o.output ORDER BY o.task_index),
                                         '[]'::jsonb)
                         FROM pgflow.step_tasks AS o
                         WHERE o.run_id = condition_input.run_id AND o.step_slug = d.dep_slug
                           AND o.status = 'completed')
                     ELSE (
                         SELECT o.output FROM pgflow.step_tasks AS o
                         WHERE o.run_id = condition_input.run_id AND o.step_slug = d.dep_slug
                           AND o.status = 'completed'
                         LIMIT 1)
                END
            )
            FROM pgflow.deps AS d
            JOIN pgflow.steps AS ds ON ds.flow_slug = d.flow_slug AND ds.step_slug = d.dep_slug
            JOIN pgflow.step_states AS dss
              ON dss.run_id = condition_input.run_id AND dss.step_slug = d.dep_slug
            WHERE d.flow_slug = condition_input.flow_slug
              AND d.step_slug = condition_input.step_slug
              AND dss.status = 'completed'
        ), '{}'::jsonb)
    END
    FROM pgflow.steps AS s
    WHERE s.flow_slug = condition_input.flow_slug AND s.step_slug = condition_input.step_slug
$$;

-- Skips step_slug of run_id, and with cascade every step downstream of it that has not
-- started; returns how many steps were skipped. The step's own tasks, if it had started
-- (retries_exhausted), end 'skipped' and their messages leave the queue. The caller holds the
-- run's lock (upstream's functions take it first) and continues the run afterwards.
CREATE OR REPLACE FUNCTION pgflow_python.skip_step(
    run_id uuid,
    step_slug text,
    reason text,
    cascade boolean,
    error_message text DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run_flow text;
    at timestamptz := pg_catalog.clock_timestamp();
    skipped_slugs text[];
    message_ids bigint[];
BEGIN
    SELECT r.flow_slug INTO run_flow FROM pgflow.runs AS r WHERE r.run_id = skip_step.run_id;

    WITH RECURSIVE downstream(slug) AS (
        SELECT skip_step.step_slug
        UNION
        SELECT d.step_slug
        FROM pgflow.deps AS d
        JOIN downstream AS ds ON d.dep_slug = ds.slug
        WHERE skip_step.cascade AND d.flow_slug = run_flow
    ),
    skipped AS (
        UPDATE pgflow.step_states AS s
        SET status = 'skipped',
            remaining_tasks = NULL,
            error_message = CASE WHEN s.step_slug = skip_step.step_slug
                                 THEN skip_step.error_message END
        FROM downstream AS ds
        WHERE s.run_id = skip_step.run_id AND s.step_slug = ds.slug
          AND (s.status = 'created' OR (s.step_slug = skip_step.step_slug AND s.status = 'started'))
        RETURNING s.step_slug,
            realtime.send(
                pg_catalog.jsonb_build_object(
                    'event_type', 'step:skipped',
                    'run_id', s.run_id,
                    'step_slug', s.step_slug,
                    'status', 'skipped',
                    'skip_reason', CASE WHEN s.step_slug = skip_step.step_slug
                                        THEN skip_step.reason ELSE 'dependency_skipped' END,
                    'skipped_at', at
                ),
                pg_catalog.concat('step:', s.step_slug, ':skipped'),
                pg_catalog.concat('pgflow:run:', s.run_id),
                false
            ) AS _announced
    )
    SELECT array_agg(k.step_slug) INTO skipped_slugs FROM skipped AS k;
    IF skipped_slugs IS NULL THEN
        RETURN 0;
    END IF;

    INSERT INTO pgflow_python.step_skips (run_id, step_slug, skip_reason, skipped_at)
    SELECT skip_step.run_id, k.slug,
           CASE WHEN k.slug = skip_step.step_slug THEN skip_step.reason
                ELSE 'dependency_skipped' END,
           at
    FROM unnest(skipped_slugs) AS k(slug)
    ON CONFLICT ON CONSTRAINT step_skips_pkey DO UPDATE
    SET skip_reason = excluded.skip_reason, skipped_at = excluded.skipped_at;

    -- Tasks of the step (only a step that had started has any): the others still queued or
    -- started end skipped too; every message of the step leaves the queue.
    UPDATE pgflow.step_tasks AS t
    SET status = 'skipped'
    WHERE t.run_id = skip_step.run_id AND t.step_slug = skip_step.step_slug
      AND t.status IN ('queued', 'started');
    SELECT array_agg(t.message_id) INTO message_ids
    FROM pgflow.step_tasks AS t
    WHERE t.run_id = skip_step.run_id AND t.step_slug = skip_step.step_slug
      AND t.status = 'skipped' AND t.message_id IS NOT NULL;
    IF message_ids IS NOT NULL THEN
        PERFORM pgmq.archive(run_flow, message_ids);
    END IF;

    UPDATE pgflow.runs AS r
    SET remaining_steps = r.remaining_steps - cardinality(skipped_slugs)
    WHERE r.run_id = skip_step.run_id;

    -- A plain skip lets the dependents run without this step's key. A dependent map step whose
    -- array was skipped has nothing to map over: initial_tasks 0, completed with [] by
    -- upstream's cascade. This update makes dependents ready, which evaluates their own
    -- conditions (the triggers below).
    IF NOT skip_step.cascade THEN
        UPDATE pgflow.step_states AS child
        SET remaining_deps = child.remaining_deps - 1,
            initial_tasks = CASE WHEN cs.step_type = 'map' AND child.initial_tasks IS NULL
                                 THEN 0 ELSE child.initial_tasks END
        FROM pgflow.deps AS d
        JOIN pgflow.steps AS cs ON cs.flow_slug = d.flow_slug AND cs.step_slug = d.step_slug
        WHERE d.flow_slug = run_flow AND d.dep_slug = skip_step.step_slug
          AND child.run_id = skip_step.run_id AND child.step_slug = d.step_slug;
    END IF;
    RETURN cardinality(skipped_slugs);
END;
$$;

COMMENT ON FUNCTION pgflow_python.skip_step(uuid, text, text, boolean, text) IS
    'pgflow-python: skip a step of a run (and with cascade its downstream steps).';

-- Fail a step and its run with a message, as upstream's fail_task does on a last attempt: the
-- step failed, the run failed (0060 then cancels its other tasks), events sent as fail_task sends
-- them. Callers: a step whose condition fails the run (when_unmet 'fail'; the step has no tasks,
-- so resume_run puts it back to 'created', where its condition is evaluated again) and a wait
-- that timed out (0070's time_out_wait, which fails the waiting task first).
CREATE OR REPLACE FUNCTION pgflow_python.fail_step_and_run(
    run_id uuid,
    step_slug text,
    message text
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    at timestamptz := pg_catalog.clock_timestamp();
    run_flow text;
BEGIN
    UPDATE pgflow.step_states AS s
    SET status = 'failed', failed_at = at, error_message = fail_step_and_run.message
    WHERE s.run_id = fail_step_and_run.run_id AND s.step_slug = fail_step_and_run.step_slug;
    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'step:failed',
            'run_id', fail_step_and_run.run_id,
            'step_slug', fail_step_and_run.step_slug,
            'status', 'failed',
            'error_message', fail_step_and_run.message,
            'failed_at', at
        ),
        pg_catalog.concat('step:', fail_step_and_run.step_slug, ':failed'),
        pg_catalog.concat('pgflow:run:', fail_step_and_run.run_id),
        false
    );
    UPDATE pgflow.runs AS r
    SET status = 'failed', failed_at = GREATEST(at, r.started_at)
    WHERE r.run_id = fail_step_and_run.run_id
    RETURNING r.flow_slug INTO run_flow;
    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'run:failed',
            'run_id', fail_step_and_run.run_id,
            'flow_slug', run_flow,
            'status', 'failed',
            'error_message', fail_step_and_run.message,
            'failed_at', at
        ),
        'run:failed',
        pg_catalog.concat('pgflow:run:', fail_step_and_run.run_id),
        false
    );
END;
$$;

COMMENT ON FUNCTION pgflow_python.fail_step_and_run(uuid, text, text) IS
    'pgflow-python: fail a step and its run with a message (an unmet condition, a wait timeout).';

-- The trigger function: a step state just became ready. Re-read under the caller's locks (an
-- earlier trigger of the same statement may have skipped it or failed the run).
CREATE OR REPLACE FUNCTION pgflow_python.evaluate_step_condition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    rule pgflow_python.step_conditions%ROWTYPE;
    step_input jsonb;
BEGIN
    SELECT * INTO rule FROM pgflow_python.step_conditions AS c
    WHERE c.flow_slug = NEW.flow_slug AND c.step_slug = NEW.step_slug;
    IF NOT FOUND OR (rule.required_input_pattern IS NULL AND rule.forbidden_input_pattern IS NULL)
    THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM pgflow.step_states AS s
    JOIN pgflow.runs AS r ON r.run_id = s.run_id
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug
      AND s.status = 'created' AND s.remaining_deps = 0 AND r.status = 'started';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    step_input := pgflow_python.condition_input(NEW.run_id, NEW.flow_slug, NEW.step_slug);
    IF (rule.required_input_pattern IS NULL OR step_input @> rule.required_input_pattern)
       AND (rule.forbidden_input_pattern IS NULL
            OR NOT step_input @> rule.forbidden_input_pattern) THEN
        RETURN NULL;
    END IF;

    IF rule.when_unmet = 'fail' THEN
        PERFORM pgflow_python.fail_step_and_run(
            NEW.run_id, NEW.step_slug,
            pg_catalog.format(
                'condition not met: step %L runs only when its input %s',
                NEW.step_slug,
                concat_ws(' and ',
                    'contains ' || rule.required_input_pattern::text,
                    'does not contain ' || rule.forbidden_input_pattern::text)
            )
        );
    ELSE
        PERFORM pgflow_python.skip_step(
            NEW.run_id, NEW.step_slug, 'condition_unmet', rule.when_unmet = 'skip-cascade'
        );
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.evaluate_step_condition() IS
    'pgflow-python: trigger: evaluate the condition of a step state that became ready.';

DROP TRIGGER IF EXISTS pgflow_python_ready_root_step ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_root_step
    AFTER INSERT ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0)
    EXECUTE FUNCTION pgflow_python.evaluate_step_condition();

DROP TRIGGER IF EXISTS pgflow_python_ready_step ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_step
    AFTER UPDATE OF remaining_deps, status ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0
          AND (OLD.status <> 'created' OR OLD.remaining_deps <> 0))
    EXECUTE FUNCTION pgflow_python.evaluate_step_condition();

-- retries_exhausted 'skip' / 'skip-cascade'. Upstream's fail_task decides "retry or fail" and,
-- on a last attempt, marks the task failed and, in the same statement, fails the step and the
-- run when the task's new status is 'failed'. Before that row is written, a step that skips on
-- exhaustion has the task's new status turned into 'skipped' (upstream 0.15's task status), so
-- fail_task leaves the step and the run alone; after the statement, the step is skipped and
-- the run continued (fail_task does not start or complete anything itself). The WHEN clauses
-- keep every other task update free of function calls. Not for a run that already failed
-- (fail_task's late-report path, complete_task's type violation).
CREATE OR REPLACE FUNCTION pgflow_python.skip_exhausted_task()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pgflow_python.step_conditions AS c
        JOIN pgflow.runs AS r ON r.run_id = NEW.run_id
        WHERE c.flow_slug = NEW.flow_slug AND c.step_slug = NEW.step_slug
          AND c.when_exhausted <> 'fail' AND r.status = 'started'
    ) THEN
        NEW.status := 'skipped';
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION pgflow_python.skip_step_of_exhausted_task()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    mode text;
BEGIN
    -- Its siblings end skipped through skip_step, which fires this again: nothing more to do.
    PERFORM 1 FROM pgflow.step_states AS s
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug AND s.status = 'started';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT c.when_exhausted INTO mode FROM pgflow_python.step_conditions AS c
    WHERE c.flow_slug = NEW.flow_slug AND c.step_slug = NEW.step_slug;
    PERFORM pgflow_python.skip_step(
        NEW.run_id, NEW.step_slug, 'handler_failed', mode = 'skip-cascade', NEW.error_message
    );
    PERFORM pgflow.cascade_complete_taskless_steps(NEW.run_id);
    PERFORM pgflow.start_ready_steps(NEW.run_id);
    PERFORM pgflow.maybe_complete_run(NEW.run_id);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.skip_exhausted_task() IS
    'pgflow-python: trigger: a last failed attempt of a step with retries_exhausted skip.';
COMMENT ON FUNCTION pgflow_python.skip_step_of_exhausted_task() IS
    'pgflow-python: trigger: skip the step of a task skipped on exhaustion; continue the run.';

DROP TRIGGER IF EXISTS pgflow_python_exhausted_task ON pgflow.step_tasks;
CREATE TRIGGER pgflow_python_exhausted_task
    BEFORE UPDATE OF status ON pgflow.step_tasks
    FOR EACH ROW
    WHEN (OLD.status = 'started' AND NEW.status = 'failed')
    EXECUTE FUNCTION pgflow_python.skip_exhausted_task();

DROP TRIGGER IF EXISTS pgflow_python_skipped_task ON pgflow.step_tasks;
CREATE TRIGGER pgflow_python_skipped_task
    AFTER UPDATE OF status ON pgflow.step_tasks
    FOR EACH ROW
    WHEN (OLD.status = 'started' AND NEW.status = 'skipped')
    EXECUTE FUNCTION pgflow_python.skip_step_of_exhausted_task();

-- Migrations change condition options like the other step options (set_step_options): the
-- keys named in `options` (if_, if_not, when_unmet, retries_exhausted; the DSL's names) are
-- set, null resets one to its default, keys not named are kept.
CREATE OR REPLACE FUNCTION pgflow_python.set_step_condition_options(
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
    current pgflow_python.step_conditions%ROWTYPE;
BEGIN
    SELECT array_agg(key ORDER BY key) INTO unknown
    FROM jsonb_object_keys(options) AS key
    WHERE key NOT IN ('if_', 'if_not', 'when_unmet', 'retries_exhausted');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown condition options: %', array_to_string(unknown, ', ')
            USING HINT = 'condition options are if_, if_not, when_unmet and retries_exhausted';
    END IF;
    SELECT * INTO current FROM pgflow_python.step_conditions AS c
    WHERE c.flow_slug = set_step_condition_options.flow_slug
      AND c.step_slug = set_step_condition_options.step_slug;
    PERFORM pgflow_python.set_step_condition(
        flow_slug,
        step_slug,
        CASE WHEN options ? 'if_' THEN nullif(options -> 'if_', 'null'::jsonb)
             ELSE current.required_input_pattern END,
        CASE WHEN options ? 'if_not' THEN nullif(options -> 'if_not', 'null'::jsonb)
             ELSE current.forbidden_input_pattern END,
        CASE WHEN options ? 'when_unmet' THEN options ->> 'when_unmet'
             ELSE current.when_unmet END,
        CASE WHEN options ? 'retries_exhausted' THEN options ->> 'retries_exhausted'
             ELSE current.when_exhausted END
    );
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_step_condition_options(text, text, jsonb) IS
    'pgflow-python: update some of a step''s condition options; used by migrations.';
