-- Schedule queries: the API (pgflow/schedules/_api.py) and the scheduler (_firing.py).

-- name: schedules_now
-- description: The database's clock: every scheduler and API call computes ticks from it, so workers' clocks never matter.
SELECT clock_timestamp() AS now;

-- name: schedules_flow_exists
-- description: The flow a schedule starts, if registered: one row with the step that maps over the flow input (NULL when none does).
SELECT (
    SELECT s.step_slug FROM pgflow.steps AS s
    WHERE s.flow_slug = f.flow_slug AND s.step_type = 'map' AND s.deps_count = 0
    ORDER BY s.step_index LIMIT 1
) AS root_map_step
FROM pgflow.flows AS f
WHERE f.flow_slug = :flow_slug;

-- name: schedules_insert
-- description: Create a schedule; no row when the name is taken.
INSERT INTO pgflow_python.schedules AS s (
    schedule_name, flow_slug, cron, timezone, input, missed, catch_up_limit, grace_seconds,
    time_key, declared, paused_at, next_fire_at
)
VALUES (
    :name, :flow_slug, :cron, :timezone, CAST(:input AS jsonb), :missed, :catch_up_limit,
    :grace_seconds, :time_key, :declared,
    CASE WHEN CAST(:paused AS boolean) THEN clock_timestamp() END, :next_fire_at
)
ON CONFLICT (schedule_name) DO NOTHING
RETURNING s.*;

-- name: schedules_update
-- description: Replace a schedule's definition and its next tick; no row when it does not exist.
UPDATE pgflow_python.schedules AS s SET
    flow_slug = :flow_slug,
    cron = :cron,
    timezone = :timezone,
    input = CAST(:input AS jsonb),
    missed = :missed,
    catch_up_limit = :catch_up_limit,
    grace_seconds = :grace_seconds,
    time_key = :time_key,
    next_fire_at = :next_fire_at,
    updated_at = now()
WHERE s.schedule_name = :name
RETURNING s.*;

-- name: schedules_get
-- description: One schedule, or no row.
SELECT s.*
FROM pgflow_python.schedules AS s
WHERE s.schedule_name = :name;

-- name: schedules_get_for_update
-- description: One schedule, locked (waits for a scheduler pass that holds it).
SELECT s.*
FROM pgflow_python.schedules AS s
WHERE s.schedule_name = :name
FOR UPDATE;

-- name: schedules_list
-- description: Every schedule by name, optionally only those of one flow.
SELECT s.*
FROM pgflow_python.schedules AS s
WHERE CAST(:flow_slug AS text) IS NULL OR s.flow_slug = CAST(:flow_slug AS text)
ORDER BY s.schedule_name;

-- name: schedules_pause
-- description: Stop firing a schedule (kept paused until resumed); returns the schedule.
UPDATE pgflow_python.schedules AS s SET
    paused_at = coalesce(s.paused_at, clock_timestamp()),
    updated_at = now()
WHERE s.schedule_name = :name
RETURNING s.*;

-- name: schedules_resume
-- description: Fire a paused schedule again from its next tick after now (ticks while paused are not made up).
UPDATE pgflow_python.schedules AS s SET
    paused_at = NULL,
    next_fire_at = CASE WHEN s.paused_at IS NULL THEN s.next_fire_at ELSE :next_fire_at END,
    updated_at = now()
WHERE s.schedule_name = :name
RETURNING s.*;

-- name: schedules_delete
-- description: Delete a schedule and its fire records; returns its name, or no row.
DELETE FROM pgflow_python.schedules AS s
WHERE s.schedule_name = :name
RETURNING s.schedule_name;

-- name: schedules_claim_due
-- description: Lock schedules whose next tick has come (or is not computed yet), skipping those another scheduler holds.
-- SKIP LOCKED: many workers run this at once, each gets different schedules, nobody waits.
-- :now replaces the clock in tests (NULL: the clock).
SELECT s.*, coalesce(CAST(:now AS timestamptz), clock_timestamp()) AS now
FROM pgflow_python.schedules AS s
WHERE s.paused_at IS NULL
  AND (s.next_fire_at IS NULL
       OR s.next_fire_at <= coalesce(CAST(:now AS timestamptz), clock_timestamp()))
