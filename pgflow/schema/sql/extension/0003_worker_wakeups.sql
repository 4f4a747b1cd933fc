-- Wake-ups for idle workers: NOTIFY on channel "pgflow_wakeup" (payload: the queue name) when a
-- flow's queue may have work, plus the time its next message becomes visible, so a worker can
-- sleep until then instead of polling. Additive only: the triggers sit on pgmq's queue tables and
-- never change a row, so upstream's functions and TypeScript workers behave exactly as before.
--
-- Not pgmq's enable_notify_insert: it drops notifications inside its throttle window, fires for
-- delayed messages still invisible, never fires on set_vt (so retries would wait for a poll),
-- ignores upper-case queue names and serialises concurrent senders on its throttle row.

-- Any insert can change when the queue next has work (a delayed message too: sleeping workers
-- must recompute their deadline), so one notification per statement that inserted rows.
-- NOTIFY dedupes equal payloads per transaction, so a run start that enqueues many steps and
-- tasks still costs listeners one wake-up.
CREATE OR REPLACE FUNCTION pgflow_python.wakeup_after_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_messages) THEN
        PERFORM pg_catalog.pg_notify('pgflow_wakeup', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- Updates of a queue are mostly reservations moving vt into the future (pgmq.read, a worker
-- extending its claim): those must stay silent or every read would wake every worker. Only an
-- update that leaves a message visible now matters: a retry with base_delay 0 (fail_task's
-- set_vt), a stalled task put back by recover_stalled_tasks, a manual set_vt(..., 0). A retry
-- with a delay is found by the worker's next poll (it sleeps at most its poll interval, and no
-- longer than next_visible_at says).
CREATE OR REPLACE FUNCTION pgflow_python.wakeup_after_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM updated_messages AS m WHERE m.vt <= pg_catalog.clock_timestamp()
    ) THEN
        PERFORM pg_catalog.pg_notify('pgflow_wakeup', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- Installs both triggers on the queue's table once; later calls only read pg_trigger, so every
-- worker may call it at start for each flow it serves (that is how new flows get their
-- triggers). SECURITY DEFINER because only the table's owner may add triggers and a worker's
-- role often does not own the queues that migrations created.
CREATE OR REPLACE FUNCTION pgflow_python.ensure_wakeup_trigger(queue_name text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    -- pgmq lower-cases table names: queue "MyFlow" lives in pgmq.q_myflow.
    queue_table text := pgmq.format_table_name(ensure_wakeup_trigger.queue_name, 'q');
    queue_oid oid;
    payload text;
    definitions CONSTANT text[][] := ARRAY[
        ARRAY['pgflow_python_wakeup_insert', 'INSERT', 'inserted_messages', 'wakeup_after_insert'],
        ARRAY['pgflow_python_wakeup_update', 'UPDATE', 'updated_messages', 'wakeup_after_update']
    ];
    i integer;
BEGIN
    queue_oid := pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', queue_table));
    IF queue_oid IS NULL THEN
        RAISE EXCEPTION 'pgmq queue "%" does not exist', ensure_wakeup_trigger.queue_name
            USING ERRCODE = 'undefined_table',
                  HINT = 'create the flow first (pgflow.create_flow creates its queue)';
    END IF;

    -- Listeners match the payload against flow slugs, so send the queue's own spelling even when
    -- the caller's differs in case.
    SELECT m.queue_name INTO payload
    FROM pgmq.meta AS m
    WHERE pgmq.format_table_name(m.queue_name, 'q') = queue_table
    ORDER BY m.queue_name = ensure_wakeup_trigger.queue_name DESC, m.queue_name
    LIMIT 1;
    payload := coalesce(payload, ensure_wakeup_trigger.queue_name);

    FOR i IN 1 .. pg_catalog.array_length(definitions, 1) LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_catalog.pg_trigger AS t
            WHERE t.tgrelid = queue_oid AND t.tgname = definitions[i][1]
        );
        -- CREATE TRIGGER waits for the table's in-flight writers; a concurrent caller that got
        -- there first makes ours fail as a duplicate, which is the outcome we wanted anyway.
        BEGIN
            EXECUTE pg_catalog.format(
                'CREATE TRIGGER %I AFTER %s ON pgmq.%I REFERENCING NEW TABLE AS %I'
                ' FOR EACH STATEMENT EXECUTE FUNCTION pgflow_python.%I(%L)',
                definitions[i][1], definitions[i][2], queue_table, definitions[i][3],
                definitions[i][4], payload
            );
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END;
$$;

-- When the queue's next message becomes visible: now or earlier if one is visible already, later
-- for a delayed message (start_delay, retry backoff) or a reservation that may expire; NULL for
-- an empty queue. An index lookup on pgmq's vt index, cheap enough for every idle loop.
CREATE OR REPLACE FUNCTION pgflow_python.next_visible_at(queue_name text)
RETURNS timestamptz
LANGUAGE plpgsql
STABLE
SET search_path = ''
AS $$
DECLARE
    queue_table text := pgmq.format_table_name(next_visible_at.queue_name, 'q');
    result timestamptz;
BEGIN
    IF pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', queue_table)) IS NULL THEN
        RAISE EXCEPTION 'pgmq queue "%" does not exist', next_visible_at.queue_name
            USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE pg_catalog.format('SELECT min(q.vt) FROM pgmq.%I AS q', queue_table) INTO result;
    RETURN result;
END;
$$;

COMMENT ON FUNCTION pgflow_python.ensure_wakeup_trigger(text) IS
    'pgflow-python: idempotently add NOTIFY pgflow_wakeup triggers to a pgmq queue (workers call it at start).';
COMMENT ON FUNCTION pgflow_python.next_visible_at(text) IS
    'pgflow-python: earliest vt of a pgmq queue (NULL when empty), for workers that sleep until then.';
COMMENT ON FUNCTION pgflow_python.wakeup_after_insert() IS
    'pgflow-python: trigger; NOTIFY pgflow_wakeup <queue> once per inserting statement.';
COMMENT ON FUNCTION pgflow_python.wakeup_after_update() IS
    'pgflow-python: trigger; NOTIFY pgflow_wakeup <queue> when an update leaves a message visible now.';
