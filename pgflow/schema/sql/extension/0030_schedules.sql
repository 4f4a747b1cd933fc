-- Cron schedules that start runs, fired by the workers' schedulers (pgflow/schedules/).
-- PostgreSQL cannot evaluate cron expressions, so Python computes next_fire_at; the database
-- makes each fire happen once: a scheduler claims a due schedule with FOR UPDATE SKIP LOCKED,
-- and schedule_fires' primary key (schedule, fire time) refuses a second fire of one tick.
-- Additive only: upstream functions and TypeScript workers never read these tables.

CREATE TABLE IF NOT EXISTS pgflow_python.schedules (
    schedule_name text PRIMARY KEY
        CONSTRAINT schedules_name_is_valid
        CHECK (schedule_name ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND length(schedule_name) <= 128),
    -- A dropped flow takes its schedules (and their fires) with it: nothing fires into a void.
    flow_slug text NOT NULL REFERENCES pgflow.flows (flow_slug) ON DELETE CASCADE,
    cron text NOT NULL,
    timezone text NOT NULL DEFAULT 'UTC',
    input jsonb NOT NULL DEFAULT '{}'::jsonb,
    missed text NOT NULL DEFAULT 'latest'
        CONSTRAINT schedules_missed_is_valid CHECK (missed IN ('latest', 'all', 'none')),
    catch_up_limit integer NOT NULL DEFAULT 100
        CONSTRAINT schedules_catch_up_limit_is_positive CHECK (catch_up_limit >= 1),
    grace_seconds integer NOT NULL DEFAULT 60
        CONSTRAINT schedules_grace_is_not_negative CHECK (grace_seconds >= 0),
    -- The key under which an object input carries the tick's time; NULL: not added.
    time_key text DEFAULT 'scheduled_at',
    -- Declared on a Flow/Job class (managed by Alembic autogenerate) or created through the API.
    declared boolean NOT NULL DEFAULT false,
    paused_at timestamptz,
    -- NULL: not computed yet (created, changed or resumed by SQL); the next scheduler pass
    -- computes the first tick after updated_at.
    next_fire_at timestamptz,
    last_fire_at timestamptz,
    last_run_id uuid,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS schedules_due_idx
    ON pgflow_python.schedules (next_fire_at)
    WHERE paused_at IS NULL;

CREATE INDEX IF NOT EXISTS schedules_flow_slug_idx ON pgflow_python.schedules (flow_slug);

CREATE TABLE IF NOT EXISTS pgflow_python.schedule_fires (
    schedule_name text NOT NULL
        REFERENCES pgflow_python.schedules (schedule_name) ON DELETE CASCADE ON UPDATE CASCADE,
    -- The cron tick this fire is for (for a manual trigger: when it was triggered).
    fire_time timestamptz NOT NULL,
    -- The run it started; no foreign key, so that pruning runs needs no order with fires.
    run_id uuid,
    manual boolean NOT NULL DEFAULT false,
    fired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    fired_by text,
    PRIMARY KEY (schedule_name, fire_time)
);

CREATE INDEX IF NOT EXISTS schedule_fires_run_id_idx ON pgflow_python.schedule_fires (run_id);

COMMENT ON TABLE pgflow_python.schedules IS
    'pgflow-python: cron schedules that start runs, fired once per tick by the workers';
COMMENT ON TABLE pgflow_python.schedule_fires IS
    'pgflow-python: one row per fired tick (schedule, fire time) and the run it started';
