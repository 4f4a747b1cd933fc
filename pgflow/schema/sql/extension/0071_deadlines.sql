-- Run deadlines and wait timeouts, enforced by a sweep that live workers call
-- (pgflow_python.enforce_deadlines, one caller at a time). Design: README.md in this folder,
-- "Waiting on the world".
--
-- A run's deadline comes from start_flow(deadline=...) (set_run_deadline, in the starting
-- transaction) or from its flow's run_timeout (a row trigger on pgflow.runs when a run starts
-- or is resumed, which looks up one primary key and returns for flows without one). A run
-- still started at its deadline is cancelled exactly as cancel_run does, with a reason that
-- says so; workers running its tasks learn of it as of any cancel.

CREATE TABLE IF NOT EXISTS pgflow_python.flow_run_timeouts (
    flow_slug text PRIMARY KEY REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    run_timeout_seconds integer NOT NULL CHECK (run_timeout_seconds > 0)
);

COMMENT ON TABLE pgflow_python.flow_run_timeouts IS
    'pgflow-python: a flow''s run_timeout: each run is cancelled this long after it starts.';

-- settled: the deadline has passed and was dealt with (the run cancelled, or already ended);
-- the sweep's index holds the unsettled ones only.
CREATE TABLE IF NOT EXISTS pgflow_python.run_deadlines (
    run_id uuid PRIMARY KEY,
    deadline_at timestamptz NOT NULL,
    source text NOT NULL CHECK (source IN ('start_flow', 'run_timeout')),
    settled boolean NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS run_deadlines_pending ON pgflow_python.run_deadlines (deadline_at)
    WHERE NOT settled;

COMMENT ON TABLE pgflow_python.run_deadlines IS
    'pgflow-python: when a run is cancelled if still going (start_flow deadline or run_timeout).';

CREATE OR REPLACE FUNCTION pgflow_python.set_flow_run_timeout(
    flow_slug text,
    run_timeout_seconds integer
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF run_timeout_seconds IS NULL THEN
        DELETE FROM pgflow_python.flow_run_timeouts AS t
        WHERE t.flow_slug = set_flow_run_timeout.flow_slug;
        RETURN;
    END IF;
    INSERT INTO pgflow_python.flow_run_timeouts AS t (flow_slug, run_timeout_seconds)
    VALUES (set_flow_run_timeout.flow_slug, set_flow_run_timeout.run_timeout_seconds)
    ON CONFLICT ON CONSTRAINT flow_run_timeouts_pkey DO UPDATE
    SET run_timeout_seconds = excluded.run_timeout_seconds;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_flow_run_timeout(text, integer) IS
    'pgflow-python: set (NULL: remove) a flow''s run_timeout; applies to runs started afterwards.';

-- start_flow(deadline=...): replaces the flow's run_timeout for this run.
CREATE OR REPLACE FUNCTION pgflow_python.set_run_deadline(run_id uuid, deadline_at timestamptz)
RETURNS void
LANGUAGE sql
SET search_path = ''
AS $$
    INSERT INTO pgflow_python.run_deadlines AS d (run_id, deadline_at, source)
    VALUES (set_run_deadline.run_id, set_run_deadline.deadline_at, 'start_flow')
    ON CONFLICT ON CONSTRAINT run_deadlines_pkey DO UPDATE
    SET deadline_at = excluded.deadline_at, source = excluded.source, settled = false
$$;

COMMENT ON FUNCTION pgflow_python.set_run_deadline(uuid, timestamptz) IS
    'pgflow-python: the run is cancelled at deadline_at if it is still going.';

-- A run of a flow with a run_timeout starts (or is resumed: its timeout counts afresh, unless
-- a start_flow deadline that has not passed yet still applies).
CREATE OR REPLACE FUNCTION pgflow_python.apply_run_timeout()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    seconds integer;
BEGIN
    SELECT t.run_timeout_seconds INTO seconds FROM pgflow_python.flow_run_timeouts AS t
    WHERE t.flow_slug = NEW.flow_slug;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO pgflow_python.run_deadlines AS d (run_id, deadline_at, source)
    VALUES (NEW.run_id, pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => seconds),
            'run_timeout')
    ON CONFLICT ON CONSTRAINT run_deadlines_pkey DO UPDATE
    SET deadline_at = excluded.deadline_at, source = excluded.source, settled = false
    WHERE d.source = 'run_timeout' OR d.settled;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.apply_run_timeout() IS
    'pgflow-python: trigger: a run of a flow with a run_timeout gets its deadline.';

DROP TRIGGER IF EXISTS pgflow_python_run_timeout ON pgflow.runs;
CREATE TRIGGER pgflow_python_run_timeout
    AFTER INSERT ON pgflow.runs
    FOR EACH ROW
    EXECUTE FUNCTION pgflow_python.apply_run_timeout();

DROP TRIGGER IF EXISTS pgflow_python_run_timeout_on_resume ON pgflow.runs;
CREATE TRIGGER pgflow_python_run_timeout_on_resume
    AFTER UPDATE OF status ON pgflow.runs
    FOR EACH ROW
    WHEN (OLD.status = 'failed' AND NEW.status = 'started')
    EXECUTE FUNCTION pgflow_python.apply_run_timeout();

-- The sweep: waits whose timeout passed, then runs whose deadline passed, at most row_limit of
-- each per call, in the order they fell due; one row per action taken:
--   kind 'wait_timeout', action 'failed' | 'skipped' | 'abandoned' (its run had ended);
--   kind 'run_deadline', action 'cancelled' | 'ended' (the run had ended before).
-- One caller at a time (a transaction-scoped advisory lock; the others return at once). Runs
-- are locked with SKIP LOCKED, as complete_task and fail_task lock them first: a run someone
-- holds is looked at again on the next call.
CREATE OR REPLACE FUNCTION pgflow_python.enforce_deadlines(row_limit integer DEFAULT 500)
RETURNS TABLE (kind text, run_id uuid, step_slug text, action text)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    -- sha256('pgflow_python.enforce_deadlines'), first 8 bytes.
    sweep_lock CONSTANT bigint := 7309012946372254771;
    sweep_at timestamptz;
    due record;
    run_status text;
    waiting boolean;
    cancelled record;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock(sweep_lock) THEN
        RETURN;
    END IF;
    sweep_at := pg_catalog.clock_timestamp();

    FOR due IN
        SELECT w.run_id, w.step_slug, w.task_index, w.waiting_since, w.timeout_at,
               coalesce(ws.on_timeout, 'fail') AS on_timeout
        FROM pgflow_python.waits AS w
        LEFT JOIN pgflow_python.wait_steps AS ws
          ON ws.flow_slug = w.flow_slug AND ws.step_slug = w.step_slug
        WHERE w.ended_at IS NULL AND w.timeout_at IS NOT NULL AND w.timeout_at <= sweep_at
        ORDER BY w.timeout_at
        LIMIT row_limit
    LOOP
        SELECT r.status INTO run_status FROM pgflow.runs AS r
        WHERE r.run_id = due.run_id
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        SELECT EXISTS (
            SELECT 1 FROM pgflow.step_tasks AS t
            WHERE t.run_id = due.run_id AND t.step_slug = due.step_slug
              AND t.task_index = due.task_index AND t.status = 'started'
              AND t.message_id IS NULL
        ) INTO waiting;
        kind := 'wait_timeout';
        run_id := due.run_id;
        step_slug := due.step_slug;
        IF run_status <> 'started' OR NOT waiting THEN
            UPDATE pgflow_python.waits AS w SET ended_at = sweep_at, outcome = 'abandoned'
            WHERE w.run_id = due.run_id AND w.step_slug = due.step_slug
              AND w.task_index = due.task_index;
            action := 'abandoned';
            RETURN NEXT;
            CONTINUE;
        END IF;
        PERFORM pgflow_python.time_out_wait(
            due.run_id, due.step_slug, due.task_index, due.on_timeout,
            pg_catalog.format('timed out: no signal within %s (waiting since %s)',
                              due.timeout_at - due.waiting_since, due.waiting_since)
        );
        action := CASE WHEN due.on_timeout = 'skip' THEN 'skipped' ELSE 'failed' END;
        RETURN NEXT;
    END LOOP;

    FOR due IN
        SELECT d.run_id, d.deadline_at, d.source
        FROM pgflow_python.run_deadlines AS d
        WHERE NOT d.settled AND d.deadline_at <= sweep_at
        ORDER BY d.deadline_at
        LIMIT row_limit
    LOOP
        PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = due.run_id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND AND EXISTS (
            SELECT 1 FROM pgflow.runs AS r WHERE r.run_id = due.run_id
        );
        SELECT * INTO cancelled FROM pgflow_python.cancel_run(
            due.run_id,
            pg_catalog.format('deadline exceeded: the run had to end by %s (%s)',
                              due.deadline_at,
                              CASE WHEN due.source = 'run_timeout' THEN 'the flow''s run_timeout'
                                   ELSE 'start_flow deadline' END)
        );
        UPDATE pgflow_python.run_deadlines AS d SET settled = true
        WHERE d.run_id = due.run_id;
        kind := 'run_deadline';
        run_id := due.run_id;
        step_slug := NULL;
        action := CASE WHEN cancelled.outcome = 'cancelled' THEN 'cancelled' ELSE 'ended' END;
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgflow_python.enforce_deadlines(integer) IS
    'pgflow-python: time out due waits and cancel runs past their deadline; one caller at a time.';
