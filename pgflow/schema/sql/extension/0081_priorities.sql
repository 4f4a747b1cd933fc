-- Priorities: among the ready tasks of one flow's queue, a run of higher priority starts first,
-- for every worker of either language. Design: README.md in this folder, "Priorities".
--
-- pgmq.read (hence our claims, start_tasks' callers and a TypeScript 0.8.1 worker) hands out
-- the visible messages of a queue in msg_id order. So the priority is written into the msg_id:
-- a BEFORE INSERT row trigger on pgmq.q_<flow> (created only for flows that use priorities)
-- moves a message of priority p to msg_id - p * 2^47. Ids stay unique (pgmq's identity stays
-- below 2^47, and p is in -32767..32767), a priority-0 message keeps pgmq's own id, so messages
-- sent before the trigger existed or after it was dropped interleave correctly, and nothing
-- else changes: the message is sent, archived and retried under its id as usual (send returns
-- the new id, upstream's start_ready_steps stores it in step_tasks.message_id). Held tasks
-- (extension/0080) are released in msg_id order, so within a key a held task of higher
-- priority is released first too.
--
-- Strict priority: a message never ages; lower priorities wait while higher ones are ready.

CREATE TABLE IF NOT EXISTS pgflow_python.flow_priorities (
    flow_slug text PRIMARY KEY REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    priority smallint NOT NULL CHECK (priority BETWEEN -32767 AND 32767)
);

COMMENT ON TABLE pgflow_python.flow_priorities IS
    'pgflow-python: the default priority of a flow''s runs (higher starts first).';

-- A run's own priority, written by start_run before upstream's start_flow sends the run's
-- first messages (the foreign key is checked at commit, once the run exists).
CREATE TABLE IF NOT EXISTS pgflow_python.run_priorities (
    run_id uuid PRIMARY KEY
        REFERENCES pgflow.runs (run_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    flow_slug text NOT NULL,
    priority smallint NOT NULL CHECK (priority BETWEEN -32767 AND 32767)
);

COMMENT ON TABLE pgflow_python.run_priorities IS
    'pgflow-python: the priority a run was started with (higher starts first).';

-- BEFORE INSERT on pgmq.q_<flow> (TG_ARGV[0]: the flow). Its trigger's name sorts before the
-- concurrency triggers' (0080), which record the message's final id.
CREATE OR REPLACE FUNCTION pgflow_python.order_by_priority()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    wanted integer;
BEGIN
    IF NEW.message ->> 'run_id' IS NOT NULL THEN
        SELECT r.priority INTO wanted FROM pgflow_python.run_priorities AS r
        WHERE r.run_id = (NEW.message ->> 'run_id')::uuid;
    END IF;
    IF wanted IS NULL THEN
        SELECT f.priority INTO wanted FROM pgflow_python.flow_priorities AS f
        WHERE f.flow_slug = TG_ARGV[0];
    END IF;
    IF wanted IS NOT NULL AND wanted <> 0 THEN
        NEW.msg_id := NEW.msg_id - wanted::bigint * 140737488355328;  -- 2^47
    END IF;
    RETURN NEW;
END;
$$;

-- Creates the trigger on the flow's queue once (later calls read pg_trigger only).
CREATE OR REPLACE FUNCTION pgflow_python.ensure_priority_trigger(flow_slug text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    queue_table text := pgmq.format_table_name(ensure_priority_trigger.flow_slug, 'q');
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger AS t
        WHERE t.tgrelid = pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', queue_table))
          AND t.tgname = 'pgflow_python_0_priority'
    ) THEN
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER pgflow_python_0_priority BEFORE INSERT ON pgmq.%I '
            'FOR EACH ROW EXECUTE FUNCTION pgflow_python.order_by_priority(%L)',
            queue_table, ensure_priority_trigger.flow_slug);
    END IF;
END;
$$;

-- Sets (or with priority NULL removes) the default priority of a flow's runs. Used by compiled
-- flows and migrations; applies to messages sent from then on.
CREATE OR REPLACE FUNCTION pgflow_python.set_flow_priority(flow_slug text, priority integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgflow.flows AS f
                   WHERE f.flow_slug = set_flow_priority.flow_slug) THEN
        RAISE EXCEPTION 'no flow "%"', flow_slug USING ERRCODE = 'no_data_found';
    END IF;
    IF priority NOT BETWEEN -32767 AND 32767 THEN
        RAISE EXCEPTION 'a priority must be between -32767 and 32767, got %', priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF priority IS NULL THEN
        DELETE FROM pgflow_python.flow_priorities AS f
        WHERE f.flow_slug = set_flow_priority.flow_slug;
        RETURN;
    END IF;
    INSERT INTO pgflow_python.flow_priorities AS f (flow_slug, priority)
    VALUES (set_flow_priority.flow_slug, set_flow_priority.priority)
    ON CONFLICT ON CONSTRAINT flow_priorities_pkey DO UPDATE SET priority = excluded.priority;
    PERFORM pgflow_python.ensure_priority_trigger(set_flow_priority.flow_slug);
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_flow_priority(text, integer) IS
    'pgflow-python: set or remove (NULL) the default priority of a flow''s runs.';

-- start_run with a priority for the run (NULL: the flow's default). Inserted before upstream's
-- start_flow sends the run's first messages; a start that an idempotency key turned into the
-- earlier run leaves that run's priority alone. The priority row and the trigger are written
-- with the owner's rights (a client role may not create triggers).
CREATE OR REPLACE FUNCTION pgflow_python.set_run_priority(
    run_id uuid, flow_slug text, priority integer
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF priority NOT BETWEEN -32767 AND 32767 THEN
        RAISE EXCEPTION 'a priority must be between -32767 and 32767, got %', priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF priority IS NULL THEN
        DELETE FROM pgflow_python.run_priorities AS r WHERE r.run_id = set_run_priority.run_id;
        RETURN;
    END IF;
    INSERT INTO pgflow_python.run_priorities AS r (run_id, flow_slug, priority)
    VALUES (set_run_priority.run_id, set_run_priority.flow_slug, set_run_priority.priority)
    ON CONFLICT ON CONSTRAINT run_priorities_pkey DO UPDATE SET priority = excluded.priority;
    PERFORM pgflow_python.ensure_priority_trigger(set_run_priority.flow_slug);
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_run_priority(uuid, text, integer) IS
    'pgflow-python: the priority of a run about to be started (call before pgflow.start_flow).';

CREATE OR REPLACE FUNCTION pgflow_python.start_run(
    flow_slug text,
    input jsonb,
    run_id uuid,
    idempotency_key text,
    priority integer
)
RETURNS pgflow_python.started_run
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    new_run_id uuid := coalesce(start_run.run_id, pg_catalog.gen_random_uuid());
    result pgflow_python.started_run;
BEGIN
    IF start_run.priority IS NOT NULL THEN
        PERFORM pgflow_python.set_run_priority(new_run_id, start_run.flow_slug,
                                               start_run.priority);
    END IF;
    result := pgflow_python.start_run(start_run.flow_slug, start_run.input, new_run_id,
                                      start_run.idempotency_key);
    IF start_run.priority IS NOT NULL AND result.run_id <> new_run_id THEN
        PERFORM pgflow_python.set_run_priority(new_run_id, start_run.flow_slug, NULL);
    END IF;
    RETURN result;
END;
$$;

COMMENT ON FUNCTION pgflow_python.start_run(text, jsonb, uuid, text, integer) IS
    'pgflow-python: start_run with the run''s priority (NULL: the flow''s default).';
