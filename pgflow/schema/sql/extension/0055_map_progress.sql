-- Progress of a map step while it runs, for live pages (the dashboard's run page).
--
-- Upstream sends realtime events when a step starts and ends, not per task, so a map of 10,000
-- elements looked frozen until its last task. Every completed task decrements the step state's
-- remaining_tasks (upstream's complete_task, our batch completion); this trigger turns that
-- into at most ~50 NOTIFYs per map step: one each time remaining_tasks crosses a 2 % bucket.
-- The WHEN clause is evaluated without calling the function, so single steps, the final task
-- (upstream sends step:<slug>:completed for it) and in-bucket decrements cost nothing.
-- The payload is the realtime shim's shape (identifiers and counts only) on channel pgflow.
CREATE OR REPLACE FUNCTION pgflow_python.notify_map_progress()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM pg_notify('pgflow', jsonb_build_object(
        'topic', 'pgflow:run:' || NEW.run_id,
        'event', 'step:' || NEW.step_slug || ':progress',
        'run_id', NEW.run_id,
        'flow_slug', NEW.flow_slug,
        'step_slug', NEW.step_slug,
        'status', NEW.status,
        'remaining_tasks', NEW.remaining_tasks,
        'initial_tasks', NEW.initial_tasks
    )::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS map_progress ON pgflow.step_states;
CREATE TRIGGER map_progress
AFTER UPDATE OF remaining_tasks ON pgflow.step_states
FOR EACH ROW
WHEN (
    NEW.status = 'started'
    AND NEW.initial_tasks > 1
    AND NEW.remaining_tasks > 0
    AND OLD.remaining_tasks / greatest(NEW.initial_tasks / 50, 1)
        <> NEW.remaining_tasks / greatest(NEW.initial_tasks / 50, 1)
)
EXECUTE FUNCTION pgflow_python.notify_map_progress();

COMMENT ON FUNCTION pgflow_python.notify_map_progress() IS
    'pgflow-python: NOTIFY pgflow when a running map step crosses a 2% bucket of its tasks';
