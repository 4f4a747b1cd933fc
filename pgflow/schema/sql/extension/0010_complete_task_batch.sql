-- Set-based completion: one call records a batch of completed tasks with each statement run
-- once per batch, instead of upstream's complete_task (about 24 statements) once per task.
-- Upstream's per-task cost is what bounds a worker's drain rate: executor start-up, constraint
-- checks and index upkeep per statement, not planning.
--
-- Same outcome as calling upstream 0.8.1's complete_task for each task in (run_id, step_slug,
-- task_index) order (the tests' oracle, tests/sql/oracles.sql, does exactly that); a differential suite
-- runs generated scenarios both ways and compares every table row by row. Per run:
--   * tasks: 'completed', completed_at, output; their messages archived;
--   * step states: remaining_tasks decremented by the batch's tasks of that step, 'completed'
--     when it reaches 0; children's remaining_deps decremented once per completed parent (fan-in),
--     a dependent map's initial_tasks set from its parent (array length of a single step's
--     output, number of completed tasks of a map step); runs' remaining_steps decremented;
--   * taskless steps (maps over empty arrays) completed by upstream's own cascade function;
--   * ready steps started, their tasks created and their messages sent (start delay honoured);
--   * runs whose steps are all done completed with upstream's output (leaf steps' outputs, a
--     map's outputs ordered by task_index);
--   * realtime events: step:completed (with output), step:started, run:completed, as upstream
--     sends them. Within one run they keep upstream's causal order (a step's completion before
--     the start of its dependents, the run's completion last); when one batch holds several
--     steps of a run, the interleaving differs from the one-by-one order (all completions
--     first), which a listener cannot tell from concurrent reports.
-- Two cases go through upstream's complete_task itself, one task at a time, in the same order:
--   * a run of which the batch holds a single step's non-array output feeding a map step
--     (upstream fails the whole run, and which of the run's other tasks still complete depends
--     on their order): all the batch's tasks of that run;
--   * a run already failed: upstream changes nothing; the position counts as recorded, as the
--     one-by-one path reports it.
--
-- Fencing: only tasks still 'started' by reporting_worker count (a task that stalled-task
-- recovery gave to another worker meanwhile is not this worker's to complete). Locks: the runs
-- first, in run_id order (upstream's complete_task also locks the run before its step state and
-- task), so concurrent batches and TypeScript workers calling complete_task wait instead of
-- deadlocking.
--
-- Result: two kinds of rows.
--   * recorded = a 1-based position (in the argument arrays) of a task that counted; the other
--     columns are NULL. A missing position means the task was not this worker's any more.
--   * recorded IS NULL: a run this batch ended. ended_run_id, ended_flow_slug, ended_status
--     ('completed' or 'failed'), run_started_at and run_ended_at (its completed_at or failed_at)
--     are set, so a caller can announce run.completed / run.failed with its duration without
--     another query. Each ended run appears once.
-- Additive: TypeScript workers keep calling complete_task one task at a time on the same tables.
CREATE OR REPLACE FUNCTION pgflow_python.complete_task_batch(
    reporting_worker uuid,
    run_ids uuid[],
    step_slugs text[],
    task_indexes integer[],
    outputs jsonb[]
)
RETURNS TABLE (
    recorded integer,
    ended_run_id uuid,
    ended_flow_slug text,
    ended_status text,
    run_started_at timestamptz,
    run_ended_at timestamptz
)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
    fast_items integer[];
    slow_items integer[];
    inert_items integer[];
    slow_runs uuid[];
    done_runs uuid[];
    done_steps text[];
    done_types text[];
    done_outputs jsonb[];
    archived_count bigint;
    cascade_run uuid;
    item integer;
BEGIN
    IF cardinality(run_ids) IS DISTINCT FROM cardinality(step_slugs)
       OR cardinality(run_ids) IS DISTINCT FROM cardinality(task_indexes)
       OR cardinality(run_ids) IS DISTINCT FROM cardinality(outputs) THEN
        RAISE EXCEPTION 'complete_task_batch: the four arrays must have the same length';
    END IF;

    PERFORM 1 FROM pgflow.runs r WHERE r.run_id = ANY(run_ids) ORDER BY r.run_id FOR UPDATE;

    -- Which positions count, and which path each run takes. A position given twice counts once
    -- (the first; the second finds the task completed, as the one-by-one path would).
    WITH batch AS (
        SELECT u.item::integer AS item, u.run_id, u.step_slug, u.task_index, u.output,
               row_number() OVER (
                   PARTITION BY u.run_id, u.step_slug, u.task_index ORDER BY u.item
               ) AS nth
        FROM unnest(run_ids, step_slugs, task_indexes, outputs) WITH ORDINALITY
             AS u(run_id, step_slug, task_index, output, item)
    ),
    owned AS (
        SELECT b.item, b.run_id, r.status AS run_status,
               s.step_type = 'single'
               AND (b.output IS NULL OR jsonb_typeof(b.output) <> 'array')
               AND EXISTS (
                   SELECT 1
                   FROM pgflow.deps d
                   JOIN pgflow.steps child
                     ON child.flow_slug = d.flow_slug AND child.step_slug = d.step_slug
                   JOIN pgflow.step_states child_state
                     ON child_state.run_id = b.run_id AND child_state.step_slug = d.step_slug
                   WHERE d.flow_slug = r.flow_slug AND d.dep_slug = b.step_slug
                     AND child.step_type = 'map' AND child_state.initial_tasks IS NULL
               ) AS violates
        FROM batch b
        JOIN pgflow.runs r ON r.run_id = b.run_id
        -- Each task by its whole key. As a plain join, the planner could look a task up by
        -- run_id alone (statistics of many one-task runs make that look as cheap) and read
        -- every task of a large map once per position: quadratic in the map's size.
        CROSS JOIN LATERAL (
            SELECT t.flow_slug, t.step_slug
            FROM pgflow.step_tasks t
            WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug
              AND t.task_index = b.task_index
              AND t.status = 'started' AND t.last_worker_id = reporting_worker
            FOR UPDATE
        ) t
        JOIN pgflow.steps s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug
        WHERE b.nth = 1
    ),
    classified AS (
        SELECT o.item, o.run_id, o.run_status,
               bool_or(o.violates) OVER (PARTITION BY o.run_id) AS run_violates
        FROM owned o
    )
    SELECT array_agg(c.item) FILTER (WHERE c.run_status <> 'failed' AND NOT c.run_violates),
           array_agg(c.item) FILTER (WHERE c.run_status <> 'failed' AND c.run_violates),
           array_agg(c.item) FILTER (WHERE c.run_status = 'failed'),
           array_agg(DISTINCT c.run_id) FILTER (WHERE c.run_status <> 'failed' AND c.run_violates)
    INTO fast_items, slow_items, inert_items, slow_runs
    FROM classified c;

    IF fast_items IS NOT NULL THEN
        -- Tasks, their steps, the steps' children and the runs' counters, in one statement.
        -- A child has its parents' completions counted once each; a map child has one parent.
        WITH finished AS (
            UPDATE pgflow.step_tasks t
            SET status = 'completed', completed_at = now(), output = f.output
            FROM (
                SELECT run_ids[i] AS run_id, step_slugs[i] AS step_slug,
                       task_indexes[i] AS task_index, outputs[i] AS output
                FROM unnest(fast_items) AS i
            ) f
            -- No status test: owned locked each of these tasks 'started' by this worker, and
            -- without one no partial index on status looks usable (with statistics taken
            -- before any task started, the planner would scan every started task per position).
            WHERE t.run_id = f.run_id AND t.step_slug = f.step_slug
              AND t.task_index = f.task_index
            RETURNING t.flow_slug, t.run_id, t.step_slug, t.message_id, t.output
        ),
        per_step AS (
            SELECT f.run_id, f.step_slug, count(*)::integer AS finished_tasks,
                   (array_agg(f.output))[1] AS single_output
            FROM finished f
            GROUP BY f.run_id, f.step_slug
        ),
        step_progress AS (
            UPDATE pgflow.step_states ss
            SET status = CASE WHEN ss.remaining_tasks = p.finished_tasks
                              THEN 'completed' ELSE 'started' END,
                completed_at = CASE WHEN ss.remaining_tasks = p.finished_tasks
                                    THEN now() ELSE NULL END,
                remaining_tasks = ss.remaining_tasks - p.finished_tasks
            FROM per_step p
            WHERE ss.run_id = p.run_id AND ss.step_slug = p.step_slug
            RETURNING ss.flow_slug, ss.run_id, ss.step_slug, ss.status, p.finished_tasks,
                      p.single_output
        ),
        completed_steps AS (
            SELECT sp.*, s.step_type
            FROM step_progress sp
            JOIN pgflow.steps s ON s.flow_slug = sp.flow_slug AND s.step_slug = sp.step_slug
            WHERE sp.status = 'completed'
        ),
        child_progress AS (
            SELECT c.run_id, d.step_slug AS child_slug, count(*)::integer AS parents_done,
                   max(
                       CASE
                           WHEN c.step_type = 'map' THEN
                               c.finished_tasks + (
                                   SELECT (count(*) FILTER (WHERE pt.status = 'completed'))::integer
                                   FROM pgflow.step_tasks pt
                                   WHERE pt.run_id = c.run_id AND pt.step_slug = c.step_slug
                               )
                           WHEN jsonb_typeof(c.single_output) = 'array' THEN
                               jsonb_array_length(c.single_output)
                       END
                   ) AS map_size
            FROM completed_steps c
            JOIN pgflow.deps d ON d.flow_slug = c.flow_slug AND d.dep_slug = c.step_slug
            GROUP BY c.run_id, d.step_slug
        ),
        children AS (
            UPDATE pgflow.step_states cs
            SET remaining_deps = cs.remaining_deps - cp.parents_done,
                initial_tasks = CASE
                    WHEN child.step_type = 'map' AND cs.initial_tasks IS NULL THEN cp.map_size
                    ELSE cs.initial_tasks
                END
            FROM child_progress cp
            JOIN pgflow.steps child ON child.step_slug = cp.child_slug
            WHERE cs.run_id = cp.run_id AND cs.step_slug = cp.child_slug
              AND child.flow_slug = cs.flow_slug
        ),
        run_progress AS (
            UPDATE pgflow.runs r
            SET remaining_steps = r.remaining_steps - n.steps_done
            FROM (
                SELECT c.run_id, count(*)::integer AS steps_done
                FROM completed_steps c GROUP BY c.run_id
            ) n
            WHERE r.run_id = n.run_id
        ),
        archived AS (
            SELECT m.msg_id
            FROM (
                SELECT f.flow_slug, array_agg(f.message_id) AS message_ids
                FROM finished f WHERE f.message_id IS NOT NULL GROUP BY f.flow_slug
            ) q
            CROSS JOIN LATERAL pgmq.archive(q.flow_slug, q.message_ids) AS m(msg_id)
        )
        SELECT (SELECT count(*) FROM archived),
               array_agg(c.run_id ORDER BY c.run_id, c.step_slug),
               array_agg(c.step_slug ORDER BY c.run_id, c.step_slug),
               array_agg(c.step_type ORDER BY c.run_id, c.step_slug),
               array_agg(c.single_output ORDER BY c.run_id, c.step_slug)
        INTO archived_count, done_runs, done_steps, done_types, done_outputs
        FROM completed_steps c;
    END IF;

    IF done_runs IS NOT NULL THEN
        -- The steps completed in this transaction, so completed_at is now(); no join (a join on
        -- step_states planned with stale statistics scanned every step of the flow per step).
        -- A single step's output is its one task's, just written; a map's outputs are read by
        -- the primary key's prefix, the status a filter: with a status test in WHERE, statistics
        -- taken before any task completed make a partial index on completed tasks look empty,
        -- and the planner scanned all of them for every step.
        PERFORM realtime.send(
            jsonb_build_object(
                'event_type', 'step:completed',
                'run_id', d.run_id,
                'step_slug', d.step_slug,
                'status', 'completed',
                'output', CASE
                    WHEN d.step_type = 'map' THEN (
                        SELECT coalesce(
                            jsonb_agg(st.output ORDER BY st.task_index)
                                FILTER (WHERE st.status = 'completed'),
                            '[]'::jsonb
                        )
                        FROM pgflow.step_tasks st
                        WHERE st.run_id = d.run_id AND st.step_slug = d.step_slug
                    )
                    ELSE d.output
                END,
                'completed_at', now()
            ),
            concat('step:', d.step_slug, ':completed'),
            concat('pgflow:run:', d.run_id),
            false
        )
        FROM unnest(done_runs, done_steps, done_types, done_outputs) WITH ORDINALITY
             AS d(run_id, step_slug, step_type, output, n)
        ORDER BY d.n;

        -- Upstream cascades after every completion; it only acts where a map child learnt it
        -- has no elements, so call it for those runs alone.
        FOR cascade_run IN
            SELECT DISTINCT ss.run_id FROM pgflow.step_states ss
            WHERE ss.run_id = ANY(done_runs) AND ss.status = 'created'
              AND ss.remaining_deps = 0 AND ss.initial_tasks = 0
            ORDER BY ss.run_id
        LOOP
            PERFORM pgflow.cascade_complete_taskless_steps(cascade_run);
        END LOOP;

        -- Upstream's start_ready_steps for all the batch's runs at once: one send_batch per
        -- queue and start delay, tasks recorded with the message ids in the order sent.
        -- Not in a run that failed meanwhile (a step's condition can fail it, extension/0061),
        -- as start_ready_steps' own guard.
        WITH ready AS (
            SELECT ss.run_id, ss.step_slug, ss.initial_tasks
            FROM pgflow.step_states ss
            WHERE ss.run_id = ANY(done_runs) AND ss.status = 'created'
              AND ss.remaining_deps = 0 AND ss.initial_tasks > 0
              AND NOT EXISTS (
                  SELECT 1 FROM pgflow.runs fr WHERE fr.run_id = ss.run_id AND fr.status = 'failed'
              )
            ORDER BY ss.run_id, ss.step_slug
            FOR UPDATE
        ),
        started AS (
            UPDATE pgflow.step_states ss
            SET status = 'started', started_at = now(), remaining_tasks = ready.initial_tasks
            FROM ready
            WHERE ss.run_id = ready.run_id AND ss.step_slug = ready.step_slug
            RETURNING ss.flow_slug, ss.run_id, ss.step_slug, ss.initial_tasks,
                realtime.send(
                    jsonb_build_object(
                        'event_type', 'step:started',
                        'run_id', ss.run_id,
                        'step_slug', ss.step_slug,
                        'status', 'started',
                        'started_at', ss.started_at,
                        'remaining_tasks', ss.remaining_tasks,
                        'remaining_deps', ss.remaining_deps
                    ),
                    concat('step:', ss.step_slug, ':started'),
                    concat('pgflow:run:', ss.run_id),
                    false
                ) AS _announced
        ),
        outgoing AS (
            SELECT st.flow_slug, coalesce(s.opt_start_delay, 0) AS delay,
                   array_agg(
                       jsonb_build_object(
                           'flow_slug', st.flow_slug, 'run_id', st.run_id,
                           'step_slug', st.step_slug, 'task_index', i.task_index
                       ) ORDER BY st.run_id, st.step_slug, i.task_index
                   ) AS messages,
                   array_agg(st.run_id ORDER BY st.run_id, st.step_slug, i.task_index) AS task_runs,
                   array_agg(st.step_slug ORDER BY st.run_id, st.step_slug, i.task_index)
                       AS task_steps,
                   array_agg(i.task_index ORDER BY st.run_id, st.step_slug, i.task_index)
                       AS task_positions
            FROM started st
            JOIN pgflow.steps s ON s.flow_slug = st.flow_slug AND s.step_slug = st.step_slug
            CROSS JOIN LATERAL generate_series(0, st.initial_tasks - 1) AS i(task_index)
            GROUP BY st.flow_slug, coalesce(s.opt_start_delay, 0)
        )
        INSERT INTO pgflow.step_tasks (flow_slug, run_id, step_slug, task_index, message_id)
        SELECT o.flow_slug, m.run_id, m.step_slug, m.task_index, m.msg_id
        FROM outgoing o
        CROSS JOIN LATERAL ROWS FROM (
            pgmq.send_batch(o.flow_slug, o.messages, o.delay),
            unnest(o.task_runs),
            unnest(o.task_steps),
            unnest(o.task_positions)
        ) AS m(msg_id, run_id, step_slug, task_index);

        -- Upstream's maybe_complete_run for all the batch's runs at once.
        RETURN QUERY
        WITH completed_runs AS (
            UPDATE pgflow.runs r
            SET status = 'completed',
                completed_at = now(),
                output = (
                    SELECT jsonb_object_agg(
                        leaf.step_slug,
                        CASE
                            -- By the primary key, the status a filter (as step:completed).
                            WHEN leaf_step.step_type = 'map' THEN (
                                SELECT coalesce(
                                    jsonb_agg(lt.output ORDER BY lt.task_index)
                                        FILTER (WHERE lt.status = 'completed'),
                                    '[]'::jsonb
                                )
                                FROM pgflow.step_tasks lt
                                WHERE lt.run_id = leaf.run_id AND lt.step_slug = leaf.step_slug
                            )
                            ELSE (
                                SELECT CASE WHEN lt.status = 'completed' THEN lt.output END
                                FROM pgflow.step_tasks lt
                                WHERE lt.run_id = leaf.run_id AND lt.step_slug = leaf.step_slug
                                  AND lt.task_index = 0
                            )
                        END
                    )
                    FROM pgflow.step_states leaf
                    JOIN pgflow.steps leaf_step
                      ON leaf_step.flow_slug = leaf.flow_slug
                     AND leaf_step.step_slug = leaf.step_slug
                    WHERE leaf.run_id = r.run_id AND leaf.status = 'completed'
                      AND NOT EXISTS (
                          SELECT 1 FROM pgflow.deps dep
                          WHERE dep.flow_slug = leaf.flow_slug AND dep.dep_slug = leaf.step_slug
                      )
                )
            WHERE r.run_id = ANY(done_runs) AND r.remaining_steps = 0
              AND r.status <> 'completed'
            RETURNING r.run_id, r.flow_slug, r.started_at, r.completed_at,
                realtime.send(
                    jsonb_build_object(
                        'event_type', 'run:completed',
                        'run_id', r.run_id,
                        'flow_slug', r.flow_slug,
                        'status', 'completed',
                        'output', r.output,
                        'completed_at', r.completed_at
                    ),
                    'run:completed',
                    concat('pgflow:run:', r.run_id),
                    false
                ) AS _announced
        )
        SELECT NULL::integer, cr.run_id, cr.flow_slug, 'completed'::text, cr.started_at,
               cr.completed_at
        FROM completed_runs cr;
    END IF;

    RETURN QUERY SELECT i, NULL::uuid, NULL::text, NULL::text, NULL::timestamptz,
                        NULL::timestamptz
                 FROM unnest(fast_items || inert_items) AS i;

    IF slow_items IS NOT NULL THEN
        FOR item IN
            SELECT i FROM unnest(slow_items) AS i
            ORDER BY run_ids[i], step_slugs[i], task_indexes[i]
        LOOP
            PERFORM 1 FROM pgflow.step_tasks t
            WHERE t.run_id = run_ids[item] AND t.step_slug = step_slugs[item]
              AND t.task_index = task_indexes[item]
              AND t.status = 'started' AND t.last_worker_id = reporting_worker
            FOR UPDATE;
            IF FOUND THEN
                PERFORM pgflow.complete_task(
                    run_ids[item], step_slugs[item], task_indexes[item], outputs[item]
                );
                RETURN QUERY SELECT item, NULL::uuid, NULL::text, NULL::text,
                                    NULL::timestamptz, NULL::timestamptz;
            END IF;
        END LOOP;
        RETURN QUERY
        SELECT NULL::integer, r.run_id, r.flow_slug, r.status, r.started_at,
               coalesce(r.completed_at, r.failed_at)
        FROM pgflow.runs r
        WHERE r.run_id = ANY(slow_runs) AND r.status IN ('completed', 'failed');
    END IF;
END
$$;

COMMENT ON FUNCTION pgflow_python.complete_task_batch(uuid, uuid[], text[], integer[], jsonb[]) IS
    'pgflow-python: complete a batch of tasks held by one worker, each statement once per batch.';
