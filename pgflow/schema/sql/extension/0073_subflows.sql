-- Subflows: a step that starts a run of another flow (its child) and waits, in the database,
-- until that run ends; the child's output becomes the step's output. Design: README.md in this
-- folder, "Subflows".
--
-- Where a waiting subflow step lives: as a wait step does (extension/0070): the "step became
-- ready" gate starts it itself -- step_states 'started', one step_tasks row 'started' per task
-- (one, or one per element of a map step), with no message and no worker -- so no worker of
-- either language ever receives it. Each task has a row in subflow_children: first a pending
-- child start, then the child's run id (the parent_run_id record; view run_parents).
--
-- The step's Python method (it turns the step's input into the child's input) is run by a
-- Python worker serving the parent flow, outside the flow's queue: it claims pending starts
-- here (claim_child_starts: a lease, FOR UPDATE SKIP LOCKED), calls the method and then
-- start_child, which starts the child with upstream's start_flow under the parent run's lock,
-- only if no child was started yet: a repeated or late start_child returns the first child.
--
-- How a child's end reaches the parent: a row trigger on pgflow.runs (status to completed or
-- failed) looks the run up in subflow_children (one index probe) and, for a child, completes
-- the parent's task with the child's output through upstream's complete_task
-- (extension/0070's complete_wait), or fails the parent's step and run with the child's error.
-- A parent run that fails or is cancelled cancels its running children; a parent resumed
-- resumes its failed children in place (same child run ids, their completed work kept).

CREATE TABLE IF NOT EXISTS pgflow_python.subflow_steps (
    flow_slug text NOT NULL,
    step_slug text NOT NULL,
    child_flow_slug text NOT NULL,
    PRIMARY KEY (flow_slug, step_slug),
    FOREIGN KEY (flow_slug, step_slug) REFERENCES pgflow.steps (flow_slug, step_slug)
        ON DELETE CASCADE
);

COMMENT ON TABLE pgflow_python.subflow_steps IS
    'pgflow-python: steps that run another flow (the child) and wait for it to end.';

-- One row per task of a subflow step: run_id/step_slug/task_index are the parent's task (the
-- table is pruned with the parent run). child_run_id is NULL until the child is started.
-- ended_at/outcome: when and how the child's end reached the parent ('completed', 'failed':
-- the child or its start failed; 'cancelled': the parent ended first and the child was
-- cancelled; 'abandoned': the parent ended before a child was started); a resumed parent
-- reopens the row. announced_at: a worker logged the end (subflow.child_ended).
CREATE TABLE IF NOT EXISTS pgflow_python.subflow_children (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    flow_slug text NOT NULL,
    child_flow_slug text NOT NULL,
    child_run_id uuid UNIQUE,
    waiting_since timestamptz NOT NULL,
    start_attempts integer NOT NULL DEFAULT 0,
    next_start_at timestamptz NOT NULL,
    lease_until timestamptz,
    last_error text,
    child_started_at timestamptz,
    ended_at timestamptz,
    outcome text CHECK (outcome IN ('completed', 'failed', 'cancelled', 'abandoned')),
    deliver_pending boolean NOT NULL DEFAULT false,
    announced_at timestamptz,
    PRIMARY KEY (run_id, step_slug, task_index)
);

CREATE INDEX IF NOT EXISTS subflow_children_pending ON pgflow_python.subflow_children
    (flow_slug, next_start_at) WHERE child_run_id IS NULL AND ended_at IS NULL;
CREATE INDEX IF NOT EXISTS subflow_children_unannounced ON pgflow_python.subflow_children
    (flow_slug) WHERE ended_at IS NOT NULL AND announced_at IS NULL AND child_run_id IS NOT NULL;

COMMENT ON TABLE pgflow_python.subflow_children IS
    'pgflow-python: the child run of each task of a subflow step (parent_run_id = run_id).';

