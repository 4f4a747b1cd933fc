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
CREATE OR REPLACE FUNCTION pgflow_python.claim_tasks(
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

COMMENT ON FUNCTION pgflow_python.claim_tasks(text, uuid, integer, integer, integer) IS
    'pgflow-python: read, start and reserve up to batch tasks of a flow for one worker.';
