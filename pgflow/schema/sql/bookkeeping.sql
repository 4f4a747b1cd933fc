-- pgflow-python's own record of what it installed. Upstream objects stay in schema pgflow;
-- everything of ours lives in schema pgflow_python so upstream upgrades never collide with it.
CREATE SCHEMA IF NOT EXISTS pgflow_python;

CREATE TABLE IF NOT EXISTS pgflow_python.installed (
    component  text NOT NULL CHECK (component IN ('pgmq', 'realtime', 'upstream', 'extension')),
    name       text NOT NULL,
    sha256     text NOT NULL,
    how        text NOT NULL CHECK (how IN ('applied', 'adopted', 'registered', 'extension', 'plain')),
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (component, name)
);

COMMENT ON TABLE pgflow_python.installed IS
    'SQL applied (or adopted) by pgflow-python''s installer; a changed file under a recorded name is refused.';