-- A run's parent, as upstream's design (#657) names it.
CREATE OR REPLACE VIEW pgflow_python.run_parents AS
SELECT c.child_run_id AS run_id, c.run_id AS parent_run_id, c.flow_slug AS parent_flow_slug,
       c.step_slug AS parent_step_slug, c.task_index AS parent_task_index
FROM pgflow_python.subflow_children AS c
WHERE c.child_run_id IS NOT NULL;

COMMENT ON VIEW pgflow_python.run_parents IS
    'pgflow-python: parent_run_id (and the parent''s step and task) of every child run.';

-- Used by compiled flows and migrations.
CREATE OR REPLACE FUNCTION pgflow_python.set_subflow_step(
    flow_slug text,
    step_slug text,
    child_flow_slug text
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_subflow_step.flow_slug AND s.step_slug = set_subflow_step.step_slug
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, step_slug
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO pgflow_python.subflow_steps AS s (flow_slug, step_slug, child_flow_slug)
    VALUES (set_subflow_step.flow_slug, set_subflow_step.step_slug,
            set_subflow_step.child_flow_slug)
    ON CONFLICT ON CONSTRAINT subflow_steps_pkey DO UPDATE
    SET child_flow_slug = excluded.child_flow_slug;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_subflow_step(text, text, text) IS
    'pgflow-python: make a step a subflow step running child_flow_slug.';

-- Tasks `indexes` of a subflow step start waiting for their children (the step is started by
-- the caller): each gets a started task with no message, and its subflow_children row is
-- opened. A row already there belongs to a resumed parent: a child not started yet is started
-- afresh, a failed or cancelled child is resumed in place, a running one is waited for, and a
-- completed one's output is delivered at the end of the transaction (deliver_pending).
CREATE OR REPLACE FUNCTION pgflow_python.await_children(
    run_id uuid,
    step_slug text,
    flow_slug text,
    child_flow_slug text,
    indexes integer[],
    at timestamptz
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    link record;
BEGIN
    INSERT INTO pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, status,
                                   attempts_count, queued_at, started_at)
    SELECT await_children.flow_slug, await_children.run_id, await_children.step_slug, i,
           'started', 1, at, at
    FROM unnest(indexes) AS i;

    FOR link IN
        SELECT c.task_index, c.child_run_id, r.status AS child_status
        FROM pgflow_python.subflow_children AS c
        LEFT JOIN pgflow.runs AS r ON r.run_id = c.child_run_id
        WHERE c.run_id = await_children.run_id AND c.step_slug = await_children.step_slug
          AND c.task_index = ANY(indexes)
        FOR UPDATE OF c
    LOOP
        UPDATE pgflow_python.subflow_children AS c
        SET waiting_since = at, ended_at = NULL, outcome = NULL, announced_at = NULL,
            child_run_id = CASE WHEN link.child_status IS NULL THEN NULL ELSE c.child_run_id END,
            start_attempts = CASE WHEN link.child_status IS NULL THEN 0 ELSE c.start_attempts END,
            next_start_at = at, lease_until = NULL,
            deliver_pending = link.child_status IS NOT DISTINCT FROM 'completed'
        WHERE c.run_id = await_children.run_id AND c.step_slug = await_children.step_slug
          AND c.task_index = link.task_index;
        IF link.child_status = 'failed' THEN
            PERFORM pgflow_python.resume_run(link.child_run_id);
        END IF;
    END LOOP;

    INSERT INTO pgflow_python.subflow_children AS c (run_id, step_slug, task_index, flow_slug,
                                                     child_flow_slug, waiting_since,
                                                     next_start_at)
    SELECT await_children.run_id, await_children.step_slug, i, await_children.flow_slug,
           await_children.child_flow_slug, at, at
    FROM unnest(indexes) AS i
    ON CONFLICT ON CONSTRAINT subflow_children_pkey DO NOTHING;
END;
$$;

COMMENT ON FUNCTION pgflow_python.await_children(uuid, text, text, text, integer[], timestamptz) IS
    'pgflow-python: tasks of a subflow step start waiting for their child runs.';

-- The gate (as extension/0070's begin_wait): a subflow step that became ready is started here,
-- its tasks started with no message, so start_ready_steps leaves it alone. A map step over an
-- empty array (initial_tasks 0) is left to upstream, which completes it with [].
CREATE OR REPLACE FUNCTION pgflow_python.begin_subflow()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    child text;
    tasks integer;
    at timestamptz;
BEGIN
    SELECT s.child_flow_slug INTO child FROM pgflow_python.subflow_steps AS s
    WHERE s.flow_slug = NEW.flow_slug AND s.step_slug = NEW.step_slug;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Re-read: an earlier trigger of the same statement may have skipped the step or failed
    -- the run.
    SELECT s.initial_tasks INTO tasks FROM pgflow.step_states AS s
    JOIN pgflow.runs AS r ON r.run_id = s.run_id
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug
      AND s.status = 'created' AND s.remaining_deps = 0 AND r.status = 'started';
    IF NOT FOUND OR tasks IS NULL OR tasks = 0 THEN
        RETURN NULL;
    END IF;

    at := now();
    UPDATE pgflow.step_states AS s
    SET status = 'started', started_at = at, remaining_tasks = tasks
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug;
    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'step:started',
            'run_id', NEW.run_id,
            'step_slug', NEW.step_slug,
            'status', 'started',
            'started_at', at,
            'remaining_tasks', tasks,
            'remaining_deps', 0,
            'subflow', child
        ),
        pg_catalog.concat('step:', NEW.step_slug, ':started'),
        pg_catalog.concat('pgflow:run:', NEW.run_id),
        false
    );
    PERFORM pgflow_python.await_children(
        NEW.run_id, NEW.step_slug, NEW.flow_slug, child,
        ARRAY(SELECT pg_catalog.generate_series(0, tasks - 1)), at
    );
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.begin_subflow() IS
    'pgflow-python: trigger: a subflow step that became ready waits for its children.';

DROP TRIGGER IF EXISTS pgflow_python_ready_step_subflow ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_step_subflow
    AFTER UPDATE OF remaining_deps, status ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0
          AND (OLD.status <> 'created' OR OLD.remaining_deps <> 0))
    EXECUTE FUNCTION pgflow_python.begin_subflow();

