-- Oracles for the tests: the per-task claim and completion that the set-based functions of the
-- product schema (extension/0012_claim_task_batch.sql, 0010_complete_task_batch.sql) are
-- compared against. Not product SQL: the test suite installs this file into its template
-- database (tests/conftest.py), in a schema of its own.
CREATE SCHEMA IF NOT EXISTS pgflow_oracles;

-- Claiming in one call: read a batch of messages, start their tasks through upstream's
-- start_tasks, and keep each claimed message invisible for its step's timeout plus a margin.
--
-- Two statements on purpose. A volatile function such as pgmq.read or start_tasks sees rows
-- committed after the calling statement began, but the calling statement itself does not: a
-- single statement that read messages and then joined pgflow.step_tasks lost every task whose
-- run advanced (commit of complete_task) while that statement ran. The task was marked started
-- and never handed to a handler. Here the second statement's snapshot is taken after the read,
-- so it sees the tasks of every message read (a task and its message commit together).
-- Upstream's own poll_for_tasks splits its statements the same way, for the same reason.
--
-- Additive: TypeScript workers keep calling pgmq.read and start_tasks themselves.
CREATE OR REPLACE FUNCTION pgflow_oracles.claim_tasks(
    queue text, claiming_worker uuid, batch integer, reservation integer, margin integer
)
RETURNS TABLE (task jsonb, task_timeout integer, attempt integer)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    read_ids bigint[];
BEGIN
    SELECT coalesce(array_agg(r.msg_id), '{}') INTO read_ids
    FROM pgmq.read(queue, reservation, batch) AS r;
    IF cardinality(read_ids) = 0 THEN
        RETURN;
    END IF;
    -- attempts_count comes from this statement's snapshot, i.e. before start_tasks counted
    -- the attempt it starts; upstream's start_tasks means to extend visibility itself, but its
    -- CTE is never referenced, so never runs: set_vt_batch does it here.
    RETURN QUERY
    WITH claimed AS (
        SELECT * FROM pgflow.start_tasks(queue, read_ids, claiming_worker)
    ),
    timeouts AS (
        SELECT c.msg_id, coalesce(s.opt_timeout, f.opt_timeout) AS seconds
        FROM claimed c
        JOIN pgflow.steps s ON s.flow_slug = c.flow_slug AND s.step_slug = c.step_slug
        JOIN pgflow.flows f ON f.flow_slug = c.flow_slug
    ),
    extended AS (
        SELECT count(*) AS n
        FROM pgflow.set_vt_batch(
            queue,
            ARRAY(SELECT t.msg_id FROM timeouts t ORDER BY t.msg_id),
            ARRAY(SELECT t.seconds + margin FROM timeouts t ORDER BY t.msg_id)
        )
    )
    SELECT to_jsonb(c), t.seconds, st.attempts_count + 1
    FROM claimed c
    JOIN timeouts t ON t.msg_id = c.msg_id
    JOIN pgflow.step_tasks st
      ON st.run_id = c.run_id AND st.step_slug = c.step_slug AND st.task_index = c.task_index
    CROSS JOIN extended;
END
$$;

COMMENT ON FUNCTION pgflow_oracles.claim_tasks(text, uuid, integer, integer, integer) IS
    'pgflow-python: read, start and reserve up to batch tasks of a flow for one worker.';

-- Recording many completions in one transaction: one commit (one WAL flush) for a whole batch
-- instead of one per task. Each task still goes through upstream's complete_task, in its own
-- statement, so every call sees what the previous ones did (two tasks of one map step in a
-- batch both count), and only while the reporting worker still holds the task (fencing, as in
-- the single-task report: a recovered task's late report does not count).
--
-- Tasks are completed in (run_id, step_slug, task_index) order. complete_task locks its run's
-- rows; batches of two workers that share runs therefore lock them in the same order and wait
-- for each other instead of deadlocking.
--
-- Returns the 1-based positions (in the argument arrays) of the tasks recorded; a missing
-- position means the task was not this worker's any more. Additive: TypeScript workers keep
-- calling complete_task one task at a time.
CREATE OR REPLACE FUNCTION pgflow_oracles.complete_tasks(
    reporting_worker uuid,
    run_ids uuid[],
    step_slugs text[],
    task_indexes integer[],
    outputs jsonb[]
)
RETURNS SETOF integer
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    item integer;
BEGIN
    IF cardinality(run_ids) IS DISTINCT FROM cardinality(step_slugs)
       OR cardinality(run_ids) IS DISTINCT FROM cardinality(task_indexes)
       OR cardinality(run_ids) IS DISTINCT FROM cardinality(outputs) THEN
        RAISE EXCEPTION 'complete_tasks: the four arrays must have the same length';
    END IF;
    FOR item IN
        SELECT u.item
        FROM unnest(run_ids, step_slugs, task_indexes) WITH ORDINALITY
             AS u(run_id, step_slug, task_index, item)
        ORDER BY u.run_id, u.step_slug, u.task_index
    LOOP
        PERFORM 1 FROM pgflow.step_tasks t
        WHERE t.run_id = run_ids[item]
          AND t.step_slug = step_slugs[item]
          AND t.task_index = task_indexes[item]
          AND t.status = 'started'
          AND t.last_worker_id = reporting_worker
        FOR UPDATE;
        IF FOUND THEN
            PERFORM pgflow.complete_task(
                run_ids[item], step_slugs[item], task_indexes[item], outputs[item]
            );
            RETURN NEXT item;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION pgflow_oracles.complete_tasks(uuid, uuid[], text[], integer[], jsonb[]) IS
    'pgflow-python: complete a batch of tasks held by one worker, in one transaction.';
