-- Reading flow control's live state (extension/0080, 0082) for operators: `pgflow limits`,
-- pgflow.operations.list_limits and the dashboard's limits page.

-- name: flow_control_limits
-- description: Every concurrency and rate limit (of :flow_slug, or all when NULL) with its live use per key value: in_use (concurrency: tasks in flight; rate: starts within the last period) and waiting (concurrency: tasks held for a slot; rate: starts booked for later). Rate keys only while in use (a booking or a read within the period). A limit not in use has one row with key_value NULL and zeros.
WITH concurrency_use AS (
    SELECT u.flow_slug, u.step_slug, u.key_value,
           sum(u.in_flight)::integer AS in_use, sum(u.held)::integer AS waiting
    FROM (
        SELECT s.flow_slug, s.step_slug, s.key_value, s.in_flight, 0 AS held
        FROM pgflow_python.concurrency_slots AS s
        UNION ALL
        SELECT h.flow_slug, h.limit_step_slug, h.key_value, 0, count(*)
        FROM pgflow_python.held_tasks AS h
        GROUP BY h.flow_slug, h.limit_step_slug, h.key_value
    ) AS u
    GROUP BY u.flow_slug, u.step_slug, u.key_value
)
SELECT 'concurrency' AS kind, l.flow_slug, nullif(l.step_slug, '') AS step_slug,
       l.max_running AS max_value, NULL::float8 AS per_seconds,
       array_to_string(l.key_path, '.') AS key_path, NULL::text AS budget,
       u.key_value, coalesce(u.in_use, 0) AS in_use, coalesce(u.waiting, 0) AS waiting
FROM pgflow_python.concurrency_limits AS l
LEFT JOIN concurrency_use AS u ON u.flow_slug = l.flow_slug AND u.step_slug = l.step_slug
WHERE CAST(:flow_slug AS text) IS NULL OR l.flow_slug = CAST(:flow_slug AS text)
UNION ALL
SELECT 'rate', l.flow_slug, nullif(l.step_slug, ''), l.max_starts,
       extract(epoch FROM l.period)::float8, array_to_string(l.key_path, '.'),
       CASE WHEN l.budget LIKE ':%' THEN NULL ELSE l.budget END,
       k.key_value,
       coalesce((SELECT count(*) FROM pgflow_python.rate_reads AS r
                 WHERE r.budget = l.budget AND r.key_value = k.key_value
                   AND r.at > clock_timestamp() - l.period), 0)::integer,
       coalesce((SELECT count(*) FROM pgflow_python.rate_starts AS s
                 WHERE s.budget = l.budget AND s.key_value = k.key_value
                   AND s.at > clock_timestamp()), 0)::integer
FROM pgflow_python.rate_limits AS l
LEFT JOIN pgflow_python.rate_budget_keys AS k
    ON k.budget = l.budget
   AND (k.latest > clock_timestamp() - l.period
        OR EXISTS (SELECT 1 FROM pgflow_python.rate_reads AS r
                   WHERE r.budget = l.budget AND r.key_value = k.key_value
                     AND r.at > clock_timestamp() - l.period))
WHERE CAST(:flow_slug AS text) IS NULL OR l.flow_slug = CAST(:flow_slug AS text)
ORDER BY 2, 3 NULLS FIRST, 1, 8

-- name: prune_rate_log
-- description: Forget at most :row_limit rate-limit keys with no booking or read within their period (the worker's upkeep round, pgflow prune); returns how many.
SELECT pgflow_python.prune_rate_log(:row_limit) AS forgotten