DROP TRIGGER IF EXISTS pgflow_python_ready_root_step_subflow ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_root_step_subflow
    AFTER INSERT ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0)
    EXECUTE FUNCTION pgflow_python.begin_subflow();

-- The input a task of a subflow step would get from upstream 0.8.1's start_tasks, in the
-- worker's shape: a root step the flow input, a dependent step {dependency: output} (completed
-- dependencies only: a skipped one has no key), a map step its element.
CREATE OR REPLACE FUNCTION pgflow_python.subflow_task_input(
    run_id uuid,
    step_slug text,
    task_index integer
)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
DECLARE
    run_input jsonb;
    kind text;
    deps jsonb;
BEGIN
    SELECT r.input INTO run_input FROM pgflow.runs AS r WHERE r.run_id = subflow_task_input.run_id;
    SELECT st.step_type INTO kind FROM pgflow.steps AS st
    JOIN pgflow.runs AS r ON r.flow_slug = st.flow_slug
    WHERE r.run_id = subflow_task_input.run_id AND st.step_slug = subflow_task_input.step_slug;
    SELECT pg_catalog.jsonb_object_agg(
               d.dep_slug,
               CASE WHEN ds.step_type = 'map' THEN (
                        SELECT coalesce(pg_catalog.jsonb_agg(t.output ORDER BY t.task_index),
                                        '[]'::jsonb)
                        FROM pgflow.step_tasks AS t
                        WHERE t.run_id = subflow_task_input.run_id
                          AND t.step_slug = d.dep_slug AND t.status = 'completed')
                    ELSE (
                        SELECT t.output FROM pgflow.step_tasks AS t
                        WHERE t.run_id = subflow_task_input.run_id
                          AND t.step_slug = d.dep_slug AND t.status = 'completed'
                        LIMIT 1)
               END)
    INTO deps
    FROM pgflow.deps AS d
    JOIN pgflow.runs AS r ON r.flow_slug = d.flow_slug AND r.run_id = subflow_task_input.run_id
    JOIN pgflow.steps AS ds ON ds.flow_slug = d.flow_slug AND ds.step_slug = d.dep_slug
    JOIN pgflow.step_states AS s
      ON s.run_id = subflow_task_input.run_id AND s.step_slug = d.dep_slug
         AND s.status = 'completed'
    WHERE d.step_slug = subflow_task_input.step_slug;
    IF kind = 'map' THEN
        IF deps IS NULL THEN
            RETURN run_input -> subflow_task_input.task_index;
        END IF;
        RETURN (SELECT v -> subflow_task_input.task_index FROM pg_catalog.jsonb_each(deps) AS e(k, v)
                LIMIT 1);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgflow.deps AS d JOIN pgflow.runs AS r
                   ON r.flow_slug = d.flow_slug AND r.run_id = subflow_task_input.run_id
                   WHERE d.step_slug = subflow_task_input.step_slug) THEN
        RETURN run_input;
    END IF;
    RETURN coalesce(deps, '{}'::jsonb);
