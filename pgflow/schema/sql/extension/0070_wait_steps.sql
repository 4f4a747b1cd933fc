-- Signal steps: a step with no handler that waits, in the database, until trusted code sends
-- its output (pgflow_python.signal) or its timeout passes. Design: README.md in this folder,
-- "Waiting on the world".
--
-- Where a waiting step lives: in upstream's own tables, as upstream would leave a step whose
-- one task a worker has claimed and not finished: step_states 'started', one step_tasks row
-- 'started' -- but with no message and no worker (message_id and last_worker_id NULL), plus a
-- row in our waits table (since when, until when). It is put there by the "step became ready"
-- gate (row triggers on pgflow.step_states, the same moment and WHEN clause as the conditions
-- of extension/0061; this trigger's name sorts after theirs, so a condition that skips the
-- step wins): the step is started before upstream's start_ready_steps runs, which only starts
-- 'created' steps, so no message is ever sent for it. No worker of either language can read
-- it, and waiting costs no slot, connection or process: only these rows.
--
-- How it ends: signal() calls upstream's complete_task for the task (the run continues as
-- after any completion); the deadline sweep (extension/0071, called by workers) fails or skips
-- it when its timeout passes; cancel_run and a failing run cancel it like any started task;
-- resume_run removes an unfinished wait's task so the step waits afresh.

