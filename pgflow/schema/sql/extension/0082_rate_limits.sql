-- Rate limits per key: at most max_starts task starts per period with the same key value, per
-- budget (a flow's, a step's, or a named budget shared by several flows and steps), across every
-- worker of either language. Design: README.md in this folder, "Rate limits".
--
-- A start is scheduled, not polled for: when a task's message is sent (or released from a
-- concurrency hold, or put back for a retry), a row trigger on pgmq.q_<flow> (created only for
-- flows with a rate limit) books the earliest time at which the budget allows one more start
-- and sets the message's vt to it, so no worker of either language can read it earlier. A task
-- over budget waits in its queue, invisible, holding nothing; no service has to release it.
--
-- Sliding log: a start may be booked at t only if the budget's max_starts-th latest booking is
-- at least one period before t; bookings of one budget and key are made in time order (t is
-- never before the latest one), so any window of one period holds at most max_starts of them.
-- A budget's key row (rate_budget_keys) is locked while booking, which serializes bookers.
--
-- Booked is not started: a message whose time has come waits for a reader, and one that waited
-- (no worker was running, a long transaction committed its bookings late) would start together
-- with the next period's. So reads are counted too: a BEFORE UPDATE row trigger on pgmq's
-- read (the only update that raises read_ct) lets a read through only while fewer than
-- max_starts reads of the budget and key happened within the period, and otherwise skips the
-- row (returns NULL: pgmq.read does not return it) and moves its vt to when the window has
-- room, once the read's statement is done (an AFTER statement trigger; a row trigger may not
-- change the row it skips). Every worker reads through pgmq.read (upstream's readMessages,
-- our claims), so a task's handler never starts while its window is full.

CREATE TABLE IF NOT EXISTS pgflow_python.rate_limits (
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    -- '' : the limit counts the starts of every step of the flow.
    step_slug text NOT NULL DEFAULT '',
    -- The budget: a named limit's name, shared by every flow and step that uses it; else
    -- ':<flow>:<step>' (names may not start with ':').
    budget text NOT NULL,
    max_starts integer NOT NULL CHECK (max_starts > 0),
    period interval NOT NULL CHECK (period > interval '0'),
    -- A path into the run's input (#> operator); NULL: one budget for all runs.
    key_path text[],
    PRIMARY KEY (flow_slug, step_slug)
);

COMMENT ON TABLE pgflow_python.rate_limits IS
    'pgflow-python: rate limits (starts per period) per key of flows and steps.';

CREATE TABLE IF NOT EXISTS pgflow_python.rate_budget_keys (
    budget text NOT NULL,
    key_value jsonb NOT NULL,
    latest timestamptz NOT NULL,
    PRIMARY KEY (budget, key_value)
);

COMMENT ON TABLE pgflow_python.rate_budget_keys IS
    'pgflow-python: per rate budget and key, its latest booked start (and the lock booking takes).';

-- Booked starts; those older than their period are deleted by the next booking of the key.
CREATE TABLE IF NOT EXISTS pgflow_python.rate_starts (
    budget text NOT NULL,
    key_value jsonb NOT NULL,
    at timestamptz NOT NULL,
    flow_slug text NOT NULL,
    msg_id bigint NOT NULL
);

CREATE INDEX IF NOT EXISTS rate_starts_latest
    ON pgflow_python.rate_starts (budget, key_value, at DESC);

CREATE INDEX IF NOT EXISTS rate_starts_message
    ON pgflow_python.rate_starts (flow_slug, msg_id);

COMMENT ON TABLE pgflow_python.rate_starts IS
    'pgflow-python: task starts booked against rate budgets, within their period.';