END;
$$;

COMMENT ON FUNCTION pgflow_python.subflow_task_input(uuid, text, integer) IS
    'pgflow-python: the input of a task of a subflow step (as a worker''s handler gets it).';

-- A Python worker takes pending child starts of the flows it serves: each is leased for
-- lease_seconds (another worker takes it after that, if it was not started) and its attempt
-- counted. Returns the task, its input and the run's input.
CREATE OR REPLACE FUNCTION pgflow_python.claim_child_starts(
    flow_slugs text[],
    lease_seconds integer,
    row_limit integer
)
RETURNS TABLE (run_id uuid, flow_slug text, step_slug text, task_index integer, attempt integer,
               child_flow_slug text, input jsonb, flow_input jsonb)
LANGUAGE sql
SET search_path = ''
AS $$
    WITH due AS (
        SELECT c.run_id, c.step_slug, c.task_index
        FROM pgflow_python.subflow_children AS c
        WHERE c.child_run_id IS NULL AND c.ended_at IS NULL
          AND c.flow_slug = ANY(claim_child_starts.flow_slugs)
          AND c.next_start_at <= pg_catalog.clock_timestamp()
          AND (c.lease_until IS NULL OR c.lease_until <= pg_catalog.clock_timestamp())
        ORDER BY c.next_start_at
        LIMIT claim_child_starts.row_limit
        FOR UPDATE SKIP LOCKED
    ),
    taken AS (
        UPDATE pgflow_python.subflow_children AS c
        SET lease_until = pg_catalog.clock_timestamp()
                          + pg_catalog.make_interval(secs => claim_child_starts.lease_seconds),
            start_attempts = c.start_attempts + 1
        FROM due
        WHERE c.run_id = due.run_id AND c.step_slug = due.step_slug
          AND c.task_index = due.task_index
        RETURNING c.*
    )
    SELECT t.run_id, t.flow_slug, t.step_slug, t.task_index, t.start_attempts,
           t.child_flow_slug,
           pgflow_python.subflow_task_input(t.run_id, t.step_slug, t.task_index), r.input
    FROM taken AS t
    JOIN pgflow.runs AS r ON r.run_id = t.run_id
$$;

COMMENT ON FUNCTION pgflow_python.claim_child_starts(text[], integer, integer) IS
    'pgflow-python: a Python worker leases pending child starts of subflow steps.';

