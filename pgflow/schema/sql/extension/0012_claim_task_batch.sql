-- Claiming with cached plans. Upstream's start_tasks is a SQL-language function: PostgreSQL
-- before 18 plans its whole statement again on every call (measured here: about a millisecond,
-- several times the cost of an empty claim). start_claimed_tasks gives the same result with the
-- same changes, as one static statement of a plpgsql function, whose plan PostgreSQL caches per
-- connection. The differential suite (tests/integration/test_set_based_completion.py) claims
-- through upstream's start_tasks in one database and through this in the other and compares the
-- records handed out and every table afterwards.
--
-- Same as pgflow 0.8.1's start_tasks (the worker refuses other upstream versions): tasks of the
-- given messages that are 'queued' in runs that have not failed become 'started' by worker_id,
-- attempts_count + 1; each record's input is, for a root map step, the run input's element at the
-- task's index; for a dependent map step, that element of its dependency's output; otherwise
-- {"run": run input} plus each dependency's output under its slug (a map dependency's outputs as
-- an array ordered by task_index). Upstream's start_tasks means to extend the messages'
-- visibility but never does (its CTE is not referenced): neither does this; claim_task_batch does.
--
-- One difference: started_at is never before queued_at. now() is the claim transaction's start,
-- and pgmq.read may see a task committed after that moment, so upstream's started_at = now() can
-- break the table's started_at_is_after_queued_at check and fail the whole claim.
CREATE OR REPLACE FUNCTION pgflow_python.start_claimed_tasks(flow_slug text, msg_ids bigint[], worker_id uuid)
RETURNS SETOF pgflow.step_task_record
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT t.flow_slug, t.run_id, t.step_slug, t.task_index, t.message_id
        FROM pgflow.step_tasks t
        JOIN pgflow.runs r ON r.run_id = t.run_id
        WHERE t.flow_slug = start_claimed_tasks.flow_slug AND t.message_id = ANY(msg_ids)
          AND t.status = 'queued' AND r.status <> 'failed'
    ),
    started AS (
        UPDATE pgflow.step_tasks t
        SET attempts_count = t.attempts_count + 1, status = 'started',
            started_at = greatest(now(), t.queued_at),
            last_worker_id = start_claimed_tasks.worker_id
        FROM picked p
        WHERE t.message_id = p.message_id AND t.flow_slug = p.flow_slug AND t.status = 'queued'
    ),
    -- Inputs of single steps: the run's input and each dependency's output. Outputs are read
    -- by the primary key (a single step's one task has index 0), the status a filter: with a
    -- status test in WHERE, statistics taken before any task completed make a partial index on
    -- completed tasks look empty, and the planner scanned every completed task per lookup.
    -- Materialized: inlined, it was planned as the inner side of a nested loop and computed
    -- again for every claimed task (quadratic in the batch's size).
    dep_outputs AS MATERIALIZED (
        SELECT p.run_id, p.step_slug,
               jsonb_object_agg(
                   d.dep_slug,
                   CASE WHEN ds.step_type = 'map' THEN (
                            SELECT coalesce(
                                jsonb_agg(o.output ORDER BY o.task_index)
                                    FILTER (WHERE o.status = 'completed'),
                                '[]'::jsonb)
                            FROM pgflow.step_tasks o
                            WHERE o.run_id = p.run_id AND o.step_slug = d.dep_slug)
                        ELSE (
                            SELECT CASE WHEN o.status = 'completed' THEN o.output END
                            FROM pgflow.step_tasks o
                            WHERE o.run_id = p.run_id AND o.step_slug = d.dep_slug
                              AND o.task_index = 0)
                   END
               ) AS outputs
        FROM (SELECT DISTINCT pk.run_id, pk.step_slug, pk.flow_slug FROM picked pk) p
        JOIN pgflow.steps ps
          ON ps.flow_slug = p.flow_slug AND ps.step_slug = p.step_slug AND ps.step_type = 'single'
        JOIN pgflow.deps d ON d.flow_slug = p.flow_slug AND d.step_slug = p.step_slug
        JOIN pgflow.steps ds ON ds.flow_slug = d.flow_slug AND ds.step_slug = d.dep_slug
        -- A skipped dependency's key is absent (extension/0061); upstream's start_tasks gives
        -- it as null. Flows without conditions have every dependency completed here.
        JOIN pgflow.step_states dss
          ON dss.run_id = p.run_id AND dss.step_slug = d.dep_slug AND dss.status <> 'skipped'
        GROUP BY p.run_id, p.step_slug
    ),
    -- Inputs of map tasks: element task_index of the run's input (a root map) or of its one
    -- dependency's output; of a map over a map, that element is the output of the dependency's
    -- task at the same index. Read per task, the whole (toasted) array would be fetched and
    -- decompressed again for every task, or a map's outputs aggregated again: quadratic in the
    -- map's size. Each array is copied once per (run, step) and claim instead (|| with an
    -- empty array makes the copy and changes no array).
    map_sources AS MATERIALIZED (
        SELECT src.run_id, src.step_slug, src.dep_slug, src.dep_type,
               CASE WHEN jsonb_typeof(src.source) = 'array' THEN src.source || '[]'::jsonb END
                   AS elements
        FROM (
            SELECT p.run_id, p.step_slug, d.dep_slug, ds.step_type AS dep_type,
                   CASE
                       WHEN d.dep_slug IS NULL THEN r.input
                       WHEN ds.step_type = 'single' THEN (
                           SELECT CASE WHEN o.status = 'completed' THEN o.output END
                           FROM pgflow.step_tasks o
                           WHERE o.run_id = p.run_id AND o.step_slug = d.dep_slug
                             AND o.task_index = 0)
                   END AS source
            FROM (SELECT DISTINCT pk.run_id, pk.step_slug, pk.flow_slug FROM picked pk) p
            JOIN pgflow.steps ms
              ON ms.flow_slug = p.flow_slug AND ms.step_slug = p.step_slug AND ms.step_type = 'map'
            JOIN pgflow.runs r ON r.run_id = p.run_id
            LEFT JOIN pgflow.deps d ON d.flow_slug = p.flow_slug AND d.step_slug = p.step_slug
            LEFT JOIN pgflow.steps ds ON ds.flow_slug = d.flow_slug AND ds.step_slug = d.dep_slug
        ) src
    )
    SELECT p.flow_slug, p.run_id, p.step_slug,
           CASE
               WHEN s.step_type = 'map' THEN (
                   SELECT CASE
                              WHEN m.dep_type = 'map' THEN (
                                  -- jsonb_agg would turn an SQL NULL output into JSON null
                                  SELECT CASE WHEN o.status = 'completed'
                                              THEN coalesce(o.output, 'null'::jsonb) END
                                  FROM pgflow.step_tasks o
                                  WHERE o.run_id = p.run_id AND o.step_slug = m.dep_slug
                                    AND o.task_index = p.task_index
                              )
                              ELSE jsonb_array_element(m.elements, p.task_index)
                          END
                   FROM map_sources m
                   WHERE m.run_id = p.run_id AND m.step_slug = p.step_slug
               )
               ELSE jsonb_build_object('run', r.input) || coalesce(o.outputs, '{}'::jsonb)
           END,
           p.message_id, p.task_index
    FROM picked p
    JOIN pgflow.runs r ON r.run_id = p.run_id
    JOIN pgflow.steps s ON s.flow_slug = p.flow_slug AND s.step_slug = p.step_slug
    LEFT JOIN dep_outputs o ON o.run_id = p.run_id AND o.step_slug = p.step_slug;
END
$$;

COMMENT ON FUNCTION pgflow_python.start_claimed_tasks(text, bigint[], uuid) IS
    'pgflow-python: pgflow.start_tasks with a cached plan (same records, same changes).';

-- Read a batch of messages, start their tasks through start_claimed_tasks, keep each claimed
-- message invisible for its step's timeout plus a margin. Two statements on purpose: a volatile
-- function sees rows committed after the calling statement began, the statement itself does not,
-- so one statement that read messages and then joined step_tasks lost tasks whose run advanced
-- meanwhile; the second statement's snapshot, taken after the read, sees the task of every
-- message read (a task and its message commit together).
--
-- A message that belongs to no task of the flow (a body that is not a task, a run that does not
-- exist: written by hand or by another program) would be read again after every reservation,
-- forever. When fewer tasks were claimed than messages read, such messages are archived (kept
-- in pgmq.a_<flow> for inspection). A task's message is sent in the statement that inserts the
-- task, so a message this read sees always has its task visible to the next statement.
--
-- The claim commits without waiting for its WAL to reach disk (synchronous_commit off for this
-- transaction only): a claim lost in a server crash only puts its tasks back in the queue, where
-- they are claimed again (delivery is at-least-once, and the first worker's late report is
-- fenced off). A later synchronous commit (the completion) flushes the WAL up to itself, so a
-- durable completion never rests on a claim that was lost. It spares every task one disk flush,
-- 1-4 ms of its start-to-finish time on a busy disk.
--
-- Where every step of the flow has the same timeout (the common case: only the flow's), the read
-- reserves each message for that timeout plus the margin at once, and the second update of
-- every claimed message (5 % of a task's SQL time, a tenth of its WAL) is not made. Only a
-- message read but not claimed is kept longer than the short reservation then: one whose task
-- is no longer queued (it is being run or has ended), which nobody can claim anyway.
CREATE OR REPLACE FUNCTION pgflow_python.claim_task_batch(
    queue text, claiming_worker uuid, batch integer, reservation integer, margin integer
)
RETURNS TABLE (task jsonb, task_timeout integer, attempt integer)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    read_ids bigint[];
    claimed_count bigint;
    uniform_timeout integer;
BEGIN
    PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    SELECT CASE WHEN min(coalesce(s.opt_timeout, f.opt_timeout))
                     = max(coalesce(s.opt_timeout, f.opt_timeout))
                THEN min(coalesce(s.opt_timeout, f.opt_timeout)) END
    INTO uniform_timeout
    FROM pgflow.steps s
    JOIN pgflow.flows f ON f.flow_slug = s.flow_slug
    WHERE s.flow_slug = queue;
    SELECT coalesce(array_agg(r.msg_id), '{}') INTO read_ids
    FROM pgmq.read(queue, coalesce(uniform_timeout + margin, reservation), batch) AS r;
    IF cardinality(read_ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        SELECT * FROM pgflow_python.start_claimed_tasks(queue, read_ids, claiming_worker)
    ),
    timeouts AS (
        SELECT c.msg_id, coalesce(s.opt_timeout, f.opt_timeout) AS seconds
        FROM claimed c
        JOIN pgflow.steps s ON s.flow_slug = c.flow_slug AND s.step_slug = c.step_slug
        JOIN pgflow.flows f ON f.flow_slug = c.flow_slug
    ),
    -- Not called at all when the read reserved them already (a one-time filter).
    extended AS (
        SELECT count(*) AS n
        FROM pgflow.set_vt_batch(
            queue,
            ARRAY(SELECT t.msg_id FROM timeouts t ORDER BY t.msg_id),
            ARRAY(SELECT t.seconds + margin FROM timeouts t ORDER BY t.msg_id)
        )
        WHERE uniform_timeout IS NULL
    )
    SELECT to_jsonb(c), t.seconds, st.attempts_count + 1
    FROM claimed c
    JOIN timeouts t ON t.msg_id = c.msg_id
    JOIN pgflow.step_tasks st
      ON st.run_id = c.run_id AND st.step_slug = c.step_slug AND st.task_index = c.task_index
    CROSS JOIN extended;
    GET DIAGNOSTICS claimed_count = ROW_COUNT;
    IF claimed_count < cardinality(read_ids) THEN
        PERFORM pgmq.archive(queue, ARRAY(
            SELECT m.id FROM unnest(read_ids) AS m(id)
            WHERE NOT EXISTS (
                SELECT 1 FROM pgflow.step_tasks AS t
                WHERE t.message_id = m.id AND t.flow_slug = queue)));
    END IF;
END
$$;

COMMENT ON FUNCTION pgflow_python.claim_task_batch(text, uuid, integer, integer, integer) IS
    'pgflow-python: read, start (cached plan) and reserve up to batch tasks of a flow.';
