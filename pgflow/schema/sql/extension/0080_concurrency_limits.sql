-- Concurrency limits per key: at most max_running tasks of a flow (or of one of its steps) with
-- the same key value -- read from the run's input -- are in flight at once, across every
-- worker of either language. Design: README.md in this folder, "Holding a task".
--
-- Where it is enforced: on the flow's queue table, pgmq.q_<flow>, by row triggers created only
-- for flows that have a limit (set_concurrency_limit creates them; other flows pay nothing).
-- A message that upstream's start_ready_steps (or anyone) sends takes a slot of its key, or is
-- held: its vt is set to 'infinity', so pgmq.read -- hence start_tasks, our claims and a
-- TypeScript 0.8.1 worker -- never returns it, and a held_tasks row says why. A task is "in
-- flight" from the moment its message is admitted until the message leaves the queue
-- (complete_task, complete_task_batch, a last failed attempt and a failed or cancelled run all
-- archive it): that DELETE frees the slot and, in the same statement, hands it to the oldest
-- held task of the same key (its vt set to now()). A retry (fail_task's set_vt) and a task put
-- back by stalled-task recovery keep their slot: the message never left the queue, so a killed
-- worker's tasks hold their slots only until they are recovered and finished.
--
-- Fairness: slots are per key value, so one key's backlog (held, invisible) never stands in
-- front of another key's tasks; within a key, held tasks are released oldest first.
--
-- Locks: a key's slot row (concurrency_slots) is locked by whoever takes or frees a slot of
-- it, which serializes the count. A transaction that frees slots of several keys of one flow
-- (a batch of reports) locks them in the order its DELETE visits the messages; two such
-- batches may deadlock, and PostgreSQL then aborts one of them (the worker retries its reports).

CREATE TABLE IF NOT EXISTS pgflow_python.concurrency_limits (
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    -- '' : the limit counts the tasks of every step of the flow together.
    step_slug text NOT NULL DEFAULT '',
    max_running integer NOT NULL CHECK (max_running > 0),
    -- A path into the run's input (#> operator); NULL: one limit for all runs.
    key_path text[],
    PRIMARY KEY (flow_slug, step_slug)
);

COMMENT ON TABLE pgflow_python.concurrency_limits IS
    'pgflow-python: concurrency limits per key of flows and steps (step_slug '''': whole flow).';

-- The rows below go with their flow (a flow deleted and defined again, as in development,
-- starts with no slot taken: its new queue's message ids start again at 1).
-- In-flight count per (limit, key value). key_value is the JSON scalar read from the input
-- ('null' when the limit has no key).
CREATE TABLE IF NOT EXISTS pgflow_python.concurrency_slots (
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    step_slug text NOT NULL,
    key_value jsonb NOT NULL,
    in_flight integer NOT NULL CHECK (in_flight >= 0),
    PRIMARY KEY (flow_slug, step_slug, key_value)
);

-- The messages holding a slot (so freeing one never depends on today's rules).
CREATE TABLE IF NOT EXISTS pgflow_python.concurrency_holders (
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    msg_id bigint NOT NULL,
    step_slug text NOT NULL,
    key_value jsonb NOT NULL,
    PRIMARY KEY (flow_slug, msg_id)
);

-- Tasks whose message is held invisible (vt 'infinity'), and why. held_until: the message
-- must stay invisible until then even once released (a delayed enqueue).
CREATE TABLE IF NOT EXISTS pgflow_python.held_tasks (
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    msg_id bigint NOT NULL,
    run_id uuid NOT NULL,
    step_slug text NOT NULL,
    task_index integer NOT NULL,
    reason text NOT NULL CHECK (reason IN ('concurrency')),
    limit_step_slug text NOT NULL,
    key_value jsonb NOT NULL,
    held_since timestamptz NOT NULL,
    held_until timestamptz,
    PRIMARY KEY (flow_slug, msg_id)
);

CREATE INDEX IF NOT EXISTS held_tasks_release_order
    ON pgflow_python.held_tasks (flow_slug, limit_step_slug, key_value, msg_id);

COMMENT ON TABLE pgflow_python.held_tasks IS
    'pgflow-python: tasks whose queue message is held invisible until a reason ends.';

-- The key value of a run for a limit: the JSON at key_path in the input ('null' for a limit
-- without key, and for a run started before its limit existed whose input lacks the key).
CREATE OR REPLACE FUNCTION pgflow_python.concurrency_key(input jsonb, key_path text[])
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
SET search_path = ''
AS $$
    SELECT CASE WHEN key_path IS NULL THEN 'null'::jsonb
                ELSE coalesce(input OPERATOR(pg_catalog.#>) key_path, 'null'::jsonb) END
$$;

-- Gives the slot of (flow, limit step, key) to its oldest held task, if any; returns whether
-- one was released. The caller holds the slot row's lock.
CREATE OR REPLACE FUNCTION pgflow_python.release_held_task(
    flow_slug text, limit_step_slug text, key_value jsonb
)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    next pgflow_python.held_tasks%ROWTYPE;
BEGIN
    LOOP
        DELETE FROM pgflow_python.held_tasks AS h
        WHERE (h.flow_slug, h.msg_id) = (
            SELECT o.flow_slug, o.msg_id FROM pgflow_python.held_tasks AS o
            WHERE o.flow_slug = release_held_task.flow_slug
              AND o.limit_step_slug = release_held_task.limit_step_slug
              AND o.key_value = release_held_task.key_value
            ORDER BY o.msg_id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING * INTO next;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        INSERT INTO pgflow_python.concurrency_holders (flow_slug, msg_id, step_slug, key_value)
        VALUES (next.flow_slug, next.msg_id, next.limit_step_slug, next.key_value);
        EXECUTE pg_catalog.format('UPDATE pgmq.%I SET vt = $2 WHERE msg_id = $1',
                                  pgmq.format_table_name(next.flow_slug, 'q'))
        USING next.msg_id, greatest(pg_catalog.now(), next.held_until);
        IF FOUND THEN
            RETURN true;
        END IF;
        -- The message left the queue meanwhile: not in flight after all.
        DELETE FROM pgflow_python.concurrency_holders AS c
        WHERE c.flow_slug = next.flow_slug AND c.msg_id = next.msg_id;
    END LOOP;
END;
$$;

-- BEFORE INSERT on pgmq.q_<flow> (TG_ARGV[0]: the flow): admit the message into a slot or
-- hold it.
CREATE OR REPLACE FUNCTION pgflow_python.admit_or_hold()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    flow text := TG_ARGV[0];
    rule pgflow_python.concurrency_limits%ROWTYPE;
    key jsonb;
BEGIN
    SELECT * INTO rule FROM pgflow_python.concurrency_limits AS l
    WHERE l.flow_slug = flow AND l.step_slug IN (NEW.message ->> 'step_slug', '')
    ORDER BY l.step_slug DESC
    LIMIT 1;
    IF NOT FOUND OR NEW.message ->> 'run_id' IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT pgflow_python.concurrency_key(r.input, rule.key_path) INTO key
    FROM pgflow.runs AS r WHERE r.run_id = (NEW.message ->> 'run_id')::uuid;
    key := coalesce(key, 'null'::jsonb);

    INSERT INTO pgflow_python.concurrency_slots AS s (flow_slug, step_slug, key_value, in_flight)
    VALUES (flow, rule.step_slug, key, 1)
    ON CONFLICT ON CONSTRAINT concurrency_slots_pkey DO UPDATE
    SET in_flight = s.in_flight + 1
    WHERE s.in_flight < rule.max_running;
    IF FOUND THEN
        INSERT INTO pgflow_python.concurrency_holders (flow_slug, msg_id, step_slug, key_value)
        VALUES (flow, NEW.msg_id, rule.step_slug, key);
        RETURN NEW;
    END IF;
    NEW.vt := 'infinity';
    INSERT INTO pgflow_python.held_tasks (flow_slug, msg_id, run_id, step_slug, task_index,
                                          reason, limit_step_slug, key_value, held_since)
    VALUES (flow, NEW.msg_id, (NEW.message ->> 'run_id')::uuid, NEW.message ->> 'step_slug',
            coalesce((NEW.message ->> 'task_index')::integer, 0), 'concurrency',
            rule.step_slug, key, pg_catalog.clock_timestamp());
    RETURN NEW;
END;
$$;

-- BEFORE UPDATE OF vt on pgmq.q_<flow>, only for held messages (WHEN OLD.vt = 'infinity'):
-- a held message stays invisible unless its held_tasks row was removed (a release). A later
-- time set on a held message (enqueue's delay: pgmq.set_vt right after the send) is kept as
-- held_until: the release makes it visible no earlier.
CREATE OR REPLACE FUNCTION pgflow_python.keep_held()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    UPDATE pgflow_python.held_tasks AS h
    SET held_until = CASE WHEN NEW.vt > pg_catalog.now() THEN NEW.vt ELSE h.held_until END
    WHERE h.flow_slug = TG_ARGV[0] AND h.msg_id = NEW.msg_id;
    IF FOUND THEN
        NEW.vt := OLD.vt;
    END IF;
    RETURN NEW;
END;
$$;

-- AFTER DELETE on pgmq.q_<flow>: the message left the queue (archived or deleted). Its slot
-- goes to the oldest held task of its key, or is freed; a held message just stops being held.
CREATE OR REPLACE FUNCTION pgflow_python.free_slot()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    flow text := TG_ARGV[0];
    holder pgflow_python.concurrency_holders%ROWTYPE;
BEGIN
    DELETE FROM pgflow_python.concurrency_holders AS c
    WHERE c.flow_slug = flow AND c.msg_id = OLD.msg_id
    RETURNING * INTO holder;
    IF NOT FOUND THEN
        DELETE FROM pgflow_python.held_tasks AS h
        WHERE h.flow_slug = flow AND h.msg_id = OLD.msg_id;
        RETURN NULL;
    END IF;
    PERFORM 1 FROM pgflow_python.concurrency_slots AS s
    WHERE s.flow_slug = flow AND s.step_slug = holder.step_slug
      AND s.key_value = holder.key_value
    FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM pgflow_python.concurrency_limits AS l
                   WHERE l.flow_slug = flow AND l.step_slug = holder.step_slug
                     AND l.max_running < (SELECT s.in_flight
                                          FROM pgflow_python.concurrency_slots AS s
                                          WHERE s.flow_slug = flow
                                            AND s.step_slug = holder.step_slug
                                            AND s.key_value = holder.key_value))
       AND pgflow_python.release_held_task(flow, holder.step_slug, holder.key_value) THEN
        RETURN NULL;  -- the slot passed to the released task
    END IF;
    UPDATE pgflow_python.concurrency_slots AS s SET in_flight = s.in_flight - 1
    WHERE s.flow_slug = flow AND s.step_slug = holder.step_slug
      AND s.key_value = holder.key_value;
    RETURN NULL;
END;
$$;

-- Start-time check (AFTER INSERT on pgflow.runs; created with the first keyed limit): the
-- input of a run of a flow with a keyed limit must have a string, number or boolean at the
-- key, so that start_flow fails with the key's name instead of a run being limited wrongly.
CREATE OR REPLACE FUNCTION pgflow_python.check_concurrency_keys()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    rule pgflow_python.concurrency_limits%ROWTYPE;
    value jsonb;
BEGIN
    FOR rule IN
        SELECT * FROM pgflow_python.concurrency_limits AS l
        WHERE l.flow_slug = NEW.flow_slug AND l.key_path IS NOT NULL
    LOOP
        value := NEW.input OPERATOR(pg_catalog.#>) rule.key_path;
        IF value IS NULL OR pg_catalog.jsonb_typeof(value) NOT IN ('string', 'number', 'boolean')
        THEN
            RAISE EXCEPTION 'flow "%" has a concurrency limit keyed on "%", but the input %',
                NEW.flow_slug, pg_catalog.array_to_string(rule.key_path, '.'),
                CASE WHEN value IS NULL THEN 'has no such key'
                     ELSE pg_catalog.format('has %s there (a key value must be a string, '
                                            'number or boolean)',
                                            CASE pg_catalog.jsonb_typeof(value)
                                                WHEN 'null' THEN 'null'
                                                ELSE 'an ' || pg_catalog.jsonb_typeof(value)
                                            END) END
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'pgflow-python: concurrency key missing or not a scalar';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- Sets (or with max_running NULL removes) the concurrency limit of a flow (step_slug NULL) or
-- of one of its steps. Used by compiled flows and migrations; takes effect at once: raising a
-- limit releases held tasks into the new slots, removing one releases all of them. Lowering a
-- limit stops nothing that already runs: new tasks wait until the count is under it.
-- Only missing triggers are created, pgflow.runs' first: CREATE TRIGGER on the flow's queue,
-- then on pgflow.runs, takes locks in the opposite order from a worker completing a task (its
-- run, then its queue), so re-creating them on every call deadlocked a limit changed under
-- load (tests/acceptance/test_flow_control_changes.py; pgflow_python.has_trigger: 0082).
CREATE OR REPLACE FUNCTION pgflow_python.set_concurrency_limit(
    flow_slug text,
    step_slug text,
    max_running integer,
    key_path text[] DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    target text := coalesce(step_slug, '');
    queue_table text := pgmq.format_table_name(flow_slug, 'q');
    slot record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgflow.flows AS f
                   WHERE f.flow_slug = set_concurrency_limit.flow_slug) THEN
        RAISE EXCEPTION 'no flow "%"', flow_slug USING ERRCODE = 'no_data_found';
    END IF;
    IF target <> '' AND NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, target
            USING ERRCODE = 'no_data_found';
    END IF;
    IF max_running IS NOT NULL AND max_running < 1 THEN
        RAISE EXCEPTION 'a concurrency limit must be at least 1, got %', max_running
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(key_path) = 0 THEN
        key_path := NULL;
    END IF;

    IF max_running IS NULL THEN
        DELETE FROM pgflow_python.concurrency_limits AS l
        WHERE l.flow_slug = set_concurrency_limit.flow_slug AND l.step_slug = target;
    ELSE
        INSERT INTO pgflow_python.concurrency_limits AS l (flow_slug, step_slug, max_running,
                                                          key_path)
        VALUES (set_concurrency_limit.flow_slug, target, set_concurrency_limit.max_running,
                set_concurrency_limit.key_path)
        ON CONFLICT ON CONSTRAINT concurrency_limits_pkey DO UPDATE
        SET max_running = excluded.max_running, key_path = excluded.key_path;
    END IF;

    IF max_running IS NOT NULL THEN
        -- DDL only where a trigger is missing (a changed limit needs none), and pgflow.runs'
        -- before the queue's: workers lock a run, then its queue, and a trigger created on
        -- the queue first deadlocked with them.
        IF key_path IS NOT NULL AND NOT pgflow_python.has_trigger(
            'pgflow.runs', 'pgflow_python_check_concurrency_keys'
        ) THEN
            CREATE OR REPLACE TRIGGER pgflow_python_check_concurrency_keys
                AFTER INSERT ON pgflow.runs
                FOR EACH ROW EXECUTE FUNCTION pgflow_python.check_concurrency_keys();
        END IF;
        IF NOT pgflow_python.has_trigger(pg_catalog.format('pgmq.%I', queue_table),
                                         'pgflow_python_free_slot') THEN
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_admit_or_hold BEFORE INSERT ON pgmq.%I '
                'FOR EACH ROW EXECUTE FUNCTION pgflow_python.admit_or_hold(%L)',
                queue_table, flow_slug);
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_keep_held BEFORE UPDATE OF vt ON pgmq.%I '
                'FOR EACH ROW WHEN (OLD.vt = ''infinity'') '
                'EXECUTE FUNCTION pgflow_python.keep_held(%L)',
                queue_table, flow_slug);
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER pgflow_python_free_slot AFTER DELETE ON pgmq.%I '
                'FOR EACH ROW EXECUTE FUNCTION pgflow_python.free_slot(%L)',
                queue_table, flow_slug);
        END IF;
    END IF;

    -- Held tasks that the new limit lets run (all of them when the limit is gone).
    FOR slot IN
        SELECT DISTINCT h.key_value FROM pgflow_python.held_tasks AS h
        WHERE h.flow_slug = set_concurrency_limit.flow_slug AND h.limit_step_slug = target
        ORDER BY h.key_value
    LOOP
        INSERT INTO pgflow_python.concurrency_slots AS s (flow_slug, step_slug, key_value,
                                                         in_flight)
        VALUES (set_concurrency_limit.flow_slug, target, slot.key_value, 0)
        ON CONFLICT ON CONSTRAINT concurrency_slots_pkey DO NOTHING;
        PERFORM 1 FROM pgflow_python.concurrency_slots AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
          AND s.key_value = slot.key_value
        FOR UPDATE;
        WHILE (max_running IS NULL OR max_running > (
                   SELECT s.in_flight FROM pgflow_python.concurrency_slots AS s
                   WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
                     AND s.key_value = slot.key_value))
              AND pgflow_python.release_held_task(set_concurrency_limit.flow_slug, target,
                                                  slot.key_value) LOOP
            UPDATE pgflow_python.concurrency_slots AS s SET in_flight = s.in_flight + 1
            WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target
              AND s.key_value = slot.key_value;
        END LOOP;
    END LOOP;
    IF max_running IS NULL THEN
        -- Nothing counts for a limit that is gone.
        DELETE FROM pgflow_python.concurrency_holders AS c
        WHERE c.flow_slug = set_concurrency_limit.flow_slug AND c.step_slug = target;
        DELETE FROM pgflow_python.concurrency_slots AS s
        WHERE s.flow_slug = set_concurrency_limit.flow_slug AND s.step_slug = target;
        IF NOT EXISTS (SELECT 1 FROM pgflow_python.concurrency_limits AS l
                       WHERE l.flow_slug = set_concurrency_limit.flow_slug) THEN
            EXECUTE pg_catalog.format(
                'DROP TRIGGER IF EXISTS pgflow_python_admit_or_hold ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_keep_held ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_free_slot ON pgmq.%1$I',
                queue_table);
        END IF;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_concurrency_limit(text, text, integer, text[]) IS
    'pgflow-python: set or remove (max_running NULL) a per-key concurrency limit of a flow/step.';