-- Starts the child of a subflow task with child_input, once: outcome 'started' (child_run_id:
-- the new run), 'already_started' (the first child's id; nothing changed), 'too_late' (the
-- parent no longer waits: its run ended), 'failed' (the child's flow is not in the database:
-- the step and the run failed), 'unknown'. The parent run is locked first, as
-- complete_task does, so a start racing with a cancel either lands before it (and the cancel
-- cancels the child) or sees the run ended.
CREATE OR REPLACE FUNCTION pgflow_python.start_child(
    run_id uuid,
    step_slug text,
    task_index integer,
    child_input jsonb
)
RETURNS TABLE (outcome text, child_run_id uuid)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    link pgflow_python.subflow_children%ROWTYPE;
BEGIN
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = start_child.run_id FOR UPDATE;
    SELECT * INTO link FROM pgflow_python.subflow_children AS c
    WHERE c.run_id = start_child.run_id AND c.step_slug = start_child.step_slug
      AND c.task_index = start_child.task_index
    FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown';
        RETURN NEXT;
        RETURN;
    END IF;
    IF link.child_run_id IS NOT NULL THEN
        outcome := 'already_started';
        child_run_id := link.child_run_id;
        RETURN NEXT;
        RETURN;
    END IF;
    IF link.ended_at IS NOT NULL OR NOT EXISTS (
        SELECT 1 FROM pgflow.step_tasks AS t
        JOIN pgflow.runs AS r ON r.run_id = t.run_id
        WHERE t.run_id = start_child.run_id AND t.step_slug = start_child.step_slug
          AND t.task_index = start_child.task_index AND t.status = 'started'
          AND t.message_id IS NULL AND r.status = 'started'
    ) THEN
        outcome := 'too_late';
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgflow.flows AS f WHERE f.flow_slug = link.child_flow_slug) THEN
        UPDATE pgflow_python.subflow_children AS c
        SET ended_at = pg_catalog.clock_timestamp(), outcome = 'failed', lease_until = NULL,
            last_error = pg_catalog.format('flow "%s" is not in the database',
                                           link.child_flow_slug)
        WHERE c.run_id = start_child.run_id AND c.step_slug = start_child.step_slug
          AND c.task_index = start_child.task_index;
        PERFORM pgflow_python.fail_subflow_task(
            start_child.run_id, start_child.step_slug, start_child.task_index,
            pg_catalog.format('subflow step "%s" runs flow "%s", which is not in the database: '
                              'register it (pgflow db migrate / compile) before starting runs',
                              start_child.step_slug, link.child_flow_slug));
        outcome := 'failed';
        RETURN NEXT;
        RETURN;
    END IF;
    child_run_id := pg_catalog.gen_random_uuid();
    -- The link first: a child that ends inside start_flow (nothing to run) finds its parent.
    UPDATE pgflow_python.subflow_children AS c
    SET child_run_id = start_child.child_run_id,
        child_started_at = pg_catalog.clock_timestamp(), lease_until = NULL, last_error = NULL
    WHERE c.run_id = start_child.run_id AND c.step_slug = start_child.step_slug
      AND c.task_index = start_child.task_index;
    PERFORM pgflow.start_flow(link.child_flow_slug, start_child.child_input,
                              start_child.child_run_id);
    outcome := 'started';
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.start_child(uuid, text, integer, jsonb) IS
    'pgflow-python: start the child run of a subflow task (at most one per task).';

-- The method that computes a child's input failed (attempt, as claim_child_starts counted it):
-- the start is retried after upstream's backoff (base_delay * 2^attempts) while attempts
-- remain (the step's max_attempts, else the flow's), else the step and the run fail.
-- outcome 'retry' (retry_at), 'failed', or 'too_late' (a child was started, the parent ended,
-- or the attempt is not the latest).
CREATE OR REPLACE FUNCTION pgflow_python.child_start_failed(
    run_id uuid,
    step_slug text,
    task_index integer,
    attempt integer,
    error_message text
)
RETURNS TABLE (outcome text, retry_at timestamptz)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    link pgflow_python.subflow_children%ROWTYPE;
    max_attempts integer;
    base_delay integer;
