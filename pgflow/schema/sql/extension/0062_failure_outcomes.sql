-- What a failed attempt's report did, for the worker's events: 0040's fail_task, plus whether
-- the report skipped the step (retries_exhausted "skip" / "skip-cascade", extension/0061) and,
-- when that skip left nothing to run, when the run completed. Upstream's fail_task completes
-- nothing; the skip's trigger continues the run inside the same call, so the worker could not
-- otherwise tell that a failed attempt completed a run.
CREATE OR REPLACE FUNCTION pgflow_python.fail_task_outcome(
    reporting_worker uuid,
    failed_run_id uuid,
    failed_step_slug text,
    failed_task_index integer,
    error_message text,
    error_type text,
    error_traceback text,
    retryable boolean
)
RETURNS TABLE (
    attempt integer,
    retry_at timestamptz,
    run_failed boolean,
    run_started_at timestamptz,
    run_failed_at timestamptz,
    step_skipped boolean,
    run_completed_at timestamptz
)
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
    recorded record;
BEGIN
    -- A report counts only for a task this worker still held, so a step skipped now (its
    -- tasks are never started) and a run completed now were this report's doing.
    FOR recorded IN
        SELECT * FROM pgflow_python.fail_task(
            reporting_worker, failed_run_id, failed_step_slug, failed_task_index,
            error_message, error_type, error_traceback, retryable
        )
    LOOP
        attempt := recorded.attempt;
        retry_at := recorded.retry_at;
        run_failed := recorded.run_failed;
        run_started_at := recorded.run_started_at;
        run_failed_at := recorded.run_failed_at;
        step_skipped := EXISTS (
            SELECT 1 FROM pgflow.step_states AS s
            WHERE s.run_id = failed_run_id AND s.step_slug = failed_step_slug
              AND s.status = 'skipped'
        );
        SELECT r.completed_at INTO run_completed_at
        FROM pgflow.runs AS r WHERE r.run_id = failed_run_id AND r.status = 'completed';
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgflow_python.fail_task_outcome(uuid, uuid, text, integer, text, text, text, boolean) IS
    'pgflow-python: fail_task (0040) and whether the report skipped the step or completed the run.';