-- Reads of rate-limited messages (starts that happened), within their period.
CREATE TABLE IF NOT EXISTS pgflow_python.rate_reads (
    budget text NOT NULL,
    key_value jsonb NOT NULL,
    at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS rate_reads_latest
    ON pgflow_python.rate_reads (budget, key_value, at DESC);

COMMENT ON TABLE pgflow_python.rate_reads IS
    'pgflow-python: reads (task starts) of rate-limited messages, within their period.';

-- Messages whose read was refused, and when their window has room: applied and deleted by
-- the statement-level trigger at the end of the read's statement.
CREATE TABLE IF NOT EXISTS pgflow_python.rate_refused_reads (
    flow_slug text NOT NULL,
    msg_id bigint NOT NULL,
    retry_at timestamptz NOT NULL,
    PRIMARY KEY (flow_slug, msg_id)
);

COMMENT ON TABLE pgflow_python.rate_refused_reads IS
    'pgflow-python: reads refused for a full rate window, until their statement ends.';

-- Books one start of a message against every rate limit of its step (the step's own and the
-- flow's), no earlier than not_before, and returns the time booked (not_before when the flow
-- has no rate limit for the step). Budgets are locked in name order. SECURITY INVOKER: its
-- callers, the queue triggers below, are SECURITY DEFINER and call it as the owner. A time
-- that is not finite is refused: booked, it would push every later start of the key there.
CREATE OR REPLACE FUNCTION pgflow_python.book_rate_start(
    flow text, step text, run uuid, message bigint, not_before timestamptz
)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    rule record;
    input jsonb;
    booked timestamptz := not_before;
    earliest timestamptz;
    budgets text[] := '{}';
    keys jsonb[] := '{}';
    periods interval[] := '{}';
    i integer;
BEGIN
    IF not_before IS NULL OR NOT pg_catalog.isfinite(not_before) THEN
        RAISE EXCEPTION 'a start of flow % cannot be booked at %',
            flow, coalesce(not_before::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR rule IN
        SELECT l.budget, l.max_starts, l.period, l.key_path
        FROM pgflow_python.rate_limits AS l
        WHERE l.flow_slug = flow AND l.step_slug IN (step, '')
        ORDER BY l.budget
    LOOP
        IF input IS NULL THEN
            SELECT r.input INTO input FROM pgflow.runs AS r WHERE r.run_id = run;
        END IF;
        budgets := budgets || rule.budget;
        keys := keys || pgflow_python.concurrency_key(input, rule.key_path);
        periods := periods || rule.period;
        INSERT INTO pgflow_python.rate_budget_keys AS k (budget, key_value, latest)
        VALUES (rule.budget, keys[cardinality(keys)], '-infinity')
        ON CONFLICT ON CONSTRAINT rate_budget_keys_pkey DO UPDATE SET latest = k.latest
        RETURNING k.latest INTO earliest;
        booked := greatest(booked, earliest,
                       (SELECT s.at + rule.period FROM pgflow_python.rate_starts AS s
                        WHERE s.budget = rule.budget AND s.key_value = keys[cardinality(keys)]
                        ORDER BY s.at DESC
                        OFFSET rule.max_starts - 1 LIMIT 1));
    END LOOP;
    FOR i IN 1 .. cardinality(budgets) LOOP
        DELETE FROM pgflow_python.rate_starts AS s
        WHERE s.budget = budgets[i] AND s.key_value = keys[i]
          AND s.at <= pg_catalog.clock_timestamp() - periods[i];
        INSERT INTO pgflow_python.rate_starts (budget, key_value, at, flow_slug, msg_id)
        VALUES (budgets[i], keys[i], booked, flow, message);
        UPDATE pgflow_python.rate_budget_keys AS k SET latest = booked
        WHERE k.budget = budgets[i] AND k.key_value = keys[i];
    END LOOP;
    RETURN booked;
END;
$$;

-- BEFORE INSERT on pgmq.q_<flow>: book the message's start (its vt, or now) and make it
-- invisible until then. A message held by a concurrency limit (0080's trigger, whose name sorts
-- first, set its vt to 'infinity') is booked when it is released.
CREATE OR REPLACE FUNCTION pgflow_python.book_on_send()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF NEW.vt = 'infinity' OR NEW.message ->> 'run_id' IS NULL THEN
        RETURN NEW;
    END IF;
    NEW.vt := pgflow_python.book_rate_start(
        TG_ARGV[0], NEW.message ->> 'step_slug', (NEW.message ->> 'run_id')::uuid, NEW.msg_id,
        greatest(NEW.vt, pg_catalog.clock_timestamp()));
    RETURN NEW;
END;
$$;

-- BEFORE UPDATE OF vt on pgmq.q_<flow>, except reads (WHEN: read_ct unchanged) and holds: a
-- start to book again. Released from a concurrency hold (old vt 'infinity'); delayed before it
-- was ever read (enqueue's delay: its earlier booking, never used, is given back); or put back for another
-- attempt (fail_task's retry, stalled-task recovery: the task is queued again). A worker
-- extending the reservation of a task it runs (the task is started) books nothing.
CREATE OR REPLACE FUNCTION pgflow_python.book_again()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF NEW.message ->> 'run_id' IS NULL
       OR pg_catalog.current_setting('pgflow_python.postponing', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF OLD.vt <> 'infinity' THEN
        IF OLD.read_ct = 0 THEN
            DELETE FROM pgflow_python.rate_starts AS s
            WHERE s.flow_slug = TG_ARGV[0] AND s.msg_id = OLD.msg_id;
        ELSIF NOT EXISTS (
            SELECT 1 FROM pgflow.step_tasks AS t
            WHERE t.run_id = (NEW.message ->> 'run_id')::uuid
              AND t.step_slug = NEW.message ->> 'step_slug'
              AND t.task_index = coalesce((NEW.message ->> 'task_index')::integer, 0)
              AND t.status = 'queued'
        ) THEN
            RETURN NEW;
        END IF;
    END IF;
    NEW.vt := pgflow_python.book_rate_start(
        TG_ARGV[0], NEW.message ->> 'step_slug', (NEW.message ->> 'run_id')::uuid, NEW.msg_id,
        greatest(NEW.vt, pg_catalog.clock_timestamp()));
    RETURN NEW;
END;
$$;

-- A rate budget's key, locked for this transaction if free (readers and pruning; bookers lock
-- the key's rate_budget_keys row instead). A hash: two keys may share a lock, which only makes
-- one of them wait its turn.
CREATE OR REPLACE FUNCTION pgflow_python.try_lock_rate_key(budget text, key_value jsonb)
RETURNS boolean
LANGUAGE sql
VOLATILE
SET search_path = ''
AS $$
    SELECT pg_catalog.pg_try_advisory_xact_lock(
        pg_catalog.hashtext('pgflow_python.rate:' || budget), pg_catalog.hashtext(key_value::text))
$$;

-- BEFORE UPDATE on pgmq.q_<flow>, reads only (WHEN: read_ct raised): let the read through if
-- every rate window of the step has room (and count it), else skip the row.
CREATE OR REPLACE FUNCTION pgflow_python.admit_read()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    rule record;
    input jsonb;
    key jsonb;
    room_at timestamptz;
    budgets text[] := '{}';
    keys jsonb[] := '{}';
    periods interval[] := '{}';
    i integer;
BEGIN
    IF NEW.message ->> 'run_id' IS NULL THEN
        RETURN NEW;
    END IF;
    FOR rule IN
        SELECT l.budget, l.max_starts, l.period, l.key_path
        FROM pgflow_python.rate_limits AS l
        WHERE l.flow_slug = TG_ARGV[0] AND l.step_slug IN (NEW.message ->> 'step_slug', '')
        ORDER BY l.budget
    LOOP
        IF input IS NULL THEN
            SELECT r.input INTO input FROM pgflow.runs AS r
            WHERE r.run_id = (NEW.message ->> 'run_id')::uuid;
        END IF;
        key := pgflow_python.concurrency_key(input, rule.key_path);
        -- Readers of one key take turns, without waiting: a read that finds the key's lock
        -- taken (another transaction is reading it) is postponed by 100 ms, so two claims that
        -- reach keys in different orders cannot deadlock.
        IF NOT pgflow_python.try_lock_rate_key(rule.budget, key) THEN
            room_at := pg_catalog.clock_timestamp() + interval '100 milliseconds';
        ELSE
            IF NOT EXISTS (SELECT 1 FROM pgflow_python.rate_budget_keys AS k
                           WHERE k.budget = rule.budget AND k.key_value = key) THEN
                INSERT INTO pgflow_python.rate_budget_keys AS k (budget, key_value, latest)
                VALUES (rule.budget, key, '-infinity')
                ON CONFLICT ON CONSTRAINT rate_budget_keys_pkey DO NOTHING;
            END IF;
            SELECT s.at + rule.period INTO room_at FROM pgflow_python.rate_reads AS s
            WHERE s.budget = rule.budget AND s.key_value = key
              AND s.at > pg_catalog.clock_timestamp() - rule.period
            ORDER BY s.at DESC
            OFFSET rule.max_starts - 1 LIMIT 1;
        END IF;
        IF room_at IS NOT NULL THEN
            INSERT INTO pgflow_python.rate_refused_reads AS f (flow_slug, msg_id, retry_at)
            VALUES (TG_ARGV[0], NEW.msg_id, room_at)
            ON CONFLICT ON CONSTRAINT rate_refused_reads_pkey DO UPDATE
            SET retry_at = greatest(f.retry_at, excluded.retry_at);
            RETURN NULL;
        END IF;
        budgets := budgets || rule.budget;
        keys := keys || key;
        periods := periods || rule.period;
    END LOOP;
    FOR i IN 1 .. cardinality(budgets) LOOP
        DELETE FROM pgflow_python.rate_reads AS s
        WHERE s.budget = budgets[i] AND s.key_value = keys[i]
          AND s.at <= pg_catalog.clock_timestamp() - periods[i];
        INSERT INTO pgflow_python.rate_reads (budget, key_value, at)
        VALUES (budgets[i], keys[i], pg_catalog.clock_timestamp());
    END LOOP;
    RETURN NEW;
END;
$$;

-- AFTER UPDATE statement trigger on pgmq.q_<flow>: refused reads' messages become visible when
-- their window has room (this UPDATE is no read: admit_read does not see it).
CREATE OR REPLACE FUNCTION pgflow_python.postpone_refused_reads()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    refused record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgflow_python.rate_refused_reads AS f
                   WHERE f.flow_slug = TG_ARGV[0]) THEN
        RETURN NULL;
    END IF;
    -- Not a new start to book (book_again): the message keeps its place.
    PERFORM pg_catalog.set_config('pgflow_python.postponing', 'on', true);
    FOR refused IN
        DELETE FROM pgflow_python.rate_refused_reads AS f WHERE f.flow_slug = TG_ARGV[0]
        RETURNING f.msg_id, f.retry_at
    LOOP
        EXECUTE pg_catalog.format('UPDATE pgmq.%I SET vt = $2 WHERE msg_id = $1 AND vt < $2',
                                  pgmq.format_table_name(TG_ARGV[0], 'q'))
        USING refused.msg_id, refused.retry_at;
    END LOOP;
    PERFORM pg_catalog.set_config('pgflow_python.postponing', 'off', true);
    RETURN NULL;
END;
$$;

-- Whether table (a qualified name) has a trigger of that name.
CREATE OR REPLACE FUNCTION pgflow_python.has_trigger(table_name text, trigger_name text)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = ''
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger AS t
        WHERE t.tgrelid = pg_catalog.to_regclass(table_name) AND t.tgname = trigger_name
    )
$$;

-- AFTER DELETE on pgmq.q_<flow>, messages never read (WHEN: read_ct = 0): a task that never
-- started (its run cancelled, failed or pruned, its message deleted or archived) gives its
-- booked start back, and the key's latest booking becomes the latest one left, so the next start
-- is booked as if it had never been. Messages already booked later keep their vt (a gap left
-- between them is not filled).
CREATE OR REPLACE FUNCTION pgflow_python.give_back_start()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    given record;
BEGIN
    FOR given IN
        DELETE FROM pgflow_python.rate_starts AS s
        WHERE s.flow_slug = TG_ARGV[0] AND s.msg_id = OLD.msg_id
        RETURNING s.budget, s.key_value
    LOOP
        UPDATE pgflow_python.rate_budget_keys AS k
        SET latest = coalesce((SELECT max(s.at) FROM pgflow_python.rate_starts AS s
                               WHERE s.budget = given.budget AND s.key_value = given.key_value),
                              '-infinity')
        WHERE k.budget = given.budget AND k.key_value = given.key_value;
    END LOOP;
    RETURN NULL;
END;
$$;

-- Deferred to the end of the transaction (a constraint trigger on rate_limits): every rule of
-- a named budget has the same numbers and key, since they share one log of starts. A change of
-- a named limit is made for all of its users in one transaction (a migration, a deploy).
CREATE OR REPLACE FUNCTION pgflow_python.check_rate_budget()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    other pgflow_python.rate_limits%ROWTYPE;
    mine pgflow_python.rate_limits%ROWTYPE;
BEGIN
    SELECT * INTO mine FROM pgflow_python.rate_limits AS l
    WHERE l.flow_slug = NEW.flow_slug AND l.step_slug = NEW.step_slug;
    IF NOT FOUND OR mine.budget LIKE ':%' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO other FROM pgflow_python.rate_limits AS l
    WHERE l.budget = mine.budget
      AND (l.max_starts, l.period, l.key_path)
          IS DISTINCT FROM (mine.max_starts, mine.period, mine.key_path)
    ORDER BY l.flow_slug, l.step_slug
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rate limit "%" is used with different values: % starts per % keyed on '
                        '% (flow "%"%) and % starts per % keyed on % (flow "%"%)',
            mine.budget, mine.max_starts, mine.period,
            coalesce(pg_catalog.array_to_string(mine.key_path, '.'), 'nothing'),
            mine.flow_slug,
            CASE WHEN mine.step_slug = '' THEN ''
                 ELSE pg_catalog.format(', step "%s"', mine.step_slug) END,
            other.max_starts, other.period,
            coalesce(pg_catalog.array_to_string(other.key_path, '.'), 'nothing'),
            other.flow_slug,
            CASE WHEN other.step_slug = '' THEN ''
                 ELSE pg_catalog.format(', step "%s"', other.step_slug) END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Every use of a named rate limit must give the same numbers; change '
                         'them for all of its flows and steps in one transaction.';
    END IF;
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF NOT pgflow_python.has_trigger('pgflow_python.rate_limits',
                                     'pgflow_python_check_rate_budget') THEN
        CREATE CONSTRAINT TRIGGER pgflow_python_check_rate_budget
            AFTER INSERT OR UPDATE ON pgflow_python.rate_limits
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION pgflow_python.check_rate_budget();
    END IF;
END;
$$;

-- Start-time check (AFTER INSERT on pgflow.runs; created with the first keyed rate limit): the
-- input of a run of a flow with a keyed rate limit must have a string, number or boolean at the
-- key, so that start_flow fails naming the key instead of a run being limited wrongly.
CREATE OR REPLACE FUNCTION pgflow_python.check_rate_limit_keys()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    rule pgflow_python.rate_limits%ROWTYPE;
    value jsonb;
BEGIN
    FOR rule IN
        SELECT * FROM pgflow_python.rate_limits AS l
        WHERE l.flow_slug = NEW.flow_slug AND l.key_path IS NOT NULL
    LOOP
        value := NEW.input OPERATOR(pg_catalog.#>) rule.key_path;
        IF value IS NULL OR pg_catalog.jsonb_typeof(value) NOT IN ('string', 'number', 'boolean')
        THEN
            RAISE EXCEPTION 'flow "%" has a rate limit keyed on "%", but the input %',
                NEW.flow_slug, pg_catalog.array_to_string(rule.key_path, '.'),
                CASE WHEN value IS NULL THEN 'has no such key'
                     ELSE pg_catalog.format('has %s there (a key value must be a string, '
                                            'number or boolean)',
                                            CASE pg_catalog.jsonb_typeof(value)
                                                WHEN 'null' THEN 'null'
                                                ELSE 'an ' || pg_catalog.jsonb_typeof(value)
                                            END) END
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'pgflow-python: rate limit key missing or not a scalar';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- Sets (or with max_starts NULL removes) the rate limit of a flow (step_slug NULL) or of one of
-- its steps; budget_name shares one budget between every flow and step that names it (NULL:
-- the limit's own budget). Takes effect for starts booked from then on.
CREATE OR REPLACE FUNCTION pgflow_python.set_rate_limit(
    flow_slug text,
    step_slug text,
    max_starts integer,
    period interval,
    key_path text[] DEFAULT NULL,
    budget_name text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    target text := coalesce(step_slug, '');
    queue_table text := pgmq.format_table_name(flow_slug, 'q');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgflow.flows AS f
                   WHERE f.flow_slug = set_rate_limit.flow_slug) THEN
        RAISE EXCEPTION 'no flow "%"', flow_slug USING ERRCODE = 'no_data_found';
    END IF;
    IF target <> '' AND NOT EXISTS (
        SELECT 1 FROM pgflow.steps AS s
        WHERE s.flow_slug = set_rate_limit.flow_slug AND s.step_slug = target
    ) THEN
        RAISE EXCEPTION 'flow "%" has no step "%"', flow_slug, target
            USING ERRCODE = 'no_data_found';
    END IF;
    IF max_starts IS NOT NULL AND max_starts < 1 THEN
        RAISE EXCEPTION 'a rate limit must allow at least 1 start, got %', max_starts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_starts IS NOT NULL AND (period IS NULL OR period <= interval '0') THEN
        RAISE EXCEPTION 'a rate limit''s period must be positive, got %', period
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF budget_name LIKE ':%' OR budget_name = '' THEN
        RAISE EXCEPTION 'a rate limit name may not be empty or start with ":", got "%"',
            budget_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(key_path) = 0 THEN
        key_path := NULL;
    END IF;

    IF max_starts IS NULL THEN
        DELETE FROM pgflow_python.rate_limits AS l
        WHERE l.flow_slug = set_rate_limit.flow_slug AND l.step_slug = target;
        IF NOT EXISTS (SELECT 1 FROM pgflow_python.rate_limits AS l
                       WHERE l.flow_slug = set_rate_limit.flow_slug) THEN
            EXECUTE pg_catalog.format(
                'DROP TRIGGER IF EXISTS pgflow_python_rate_book ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_rate_book_again ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_rate_read ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_rate_postpone ON pgmq.%1$I; '
                'DROP TRIGGER IF EXISTS pgflow_python_rate_give_back ON pgmq.%1$I',
                queue_table);
        END IF;
        RETURN;
    END IF;
    INSERT INTO pgflow_python.rate_limits AS l (flow_slug, step_slug, budget, max_starts, period,
                                                key_path)
    VALUES (set_rate_limit.flow_slug, target,
            coalesce(budget_name, ':' || set_rate_limit.flow_slug || ':' || target),
            set_rate_limit.max_starts, set_rate_limit.period, set_rate_limit.key_path)
    ON CONFLICT ON CONSTRAINT rate_limits_pkey DO UPDATE
    SET budget = excluded.budget, max_starts = excluded.max_starts, period = excluded.period,
        key_path = excluded.key_path;
    -- DDL only where a trigger is missing (a changed limit needs none), pgflow.runs' first:
    -- workers lock a run, then its queue (see set_concurrency_limit, extension/0080). The queue triggers' names sort
    -- after 0080's admit_or_hold and keep_held: a message is admitted into a concurrency slot
    -- (or held) before its start is booked.
    IF key_path IS NOT NULL
       AND NOT pgflow_python.has_trigger('pgflow.runs', 'pgflow_python_check_rate_limit_keys')
    THEN
        CREATE OR REPLACE TRIGGER pgflow_python_check_rate_limit_keys
            AFTER INSERT ON pgflow.runs
            FOR EACH ROW EXECUTE FUNCTION pgflow_python.check_rate_limit_keys();
    END IF;
    IF pgflow_python.has_trigger(pg_catalog.format('pgmq.%I', queue_table),
                                 'pgflow_python_rate_give_back') THEN
        RETURN;
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgflow_python_rate_book BEFORE INSERT ON pgmq.%I '
        'FOR EACH ROW EXECUTE FUNCTION pgflow_python.book_on_send(%L)',
        queue_table, flow_slug);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgflow_python_rate_book_again BEFORE UPDATE OF vt ON pgmq.%I '
        'FOR EACH ROW WHEN (NEW.read_ct = OLD.read_ct AND NEW.vt <> ''infinity'') '
        'EXECUTE FUNCTION pgflow_python.book_again(%L)',
        queue_table, flow_slug);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgflow_python_rate_read BEFORE UPDATE ON pgmq.%I '
        'FOR EACH ROW WHEN (NEW.read_ct > OLD.read_ct) '
        'EXECUTE FUNCTION pgflow_python.admit_read(%L)',
        queue_table, flow_slug);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgflow_python_rate_postpone AFTER UPDATE ON pgmq.%I '
        'FOR EACH STATEMENT EXECUTE FUNCTION pgflow_python.postpone_refused_reads(%L)',
        queue_table, flow_slug);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgflow_python_rate_give_back AFTER DELETE ON pgmq.%I '
        'FOR EACH ROW WHEN (OLD.read_ct = 0) '
        'EXECUTE FUNCTION pgflow_python.give_back_start(%L)',
        queue_table, flow_slug);