BEGIN
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = child_start_failed.run_id FOR UPDATE;
    SELECT * INTO link FROM pgflow_python.subflow_children AS c
    WHERE c.run_id = child_start_failed.run_id AND c.step_slug = child_start_failed.step_slug
      AND c.task_index = child_start_failed.task_index
    FOR UPDATE;
    IF NOT FOUND OR link.child_run_id IS NOT NULL OR link.ended_at IS NOT NULL
       OR link.start_attempts <> child_start_failed.attempt THEN
        outcome := 'too_late';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT coalesce(st.opt_max_attempts, f.opt_max_attempts),
           coalesce(st.opt_base_delay, f.opt_base_delay)
    INTO max_attempts, base_delay
    FROM pgflow.steps AS st
    JOIN pgflow.flows AS f ON f.flow_slug = st.flow_slug
    WHERE st.flow_slug = link.flow_slug AND st.step_slug = link.step_slug;
    IF link.start_attempts < max_attempts THEN
        retry_at := pg_catalog.clock_timestamp() + pg_catalog.make_interval(
            secs => pgflow.calculate_retry_delay(base_delay, link.start_attempts));
        UPDATE pgflow_python.subflow_children AS c
        SET next_start_at = child_start_failed.retry_at, lease_until = NULL,
            last_error = child_start_failed.error_message
        WHERE c.run_id = link.run_id AND c.step_slug = link.step_slug
          AND c.task_index = link.task_index;
        outcome := 'retry';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE pgflow_python.subflow_children AS c
    SET ended_at = pg_catalog.clock_timestamp(), outcome = 'failed', lease_until = NULL,
        last_error = child_start_failed.error_message
    WHERE c.run_id = link.run_id AND c.step_slug = link.step_slug
      AND c.task_index = link.task_index;
    PERFORM pgflow_python.fail_subflow_task(link.run_id, link.step_slug, link.task_index,
                                            child_start_failed.error_message);
    outcome := 'failed';
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.child_start_failed(uuid, text, integer, integer, text) IS
    'pgflow-python: a subflow step''s method failed: retry the child start or fail the step.';