-- A wait step skipped on timeout (on_timeout 'skip') records its own reason (extension/0061's
-- vocabulary is upstream 0.14's; this value is ours).
ALTER TABLE pgflow_python.step_skips DROP CONSTRAINT IF EXISTS step_skips_skip_reason_check;
ALTER TABLE pgflow_python.step_skips ADD CONSTRAINT step_skips_skip_reason_check CHECK (
    skip_reason IN ('condition_unmet', 'handler_failed', 'dependency_skipped', 'wait_timeout')
);

CREATE TABLE IF NOT EXISTS pgflow_python.wait_steps (
    flow_slug text NOT NULL,
    step_slug text NOT NULL,
    wait_kind text NOT NULL DEFAULT 'signal' CHECK (wait_kind IN ('signal')),
    timeout_seconds integer CHECK (timeout_seconds > 0),
    on_timeout text NOT NULL DEFAULT 'fail' CHECK (on_timeout IN ('fail', 'skip')),
    PRIMARY KEY (flow_slug, step_slug),
    FOREIGN KEY (flow_slug, step_slug) REFERENCES pgflow.steps (flow_slug, step_slug)
        ON DELETE CASCADE
);

COMMENT ON TABLE pgflow_python.wait_steps IS
    'pgflow-python: steps that wait for a signal instead of running a handler.';

-- One row per waiting task (a wait step has one, task_index 0). ended_at/outcome are set when
-- the wait is signalled or times out; a wait whose run was cancelled or failed is closed by the
-- sweep ('abandoned'), and reopened if the run is resumed.
CREATE TABLE IF NOT EXISTS pgflow_python.waits (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    flow_slug text NOT NULL,
    waiting_since timestamptz NOT NULL,
    timeout_at timestamptz,
    early_signal boolean NOT NULL DEFAULT false,
    ended_at timestamptz,
    outcome text CHECK (outcome IN ('signalled', 'timed_out', 'abandoned')),
    PRIMARY KEY (run_id, step_slug, task_index)
);

CREATE INDEX IF NOT EXISTS waits_open_timeouts ON pgflow_python.waits (timeout_at)
    WHERE ended_at IS NULL AND timeout_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS waits_open ON pgflow_python.waits (flow_slug, waiting_since)
    WHERE ended_at IS NULL;

COMMENT ON TABLE pgflow_python.waits IS
    'pgflow-python: tasks of wait steps that wait (or waited) for a signal.';

-- The first signal of a (run, step); later ones change nothing and are reported as repeats.
-- A signal that arrives before its step waits is kept here and applied when it starts waiting.
CREATE TABLE IF NOT EXISTS pgflow_python.signals (
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    output jsonb,
    received_at timestamptz NOT NULL,
    applied_at timestamptz,
    PRIMARY KEY (run_id, step_slug)
);

COMMENT ON TABLE pgflow_python.signals IS
    'pgflow-python: signals received for wait steps (the first per run and step).';

-- Used by compiled flows and migrations: the step waits for a signal; its timeout (NULL: none)
-- and what happens then ('fail' the step and run, or 'skip' the step; extension/0061).
CREATE OR REPLACE FUNCTION pgflow_python.set_wait_step(
    flow_slug text,
    step_slug text,
    timeout_seconds integer DEFAULT NULL,
    on_timeout text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_wait_step.flow_slug AND s.step_slug = set_wait_step.step_slug
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, step_slug
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO pgflow_python.wait_steps AS w (flow_slug, step_slug, timeout_seconds, on_timeout)
    VALUES (set_wait_step.flow_slug, set_wait_step.step_slug, set_wait_step.timeout_seconds,
            coalesce(set_wait_step.on_timeout, 'fail'))
    ON CONFLICT ON CONSTRAINT wait_steps_pkey DO UPDATE
    SET timeout_seconds = excluded.timeout_seconds, on_timeout = excluded.on_timeout;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_wait_step(text, text, integer, text) IS
    'pgflow-python: make a step a wait step, or change its timeout and on_timeout.';

-- The gate: a step state just became ready. A wait step is started here, with its one task
-- started and no message, so start_ready_steps (which the caller runs next) leaves it alone.
CREATE OR REPLACE FUNCTION pgflow_python.begin_wait()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    rule pgflow_python.wait_steps%ROWTYPE;
    at timestamptz;
BEGIN
    SELECT * INTO rule FROM pgflow_python.wait_steps AS w
    WHERE w.flow_slug = NEW.flow_slug AND w.step_slug = NEW.step_slug;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Re-read: an earlier trigger of the same statement may have skipped the step or failed
    -- the run.
    PERFORM 1 FROM pgflow.step_states AS s
    JOIN pgflow.runs AS r ON r.run_id = s.run_id
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug
      AND s.status = 'created' AND s.remaining_deps = 0 AND r.status = 'started';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- now(), as start_ready_steps: complete_task stamps completed_at with now() too.
    at := now();
    UPDATE pgflow.step_states AS s
    SET status = 'started', started_at = at, remaining_tasks = 1
    WHERE s.run_id = NEW.run_id AND s.step_slug = NEW.step_slug;
    INSERT INTO pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, status,
                                   attempts_count, queued_at, started_at)
    VALUES (NEW.flow_slug, NEW.run_id, NEW.step_slug, 0, 'started', 1, at, at);
    PERFORM realtime.send(
        pg_catalog.jsonb_build_object(
            'event_type', 'step:started',
            'run_id', NEW.run_id,
            'step_slug', NEW.step_slug,
            'status', 'started',
            'started_at', at,
            'remaining_tasks', 1,
            'remaining_deps', 0,
            'waiting', true
        ),
        pg_catalog.concat('step:', NEW.step_slug, ':started'),
        pg_catalog.concat('pgflow:run:', NEW.run_id),
        false
    );
    INSERT INTO pgflow_python.waits AS w (run_id, step_slug, task_index, flow_slug,
                                          waiting_since, timeout_at, early_signal)
    VALUES (
        NEW.run_id, NEW.step_slug, 0, NEW.flow_slug, at,
        at + pg_catalog.make_interval(secs => rule.timeout_seconds),
        EXISTS (SELECT 1 FROM pgflow_python.signals AS g
                WHERE g.run_id = NEW.run_id AND g.step_slug = NEW.step_slug)
    )
    ON CONFLICT ON CONSTRAINT waits_pkey DO UPDATE
    SET waiting_since = excluded.waiting_since, timeout_at = excluded.timeout_at,
        early_signal = excluded.early_signal, ended_at = NULL, outcome = NULL;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.begin_wait() IS
    'pgflow-python: trigger: a wait step that became ready starts waiting (no message is sent).';

DROP TRIGGER IF EXISTS pgflow_python_ready_step_wait ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_step_wait
    AFTER UPDATE OF remaining_deps, status ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0
          AND (OLD.status <> 'created' OR OLD.remaining_deps <> 0))
    EXECUTE FUNCTION pgflow_python.begin_wait();

DROP TRIGGER IF EXISTS pgflow_python_ready_root_step_wait ON pgflow.step_states;
CREATE TRIGGER pgflow_python_ready_root_step_wait
    AFTER INSERT ON pgflow.step_states
    FOR EACH ROW
    WHEN (NEW.status = 'created' AND NEW.remaining_deps = 0)
    EXECUTE FUNCTION pgflow_python.begin_wait();

