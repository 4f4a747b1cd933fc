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
CREATE OR REPLACE FUNCTION pgflow_python.complete_tasks(
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

COMMENT ON FUNCTION pgflow_python.complete_tasks(uuid, uuid[], text[], integer[], jsonb[]) IS
    'pgflow-python: complete a batch of tasks held by one worker, in one transaction.';