-- Fails a waiting subflow task, its step and its run (as fail_task on a last attempt, through
-- extension/0070's time_out_wait, whose 'fail' branch is exactly that); extension/0060 then
-- cancels the run's other tasks, and parent_run_ended below its other children.
CREATE OR REPLACE FUNCTION pgflow_python.fail_subflow_task(
    run_id uuid,
    step_slug text,
    task_index integer,
    message text
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pgflow.step_tasks AS t
        JOIN pgflow.runs AS r ON r.run_id = t.run_id
        WHERE t.run_id = fail_subflow_task.run_id AND t.step_slug = fail_subflow_task.step_slug
          AND t.task_index = fail_subflow_task.task_index AND t.status = 'started'
          AND t.message_id IS NULL AND r.status = 'started'
    ) THEN
        RETURN;
    END IF;
    PERFORM pgflow_python.time_out_wait(fail_subflow_task.run_id, fail_subflow_task.step_slug,
                                        fail_subflow_task.task_index, 'fail',
                                        fail_subflow_task.message);
END;
$$;

COMMENT ON FUNCTION pgflow_python.fail_subflow_task(uuid, text, integer, text) IS
    'pgflow-python: fail a waiting subflow task with its step and run.';

-- A run ended. For a child: its output completes the parent's task, or its failure fails the
-- parent's step and run. The child's run is locked by whoever ended it; the parent is locked
-- here (child, then parent).
CREATE OR REPLACE FUNCTION pgflow_python.child_run_ended()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    link pgflow_python.subflow_children%ROWTYPE;
    failure text;
BEGIN
    SELECT * INTO link FROM pgflow_python.subflow_children AS c
    WHERE c.child_run_id = NEW.run_id AND c.ended_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = link.run_id FOR UPDATE;
    UPDATE pgflow_python.subflow_children AS c
    SET ended_at = pg_catalog.clock_timestamp(),
        outcome = CASE WHEN NEW.status = 'completed' THEN 'completed' ELSE 'failed' END
    WHERE c.run_id = link.run_id AND c.step_slug = link.step_slug
      AND c.task_index = link.task_index;
    IF NEW.status = 'completed' THEN
        PERFORM pgflow_python.complete_wait(link.run_id, link.step_slug, link.task_index,
                                            NEW.output, 'signalled');
        RETURN NULL;
    END IF;
    SELECT coalesce(c.reason, s.error_message) INTO failure
    FROM (SELECT 1) AS one
    LEFT JOIN pgflow_python.run_cancellations AS c ON c.run_id = NEW.run_id
    LEFT JOIN LATERAL (
        SELECT ss.error_message FROM pgflow.step_states AS ss
        WHERE ss.run_id = NEW.run_id AND ss.status = 'failed'
        ORDER BY ss.failed_at, ss.step_slug LIMIT 1
    ) AS s ON true;
    PERFORM pgflow_python.fail_subflow_task(
        link.run_id, link.step_slug, link.task_index,
        pg_catalog.format('child run %s of flow "%s" failed: %s', NEW.run_id,
                          link.child_flow_slug, coalesce(failure, 'no error recorded'))
    );
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.child_run_ended() IS
    'pgflow-python: trigger: a child run ended; its output or failure reaches the parent.';

DROP TRIGGER IF EXISTS pgflow_python_child_run_ended ON pgflow.runs;
CREATE TRIGGER pgflow_python_child_run_ended
    AFTER UPDATE OF status ON pgflow.runs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed') AND OLD.status = 'started')
    EXECUTE FUNCTION pgflow_python.child_run_ended();

-- A run failed or was cancelled: its running children are cancelled (with a reason naming it),
-- its pending starts abandoned.
CREATE OR REPLACE FUNCTION pgflow_python.parent_run_ended()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    link record;
BEGIN
    FOR link IN
        UPDATE pgflow_python.subflow_children AS c
        SET ended_at = pg_catalog.clock_timestamp(),
            outcome = CASE WHEN c.child_run_id IS NULL THEN 'abandoned' ELSE 'cancelled' END,
            deliver_pending = false, lease_until = NULL
        WHERE c.run_id = NEW.run_id AND c.ended_at IS NULL
        RETURNING c.child_run_id, c.step_slug
    LOOP
        CONTINUE WHEN link.child_run_id IS NULL;
        PERFORM pgflow_python.cancel_run(
            link.child_run_id,
            pg_catalog.format('parent run %s ended (step "%s")', NEW.run_id, link.step_slug)
        );
    END LOOP;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.parent_run_ended() IS
    'pgflow-python: trigger: a failed or cancelled run cancels its running children.';

DROP TRIGGER IF EXISTS pgflow_python_parent_run_ended ON pgflow.runs;
CREATE TRIGGER pgflow_python_parent_run_ended
    AFTER UPDATE OF status ON pgflow.runs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status = 'started')
    EXECUTE FUNCTION pgflow_python.parent_run_ended();

-- resume_run removed the unfinished tasks of subflow steps (they have no message). A step left
-- with none went back to 'created' and the gate makes it wait again; a map step with some
-- children's outputs kept is still 'started' (remaining_tasks 0): its missing tasks wait again
-- here. Fires on resume_run's run_resumes row, after its step updates and before it starts
-- ready steps.
CREATE OR REPLACE FUNCTION pgflow_python.resume_subflow_steps()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    partial record;
BEGIN
    FOR partial IN
        SELECT s.step_slug, s.flow_slug, s.initial_tasks, sf.child_flow_slug,
               ARRAY(SELECT i FROM pg_catalog.generate_series(0, s.initial_tasks - 1) AS i
                     WHERE NOT EXISTS (
                         SELECT 1 FROM pgflow.step_tasks AS t
                         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug
                           AND t.task_index = i)) AS missing
        FROM pgflow.step_states AS s
        JOIN pgflow_python.subflow_steps AS sf
          ON sf.flow_slug = s.flow_slug AND sf.step_slug = s.step_slug
        WHERE s.run_id = NEW.run_id AND s.status = 'started'
    LOOP
        CONTINUE WHEN cardinality(partial.missing) = 0;
        UPDATE pgflow.step_states AS s SET remaining_tasks = cardinality(partial.missing)
        WHERE s.run_id = NEW.run_id AND s.step_slug = partial.step_slug;
        PERFORM pgflow_python.await_children(NEW.run_id, partial.step_slug, partial.flow_slug,
                                             partial.child_flow_slug, partial.missing, now());
    END LOOP;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.resume_subflow_steps() IS
    'pgflow-python: trigger: a resumed run''s subflow map steps wait again for missing children.';