ORDER BY s.next_fire_at NULLS FIRST
LIMIT :limit
FOR UPDATE OF s SKIP LOCKED;

-- name: schedules_record_fire
-- description: Record one tick's fire; no row when it was fired already (the primary key makes each tick fire once).
INSERT INTO pgflow_python.schedule_fires (schedule_name, fire_time, run_id, manual, fired_by)
VALUES (:name, :fire_time, :run_id, :manual, :fired_by)
ON CONFLICT (schedule_name, fire_time) DO NOTHING
RETURNING fire_time;

-- name: schedules_advance
-- description: After a pass: the schedule's next tick, its last fire and the last error (NULL after a good fire).
UPDATE pgflow_python.schedules AS s SET
    next_fire_at = :next_fire_at,
    last_fire_at = coalesce(CAST(:last_fire_at AS timestamptz), s.last_fire_at),
    last_run_id = coalesce(CAST(:last_run_id AS uuid), s.last_run_id),
    last_error = CASE
        WHEN CAST(:last_fire_at AS timestamptz) IS NOT NULL OR CAST(:last_error AS text) IS NOT NULL
        THEN CAST(:last_error AS text)
        ELSE s.last_error
    END
WHERE s.schedule_name = :name;

-- name: schedules_seconds_until_due
-- description: Seconds until the earliest unpaused schedule is due (0 when one is due or not computed yet; NULL when none exists).
-- (greatest() skips NULLs: greatest(0, NULL) is 0, so the no-schedule case is tested apart.)
SELECT CASE WHEN count(*) > 0 THEN greatest(
           0, extract(epoch FROM min(coalesce(s.next_fire_at, '-infinity')) - clock_timestamp())
       )::float8 END AS seconds
FROM pgflow_python.schedules AS s
WHERE s.paused_at IS NULL;

-- name: schedules_prune_fires
-- description: Forget fire records older than :keep_seconds, keeping each schedule's latest; returns how many were deleted.
WITH pruned AS (
    DELETE FROM pgflow_python.schedule_fires AS f
    WHERE f.fired_at < clock_timestamp() - make_interval(secs => :keep_seconds)
      AND f.fire_time < (SELECT max(g.fire_time) FROM pgflow_python.schedule_fires AS g
                         WHERE g.schedule_name = f.schedule_name)
    RETURNING 1
)
SELECT count(*) AS pruned FROM pruned;

-- name: schedules_table_present
-- description: Whether this database has the schedules table (extension/0030 applied).
SELECT to_regclass('pgflow_python.schedules') IS NOT NULL AS present;

-- name: schedules_put_declared
-- description: Create or replace a declared schedule (Alembic operations); a new cron or time zone recomputes its next tick at the next scheduler pass, the pause state stays.
INSERT INTO pgflow_python.schedules AS s (
    schedule_name, flow_slug, cron, timezone, input, missed, catch_up_limit, grace_seconds,
    time_key, declared
)
VALUES (
    :name, :flow_slug, :cron, :timezone, CAST(:input AS jsonb), :missed, :catch_up_limit,
    :grace_seconds, CAST(:time_key AS text), true
)
ON CONFLICT (schedule_name) DO UPDATE SET
    flow_slug = excluded.flow_slug,
    cron = excluded.cron,
    timezone = excluded.timezone,
    input = excluded.input,
    missed = excluded.missed,
    catch_up_limit = excluded.catch_up_limit,
    grace_seconds = excluded.grace_seconds,
    time_key = excluded.time_key,
    declared = true,
    next_fire_at = CASE
        WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone) THEN NULL
        ELSE s.next_fire_at
    END,
    updated_at = now();
