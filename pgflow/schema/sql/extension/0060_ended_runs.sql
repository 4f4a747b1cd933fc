-- Statuses that upstream pgflow added after 0.8.1, and what a run that ends leaves behind.
--
-- Upstream 0.14 added the step status 'skipped'; 0.15 the task statuses 'skipped' and
-- 'cancelled'. Only 0.8.1 is installable here, so its CHECK constraints are widened to the
-- later vocabulary, under the same constraint names, dropped and added the way upstream's own
-- later migrations replace them (so those migrations still apply on top of this). Nothing
-- upstream 0.8.1 does reads these values: its functions select by 'queued', 'started',
-- 'completed' and 'failed', and a TypeScript 0.8.1 worker never sees a task in another status.
ALTER TABLE pgflow.step_tasks DROP CONSTRAINT IF EXISTS valid_status;
ALTER TABLE pgflow.step_tasks ADD CONSTRAINT valid_status CHECK (
    status = ANY (ARRAY['queued', 'started', 'completed', 'failed', 'cancelled', 'skipped'])
);
ALTER TABLE pgflow.step_states DROP CONSTRAINT IF EXISTS status_is_valid;
ALTER TABLE pgflow.step_states ADD CONSTRAINT status_is_valid CHECK (
    status = ANY (ARRAY['created', 'started', 'completed', 'failed', 'skipped'])
);

-- A run that fails (upstream's fail_task on a last attempt, a type violation in complete_task,
-- cancel_run, a step whose condition fails it) ends its other tasks: those still queued or
-- started become 'cancelled' (upstream 0.15.1's name and rule) and their messages leave the
-- queue. Upstream 0.8.1 archives the messages but leaves the tasks queued or started for ever,
-- which made an ended run look in flight (workers list, dashboard, metrics).
--
-- A trigger, so that it holds whoever fails the run, a TypeScript worker included. The WHEN
-- clause is evaluated without calling the function: runs that do not fail cost nothing.
-- A handler still running a cancelled task reports too late: complete_task changes nothing on a
-- failed run, and fail_task finds no started task. resume_run puts cancelled tasks back.
-- Locks: the run is locked by whoever fails it (upstream's functions lock it first); the tasks
-- are locked here in key order.
CREATE OR REPLACE FUNCTION pgflow_python.cancel_tasks_of_failed_run()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    message_ids bigint[];
BEGIN
    PERFORM 1 FROM pgflow.step_tasks AS t
    WHERE t.run_id = NEW.run_id AND t.status IN ('queued', 'started')
    ORDER BY t.step_slug, t.task_index
    FOR UPDATE;
    WITH ended AS (
        UPDATE pgflow.step_tasks AS t
        SET status = 'cancelled'
        WHERE t.run_id = NEW.run_id AND t.status IN ('queued', 'started')
        RETURNING t.message_id
    )
    SELECT array_agg(e.message_id) FILTER (WHERE e.message_id IS NOT NULL) INTO message_ids
    FROM ended AS e;
    IF message_ids IS NOT NULL THEN
        PERFORM pgmq.archive(NEW.flow_slug, message_ids);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS pgflow_python_cancel_tasks_of_failed_run ON pgflow.runs;
CREATE TRIGGER pgflow_python_cancel_tasks_of_failed_run
    AFTER UPDATE OF status ON pgflow.runs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION pgflow_python.cancel_tasks_of_failed_run();

COMMENT ON FUNCTION pgflow_python.cancel_tasks_of_failed_run() IS
    'pgflow-python: a failed run''s queued and started tasks become cancelled, messages archived.';

-- Runs that failed before this file was applied.
UPDATE pgflow.step_tasks AS t
SET status = 'cancelled'
FROM pgflow.runs AS r
WHERE r.run_id = t.run_id AND r.status = 'failed' AND t.status IN ('queued', 'started');