DROP TRIGGER IF EXISTS pgflow_python_resume_subflow_steps ON pgflow_python.run_resumes;
CREATE TRIGGER pgflow_python_resume_subflow_steps
    AFTER INSERT ON pgflow_python.run_resumes
    FOR EACH ROW
    EXECUTE FUNCTION pgflow_python.resume_subflow_steps();

-- A resumed parent whose child had completed (its output never reached the parent, which had
-- ended): delivered at the end of the transaction, as extension/0070's early signals are (the
-- statement that made the step wait may still have other gate triggers to run).
CREATE OR REPLACE FUNCTION pgflow_python.deliver_child_output()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    output jsonb;
BEGIN
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = NEW.run_id FOR UPDATE;
    UPDATE pgflow_python.subflow_children AS c
    SET deliver_pending = false, ended_at = pg_catalog.clock_timestamp(), outcome = 'completed'
    WHERE c.run_id = NEW.run_id AND c.step_slug = NEW.step_slug
      AND c.task_index = NEW.task_index AND c.deliver_pending;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT r.output INTO output FROM pgflow.runs AS r
    WHERE r.run_id = NEW.child_run_id AND r.status = 'completed';
    PERFORM pgflow_python.complete_wait(NEW.run_id, NEW.step_slug, NEW.task_index, output,
                                        'signalled');
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.deliver_child_output() IS
    'pgflow-python: deferred trigger: a completed child''s output reaches its resumed parent.';

DROP TRIGGER IF EXISTS pgflow_python_deliver_child_output ON pgflow_python.subflow_children;
CREATE CONSTRAINT TRIGGER pgflow_python_deliver_child_output
    AFTER INSERT OR UPDATE ON pgflow_python.subflow_children
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.deliver_pending)
    EXECUTE FUNCTION pgflow_python.deliver_child_output();

-- Ended children a worker has not logged yet (subflow.child_ended): taken once each.
CREATE OR REPLACE FUNCTION pgflow_python.take_ended_children(flow_slugs text[], row_limit integer)
RETURNS TABLE (run_id uuid, flow_slug text, step_slug text, task_index integer,
               child_flow_slug text, child_run_id uuid, outcome text, ended_at timestamptz,
               child_started_at timestamptz)
LANGUAGE sql
SET search_path = ''
AS $$
    WITH due AS (
        SELECT c.run_id, c.step_slug, c.task_index
        FROM pgflow_python.subflow_children AS c
        WHERE c.ended_at IS NOT NULL AND c.announced_at IS NULL AND c.child_run_id IS NOT NULL
          AND c.flow_slug = ANY(take_ended_children.flow_slugs)
        LIMIT take_ended_children.row_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE pgflow_python.subflow_children AS c
    SET announced_at = pg_catalog.clock_timestamp()
    FROM due
    WHERE c.run_id = due.run_id AND c.step_slug = due.step_slug AND c.task_index = due.task_index
    RETURNING c.run_id, c.flow_slug, c.step_slug, c.task_index, c.child_flow_slug,
              c.child_run_id, c.outcome, c.ended_at, c.child_started_at
$$;

COMMENT ON FUNCTION pgflow_python.take_ended_children(text[], integer) IS
    'pgflow-python: ended child runs of the given flows not yet logged by a worker.';

-- A client role (pgflow db grant --client) starts, cancels and resumes runs; the triggers
-- those reach write tables a client does not otherwise write, so they run as their owner
-- (as extension/0072 does for waits). Each acts only on the run it is given.
ALTER FUNCTION pgflow_python.begin_subflow() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.child_run_ended() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.parent_run_ended() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.resume_subflow_steps() SECURITY DEFINER;
ALTER FUNCTION pgflow_python.deliver_child_output() SECURITY DEFINER;