END;
$$;

COMMENT ON FUNCTION pgflow_python.set_rate_limit(text, text, integer, interval, text[], text) IS
    'pgflow-python: set or remove (max_starts NULL) a per-key rate limit of a flow/step.';

-- Forgets rate-limit keys that limit nothing any more: no booking and no read within their
-- budget's period (its longest, or any age when no rule uses the budget), with their old
-- bookings and reads; at most row_limit keys, skipping keys locked by a booking or a read.
-- Called by every worker's upkeep round and by `pgflow prune`; returns the keys forgotten.
CREATE OR REPLACE FUNCTION pgflow_python.prune_rate_log(row_limit integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    idle record;
    forgotten integer := 0;
BEGIN
    FOR idle IN
        SELECT k.budget, k.key_value
        FROM pgflow_python.rate_budget_keys AS k
        CROSS JOIN LATERAL (
            SELECT pg_catalog.clock_timestamp()
                   - coalesce(max(l.period), interval '0') AS cutoff
            FROM pgflow_python.rate_limits AS l WHERE l.budget = k.budget
        ) AS b
        WHERE k.latest <= b.cutoff
          AND NOT EXISTS (SELECT 1 FROM pgflow_python.rate_reads AS r
                          WHERE r.budget = k.budget AND r.key_value = k.key_value
                            AND r.at > b.cutoff)
        ORDER BY k.latest
        LIMIT row_limit
        FOR UPDATE OF k SKIP LOCKED
    LOOP
        CONTINUE WHEN NOT pgflow_python.try_lock_rate_key(idle.budget, idle.key_value);
        DELETE FROM pgflow_python.rate_starts AS s
        WHERE s.budget = idle.budget AND s.key_value = idle.key_value;
        DELETE FROM pgflow_python.rate_reads AS r
        WHERE r.budget = idle.budget AND r.key_value = idle.key_value;
        DELETE FROM pgflow_python.rate_budget_keys AS k
        WHERE k.budget = idle.budget AND k.key_value = idle.key_value;
        forgotten := forgotten + 1;
    END LOOP;
    RETURN forgotten;
END;
$$;

COMMENT ON FUNCTION pgflow_python.prune_rate_log(integer) IS
    'pgflow-python: forget rate-limit keys with no booking or read within their period.';