-- Ends a wait with an output through upstream's complete_task (which starts the dependents
-- and completes the run as after any task). Returns false when the task no longer waits (its
-- run ended, or it timed out). The caller holds the run's lock.
CREATE OR REPLACE FUNCTION pgflow_python.complete_wait(
    run_id uuid,
    step_slug text,
    task_index integer,
    output jsonb,
    outcome text
)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    at timestamptz := pg_catalog.clock_timestamp();
BEGIN
    PERFORM 1 FROM pgflow.step_tasks AS t
    JOIN pgflow.runs AS r ON r.run_id = t.run_id
    WHERE t.run_id = complete_wait.run_id AND t.step_slug = complete_wait.step_slug
      AND t.task_index = complete_wait.task_index AND t.status = 'started'
      AND t.message_id IS NULL AND r.status = 'started'
    FOR UPDATE OF t;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- complete_task stamps completed_at with now(), this transaction's start; a caller whose
    -- transaction began before the wait did (a long Session) would break upstream's
    -- "completed after started" checks, so the wait is dated back to that start.
    UPDATE pgflow.step_tasks AS t
    SET queued_at = least(t.queued_at, now()), started_at = least(t.started_at, now())
    WHERE t.run_id = complete_wait.run_id AND t.step_slug = complete_wait.step_slug
      AND t.task_index = complete_wait.task_index AND t.started_at > now();
    UPDATE pgflow.step_states AS s SET started_at = greatest(s.created_at, now())
    WHERE s.run_id = complete_wait.run_id AND s.step_slug = complete_wait.step_slug
      AND s.started_at > now();
    UPDATE pgflow_python.waits AS w
    SET ended_at = at, outcome = complete_wait.outcome
    WHERE w.run_id = complete_wait.run_id AND w.step_slug = complete_wait.step_slug
      AND w.task_index = complete_wait.task_index;
    PERFORM pgflow.complete_task(complete_wait.run_id, complete_wait.step_slug,
                                 complete_wait.task_index, complete_wait.output);
    RETURN true;
END;
$$;

COMMENT ON FUNCTION pgflow_python.complete_wait(uuid, text, integer, jsonb, text) IS
    'pgflow-python: complete a waiting task through pgflow.complete_task.';

-- A signal kept before its step waited is applied when the step starts waiting. Not inside the
-- gate itself: complete_task starts ready steps, and the statement that made this step ready
-- may still have other steps' gate triggers to run (start_flow inserts every step state in one
-- statement), which must see their steps still 'created'. So it is deferred to the end of the
-- transaction (a constraint trigger), when no statement is running; steps it makes ready are
-- gated as usual, and their own early signals are applied in the same commit.
CREATE OR REPLACE FUNCTION pgflow_python.apply_early_signal()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    kept pgflow_python.signals%ROWTYPE;
BEGIN
    SELECT * INTO kept FROM pgflow_python.signals AS g
    WHERE g.run_id = NEW.run_id AND g.step_slug = NEW.step_slug;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM pgflow.runs AS r WHERE r.run_id = NEW.run_id FOR UPDATE;
    IF pgflow_python.complete_wait(NEW.run_id, NEW.step_slug, NEW.task_index, kept.output,
                                   'signalled') THEN
        UPDATE pgflow_python.signals AS g SET applied_at = pg_catalog.clock_timestamp()
        WHERE g.run_id = NEW.run_id AND g.step_slug = NEW.step_slug;
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgflow_python.apply_early_signal() IS
    'pgflow-python: deferred trigger: apply a signal kept before its step started waiting.';

DROP TRIGGER IF EXISTS pgflow_python_apply_early_signal ON pgflow_python.waits;
CREATE CONSTRAINT TRIGGER pgflow_python_apply_early_signal
    AFTER INSERT OR UPDATE ON pgflow_python.waits
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.early_signal AND NEW.ended_at IS NULL)
    EXECUTE FUNCTION pgflow_python.apply_early_signal();

-- Sends a signal: the output of wait step step_slug of run_id. outcome:
--   'completed'         the step was waiting: it is completed now, dependents start;
--   'kept'              the step does not wait yet: applied when it starts waiting;
--   'already_signalled' a signal was received before (signalled_at): this one changed nothing;
--   'too_late'          the run ended, or the step no longer waits (timed out, skipped,
--                       failed): nothing changed;
--   'unknown_run', 'unknown_step', 'not_a_wait_step': nothing changed.
-- The run is locked first (as complete_task does), so concurrent signals are applied one after
-- the other and only the first is kept.
CREATE OR REPLACE FUNCTION pgflow_python.signal(run_id uuid, step_slug text, output jsonb)
RETURNS TABLE (outcome text, flow_slug text, run_status text, step_status text,
               signalled_at timestamptz)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    run pgflow.runs%ROWTYPE;
    earlier pgflow_python.signals%ROWTYPE;
