-- The dashboard's reads of waiting steps (extension/0070): what each open wait waits for,
-- since when, and until when (its timeout). A wait is shown while its task is still started
-- in a started run; a wait the sweep has not closed yet in a run that ended is not.

-- name: dashboard_run_waits
-- description: A run's open waits, longest waiting first: step, task, what it waits for, since when, until when (NULL: no timeout), what its timeout does.
SELECT
    w.step_slug,
    w.task_index,
    coalesce(ws.wait_kind, 'signal') AS waits_for,
    w.waiting_since,
    w.timeout_at AS waiting_until,
    coalesce(ws.on_timeout, 'fail') AS on_timeout
FROM pgflow_python.waits AS w
JOIN pgflow.step_tasks AS t
    ON t.run_id = w.run_id AND t.step_slug = w.step_slug AND t.task_index = w.task_index
JOIN pgflow.runs AS r ON r.run_id = w.run_id
LEFT JOIN pgflow_python.wait_steps AS ws
    ON ws.flow_slug = w.flow_slug AND ws.step_slug = w.step_slug
WHERE w.run_id = :run_id
  AND w.ended_at IS NULL
  AND t.status = 'started'
  AND r.status = 'started'
ORDER BY w.waiting_since, w.step_slug, w.task_index;

-- name: dashboard_waits_page
-- description: Open waits of every run (or of :flow_slug), longest waiting first, after the keyset (:after_since, :after_run_id, :after_step), at most :limit.
SELECT
    w.run_id,
    w.flow_slug,
    w.step_slug,
    w.task_index,
    coalesce(ws.wait_kind, 'signal') AS waits_for,
    w.waiting_since,
    w.timeout_at AS waiting_until,
    coalesce(ws.on_timeout, 'fail') AS on_timeout,
    r.started_at AS run_started_at
FROM pgflow_python.waits AS w
JOIN pgflow.step_tasks AS t
    ON t.run_id = w.run_id AND t.step_slug = w.step_slug AND t.task_index = w.task_index
JOIN pgflow.runs AS r ON r.run_id = w.run_id
LEFT JOIN pgflow_python.wait_steps AS ws
    ON ws.flow_slug = w.flow_slug AND ws.step_slug = w.step_slug
WHERE w.ended_at IS NULL
  AND t.status = 'started'
  AND r.status = 'started'
  AND (CAST(:flow_slug AS text) IS NULL OR w.flow_slug = CAST(:flow_slug AS text))
  AND (CAST(:after_since AS timestamptz) IS NULL
       OR (w.waiting_since, w.run_id, w.step_slug)
          > (CAST(:after_since AS timestamptz), CAST(:after_run_id AS uuid),
             CAST(:after_step AS text)))
ORDER BY w.waiting_since, w.run_id, w.step_slug
LIMIT :limit;

-- name: dashboard_waits_count
-- description: How many steps wait now (open waits of started tasks in started runs), of every flow or of :flow_slug.
SELECT count(*) AS waiting
FROM pgflow_python.waits AS w
JOIN pgflow.step_tasks AS t
    ON t.run_id = w.run_id AND t.step_slug = w.step_slug AND t.task_index = w.task_index
JOIN pgflow.runs AS r ON r.run_id = w.run_id
WHERE w.ended_at IS NULL
  AND t.status = 'started'
  AND r.status = 'started'
  AND (CAST(:flow_slug AS text) IS NULL OR w.flow_slug = CAST(:flow_slug AS text));
