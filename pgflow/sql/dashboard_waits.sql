-- The dashboard's reads of waiting steps: what each open wait waits for, since when, and until
-- when. Two kinds: a wait step's wait (extension/0070; one row per task, until its timeout) and
-- a subflow step waiting for its child runs (extension/0073; one row per step, whatever its
-- number of children, with no timeout: the step's `timeout` bounds its method, not the wait).
-- A wait is shown while its step is still started in a started run; a wait the sweep has not
-- closed yet in a run that ended is not.

-- name: dashboard_waits
-- description: Open waits of every run (or of :run_id, of :flow_slug), longest waiting first, after the keyset (:after_since, :after_run_id, :after_step), at most :limit (NULL: all): what each waits for (signal, subflow: children, children_done, children_unstarted and the first 10 child_run_ids), since when, until when (NULL: no timeout), what its timeout does.
WITH open_waits AS (
    SELECT
        w.run_id,
        w.flow_slug,
        w.step_slug,
        w.task_index,
        coalesce(ws.wait_kind, 'signal') AS waits_for,
        w.waiting_since,
        w.timeout_at AS waiting_until,
        coalesce(ws.on_timeout, 'fail') AS on_timeout,
        CAST(NULL AS bigint) AS children,
        CAST(NULL AS bigint) AS children_done,
        CAST(NULL AS bigint) AS children_unstarted,
        CAST(NULL AS uuid[]) AS child_run_ids,
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
      AND (CAST(:run_id AS uuid) IS NULL OR w.run_id = CAST(:run_id AS uuid))
      AND (CAST(:flow_slug AS text) IS NULL OR w.flow_slug = CAST(:flow_slug AS text))
    UNION ALL
    SELECT
        c.run_id,
        c.flow_slug,
        c.step_slug,
        NULL,
        'subflow',
        min(c.waiting_since) FILTER (WHERE c.ended_at IS NULL),
        NULL,
        NULL,
        count(*),
        count(*) FILTER (WHERE c.ended_at IS NOT NULL),
        count(*) FILTER (WHERE c.child_run_id IS NULL AND c.ended_at IS NULL),
        (array_agg(c.child_run_id ORDER BY c.task_index)
            FILTER (WHERE c.child_run_id IS NOT NULL))[1:10],
        min(r.started_at)
    FROM pgflow_python.subflow_children AS c
    JOIN pgflow.step_states AS ss ON ss.run_id = c.run_id AND ss.step_slug = c.step_slug
    JOIN pgflow.runs AS r ON r.run_id = c.run_id
    WHERE ss.status = 'started'
      AND r.status = 'started'
      AND (CAST(:run_id AS uuid) IS NULL OR c.run_id = CAST(:run_id AS uuid))
      AND (CAST(:flow_slug AS text) IS NULL OR c.flow_slug = CAST(:flow_slug AS text))
    GROUP BY c.run_id, c.flow_slug, c.step_slug
    HAVING bool_or(c.ended_at IS NULL)
)
SELECT o.*
FROM open_waits AS o
WHERE CAST(:after_since AS timestamptz) IS NULL
   OR (o.waiting_since, o.run_id, o.step_slug)
      > (CAST(:after_since AS timestamptz), CAST(:after_run_id AS uuid),
         CAST(:after_step AS text))
ORDER BY o.waiting_since, o.run_id, o.step_slug, o.task_index
LIMIT CAST(:limit AS integer);

-- name: dashboard_waits_count
-- description: How many steps wait now (open waits of started tasks, subflow steps with a child not ended, in started runs), of every flow or of :flow_slug.
SELECT (
    SELECT count(*)
    FROM pgflow_python.waits AS w
    JOIN pgflow.step_tasks AS t
        ON t.run_id = w.run_id AND t.step_slug = w.step_slug AND t.task_index = w.task_index
    JOIN pgflow.runs AS r ON r.run_id = w.run_id
    WHERE w.ended_at IS NULL
      AND t.status = 'started'
      AND r.status = 'started'
      AND (CAST(:flow_slug AS text) IS NULL OR w.flow_slug = CAST(:flow_slug AS text))
) + (
    SELECT count(DISTINCT (c.run_id, c.step_slug))
    FROM pgflow_python.subflow_children AS c
    JOIN pgflow.step_states AS ss ON ss.run_id = c.run_id AND ss.step_slug = c.step_slug
    JOIN pgflow.runs AS r ON r.run_id = c.run_id
    WHERE c.ended_at IS NULL
      AND ss.status = 'started'
      AND r.status = 'started'
      AND (CAST(:flow_slug AS text) IS NULL OR c.flow_slug = CAST(:flow_slug AS text))
) AS waiting;