BEGIN
    SELECT * INTO run FROM pgflow.runs AS r WHERE r.run_id = signal.run_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown_run';
        RETURN NEXT;
        RETURN;
    END IF;
    flow_slug := run.flow_slug;
    run_status := run.status;
    SELECT s.status INTO step_status FROM pgflow.step_states AS s
    WHERE s.run_id = signal.run_id AND s.step_slug = signal.step_slug;
    IF NOT EXISTS (
        SELECT 1 FROM pgflow_python.wait_steps AS w
        WHERE w.flow_slug = run.flow_slug AND w.step_slug = signal.step_slug
    ) THEN
        outcome := CASE WHEN step_status IS NULL THEN 'unknown_step' ELSE 'not_a_wait_step' END;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT * INTO earlier FROM pgflow_python.signals AS g
    WHERE g.run_id = signal.run_id AND g.step_slug = signal.step_slug;
    IF FOUND THEN
        outcome := 'already_signalled';
        signalled_at := earlier.received_at;
        RETURN NEXT;
        RETURN;
    END IF;
    IF run.status <> 'started' OR step_status NOT IN ('created', 'started') THEN
        outcome := 'too_late';
        RETURN NEXT;
        RETURN;
    END IF;

    signalled_at := pg_catalog.clock_timestamp();
    INSERT INTO pgflow_python.signals (run_id, step_slug, output, received_at)
    VALUES (signal.run_id, signal.step_slug, signal.output, signalled_at);
    IF step_status = 'created' THEN
        outcome := 'kept';
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT pgflow_python.complete_wait(signal.run_id, signal.step_slug, 0, signal.output,
                                       'signalled') THEN
        -- Started but not waiting: cannot happen for a wait step of a started run.
        RAISE EXCEPTION 'step "%" of run % is started but does not wait', step_slug, run_id;
    END IF;
    UPDATE pgflow_python.signals AS g SET applied_at = signalled_at
    WHERE g.run_id = signal.run_id AND g.step_slug = signal.step_slug;
    outcome := 'completed';
    SELECT s.status INTO step_status FROM pgflow.step_states AS s
    WHERE s.run_id = signal.run_id AND s.step_slug = signal.step_slug;
    SELECT r.status INTO run_status FROM pgflow.runs AS r WHERE r.run_id = signal.run_id;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgflow_python.signal(uuid, text, jsonb) IS
    'pgflow-python: send the output of a wait step of a run (the first signal wins).';

-- Ends one wait whose timeout passed (the caller, the deadline sweep, holds the run's lock):
-- 'fail' fails the task, then the step and the run (0061's fail_step_and_run), as fail_task does
-- on a last attempt (extension/0060 then cancels the run's other tasks); 'skip' skips the step
-- (extension/0061's skip_step, reason 'wait_timeout'), and the run goes on without its output.
CREATE OR REPLACE FUNCTION pgflow_python.time_out_wait(
    run_id uuid,
    step_slug text,
    task_index integer,
    on_timeout text,
    message text
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    at timestamptz := pg_catalog.clock_timestamp();
BEGIN
    UPDATE pgflow_python.waits AS w SET ended_at = at, outcome = 'timed_out'
    WHERE w.run_id = time_out_wait.run_id AND w.step_slug = time_out_wait.step_slug
      AND w.task_index = time_out_wait.task_index;
    IF on_timeout = 'skip' THEN
        PERFORM pgflow_python.skip_step(time_out_wait.run_id, time_out_wait.step_slug,
                                        'wait_timeout', false, time_out_wait.message);
        PERFORM pgflow.cascade_complete_taskless_steps(time_out_wait.run_id);
        PERFORM pgflow.start_ready_steps(time_out_wait.run_id);
        PERFORM pgflow.maybe_complete_run(time_out_wait.run_id);
        RETURN;
    END IF;
    UPDATE pgflow.step_tasks AS t
    SET status = 'failed', failed_at = at, error_message = time_out_wait.message
    WHERE t.run_id = time_out_wait.run_id AND t.step_slug = time_out_wait.step_slug
      AND t.task_index = time_out_wait.task_index;
    PERFORM pgflow_python.fail_step_and_run(time_out_wait.run_id, time_out_wait.step_slug,
                                            time_out_wait.message);
END;
$$;

COMMENT ON FUNCTION pgflow_python.time_out_wait(uuid, text, integer, text, text) IS
    'pgflow-python: end a wait whose timeout passed (fail or skip the step).';
